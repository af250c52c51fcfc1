"""experiments.task_space: anchors + FIM features into bank/cache (build), similarity and
leave-one-task-out (analyze)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from gnnjax.design import bank as bank_lib
from gnnjax.design import trial as trial_lib
from gnnjax.tasks import anchors as anchors_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "generated/smallworld/clustering/onehot"


def _run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.task_space", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def test_build_trains_anchors_and_caches_features_then_skips_both(tmp_path):
  args = (f"--tasks={TASK}", "--num_graphs=6", f"--db={tmp_path / 'bank.sqlite'}",
          f"--out_dir={tmp_path}", "--mode=build", "--num_anchors=2", "--anchor_epochs=1",
          "--fisher_seeds=1", "--fisher_probes=1", "--fisher_max_examples=8",
          "--compile_workers=1")
  first = _run(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  with bank_lib.Bank(str(tmp_path / "bank.sqlite")) as bank:
    results = bank.query(task=TASK)
  anchors = anchors_lib.anchors_with_epochs(1)[:2]
  assert sorted(r.key.design_id for r in results) == sorted(a.design_id for a in anchors)
  assert all(r.design["epochs"] == 1 for r in results)
  with open(tmp_path / "features.json") as f:
    feature = np.asarray(json.load(f)[TASK])
  assert feature.shape == (2,)  # one alpha per anchor
  np.testing.assert_allclose(np.linalg.norm(feature), 1.0, rtol=1e-6)

  again = _run(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "0 trained, 2 already in the bank" in again.stdout
  assert "FIM features" not in again.stdout  # cached


def _anchor_trial(task: str, design, score: float) -> trial_lib.TrialResult:
  return trial_lib.TrialResult(
      key=trial_lib.TrialKey(task, design.design_id, 1), design=design.to_dict(),
      num_params=1, final={"val": {"accuracy": score}}, best={"val": {"accuracy": score}})


def test_analyze_similarity_matches_hand_kendall_and_reports_loo(tmp_path):
  anchors = anchors_lib.anchors_with_epochs(7)[:4]
  performance = {"a": [0.1, 0.2, 0.3, 0.4], "b": [0.4, 0.3, 0.2, 0.1],
                 "c": [0.1, 0.2, 0.4, 0.3], "d": [0.2, 0.1, 0.3, 0.4],
                 "e": [0.3, 0.4, 0.1, 0.2]}
  db = str(tmp_path / "bank.sqlite")
  with bank_lib.Bank(db) as bank:
    for task, scores in performance.items():
      for design, score in zip(anchors, scores):
        bank.add(_anchor_trial(task, design, score))
    bank.add(_anchor_trial("no_anchors", anchors[0], 0.5))  # lacks 3 anchors: left out
  rng = np.random.default_rng(0)
  features = {t: (v / np.linalg.norm(v)).tolist()
              for t, v in ((t, rng.uniform(0.1, 1.0, 4)) for t in [*performance, "no_anchors"])}
  with open(tmp_path / "features.json", "w") as f:
    json.dump(features, f)
  done = _run("--mode=analyze", "--tasks=a,b,c,d,e,no_anchors", f"--db={db}",
              f"--out_dir={tmp_path / 'out'}", f"--features={tmp_path / 'features.json'}",
              "--num_anchors=4", "--anchor_epochs=7", "--runs=2")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "left out (no anchors in the bank or no feature): no_anchors" in done.stdout
  with open(tmp_path / "out" / "task_space.json") as f:
    record = json.load(f)
  names = record["tasks"]
  matrix = np.asarray(record["similarity"])
  index = {t: names.index(t) for t in names}
  # Kendall tau by hand over the 6 anchor pairs (no ties): (concordant - discordant) / 6.
  assert matrix[index["a"], index["b"]] == -1.0  # reversed ranking
  assert matrix[index["a"], index["c"]] == (5 - 1) / 6  # one swapped pair
  assert matrix[index["a"], index["d"]] == (5 - 1) / 6
  assert matrix[index["c"], index["d"]] == (4 - 2) / 6
  np.testing.assert_allclose(np.diag(matrix), 1.0)
  assert np.asarray(record["embedding_tau"]).shape == (2, 5)
  assert np.asarray(record["feature_tau"]).shape == (5,)
  assert os.path.exists(tmp_path / "out" / "task_similarity.png")
