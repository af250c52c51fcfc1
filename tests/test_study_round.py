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
  assert "| stable_split |" in (tmp_path / "RESULTS.md").read_text()
