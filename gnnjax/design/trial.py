"""A trial = one (task, design, seed) training run: what goes into the task-model bank.

The population engine produces `TrialResult`s; the bank stores them; analyses read them back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

OK = "ok"
DIVERGED = "diverged"
FAILED = "failed"
STATUSES = (OK, DIVERGED, FAILED)
# What a trial is scored by where no metric is named (design-space rank tables, anchor
# rankings, progress lines): the first of these its split reports. All are higher-is-better;
# they cover every classification task type (accuracy: GraphGym's; roc_auc: MoleculeNet's).
SCORE_METRICS = ("accuracy", "roc_auc", "ap", "micro_f1")


def score_metric(metrics: Mapping[str, float]) -> str | None:
  """The first of SCORE_METRICS among one split's `metrics` (name -> value), else None."""
  return next((name for name in SCORE_METRICS if name in metrics), None)


def score_of(metrics: Mapping[str, float], name: str | None = None) -> float | None:
  """metrics[name], or with `name` None the value of `score_metric(metrics)`; None where
  absent."""
  return metrics.get(name if name is not None else score_metric(metrics))


@dataclasses.dataclass(frozen=True)
class TrialKey:
  """Identifies a trial: the task name (e.g. 'smallworld/clustering/pagerank'), the design's
  stable id, and the seed."""

  task: str
  design_id: str
  seed: int


@dataclasses.dataclass
class TrialResult:
  """Outcome of one trial.

  Attributes:
    key: the trial's identity.
    design: the full design as a JSON-ready dict (`Design.to_dict()`, dim_inner resolved).
    num_params: trainable parameter count of the model actually trained.
    status: 'ok', 'diverged' (non-finite loss; `diverged_epoch` says when) or 'failed'
      (`message` says why).
    history: one dict per evaluation: {'epoch': e, 'train_loss': ..., 'train_accuracy': ...,
      'val_loss': ..., 'val_accuracy': ..., 'test_...': ...}.
    final: split -> metric -> value at the last evaluation (GraphGym reports the final epoch).
    best: the same at the best validation epoch.
    seconds: wall time attributed to this trial (a population's time divided by its size).
  """

  key: TrialKey
  design: dict[str, Any]
  num_params: int
  status: str = OK
  history: list[dict[str, float]] = dataclasses.field(default_factory=list)
  final: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
  best: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
  diverged_epoch: int | None = None
  message: str | None = None
  seconds: float = 0.0

  def __post_init__(self):
    if self.status not in STATUSES:
      raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
