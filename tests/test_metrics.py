"""Tests for gnnjax.metrics against scikit-learn (the independent reference) and hand counts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from gnnjax import metrics
from gnnjax.data.dataset import BINARY, MULTICLASS, MULTITASK, REGRESSION

SEEDS = range(5)


def _random_binary_problem(seed: int, tie_decimals: int | None):
  """Scores float32 `[N]`, labels int `[N]` with both classes, mask bool `[N]`."""
  rng = np.random.default_rng(seed)
  n = int(rng.integers(40, 400))
  labels = rng.integers(0, 2, n)
  labels[:2] = [0, 1]
  scores = rng.normal(size=n) + 0.8 * labels
  if tie_decimals is not None:
    scores = np.round(scores, tie_decimals)  # many tied scores, across classes too
  mask = rng.random(n) < 0.7
  mask[:2] = True
  return scores.astype(np.float32), labels, mask


# ------------------------------------------------------------------------------------------------
# ROC-AUC and average precision.
# ------------------------------------------------------------------------------------------------


def test_hand_computed_ties():
  scores = np.array([0.9, 0.9, 0.5, 0.1])
  labels = np.array([1, 0, 1, 0])
  # Pairs (pos, neg): (0.9, 0.9) ties -> 1/2, (0.9, 0.1) -> 1, (0.5, 0.9) -> 0, (0.5, 0.1) -> 1.
  assert metrics.roc_auc(scores, labels) == pytest.approx(2.5 / 4)
  # Thresholds 0.9: P = 1/2, R = 1/2; 0.5: P = 2/3, R = 1; 0.1 adds no recall.
  assert metrics.average_precision(scores, labels) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tie_decimals", [None, 1, 0])
def test_roc_auc_and_ap_match_sklearn(seed, tie_decimals):
  scores, labels, mask = _random_binary_problem(seed, tie_decimals)
  np.testing.assert_allclose(
      metrics.roc_auc(scores, labels), skm.roc_auc_score(labels, scores), rtol=1e-12)
  np.testing.assert_allclose(
      metrics.average_precision(scores, labels),
      skm.average_precision_score(labels, scores), rtol=1e-12)
  np.testing.assert_allclose(
      metrics.roc_auc(scores, labels, mask),
      skm.roc_auc_score(labels[mask], scores[mask]), rtol=1e-12)
  np.testing.assert_allclose(
      metrics.average_precision(scores, labels, mask),
      skm.average_precision_score(labels[mask], scores[mask]), rtol=1e-12)


def test_ranking_metrics_accept_column_shapes_and_float_labels():
  scores, labels, mask = _random_binary_problem(7, 1)
  expected_auc = skm.roc_auc_score(labels[mask], scores[mask])
  expected_ap = skm.average_precision_score(labels[mask], scores[mask])
  column_labels = labels[:, None].astype(np.float32)
  for mask_shape in [(-1,), (-1, 1)]:
    column_mask = mask.reshape(mask_shape)
    assert metrics.roc_auc(scores[:, None], column_labels, column_mask) == pytest.approx(
        expected_auc, rel=1e-12)
    assert metrics.average_precision(scores[:, None], column_labels, column_mask) == pytest.approx(
        expected_ap, rel=1e-12)


def test_ranking_metrics_ignore_labels_where_masked():
  scores = np.array([0.3, 0.8, 0.1, 0.5])
  labels = np.array([0.0, 1.0, np.nan, -1.0])  # garbage where the mask is False
  mask = np.array([True, True, False, False])
  assert metrics.roc_auc(scores, labels, mask) == 1.0
  assert metrics.average_precision(scores, labels, mask) == 1.0


def test_roc_auc_is_vectorised_on_a_large_input():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200_000)
  scores = np.round(rng.normal(size=labels.size) + labels, 2)
  np.testing.assert_allclose(
      metrics.roc_auc(scores, labels), skm.roc_auc_score(labels, scores), rtol=1e-10)


def test_ranking_metric_errors():
  with pytest.raises(ValueError, match="both classes"):
    metrics.roc_auc([0.1, 0.2, 0.3], [1, 1, 1])
  with pytest.raises(ValueError, match="both classes"):
    metrics.roc_auc([0.1, 0.2, 0.3], [0, 1, 1], mask=np.array([True, False, False]))
  with pytest.raises(ValueError, match="positive"):
    metrics.average_precision([0.1, 0.2], [0, 0])
  with pytest.raises(ValueError, match="must be 0 or 1, got -1"):
    metrics.roc_auc([0.1, 0.2, 0.3], [0, 1, -1])
  with pytest.raises(ValueError, match="NaN"):
    metrics.average_precision([0.1, np.nan, 0.3], [0, 1, 1])
  with pytest.raises(ValueError, match="scores must have shape"):
    metrics.roc_auc(np.zeros((3, 2)), np.zeros((3, 2)))
  with pytest.raises(ValueError, match="labels has shape"):
    metrics.roc_auc(np.zeros(3), np.zeros(4))
  with pytest.raises(ValueError, match="mask must be boolean"):
    metrics.roc_auc([0.1, 0.2], [0, 1], mask=np.array([1, 1]))


# ------------------------------------------------------------------------------------------------
# Multi-task ROC-AUC / AP (Hu et al. skip rule).
# ------------------------------------------------------------------------------------------------


def _reference_multitask(sklearn_metric, logits, labels, mask):
  """Per-task loop as in pretrain-gnns' eval, with scikit-learn doing the scoring."""
  values = []
  for task in range(labels.shape[1]):
    kept_labels = labels[mask[:, task], task]
    if np.sum(kept_labels == 1) > 0 and np.sum(kept_labels == 0) > 0:
      values.append(sklearn_metric(kept_labels, logits[mask[:, task], task]))
  return (float(np.mean(values)) if values else math.nan), len(values)


def _random_multitask_problem(seed: int):
  """Logits `[N, T]`, float labels with NaN where missing, mask; tasks 0-2 must be skipped."""
  rng = np.random.default_rng(seed)
  n, num_tasks = int(rng.integers(60, 300)), 8
  labels = (rng.random((n, num_tasks)) < rng.uniform(0.1, 0.6, num_tasks)).astype(np.float32)
  logits = np.round(rng.normal(size=(n, num_tasks)) + labels, 1).astype(np.float32)
  mask = rng.random((n, num_tasks)) < 0.8
  labels[:, 0] = np.where(mask[:, 0], 1.0, 0.0)  # only positives kept; negatives are masked
  labels[:, 1] = np.where(mask[:, 1], 0.0, 1.0)  # only negatives kept
  mask[:, 2] = False  # all labels missing
  labels[:2, 3:] = [[0.0], [1.0]]
  mask[:2, 3:] = True
  labels[~mask] = np.nan
  return logits, labels, mask


@pytest.mark.parametrize("seed", SEEDS)
def test_multitask_metrics_match_sklearn_loop(seed):
  logits, labels, mask = _random_multitask_problem(seed)
  for ours, theirs in [(metrics.multitask_roc_auc, skm.roc_auc_score),
                       (metrics.multitask_average_precision, skm.average_precision_score)]:
    value, count = _reference_multitask(theirs, logits, labels, mask)
    result = ours(logits, labels, mask)
    assert isinstance(result, metrics.MultitaskScore)
    assert result.num_tasks_evaluated == count == labels.shape[1] - 3
    np.testing.assert_allclose(result.value, value, rtol=1e-12)


def test_multitask_row_mask_applies_to_every_task():
  logits, labels, _ = _random_multitask_problem(11)
  labels = np.nan_to_num(labels)
  rows = np.random.default_rng(1).random(labels.shape[0]) < 0.5
  full_mask = np.broadcast_to(rows[:, None], labels.shape)
  assert metrics.multitask_roc_auc(logits, labels, rows) == metrics.multitask_roc_auc(
      logits, labels, full_mask)
  value, count = _reference_multitask(skm.roc_auc_score, logits, labels, full_mask)
  assert metrics.multitask_roc_auc(logits, labels, rows).num_tasks_evaluated == count
  np.testing.assert_allclose(metrics.multitask_roc_auc(logits, labels, rows).value, value)


def test_multitask_single_task_shapes():
  scores, labels, mask = _random_binary_problem(3, 1)
  expected = skm.roc_auc_score(labels[mask], scores[mask])
  for shape in [(-1,), (-1, 1)]:
    result = metrics.multitask_roc_auc(
        scores.reshape(shape), labels.reshape(shape), mask.reshape(shape))
    assert result.num_tasks_evaluated == 1
    np.testing.assert_allclose(result.value, expected, rtol=1e-12)
  # A [N] binary label vector against [N, 1] logits (graph labels int32 [G]).
  np.testing.assert_allclose(
      metrics.multitask_average_precision(scores[:, None], labels, mask).value,
      skm.average_precision_score(labels[mask], scores[mask]), rtol=1e-12)


def test_multitask_with_no_evaluable_task_is_nan():
  logits = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
  labels = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
  mask = np.array([[True, False], [True, False], [True, False]])
  for fn in (metrics.multitask_roc_auc, metrics.multitask_average_precision):
    result = fn(logits, labels, mask)
    assert math.isnan(result.value) and result.num_tasks_evaluated == 0
  assert math.isnan(metrics.multitask_roc_auc(logits, labels, np.zeros_like(mask)).value)


def test_multitask_rejects_labels_outside_01():
  labels = np.array([[1.0], [-1.0], [0.0]])  # pretrain-gnns' {-1, 1} coding must be converted
  with pytest.raises(ValueError, match="labels of task 0 must be 0 or 1"):
    metrics.multitask_roc_auc(np.zeros((3, 1)), labels)


# ------------------------------------------------------------------------------------------------
# Accuracy and micro-F1.
# ------------------------------------------------------------------------------------------------


def _random_multiclass_problem(seed: int, num_classes: int = 5):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(30, 300))
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  logits = rng.normal(size=(n, num_classes)).astype(np.float32)
  logits[np.arange(n), labels] += 0.7
  mask = rng.random(n) < 0.6
  return logits, labels, mask


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_accuracy_and_micro_f1_match_sklearn(seed):
  logits, labels, mask = _random_multiclass_problem(seed)
  predicted = logits.argmax(-1)
  expected_accuracy = skm.accuracy_score(labels[mask], predicted[mask])
  expected_f1 = skm.f1_score(labels[mask], predicted[mask], average="micro")
  assert metrics.accuracy(logits, labels, mask) == pytest.approx(expected_accuracy, rel=1e-12)
  assert metrics.micro_f1(logits, labels, mask) == pytest.approx(expected_f1, rel=1e-12)
  assert metrics.accuracy(logits, labels) == pytest.approx(
      skm.accuracy_score(labels, predicted), rel=1e-12)
  assert metrics.accuracy(logits, labels[:, None], mask[:, None]) == pytest.approx(
      expected_accuracy, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_accuracy_matches_sklearn(seed):
  scores, labels, mask = _random_binary_problem(seed, 1)
  scores[:3] = 0.0  # logit 0 = probability 0.5 is predicted negative
  predicted = (scores > 0).astype(int)
  expected = skm.accuracy_score(labels[mask], predicted[mask])
  assert metrics.accuracy(scores, labels, mask) == pytest.approx(expected, rel=1e-12)
  assert metrics.accuracy(scores[:, None], labels[:, None].astype(np.float32), mask) == (
      pytest.approx(expected, rel=1e-12))
  assert metrics.accuracy(scores[:, None], labels, mask[:, None]) == pytest.approx(
      expected, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_micro_f1_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  n, num_tasks = int(rng.integers(30, 200)), 6
  labels = (rng.random((n, num_tasks)) < 0.3).astype(np.float32)
  logits = (rng.normal(size=(n, num_tasks)) + 1.5 * labels - 1.0).astype(np.float32)
  predicted = (logits > 0).astype(int)
  rows = rng.random(n) < 0.7
  entries = rng.random((n, num_tasks)) < 0.8
  assert metrics.micro_f1(logits, labels) == pytest.approx(
      skm.f1_score(labels, predicted, average="micro"), rel=1e-12)
  assert metrics.micro_f1(logits, labels, rows) == pytest.approx(
      skm.f1_score(labels[rows], predicted[rows], average="micro"), rel=1e-12)
  # With an entry mask the kept entries form one pooled binary problem.
  assert metrics.micro_f1(logits, labels, entries) == pytest.approx(
      skm.f1_score(labels[entries], predicted[entries]), rel=1e-12)


def test_micro_f1_with_nothing_positive_is_zero():
  logits = -np.ones((4, 3))
  labels = np.zeros((4, 3))
  assert metrics.micro_f1(logits, labels) == 0.0


def test_classification_empty_mask_is_nan():
  logits, labels, _ = _random_multiclass_problem(0)
  empty = np.zeros(labels.shape, dtype=bool)
  assert math.isnan(metrics.accuracy(logits, labels, empty))
  assert math.isnan(metrics.micro_f1(logits, labels, empty))
  assert math.isnan(metrics.accuracy(logits[:, 0], (labels > 2).astype(int), empty))


def test_classification_label_errors():
  logits, labels, _ = _random_multiclass_problem(0, num_classes=3)
  with pytest.raises(ValueError, match="class id 3 is outside"):
    metrics.accuracy(logits, np.full_like(labels, 3))
  with pytest.raises(ValueError, match="integer class ids"):
    metrics.accuracy(logits, labels.astype(np.float32))
  with pytest.raises(ValueError, match="multiclass labels must have shape"):
    metrics.accuracy(logits, labels[:-1])
  with pytest.raises(ValueError, match="must be 0 or 1, got 2"):
    metrics.accuracy(logits[:, 0], np.full(len(labels), 2))
  # Out-of-range labels are fine where masked out (e.g. -1 for unlabelled nodes).
  masked_labels = labels.copy()
  masked_labels[0] = -1
  keep = np.ones(len(labels), dtype=bool)
  keep[0] = False
  assert metrics.accuracy(logits, masked_labels, keep) == metrics.accuracy(logits, labels, keep)


# ------------------------------------------------------------------------------------------------
# Regression.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_mae_rmse_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  n, num_tasks = int(rng.integers(20, 200)), 3
  targets = rng.normal(size=(n, num_tasks))
  predictions = (targets + rng.normal(scale=0.5, size=targets.shape)).astype(np.float32)
  entries = rng.random(targets.shape) < 0.7
  targets_with_gaps = np.where(entries, targets, np.nan)
  kept_t, kept_p = targets[entries], predictions[entries]
  assert metrics.mae(predictions, targets_with_gaps, entries) == pytest.approx(
      skm.mean_absolute_error(kept_t, kept_p), rel=1e-12)
  assert metrics.rmse(predictions, targets_with_gaps, entries) == pytest.approx(
      skm.root_mean_squared_error(kept_t, kept_p), rel=1e-12)
  rows = entries[:, 0]
  assert metrics.mae(predictions, targets, rows) == pytest.approx(
      skm.mean_absolute_error(targets[rows].ravel(), predictions[rows].ravel()), rel=1e-12)
  # [N, 1] predictions against [N] targets must not broadcast to [N, N].
  assert metrics.rmse(predictions[:, :1], targets[:, 0]) == pytest.approx(
      skm.root_mean_squared_error(targets[:, 0], predictions[:, 0]), rel=1e-12)


def test_regression_edge_cases():
  assert math.isnan(metrics.mae(np.zeros(3), np.ones(3), np.zeros(3, dtype=bool)))
  assert math.isnan(metrics.rmse(np.zeros((3, 2)), np.ones((3, 2)), np.zeros(3, dtype=bool)))
  with pytest.raises(ValueError, match="targets has shape"):
    metrics.mae(np.zeros((3, 2)), np.zeros(3))
  with pytest.raises(ValueError, match="mask has shape"):
    metrics.mae(np.zeros((3, 2)), np.zeros((3, 2)), np.ones(2, dtype=bool))


# ------------------------------------------------------------------------------------------------
# Registry.
# ------------------------------------------------------------------------------------------------


def test_registry_and_default_metrics():
  assert set(metrics.METRICS) == {"accuracy", "micro_f1", "roc_auc", "ap", "mae", "rmse"}
  for name, spec in metrics.METRICS.items():
    assert spec.name == name
  assert metrics.default_metric(MULTICLASS) == "accuracy"
  assert metrics.default_metric(BINARY) == "accuracy"
  assert metrics.default_metric(MULTITASK) == "roc_auc"
  assert metrics.default_metric(REGRESSION) == "mae"
  with pytest.raises(ValueError, match="valid types"):
    metrics.default_metric("ranking")
  with pytest.raises(ValueError, match="valid names"):
    metrics.get_metric("f2")


def test_registry_functions_return_floats():
  logits, labels, mask = _random_multitask_problem(0)
  value = metrics.METRICS["roc_auc"].fn(logits, labels, mask)
  assert isinstance(value, float)
  assert value == metrics.multitask_roc_auc(logits, labels, mask).value
  assert metrics.METRICS["ap"].fn(logits, labels, mask) == (
      metrics.multitask_average_precision(logits, labels, mask).value)


def test_is_better():
  assert metrics.is_better("accuracy", 0.8, 0.7)
  assert not metrics.is_better("accuracy", 0.7, 0.7)
  assert metrics.is_better("mae", 0.1, 0.2)
  assert not metrics.is_better("rmse", 0.3, 0.2)
  assert metrics.is_better("roc_auc", 0.5, math.nan)
  assert not metrics.is_better("roc_auc", math.nan, 0.5)
  assert not metrics.is_better("mae", math.nan, math.nan)
  with pytest.raises(ValueError, match="valid names"):
    metrics.is_better("auc", 0.1, 0.2)


# ------------------------------------------------------------------------------------------------
# Jittable metrics.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_masked_accuracy_under_jit_matches_numpy(seed):
  jitted = jax.jit(metrics.masked_accuracy)
  logits, labels, mask = _random_multiclass_problem(seed)
  correct, counted = jitted(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
  assert correct.dtype == jnp.int32 and counted.dtype == jnp.int32
  assert int(counted) == mask.sum()
  assert int(correct) / int(counted) == pytest.approx(metrics.accuracy(logits, labels, mask))
  scores, binary_labels, binary_mask = _random_binary_problem(seed, 1)
  scores[:2] = 0.0
  for shape in [(-1,), (-1, 1)]:
    correct, counted = jitted(jnp.asarray(scores.reshape(shape)),
                              jnp.asarray(binary_labels.reshape(shape).astype(np.float32)),
                              jnp.asarray(binary_mask.reshape(shape)))
    assert int(counted) == binary_mask.sum()
    assert int(correct) / int(counted) == pytest.approx(
        metrics.accuracy(scores, binary_labels, binary_mask))


def test_masked_accuracy_batches_sum_exactly():
  logits, labels, mask = _random_multiclass_problem(4)
  jitted = jax.jit(metrics.masked_accuracy)
  totals = np.zeros(2, dtype=np.int64)
  for start in range(0, len(labels), 32):
    batch = slice(start, start + 32)
    totals += np.array(jitted(logits[batch], labels[batch], mask[batch]))
  predicted = logits.argmax(-1)
  assert totals.tolist() == [int(np.sum((predicted == labels) & mask)), int(mask.sum())]
  correct, counted = jitted(logits, labels, np.zeros_like(mask))
  assert int(correct) == 0 and int(counted) == 0


def test_masked_mean_under_jit():
  rng = np.random.default_rng(0)
  values = rng.normal(size=(50, 4)).astype(np.float32)
  entries = rng.random((50, 4)) < 0.5
  rows = entries[:, 0]
  jitted = jax.jit(metrics.masked_mean)
  np.testing.assert_allclose(jitted(values, entries), values[entries].mean(), rtol=1e-5)
  np.testing.assert_allclose(jitted(values, rows), values[rows].mean(), rtol=1e-5)
  empty = jitted(values, np.zeros(50, dtype=bool))
  assert float(empty) == 0.0
  gradient = jax.jit(jax.grad(metrics.masked_mean))(values, np.zeros(50, dtype=bool))
  assert np.all(np.asarray(gradient) == 0.0)
  gradient = jax.grad(metrics.masked_mean)(values, entries)
  np.testing.assert_allclose(gradient, entries / entries.sum(), rtol=1e-6)
