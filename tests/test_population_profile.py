"""benchmarks/population_profile.py: the op kinds it sums, and one end-to-end run on CPU."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is not an installed package
  sys.path.insert(0, str(REPO))

from benchmarks import population_profile  # noqa: E402


@pytest.mark.parametrize("name, kind", [
    ("cublas-lt-matmul.22", "gemm"), ("input_transpose_fusion.2", "transpose"),
    ("input_add_reduce_select_fusion.1", "reduce"),
    ("loop_dynamic_update_slice_fusion.28", "dynamic-update-slice"),
    ("loop_dynamic_slice_fusion.15", "dynamic-slice"), ("MemcpyH2D", "copy"),
    ("loop_broadcast_fusion.3", "loop fusion"), ("custom-call.4", "other"),
])
def test_op_kind(name, kind):
  assert population_profile.op_kind(name) == kind


def test_profile_of_a_small_group_on_cpu(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.population_profile",
       "--task=generated/smallworld/clustering/pagerank", "--num_designs=64", "--batch_size=0",
       "--aggregation=sum", "--stage=other", "--depth=shallow", "--max_designs=2",
       "--epochs=3", "--trace_epochs=1", "--top=5", f"--trace_dir={tmp_path / 'trace'}",
       f"--out_dir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  record = json.loads((tmp_path / "results" / "population_profile.json").read_text())
  metrics = record["metrics"]
  assert metrics["steps_traced"] >= 1 and metrics["step_ms"] > 0
  assert metrics["layout"]["aggregations"] and metrics["layout"]["layers_mp"] <= 4
  assert not {"max", "min"} & set(metrics["layout"]["aggregations"])  # --aggregation=sum
  # --stage=other: no skipconcat, so every layer reads D columns (a cover's skipconcat
  # designs would widen them to l_mp x D for every member: BUILD_NOTES, "fifth calls").
  layout = metrics["layout"]
  assert "skipconcat" not in layout["stages"]
  assert layout["mp_in_dims"] == [layout["dim"]] * layout["layers_mp"]
  assert layout["conv"][0] == "generalconv"
  assert f"layer inputs up to {layout['dim']} columns" in out.stdout
  # The engine policies are recorded (A/Bs of them differ only there) beside the layout's.
  assert metrics["engine_flags"]["block_extremes"] == "auto"
  assert metrics["layout"]["block_extremes"] is False  # the CPU default
  ops = metrics["ops"]
  assert ops and all(op["ms_per_step"] >= 0 for op in ops)
  assert ops == sorted(ops, key=lambda op: -op["ms_per_step"])
  # The kinds partition the ops' time.
  assert sum(metrics["kinds"].values()) == pytest.approx(metrics["kernel_ms_per_step"])
  assert "| op | kind | ms per step |" in out.stdout
  assert "## population_profile" in (tmp_path / "RESULTS.md").read_text()


def test_an_empty_group_is_a_clear_error(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.population_profile",
       "--task=generated/smallworld/clustering/pagerank", "--num_designs=4", "--batch_size=7",
       f"--out_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "no sampled design is in the group" in out.stderr + out.stdout


def test_cover_gives_the_engine_the_whole_space():
  """--cover trains under a real-training study's stable programs: the whole --space as
  every layout's cover, chunks in size buckets (checked at the engine call, in a child
  process: parsing the global absl FLAGS here would leak into other tests)."""
  code = ("from absl import flags; from benchmarks import population_profile as p; "
          "from gnnjax.design import spaces\n"
          "class Stop(Exception): pass\n"
          "def fake(designs, dataset, seeds, **kwargs):\n"
          "  print('cover', len(kwargs.get('layout_cover') or ()), kwargs.get('size_buckets'),"
          " len(designs)); raise Stop\n"
          "p.engine.iter_population = fake\n"
          "flags.FLAGS(['prog', '--task=generated/smallworld/clustering/pagerank', "
          "'--space=autotransfer', '--num_designs=3', '--batch_size=0', '--aggregation=any', "
          "'--stage=any', '--depth=any', '--cover'])\n"
          "try:\n  p.main([])\nexcept Stop:\n  pass\n"
          "print('space', len(tuple(spaces.get_space('autotransfer'))))")
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()
  space_size = int(lines[-1].split()[1])
  assert f"cover {space_size} True 3" in lines
