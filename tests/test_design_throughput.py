"""benchmarks/design_throughput.py --state_dir: one population measured over several runs."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
COMMON = ["--task=generated/smallworld/clustering/pagerank", "--num_graphs=16", "--epochs=2",
          "--eval_every=1", "--pyg=false", "--copy_mb=8"]


def _run(*flags):
  return subprocess.run([sys.executable, "-m", "benchmarks.design_throughput", *COMMON, *flags],
                        cwd=REPO, capture_output=True, text=True, timeout=600)


def test_a_population_measured_over_several_runs(tmp_path):
  state, out = tmp_path / "state", tmp_path / "out"
  cache = tmp_path / "xla_cache"
  flags = ["--num_designs=4", "--max_seconds=0.001", f"--state_dir={state}", f"--out_dir={out}",
           f"--compilation_cache_dir={cache}"]
  walls = []
  for run in range(6):  # each run stops after its first chunk; CPU groups make 2-4 chunks
    proc = _run(*flags, "--pyg_designs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    progress = json.loads((state / "progress.json").read_text())
    walls.append(progress["calls"][-1]["wall_s"])
    if (out / "results" / "design_throughput.json").exists():
      break
    assert "rerun the same command to train the other" in proc.stdout
    if run == 0:  # PyG timings saved by a --pyg_only job (torch is not installed here)
      progress["pyg"] = {"date": "2026-12-03T10:00:00", "device": "test", "timings": [
          {"design": f"design {i}", "epochs": 2, "epoch_s": 0.1, "step_ms": 10.0,
           "eval_s": 0.1, "design_s": 1.0 + i} for i in range(3)]}
      (state / "progress.json").write_text(json.dumps(progress))
  assert len(progress["calls"]) >= 2 and len(progress["done"]) == 4
  metrics = json.loads((out / "results" / "design_throughput.json").read_text())["metrics"]
  # The finishing run used the first 2 saved timings (mean 1.5 s per design) for the ratio.
  assert [p["design"] for p in metrics["pyg"]] == ["design 0", "design 1"]
  assert abs(metrics["pyg_designs_per_hour"] - 2400) < 1e-6
  assert abs(metrics["ratio"] - metrics["gnnjax_designs_per_hour"] / 2400) < 1e-9
  assert "timed on test at 2026-12-03T10:00:00" in proc.stdout
  assert metrics["runs"] == len(progress["calls"]) and metrics["num_designs"] == 4
  assert abs(metrics["gnnjax_wall_s"] - sum(walls)) < 1e-6  # the runs' walls, added up
  assert metrics["statuses"] == {"ok": 4}
  # The runs shared JAX's persistent compilation cache, which the results record.
  assert metrics["compilation_cache_dir"] == str(cache) and any(cache.iterdir())
  assert sum(c["members"] for c in metrics["chunks"]["1"]) == 4
  assert f"the sum of {metrics['runs']} runs" in (out / "RESULTS.md").read_text()
  # Another population in the same state folder is refused, nothing is trained or written.
  before = (state / "progress.json").read_text()
  proc = _run("--num_designs=5", f"--state_dir={state}", f"--out_dir={out}")
  assert proc.returncode != 0 and "measures another population" in proc.stderr
  assert (state / "progress.json").read_text() == before


def test_pyg_only_needs_a_state_and_pyg(tmp_path):
  proc = _run("--pyg_only", f"--out_dir={tmp_path}")
  assert proc.returncode != 0 and "needs --state_dir" in proc.stderr
  state = tmp_path / "state"
  proc = _run("--num_designs=2", "--pyg_only", "--pyg=true", f"--state_dir={state}",
              f"--out_dir={tmp_path}")
  try:
    import torch_geometric  # noqa: F401
  except ImportError:  # the CI machine: nothing timed, nothing saved, a clear error
    assert proc.returncode != 0 and "PyG did not run" in proc.stderr
    assert not (state / "progress.json").exists()
  else:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads((state / "progress.json").read_text())["pyg"]["timings"]) == 2


def test_a_state_counts_repeated_designs_once_per_appearance():
  """--epochs can make two drawn designs the same; each appearance is one training, and a
  state written before the states counted appearances (a dict by design id) still loads."""
  code = """
import json, os, sys, tempfile
from absl import flags
from benchmarks import design_throughput as bench
from gnnjax.design import spaces
flags.FLAGS(['bench'])
a, b = spaces.get_space('graphgym_round1').sample(0, 2)
designs = [a, b, a, a]
state = {'done': [[a.design_id, 'ok']]}
todo = bench.designs_to_train(designs, state)
assert [d.design_id for d in todo] == [b.design_id, a.design_id, a.design_id], todo
state['done'] += [[a.design_id, 'ok'], [b.design_id, 'diverged'], [a.design_id, 'ok']]
assert bench.designs_to_train(designs, state) == []
state.update(population={'x': 1}, calls=[{'wall_s': 1.0, 'first_epoch_s': 0.5, 'steady_s': 0.2,
                                          'rows': []}], chunks=[])
totals = bench.state_totals(state)
assert totals['designs'] == 4 and totals['statuses'] == {'ok': 3, 'diverged': 1}, totals
folder = tempfile.mkdtemp()
with open(os.path.join(folder, 'progress.json'), 'w') as f:
  json.dump({'population': {'x': 1}, 'done': {a.design_id: 'ok'}, 'calls': [], 'chunks': []}, f)
old = bench.load_state(folder, {'x': 1})
assert old['done'] == [[a.design_id, 'ok']], old
print('ok')
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_pyg_only_saves_timings_that_a_later_run_reads(tmp_path):
  """--pyg_only's success path without torch: PyG's timer stubbed, the timings land in the
  state (and nothing is trained), and `saved_pyg` hands the first --pyg_designs of them on."""
  code = f"""
import json, os
from absl import flags
from benchmarks import design_throughput as bench
flags.FLAGS(['bench', {", ".join(repr(f) for f in COMMON)}, '--num_designs=3', '--pyg_only',
             '--pyg_designs=2', '--state_dir={tmp_path / "state"}', '--out_dir={tmp_path}'])
timed = []
def fake_timer(designs, dataset):
  timed.extend(d.design_id for d in designs)
  return [{{'design': d.design_id, 'design_s': 2.0 + i}} for i, d in enumerate(designs)]
bench.time_pyg_designs = fake_timer
bench.main([])
assert len(timed) == 2, timed
state = json.load(open(os.path.join('{tmp_path / "state"}', 'progress.json')))
assert [t['design'] for t in state['pyg']['timings']] == timed and state['done'] == []
assert bench.saved_pyg(state, 1) == state['pyg']['timings'][:1]
assert bench.saved_pyg(state, 3) is None  # fewer saved than asked: time them again
print('ok')
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
  assert "2 PyG timings saved in" in proc.stdout and "1,440 designs per hour" in proc.stdout
