"""Tests for GraphGym's ranking analysis (graphgym.md 6.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gnnjax.design import analysis, spaces, study
from gnnjax.design.trial import TrialKey, TrialResult


def slow_ranks(accuracy_row, threshold=0.021):
  """The rule spelled out for one setup, with Python lists: snap to the median, 'min' ranks."""
  negated = [-a for a in accuracy_row]
  ordered = sorted(negated)
  middle = len(ordered) // 2
  median = (ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2)
  snapped = [median if abs(v - median) <= threshold else v for v in negated]
  return [1 + sum(other < v for other in snapped) for v in snapped]


@pytest.mark.parametrize("accuracy, expected", [
    # 3 choices: within 0.02 of the middle one ties with it; 0.03 away does not.
    ([0.80, 0.78, 0.70], [1, 1, 3]),
    ([0.80, 0.77, 0.70], [1, 2, 3]),
    ([0.70, 0.78, 0.80], [3, 1, 1]),
    ([0.80, 0.79, 0.78], [1, 1, 1]),
    ([0.60, 0.80, 0.62], [2, 1, 2]),
    # 2 choices tie when |diff| <= 0.04.
    ([0.80, 0.76], [1, 1]),
    ([0.76, 0.80], [1, 1]),
    ([0.80, 0.75], [1, 2]),
    ([0.70, 0.75], [2, 1]),
    # 4 choices: the median is the mean of the middle two (0.815 here); the lower or upper
    # middle value as median would leave 0.80 or 0.83 untied.
    ([0.90, 0.83, 0.80, 0.50], [1, 2, 2, 4]),
    ([0.90, 0.85, 0.80, 0.50], [1, 2, 3, 4]),
    ([0.5, 0.5, 0.5, 0.5], [1, 1, 1, 1]),
])
def test_tie_rule_hand_made(accuracy, expected):
  assert analysis.tie_ranks(np.array([accuracy])).tolist() == [expected]
  assert slow_ranks(accuracy) == expected


def test_tie_rule_matches_the_slow_rule_on_random_pivots():
  rng = np.random.default_rng(0)
  for choices in (2, 3, 4, 5):
    accuracy = np.round(rng.uniform(0.5, 0.7, size=(200, choices)), 2)
    expected = [slow_ranks(list(row)) for row in accuracy]
    np.testing.assert_array_equal(analysis.tie_ranks(accuracy), expected)


def test_rounding_to_two_decimals_happens_before_ties():
  # 0.844 vs 0.796: 0.048 apart unrounded (no tie), 0.84 vs 0.80 rounded (tie).
  table = analysis.rank_accuracies("bn", ["True", "False"], [("t", 0)], np.array([[0.844, 0.796]]))
  np.testing.assert_allclose(table.accuracy, [[0.84, 0.80]])
  assert table.ranks.tolist() == [[1, 1]]


def test_missing_cells_take_the_choice_minimum():
  nan = math.nan
  accuracy = np.array([[0.90, nan, 0.70],
                       [0.80, 0.60, nan],
                       [0.50, 0.95, 0.75],
                       [nan, nan, nan]])   # no result at all: dropped, as pandas' pivot would
  table = analysis.rank_accuracies("agg", ["add", "mean", "max"],
                                   [("t", 0), ("t", 1), ("t", 2), ("t", 3)], accuracy)
  assert table.setups == [("t", 0), ("t", 1), ("t", 2)]
  np.testing.assert_allclose(table.accuracy, [[0.90, 0.60, 0.70],
                                              [0.80, 0.60, 0.70],
                                              [0.50, 0.95, 0.75]])
  assert table.filled.tolist() == [[False, True, False], [False, False, True],
                                   [False, False, False]]
  assert table.ranks.tolist() == [[1, 3, 2], [1, 3, 2], [3, 1, 2]]
  np.testing.assert_allclose(table.average_rank, [5 / 3, 7 / 3, 2.0])
  np.testing.assert_allclose(table.top1_fraction, [2 / 3, 1 / 3, 0.0])
  assert table.rank_counts.tolist() == [[2, 0, 1], [1, 0, 2], [0, 3, 0]]


def test_choice_without_any_result_is_reported_absent():
  accuracy = np.array([[0.9, math.nan], [0.8, math.nan]])
  table = analysis.rank_accuracies("bn", ["True", "False"], [("t", 0), ("t", 1)], accuracy)
  assert table.choices == ["True"] and table.absent_choices == ["False"]
  assert "no results at all for: False" in analysis.format_table(table)


def _result(task, design, seed, accuracy, status="ok"):
  final = {} if accuracy is None else {"val": {"accuracy": accuracy}}
  return TrialResult(key=TrialKey(task, design.design_id, seed), design=design.to_dict(),
                     num_params=1, status=status, final=final)


def test_rank_table_from_results_averages_seeds_per_task():
  plan = study.controlled_random_search(spaces.GRAPHGYM_ROUND1, ["batch_norm"], 2, seed=0)
  by_setup = {(row.setup_id, row.choice): row.design for row in plan}
  results = [
      # task a, setup 0: True 0.80 (mean of 0.79, 0.81) vs False 0.70 -> 1, 2
      _result("a", by_setup[0, "True"], 1, 0.79), _result("a", by_setup[0, "True"], 2, 0.81),
      _result("a", by_setup[0, "False"], 1, 0.70),
      # task a, setup 1: True failed (missing -> True's minimum 0.60) vs False 0.64 -> tie
      _result("a", by_setup[1, "True"], 1, None, status="failed"),
      _result("a", by_setup[1, "False"], 1, 0.64),
      # task b, setup 0: True 0.60 vs False 0.90; setup 1 has no result (dropped)
      _result("b", by_setup[0, "True"], 1, 0.60), _result("b", by_setup[0, "False"], 1, 0.90),
      # another dimension's trial is not part of this pivot
      _result("b", spaces.GRAPHGYM_ROUND1.sample(9, 1)[0], 1, 0.99),
  ]
  table = analysis.rank_table(results, plan, "batch_norm")
  assert table.choices == ["True", "False"]
  assert table.setups == [("a", 0), ("a", 1), ("b", 0)]
  np.testing.assert_allclose(table.accuracy, [[0.80, 0.70], [0.60, 0.64], [0.60, 0.90]])
  assert table.ranks.tolist() == [[1, 2], [1, 1], [2, 1]]
  text = analysis.format_table(table)
  assert text.splitlines()[0].startswith("batch_norm (3 setups; 1 missing cells filled)")
  assert "True" in text and "1.33" in text
  with pytest.raises(ValueError, match="no configs for dimension 'activation'"):
    analysis.rank_table(results, plan, "activation")


def test_tasks_without_accuracy_are_scored_by_their_own_metric():
  # A MoleculeNet task reports ROC-AUC and AP, no accuracy: its rank tables, pool table and
  # progress lines use ROC-AUC (the first of trial.SCORE_METRICS it reports), not NaN.
  plan = study.controlled_random_search(spaces.GRAPHGYM_ROUND1, ["batch_norm"], 1, seed=0)
  by_choice = {row.choice: row.design for row in plan}

  def molecule(design, roc_auc):
    return TrialResult(key=TrialKey("bace", design.design_id, 1), design=design.to_dict(),
                       num_params=1, final={"val": {"ap": 0.5, "roc_auc": roc_auc,
                                                    "loss": 0.6}})

  results = [molecule(by_choice["True"], 0.71), molecule(by_choice["False"], 0.83)]
  table = analysis.rank_table(results, plan, "batch_norm")
  np.testing.assert_allclose(table.accuracy, [[0.71, 0.83]])
  assert table.ranks.tolist() == [[2, 1]]
  assert analysis.trial_accuracy(results[0], metric="ap") == 0.5  # a named metric still wins
  assert math.isnan(analysis.trial_accuracy(results[0], metric="accuracy"))
  pools = study.format_pools(results)
  assert "val score: best" in pools and "0.8300" in pools and "0.7100" in pools
  lines = []
  study.ProgressPrinter(2, print_fn=lines.append)(results[1])
  assert lines[0].endswith("bace " + by_choice["False"].design_id + " seed=1 ok val_roc_auc=0.830")
  lines.clear()
  study.ProgressPrinter(1, print_fn=lines.append)(_result("a", by_choice["True"], 1, 0.75))
  assert lines[0].endswith("val_acc=0.750")


def test_plot_ranks_writes_a_png(tmp_path):
  rng = np.random.default_rng(1)
  tables = [
      analysis.rank_accuracies("activation", ["relu", "prelu", "swish"],
                               [("t", i) for i in range(12)], rng.uniform(0.5, 0.9, (12, 3))),
      # constant ranks cannot be drawn as a KDE violin; they must still plot
      analysis.rank_accuracies("batch_norm", ["True", "False"], [("t", 0), ("t", 1)],
                               np.array([[0.9, 0.5], [0.9, 0.5]])),
  ]
  path = analysis.plot_ranks(tables, tmp_path / "plots" / "ranks.png")
  data = open(path, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  import matplotlib.image
  image = matplotlib.image.imread(path)
  assert image.shape[0] >= 500 and image.shape[1] >= 500
  assert image[..., :3].std() > 0.05  # not a blank canvas


def test_table_dict_is_json_ready():
  import json
  table = analysis.rank_accuracies("bn", ["True", "False"], [("t", 0)], np.array([[0.9, 0.5]]))
  record = json.loads(json.dumps(table.to_dict()))
  assert record["average_rank"] == [1.0, 2.0] and record["num_setups"] == 1
