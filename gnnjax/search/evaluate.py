"""Evaluation functions for `run_search`: a lookup into the task-model bank (tabular benchmark)
and real training with the population engine.

`BankLookup` is a TABULAR benchmark: a search over a task runs over the designs the bank already
holds for it (its `pool`; several hundred trained designs per task), and evaluating a design
reads its stored result instead of training it. Searchers must then be built with
`pool=lookup.pool`. This is how the search-efficiency study is meant to be run: it is cheap
(no training), so 10 runs x 30 trials x algorithms x priors x tasks take seconds, but every
algorithm is confined to the bank's designs (a random subset of the space), which narrows the
differences between a good and a bad search compared with the full space.

Values: per design, the mean over its seeds of the validation metric at the best validation
epoch (the objective the searcher sees) and of the test metric at that epoch (reported; the
paper's "test accuracy at the epoch with the best validation accuracy"). Banks trained with
GraphGym's split (80/20 train/val) have no test split; the report is then None and studies
fall back to the objective. With a HyperBand budget below the design's epochs, both come from
the stored learning curves, at the best validation evaluation among those within the budget
(evaluation at epoch e counts as e + 1 epochs trained).

`TrainingEvaluator` trains the designs asked for (a batch at once through
`gnnjax.design.engine.train_population`), optionally through a bank with `study.run_trials`, so
an interrupted search resumes without retraining.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Collection, Sequence

import numpy as np

from gnnjax import data as data_lib
from gnnjax import metrics as metrics_lib
from gnnjax.design.design import Design
from gnnjax.design.spaces import DesignSpace
from gnnjax.design.trial import OK, TrialKey, TrialResult
from gnnjax.search.base import CandidatePool, Evaluation
from gnnjax.tasks import prior as prior_lib
from gnnjax.tasks import similarity as similarity_lib


@dataclasses.dataclass
class _Entry:
  design: dict[str, Any]
  keys: list[TrialKey]
  value: float
  report: float | None
  by_seed: dict[int, float]  # objective of each training seed


def _mean_by_seed(trials: Sequence[TrialResult], metric: str) -> dict[int, float]:
  """{seed: mean best val metric of `trials` with that seed} (several designs of a pool
  entry, differing only outside the space, can share a seed)."""
  values: dict[int, list[float]] = {}
  for r in trials:
    values.setdefault(r.key.seed, []).append(float(r.best["val"][metric]))
  return {seed: float(np.mean(v)) for seed, v in values.items()}


class BankLookup:
  """Tabular evaluation of a task's designs stored in a bank.

  Args:
    bank: a `gnnjax.design.bank.Bank`.
    task: the task.
    space: the search space; trials outside it are not in the pool.
    metric: metric name (default: the task's, `prior.task_metric`).
    seeds: only trials of these training seeds (default: every seed).
    design_ids: only these designs (default: every design of the task).
    results: the task's ok trials, when the caller has queried them already (default: the
      bank is queried).

  Attributes:
    pool: the task's designs in the space (pass it to the searchers).
    metric, higher_is_better: the objective.
    has_report: whether the trials carry a test metric.
  """

  def __init__(self, bank, task: str, space: DesignSpace, metric: str | None = None,
               seeds: Collection[int] | None = None, design_ids: Collection[str] | None = None,
               results: Sequence[TrialResult] | None = None):
    if results is None:
      results = bank.query(task=task, status=OK)
    results = [r for r in results
               if (seeds is None or r.key.seed in seeds)
               and (design_ids is None or r.key.design_id in design_ids)]
    if not results:
      raise ValueError(f"the bank has no ok trial of task {task!r}"
                       + ("" if seeds is None and design_ids is None else
                          " among the seeds and designs asked for"))
    self.bank, self.task, self.space = bank, task, space
    self.metric = metric or prior_lib.task_metric(results)
    self.higher_is_better = metrics_lib.get_metric(self.metric).higher_is_better
    groups: dict[tuple, list[TrialResult]] = {}
    for r in results:
      vector = prior_lib.choice_vector(space, r.design)
      value = r.best.get("val", {}).get(self.metric)
      if vector is None or value is None or not math.isfinite(value):
        continue
      groups.setdefault(tuple(int(i) for i in vector), []).append(r)
    if not groups:
      raise ValueError(f"task {task!r} has no trial with best val_{self.metric} inside space "
                       f"{space.name!r}")
    self._entries: dict[tuple, _Entry] = {}
    for vector, trials in groups.items():
      reports = [r.best.get("test", {}).get(self.metric) for r in trials]
      reports = [x for x in reports if x is not None and math.isfinite(x)]
      self._entries[vector] = _Entry(
          design=trials[0].design, keys=[r.key for r in trials],
          value=float(np.mean([r.best["val"][self.metric] for r in trials])),
          report=float(np.mean(reports)) if reports else None,
          by_seed=_mean_by_seed(trials, self.metric))
    self.has_report = any(e.report is not None for e in self._entries.values())
    self.pool = CandidatePool(space, [e.design for e in self._entries.values()])
    self._curves: dict[str, dict[TrialKey, list[tuple[int, float]]]] | None = None

  def __len__(self) -> int:
    return len(self._entries)

  def values(self) -> np.ndarray:
    """Objective of every pool design (the table a search is sampling from)."""
    return np.array([e.value for e in self._entries.values()])

  def objectives(self) -> dict[tuple[int, ...], float]:
    """Objective of every pool design, keyed by its choice vector in the space."""
    return {vector: e.value for vector, e in self._entries.items()}

  def seed_agreement(self, min_shared: int = 10) -> tuple[float, int]:
    """How well one training seed's ranking of the pool predicts another's: the mean Kendall
    tau between two seeds' objectives over the designs trained with both, over every pair of
    seeds sharing at least `min_shared` designs, and the most designs a pair shares (tau NaN
    without such a pair). On GraphGym's split a seed also redraws the train/val split. A
    source task can hardly rank one seed's results better than a second seed of the task
    itself does, so this is the scale against which to read `efficiency.pool_agreement`."""
    seeds = sorted({s for e in self._entries.values() for s in e.by_seed})
    taus, most = [], 0
    for i, first in enumerate(seeds):
      for second in seeds[i + 1:]:
        both = [e.by_seed for e in self._entries.values()
                if first in e.by_seed and second in e.by_seed]
        most = max(most, len(both))
        if len(both) >= max(min_shared, 2):
          taus.append(similarity_lib.kendall_tau([v[first] for v in both],
                                                 [v[second] for v in both]))
    return (float(np.mean(taus)) if taus else math.nan), most

  def reports(self) -> np.ndarray:
    """Report metric of every pool design (objective where there is none)."""
    return np.array([e.value if e.report is None else e.report for e in self._entries.values()])

  def _entry(self, design: Design) -> _Entry:
    vector = prior_lib.choice_vector(self.space, design)
    entry = None if vector is None else self._entries.get(tuple(int(i) for i in vector))
    if entry is None:
      raise ValueError(f"design {design.summary()} is not in the bank's pool for task "
                       f"{self.task!r}; build the searcher with pool=lookup.pool")
    return entry

  def _load_curves(self) -> dict[str, dict[TrialKey, list[tuple[int, float]]]]:
    if self._curves is None:
      self._curves = {split: self.bank.curves(self.task, split, self.metric)
                      for split in ("val", "test")}
    return self._curves

  def _within_budget(self, entry: _Entry, budget_epochs: int) -> tuple[float, float | None]:
    curves = self._load_curves()
    sign = 1.0 if self.higher_is_better else -1.0
    values, reports = [], []
    for key in entry.keys:
      val = [(e, v) for e, v in curves["val"].get(key, []) if math.isfinite(v)]
      if not val:
        continue
      inside = [(e, v) for e, v in val if e + 1 <= budget_epochs] or val[:1]
      epoch, value = max(inside, key=lambda ev: (sign * ev[1], -ev[0]))
      values.append(value)
      test = dict(curves["test"].get(key, []))
      if epoch in test and math.isfinite(test[epoch]):
        reports.append(test[epoch])
    if not values:
      return math.nan, None
    return float(np.mean(values)), float(np.mean(reports)) if reports else None

  def __call__(self, design: Design, budget_epochs: int | None = None) -> Evaluation:
    entry = self._entry(design)
    epochs = int(entry.design.get("epochs", design.epochs))
    if budget_epochs is None or budget_epochs >= epochs:
      return Evaluation(entry.value, entry.report, {"lookup": "final"})
    value, report = self._within_budget(entry, budget_epochs)
    return Evaluation(value, report, {"lookup": f"{budget_epochs}/{epochs} epochs"})


class TrainingEvaluator:
  """Evaluates designs by training them (population engine), mean over seeds.

  Args:
    dataset: the task's GraphDataset (integer node features are one-hot encoded once, here).
    task_name: name for the bank and for trial keys.
    seeds: training seeds per design.
    bank: optional bank: trials go through `study.run_trials` (stored, and skipped when
      already stored), so a search can be resumed.
    eval_every: evaluate every k epochs.
    epochs_cap: train at most this many epochs (quick CPU runs; None: the design's / budget's).
    trainer: `trainer(designs, dataset, seeds, **kwargs)`; default engine.train_population.
    metric: objective metric (default: the task type's first, `metrics.metrics_for`).
    layout_cover: designs (e.g. the whole search space) every population program's layout
      holds, with chunks padded to powers of two (the engine's `layout_cover` and
      `size_buckets`): a search's rounds then reuse the same few programs instead of
      compiling new ones for every round's designs. The default engine trainer only.
    print_fn: where progress lines go (None: silent).
    **trainer_kwargs: passed on to the trainer (max_parallel, progress, ...).
  """

  def __init__(self, dataset, task_name: str, seeds: Sequence[int] = (1,), bank=None,
               eval_every: int = 20, epochs_cap: int | None = None,
               trainer: Callable | None = None, metric: str | None = None,
               layout_cover: Sequence[Design] | None = None, **trainer_kwargs: Any):
    # Encoded once here rather than by the engine on every batch of evaluations (and so that
    # a custom trainer gets float features too); a no-op for float features.
    self.dataset = data_lib.one_hot_node_features(dataset)
    self.task_name = task_name
    self.seeds = [int(s) for s in seeds]
    self.bank, self.eval_every, self.epochs_cap = bank, eval_every, epochs_cap
    self.trainer = trainer
    self.metric = metric or metrics_lib.metrics_for(dataset.task_type)[0]
    self.higher_is_better = metrics_lib.get_metric(self.metric).higher_is_better
    if layout_cover is not None:
      if trainer is not None:
        raise ValueError("layout_cover is an option of the engine's trainer, not of a custom "
                         "one")
      trainer_kwargs = {**trainer_kwargs, "layout_cover": tuple(layout_cover),
                        "size_buckets": True}
    self.trainer_kwargs = trainer_kwargs

  def trained_design(self, design: Design, budget_epochs: int | None) -> Design:
    epochs = design.epochs if budget_epochs is None else budget_epochs
    if self.epochs_cap is not None:
      epochs = min(epochs, self.epochs_cap)
    return design if epochs == design.epochs else design.replace(epochs=epochs)

  def _train(self, designs: list[Design]) -> dict[tuple[str, int], TrialResult]:
    if self.bank is not None:
      from gnnjax.design import study
      study.run_trials(self.bank, self.task_name, self.dataset, designs, self.seeds,
                       self.trainer, eval_every=self.eval_every, **self.trainer_kwargs)
      out = {}
      for d in designs:
        for s in self.seeds:
          result = self.bank.get(TrialKey(self.task_name, d.design_id, s))
          if result is not None:
            out[(d.design_id, s)] = result
      return out
    trainer = self.trainer
    if trainer is None:
      from gnnjax.design import engine
      trainer = engine.train_population
    unique = list({d.design_id: d for d in designs}.values())
    results = list(trainer(unique, self.dataset, self.seeds, eval_every=self.eval_every,
                           **self.trainer_kwargs))
    keys = [(d.design_id, s) for d in unique for s in self.seeds]
    return dict(zip(keys, results))

  def evaluate_batch(self, designs: Sequence[Design], budgets: Sequence[int | None]
                     ) -> list[Evaluation]:
    """Trains the designs (at their budgets) together; one Evaluation per design."""
    trained = [self.trained_design(d, b) for d, b in zip(designs, budgets)]
    results = self._train(trained)
    out = []
    for d in trained:
      values, reports, statuses = [], [], []
      for s in self.seeds:
        r = results.get((d.design_id, s))
        if r is None:
          statuses.append("missing")
          continue
        statuses.append(r.status)
        v = r.best.get("val", {}).get(self.metric) if r.status == OK else None
        values.append(math.nan if v is None else float(v))
        t = r.best.get("test", {}).get(self.metric) if r.status == OK else None
        if t is not None and math.isfinite(t):
          reports.append(float(t))
      finite = [v for v in values if math.isfinite(v)]
      value = float(np.mean(finite)) if finite else math.nan
      out.append(Evaluation(value, float(np.mean(reports)) if reports else None,
                            {"trained_epochs": d.epochs, "statuses": statuses,
                             "trained_design_id": d.design_id}))
    return out

  def __call__(self, design: Design, budget_epochs: int | None = None) -> Evaluation:
    return self.evaluate_batch([design], [budget_epochs])[0]
