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
  flags = ["--num_designs=4", "--max_seconds=0.001", f"--state_dir={state}", f"--out_dir={out}"]
  walls = []
  for _ in range(6):  # each run stops after its first chunk; CPU groups make 2-4 chunks
    proc = _run(*flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    progress = json.loads((state / "progress.json").read_text())
    walls.append(progress["calls"][-1]["wall_s"])
    if (out / "results" / "design_throughput.json").exists():
      break
    assert "rerun the same command to train the other" in proc.stdout
  assert len(progress["calls"]) >= 2 and len(progress["done"]) == 4
  metrics = json.loads((out / "results" / "design_throughput.json").read_text())["metrics"]
  assert metrics["runs"] == len(progress["calls"]) and metrics["num_designs"] == 4
  assert abs(metrics["gnnjax_wall_s"] - sum(walls)) < 1e-6  # the runs' walls, added up
  assert metrics["statuses"] == {"ok": 4}
  assert sum(c["members"] for c in metrics["chunks"]["1"]) == 4
  assert f"the sum of {metrics['runs']} runs" in (out / "RESULTS.md").read_text()
  # Another population in the same state folder is refused, nothing is trained or written.
  before = (state / "progress.json").read_text()
  proc = _run("--num_designs=5", f"--state_dir={state}", f"--out_dir={out}")
  assert proc.returncode != 0 and "measures another population" in proc.stderr
  assert (state / "progress.json").read_text() == before
