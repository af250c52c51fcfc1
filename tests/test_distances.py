"""gnnjax.tasks.distances: task distances from features, anchors and the learned embedding."""

from __future__ import annotations

import numpy as np
import pytest

from gnnjax.design import bank as bank_lib
from gnnjax.design import trial as trial_lib
from gnnjax.tasks import anchors as anchors_lib
from gnnjax.tasks import distances


def test_cosine_distances_by_hand():
  got = distances.cosine_distances(np.array([1.0, 0.0]),
                                   {"same": np.array([2.0, 0.0]), "right": np.array([0.0, 3.0]),
                                    "diag": np.array([1.0, 1.0])})
  assert got["same"] == pytest.approx(0.0)
  assert got["right"] == pytest.approx(1.0)
  assert got["diag"] == pytest.approx(1.0 - 1.0 / np.sqrt(2.0))


def _bank_with_anchors(path, performance, anchors):
  with bank_lib.Bank(path) as bank:
    for task, scores in performance.items():
      for design, score in zip(anchors, scores):
        bank.add(trial_lib.TrialResult(
            key=trial_lib.TrialKey(task, design.design_id, 1), design=design.to_dict(),
            num_params=1, final={"val": {"accuracy": score}}, best={"val": {"accuracy": score}}))


def test_graphgym_distance_is_one_minus_kendall_of_anchor_scores(tmp_path):
  anchors = anchors_lib.anchors_with_epochs(5)[:4]
  _bank_with_anchors(tmp_path / "b.sqlite", {"new": [0.1, 0.2, 0.3, 0.4],
                                             "same": [0.5, 0.6, 0.7, 0.8],
                                             "reversed": [0.4, 0.3, 0.2, 0.1],
                                             "one_swap": [0.2, 0.1, 0.3, 0.4]}, anchors)
  with bank_lib.Bank(tmp_path / "b.sqlite") as bank:
    got = distances.graphgym_distances(bank, "new", ["same", "reversed", "one_swap"], anchors)
    assert got == pytest.approx({"same": 0.0, "reversed": 2.0, "one_swap": 1.0 - 4 / 6})
    with pytest.raises(ValueError, match="anchors of 'absent'"):
      distances.graphgym_distances(bank, "absent", ["same"], anchors)
    # The default anchors (400 epochs) are not the ones in this bank: no task qualifies.
    assert distances.anchor_similarity(bank)[0] == []


def test_embedding_distances_fall_back_to_cosine_with_few_supervised_tasks():
  features = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
  similarity = (["a", "b"], np.eye(2))
  lines = []
  got = distances.embedding_distances(np.array([1.0, 0.0]), features, similarity,
                                      print_fn=lines.append)
  assert got == pytest.approx(distances.cosine_distances(np.array([1.0, 0.0]), features))
  assert "raw-feature cosine" in lines[0]
