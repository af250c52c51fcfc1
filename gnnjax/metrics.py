"""Evaluation metrics for node- and graph-level tasks.

Two families:

* Host metrics (NumPy) for predictions collected after an evaluation pass: `accuracy`, `micro_f1`,
  `roc_auc`, `average_precision`, their multi-task versions, `mae` and `rmse`. Each takes an
  optional boolean `mask` that drops entries (a node split, padding, missing labels). Labels at
  dropped entries are never read, so they may hold anything (NaN, -1, padding zeros).
* Jittable metrics (jax.numpy) for use inside jitted train/eval steps: `masked_accuracy` returns
  integer counts so that sums over batches are exact, and `masked_mean` is safe on an empty mask.

Conventions: binary and multi-label predictions are logits and an entry is predicted positive when
its logit is > 0 (sigmoid > 0.5). Ranking metrics (ROC-AUC, AP) follow scikit-learn exactly,
including how tied scores are treated; scikit-learn is not a dependency, only the tests' reference.

`METRICS` maps a metric name to a `MetricSpec` whose `fn(predictions, labels, mask=None)` returns a
float; `default_metric(task_type)` names the metric a task type is reported with.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from gnnjax.data.dataset import BINARY, MULTICLASS, MULTITASK, REGRESSION

# ------------------------------------------------------------------------------------------------
# Input checking and shape handling (host side).
# ------------------------------------------------------------------------------------------------


def _as_column_matrix(array: np.ndarray, name: str) -> np.ndarray:
  """`[N]` -> `[N, 1]`; `[N, T]` unchanged; anything else is an error."""
  if array.ndim == 1:
    return array[:, None]
  if array.ndim == 2:
    return array
  raise ValueError(f"{name} must have shape [N] or [N, T], got {array.shape}")


def _match_shape(reference: np.ndarray, other: np.ndarray, name: str) -> np.ndarray:
  """Reshapes `other` to `reference.shape` when they only differ by a trailing unit axis.

  Guards against silent `[N, 1] - [N]` broadcasting to `[N, N]`.
  """
  if other.shape == reference.shape:
    return other
  if other.size == reference.size and np.squeeze(other).shape == np.squeeze(reference).shape:
    return other.reshape(reference.shape)
  raise ValueError(f"{name} has shape {other.shape}, expected {reference.shape}")


def _broadcast_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
  """A bool mask of `shape`. `None` keeps everything; an `[N]` mask applies to every column."""
  if mask is None:
    return np.ones(shape, dtype=bool)
  mask = np.asarray(mask)
  if mask.dtype != bool:
    raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
  if mask.shape == shape:
    return mask
  if mask.ndim == 1 and len(shape) == 2 and mask.shape[0] == shape[0]:
    return np.broadcast_to(mask[:, None], shape)
  if mask.size == math.prod(shape) and np.squeeze(mask).shape == tuple(d for d in shape if d != 1):
    return mask.reshape(shape)
  raise ValueError(f"mask has shape {mask.shape}, expected {shape} or [{shape[0]}]")


def _check_binary_labels(labels: np.ndarray, name: str = "labels") -> None:
  """Raises unless every entry of `labels` is 0 or 1."""
  bad = labels[(labels != 0) & (labels != 1)]
  if bad.size:
    raise ValueError(f"{name} must be 0 or 1, got {bad[0].item()!r}")


def _check_no_nan(scores: np.ndarray, name: str = "scores") -> None:
  """Ranking is undefined with NaN scores (e.g. a diverged model); fail loudly instead."""
  if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
    raise ValueError(f"{name} contain NaN; cannot rank them")


# ------------------------------------------------------------------------------------------------
# Classification (host).
# ------------------------------------------------------------------------------------------------


def _is_binary_output(logits: np.ndarray) -> bool:
  return logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1)


def _multiclass_predictions(
    logits: np.ndarray, labels: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
  """Predicted and true class ids int64 `[M]` of the kept rows of `[N, C]` logits."""
  if logits.ndim != 2:
    raise ValueError(f"multiclass logits must have shape [N, C], got {logits.shape}")
  num_examples, num_classes = logits.shape
  if labels.size != num_examples or labels.ndim > 2:
    raise ValueError(f"multiclass labels must have shape [{num_examples}], got {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"multiclass labels must be integer class ids, got dtype {labels.dtype}")
  keep = _broadcast_mask(mask, (num_examples,))
  labels = labels.reshape(num_examples)[keep]
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"class id {bad[0].item()!r} is outside [0, {num_classes})")
  return np.argmax(logits[keep], axis=-1), labels.astype(np.int64)


def _binary_predictions(
    logits: np.ndarray, labels: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
  """Predicted and true {0,1} labels (bool) of the kept entries; positive iff logit > 0."""
  labels = _match_shape(logits, labels, "labels")
  keep = _broadcast_mask(mask, logits.shape)
  labels = labels[keep]
  _check_binary_labels(labels)
  return logits[keep] > 0, labels == 1


def accuracy(logits_or_scores, labels, mask=None) -> float:
  """Fraction of kept examples whose predicted class equals the label.

  Args:
    logits_or_scores: multiclass logits float `[N, C]` (C >= 2, prediction = argmax), or binary
      logits float `[N]` / `[N, 1]` (prediction = logit > 0).
    labels: multiclass class ids int `[N]`; binary labels in {0, 1} `[N]` / `[N, 1]` (int or float).
    mask: optional bool `[N]` (or `[N, 1]` for binary); False drops the example.

  Returns:
    Accuracy in [0, 1]; NaN when no example is kept.
  """
  logits, labels = np.asarray(logits_or_scores), np.asarray(labels)
  if _is_binary_output(logits):
    predicted, true = _binary_predictions(logits, labels, mask)
  else:
    predicted, true = _multiclass_predictions(logits, labels, mask)
  if predicted.size == 0:
    return float("nan")
  return float(np.mean(predicted == true))


def _f1_from_counts(true_positives: int, false_positives: int, false_negatives: int) -> float:
  denominator = 2 * true_positives + false_positives + false_negatives
  # scikit-learn's default (zero_division) scores 0 when nothing is predicted or present.
  return 2 * true_positives / denominator if denominator else 0.0


def micro_f1(logits, labels, mask=None) -> float:
  """Micro-averaged F1: pools true/false positives and false negatives over all classes or tasks.

  Args:
    logits: multiclass logits float `[N, C]` with C >= 2 and `labels` int `[N]` (prediction =
      argmax), or multi-label logits float `[N, T]` (or binary `[N]` / `[N, 1]`) with `labels` in
      {0, 1} of the same shape (prediction = logit > 0).
    labels: see `logits`. Multi-label is chosen when `labels` has the shape of `logits`.
    mask: optional bool `[N]` (drops examples) or, for multi-label, `[N, T]` (drops entries).

  Returns:
    2 TP / (2 TP + FP + FN); 0 when that denominator is 0; NaN when nothing is kept.
  """
  logits, labels = np.asarray(logits), np.asarray(labels)
  multilabel = _is_binary_output(logits) or labels.shape == logits.shape
  if multilabel:
    predicted, true = _binary_predictions(logits, labels, mask)
    true_positives = np.sum(predicted & true)
    false_positives = np.sum(predicted & ~true)
    false_negatives = np.sum(~predicted & true)
  else:
    predicted, true = _multiclass_predictions(logits, labels, mask)
    # A wrong single-label prediction is one FP (for the predicted class) and one FN (for the true
    # class), so micro-F1 equals accuracy here.
    true_positives = np.sum(predicted == true)
    false_positives = false_negatives = np.sum(predicted != true)
  if predicted.size == 0:
    return float("nan")
  return _f1_from_counts(int(true_positives), int(false_positives), int(false_negatives))


# ------------------------------------------------------------------------------------------------
# Ranking metrics (host).
# ------------------------------------------------------------------------------------------------


def _kept_scores_and_labels(scores, labels, mask) -> tuple[np.ndarray, np.ndarray]:
  """Flattened kept scores float64 `[M]` and labels bool `[M]` for a binary ranking metric."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.ndim == 2 and scores.shape[1] == 1:
    scores = scores[:, 0]
  if scores.ndim != 1:
    raise ValueError(f"scores must have shape [N] or [N, 1], got {scores.shape}")
  labels = _match_shape(scores, labels, "labels")
  keep = _broadcast_mask(mask, scores.shape)
  scores, labels = scores[keep], labels[keep]
  _check_binary_labels(labels)
  _check_no_nan(scores)
  # float64 keeps equal scores equal and distinct ones distinct, so ties are those of the input.
  return scores.astype(np.float64), labels == 1


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks float64 `[M]` of `values` `[M]`; tied values share their mean rank."""
  order = np.argsort(values, kind="stable")
  sorted_values = values[order]
  starts_group = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
  group_starts = np.flatnonzero(starts_group)  # 0-based first position of each tie group
  group_ends = np.append(group_starts[1:], values.size)  # exclusive end
  # Ranks start+1 .. end (1-based) have mean (start + 1 + end) / 2.
  group_rank = (group_starts + 1 + group_ends) / 2.0
  ranks = np.empty(values.size, dtype=np.float64)
  ranks[order] = group_rank[np.cumsum(starts_group) - 1]
  return ranks


def roc_auc(scores, labels, mask=None) -> float:
  """Binary ROC-AUC, equal to `sklearn.metrics.roc_auc_score` (ties count one half).

  Computed as the Mann-Whitney U statistic with average ranks, O(N log N).

  Args:
    scores: float `[N]` or `[N, 1]`; higher means more likely positive (logits or probabilities).
    labels: {0, 1} `[N]` or `[N, 1]` (int, bool or float).
    mask: optional bool of the same shape (or `[N]`); False drops the entry.

  Returns:
    The probability that a random positive scores above a random negative (ties count 1/2).

  Raises:
    ValueError: when the kept labels are all of one class, labels are not in {0, 1}, or a kept
      score is NaN.
  """
  scores, positive = _kept_scores_and_labels(scores, labels, mask)
  num_positive = int(np.sum(positive))
  num_negative = positive.size - num_positive
  if num_positive == 0 or num_negative == 0:
    raise ValueError(
        f"ROC-AUC needs both classes; got {num_positive} positive and {num_negative} negative")
  rank_sum = np.sum(_average_ranks(scores)[positive])
  u_statistic = rank_sum - num_positive * (num_positive + 1) / 2.0
  return float(u_statistic / (num_positive * num_negative))


def average_precision(scores, labels, mask=None) -> float:
  """Average precision, equal to `sklearn.metrics.average_precision_score`.

  AP = sum_n (R_n - R_{n-1}) P_n over the distinct score values taken as thresholds in decreasing
  order (tied scores enter together), with R_0 = 0; no interpolation.

  Args:
    scores: float `[N]` or `[N, 1]`; higher means more likely positive.
    labels: {0, 1} `[N]` or `[N, 1]`.
    mask: optional bool of the same shape (or `[N]`); False drops the entry.

  Returns:
    AP in [0, 1].

  Raises:
    ValueError: when no kept label is positive (recall is undefined; scikit-learn warns and
      returns 0 instead), labels are not in {0, 1}, or a kept score is NaN.
  """
  scores, positive = _kept_scores_and_labels(scores, labels, mask)
  if not positive.any():
    raise ValueError(f"average precision needs a positive label; got none among {positive.size}")
  order = np.argsort(-scores, kind="stable")
  sorted_scores, sorted_positive = scores[order], positive[order]
  true_positives = np.cumsum(sorted_positive)
  # Count up to the last entry of each tie group: a threshold admits all tied scores at once.
  ends_group = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
  true_positives = true_positives[ends_group]
  predicted_positives = np.flatnonzero(ends_group) + 1
  precision = true_positives / predicted_positives
  recall = true_positives / true_positives[-1]
  recall_gain = np.diff(recall, prepend=0.0)
  return float(np.sum(recall_gain * precision))


class MultitaskScore(NamedTuple):
  """A mean over tasks and how many tasks it averages (tasks lacking a class are skipped)."""

  value: float
  num_tasks_evaluated: int


def _multitask_mean(metric: Callable[..., float], logits, labels, mask) -> MultitaskScore:
  """Applies a binary ranking `metric` per task on kept entries; skips one-class tasks."""
  logits = _as_column_matrix(np.asarray(logits), "logits")
  labels = _match_shape(logits, np.asarray(labels), "labels")
  mask = _broadcast_mask(mask, logits.shape)
  per_task = []
  for task in range(logits.shape[1]):
    keep = mask[:, task]
    task_labels = labels[keep, task]
    _check_binary_labels(task_labels, name=f"labels of task {task}")
    num_positive = int(np.sum(task_labels == 1))
    if num_positive == 0 or num_positive == task_labels.size:
      continue
    per_task.append(metric(logits[keep, task], task_labels))
  if not per_task:
    return MultitaskScore(float("nan"), 0)
  return MultitaskScore(float(np.mean(per_task)), len(per_task))


def multitask_roc_auc(logits, labels, mask=None) -> MultitaskScore:
  """Mean per-task ROC-AUC as in Hu et al. (2020) (`pretrain-gnns`, `chem/finetune.py`).

  For each task, only entries with mask True are used; a task with no positive or no negative
  among them is skipped; the result is the unweighted mean over the remaining tasks.

  Args:
    logits: float `[N, T]` (or `[N]` for one task).
    labels: {0, 1} of the same shape; anything (e.g. NaN) where the mask is False.
    mask: optional bool `[N, T]` (label present) or `[N]` (example kept for every task).

  Returns:
    `MultitaskScore(value, num_tasks_evaluated)`; value is NaN when no task is evaluated.
  """
  return _multitask_mean(roc_auc, logits, labels, mask)


def multitask_average_precision(logits, labels, mask=None) -> MultitaskScore:
  """Mean per-task average precision; same masking and skip rule as `multitask_roc_auc`."""
  return _multitask_mean(average_precision, logits, labels, mask)


# ------------------------------------------------------------------------------------------------
# Regression (host).
# ------------------------------------------------------------------------------------------------


def _kept_errors(predictions, targets, mask) -> np.ndarray:
  """Prediction minus target float64 `[M]` over kept entries."""
  predictions = np.asarray(predictions, dtype=np.float64)
  if predictions.ndim not in (1, 2):
    raise ValueError(f"predictions must have shape [N] or [N, T], got {predictions.shape}")
  targets = _match_shape(predictions, np.asarray(targets, dtype=np.float64), "targets")
  keep = _broadcast_mask(mask, predictions.shape)
  return predictions[keep] - targets[keep]


def mae(predictions, targets, mask=None) -> float:
  """Mean absolute error over all kept entries (pooled over tasks).

  Args:
    predictions: float `[N]` or `[N, T]`.
    targets: float of the same shape (a trailing unit axis may differ); anything where masked.
    mask: optional bool `[N, T]` (entry kept) or `[N]` (example kept for every task).

  Returns:
    The MAE; NaN when nothing is kept.
  """
  errors = _kept_errors(predictions, targets, mask)
  return float(np.mean(np.abs(errors))) if errors.size else float("nan")


def rmse(predictions, targets, mask=None) -> float:
  """Root mean squared error over all kept entries (pooled over tasks); arguments as `mae`."""
  errors = _kept_errors(predictions, targets, mask)
  return float(np.sqrt(np.mean(np.square(errors)))) if errors.size else float("nan")


# ------------------------------------------------------------------------------------------------
# Registry.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MetricSpec:
  """A named metric.

  Attributes:
    name: registry key.
    fn: `fn(predictions, labels, mask=None) -> float` on host (NumPy) arrays.
    higher_is_better: direction used by `is_better` (model selection, early stopping).
  """

  name: str
  fn: Callable[..., float]
  higher_is_better: bool


def _multitask_roc_auc_value(logits, labels, mask=None) -> float:
  return multitask_roc_auc(logits, labels, mask).value


def _multitask_average_precision_value(logits, labels, mask=None) -> float:
  return multitask_average_precision(logits, labels, mask).value


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("accuracy", accuracy, higher_is_better=True),
        MetricSpec("micro_f1", micro_f1, higher_is_better=True),
        MetricSpec("roc_auc", _multitask_roc_auc_value, higher_is_better=True),
        MetricSpec("ap", _multitask_average_precision_value, higher_is_better=True),
        MetricSpec("mae", mae, higher_is_better=False),
        MetricSpec("rmse", rmse, higher_is_better=False),
    )
}

_DEFAULT_METRIC = {
    MULTICLASS: "accuracy",
    BINARY: "accuracy",
    MULTITASK: "roc_auc",
    REGRESSION: "mae",
}


def get_metric(name: str) -> MetricSpec:
  """The registered metric `name`; raises ValueError listing the valid names."""
  try:
    return METRICS[name]
  except KeyError:
    raise ValueError(f"unknown metric {name!r}; valid names: {sorted(METRICS)}") from None


def default_metric(task_type: str) -> str:
  """Name of the metric a task type is reported with (e.g. 'multitask' -> 'roc_auc')."""
  try:
    return _DEFAULT_METRIC[task_type]
  except KeyError:
    raise ValueError(
        f"unknown task type {task_type!r}; valid types: {sorted(_DEFAULT_METRIC)}") from None


def is_better(name: str, a: float, b: float) -> bool:
  """Whether score `a` is strictly better than score `b` under metric `name`.

  NaN is worse than any number (so a NaN never replaces a best score, and any number replaces an
  initial NaN); two NaNs are not better than each other.
  """
  spec = get_metric(name)
  if math.isnan(a):
    return False
  if math.isnan(b):
    return True
  return a > b if spec.higher_is_better else a < b


# ------------------------------------------------------------------------------------------------
# Jittable (jax.numpy) metrics.
# ------------------------------------------------------------------------------------------------


def masked_accuracy(
    logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Counts of correct and counted examples, for summing over batches inside `jax.jit`.

  Args:
    logits: multiclass float `[N, C]` (C >= 2, prediction = argmax) or binary float `[N]` /
      `[N, 1]` (prediction = logit > 0).
    labels: multiclass int `[N]`; binary {0, 1} `[N]` / `[N, 1]` (int or float).
    mask: bool `[N]` (or `[N, 1]` for binary); False drops the example (padding, other splits).

  Returns:
    `(num_correct, num_counted)`: int32 scalars; accuracy = num_correct / num_counted.
  """
  mask = jnp.reshape(mask, (-1,)).astype(bool)
  if logits.ndim == 1 or logits.shape[-1] == 1:
    predicted = jnp.reshape(logits, (-1,)) > 0
    correct = predicted == (jnp.reshape(labels, (-1,)) == 1)
  else:
    correct = jnp.argmax(logits, axis=-1) == jnp.reshape(labels, (-1,))
  num_correct = jnp.sum(correct & mask, dtype=jnp.int32)
  return num_correct, jnp.sum(mask, dtype=jnp.int32)


def masked_mean(values: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean of `values` where `mask` is True; 0 (not NaN) when the mask is empty.

  Args:
    values: float `[N, ...]`. Masked-out entries are ignored in the forward pass; compute them so
      that they are finite, since a non-finite derivative there can still leak into gradients.
    mask: bool of `values`' shape, or of its leading axes (e.g. `[N]` for `[N, T]` values), in
      which case it applies to all trailing entries.

  Returns:
    A float scalar.
  """
  mask = jnp.reshape(mask, mask.shape + (1,) * (values.ndim - mask.ndim))
  mask = jnp.broadcast_to(mask, values.shape).astype(bool)
  total = jnp.sum(jnp.where(mask, values, 0))
  count = jnp.sum(mask)
  return total / jnp.maximum(count, 1).astype(total.dtype)


_TASK_METRICS = {
    MULTICLASS: ("accuracy",),
    BINARY: ("accuracy", "roc_auc"),
    MULTITASK: ("roc_auc", "ap"),
    REGRESSION: ("mae", "rmse"),
}


def metrics_for(task_type: str) -> list[str]:
  """The metrics reported for a task type; the first is the default selection metric."""
  try:
    return list(_TASK_METRICS[task_type])
  except KeyError:
    raise ValueError(f"unknown task type {task_type!r}; choose from {sorted(_TASK_METRICS)}"
                     ) from None


def evaluate_metric(name: str, predictions, labels, mask=None) -> float:
  """Computes metric `name` on host arrays (see METRICS)."""
  return float(get_metric(name).fn(predictions, labels, mask))
