"""benchmarks/study_round.py: one end-to-end run on CPU."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_rounds_under_two_policies_that_agree_on_cpu(tmp_path):
  # On CPUs stage and depth splits are the default, so `stable_split` and
  # `stable_split_stages` are `stable` again: they must find every program compiled and give
  # bit-identical trials.
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.study_round",
       "--task=generated/smallworld/clustering/pagerank", "--designs=1", "--epochs=1",
       "--eval_every=1", "--variants=stable,stable_split,stable_split_stages", f"--out_dir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  record = json.loads((tmp_path / "results" /
                       "study_round_smallworld_clustering_pagerank.json").read_text())
  variants = record["metrics"]["variants"]
  assert list(variants) == ["stable", "stable_split", "stable_split_stages"]
  stable = variants["stable"]
  assert stable["traced"]["A"] > 0 and stable["traced"]["B_again"] == 0
  assert stable["statuses"] == ["ok"]
  for split in (variants["stable_split"], variants["stable_split_stages"]):
    assert split["traced"] == {"A": 0, "B": 0, "B_again": 0}
    assert split["max_val_diff"] == 0.0
    assert all(v > 0 for v in split["round_seconds"].values())
  assert record["metrics"]["complete"] is True
  results_md = (tmp_path / "RESULTS.md").read_text()
  assert "| stable_split |" in results_md and results_md.count("## study_round") == 1


def test_a_run_stopped_mid_way_keeps_its_finished_variants(tmp_path):
  """A device call's time limit can stop the run between variants: the JSON written after
  each variant keeps those done (marked incomplete), and no RESULTS.md section is appended."""
  code = (
      "import sys\n"
      "from absl import app\n"
      "from benchmarks import study_round as bench\n"
      "calls = []\n"
      "def fake_round(designs, dataset, policies):\n"
      "  calls.append(1)\n"
      "  if len(calls) > 3:\n"  # the second variant's first round: the time limit
      "    raise KeyboardInterrupt\n"
      "  return {'seconds': 2.0, 'traced': 3, 'chunks': 4, 'trials': len(designs),\n"
      "          'statuses': ['ok'], 'val': [0.5] * len(designs)}\n"
      "bench.run_round = fake_round\n"
      "sys.argv = ['study_round', '--task=generated/smallworld/clustering/pagerank',\n"
      "            '--designs=2', '--variants=stable,stable_split', '--results_name=partial',\n"
      f"            '--out_dir={tmp_path}']\n"
      "try:\n"
      "  app.run(bench.main)\n"
      "except KeyboardInterrupt:\n"
      "  print('stopped')\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0 and "stopped" in out.stdout, out.stderr[-3000:]
  record = json.loads((tmp_path / "results" / "partial.json").read_text())
  assert record["metrics"]["complete"] is False
  assert list(record["metrics"]["variants"]) == ["stable"]
  assert record["metrics"]["variants"]["stable"]["round_seconds"]["B_again"] == 2.0
  assert not (tmp_path / "RESULTS.md").exists()
