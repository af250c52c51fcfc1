"""The search-efficiency study of AutoTransfer (Fig. 3, Tables 1 and 4), leave-one-task-out over
the bank's tasks.

For each held-out task h: the bank without h supplies the design distributions, the distances
from h to the other tasks select and weight them (`prior.transfer_prior`), and every search
algorithm runs `runs` times for `trials` trials with the uniform and with the transferred
prior. The curve of a run is the best reported metric among its first t trials (the paper's:
"at trial t, the best test accuracy among all models searched from trial 1 to trial t"; the
validation objective when the bank has no test split), also kept: the objective's best so far
and the report of the best-objective trial.

Evaluation defaults to a TABULAR BENCHMARK (`evaluate.BankLookup`): the candidates of a search
on h are h's designs in the bank, and a trial is a lookup of the stored result, so the whole
study needs no training. Runs r of the two priors share the seed (common random numbers).
`make_evaluator` swaps in real training (`evaluate.TrainingEvaluator`, no pool); an
algorithm's priors x runs searches then advance in lock step (`base.run_searches`), so each
round's suggestions train as one population.

Summary (`summary_rows`): per task, algorithm and prior, mean +- std over runs at t = 1, 3, 5,
10, 30, and the first t at which the mean curve reaches plain TPE's mean at the last trial
(the paper's Table 4: "trials needed to surpass TPE's 30-trial result"), and when it comes
within one standard error of it (a near-miss diagnostic).

Ceilings: `self_transfer` (a task's prior from its own other seeds: the best source a bank
could hold) and `in_sample_transfer` (from its own top-K over the searched pool: the most a
top-K prior can do there).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np

from gnnjax import files
from gnnjax.design.spaces import DesignSpace
from gnnjax.design.trial import OK
from gnnjax.search import make_searcher
from gnnjax.search.base import run_searches
from gnnjax.search.evaluate import BankLookup
from gnnjax.tasks import prior as prior_lib
from gnnjax.tasks import similarity as similarity_lib

PRIORS = ("uniform", "transferred")
REPORT_TRIALS = (1, 3, 5, 10, 30)
TARGET_TRIALS = 5  # the issue's target: plain TPE's 30-trial result within this many trials


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Settings of the search-efficiency study.

  Attributes:
    algorithms: search algorithms (names in `gnnjax.search.ALGORITHMS`).
    priors: 'uniform' and/or 'transferred'.
    runs: independent runs per (task, algorithm, prior).
    trials: trials per run.
    top_k: K of the bank design distributions.
    min_source_designs: smallest pool (designs with a result in the space) a bank task needs to
      be a prior source (`prior.split_by_pool`).
    full_coverage_sources: keep only prior sources whose pools tried every choice of every
      dimension (`prior.split_by_coverage`); off: such sources are used and named.
    nearest: k nearest tasks (rule of the released code; also the threshold's fallback).
    d_thres: the paper's distance threshold (None: the k nearest).
    smoothing: mix this much uniform into the transferred prior (0: as the paper).
    batch_size: suggestions per ask.
    seed: base seed; run r uses seed + r.
    searcher_kwargs: algorithm -> extra constructor arguments.
  """

  algorithms: tuple[str, ...] = ("random", "evolution", "tpe", "hyperband")
  priors: tuple[str, ...] = PRIORS
  runs: int = 10
  trials: int = 30
  top_k: int = prior_lib.DEFAULT_TOP_K
  min_source_designs: int = 1
  full_coverage_sources: bool = False
  nearest: int = prior_lib.DEFAULT_NEAREST
  d_thres: float | None = None
  smoothing: float = 0.0
  batch_size: int = 1
  seed: int = 0
  searcher_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    unknown = [p for p in self.priors if p not in PRIORS]
    if unknown:
      raise ValueError(f"unknown prior(s) {unknown}; choose from {list(PRIORS)}")
    if self.runs < 1 or self.trials < 1:
      raise ValueError(f"runs and trials must be >= 1, got {self.runs}, {self.trials}")


@dataclasses.dataclass
class EfficiencyResult:
  """Curves of the study.

  Attributes:
    tasks: held-out tasks.
    curves: name -> [tasks, algorithms, priors, runs, trials] array: 'report' (best report so
      far; the paper's curves), 'objective' (best objective so far), 'report_at_best', and
      'epochs' (training epochs spent so far: HyperBand's trials are cheaper).
    higher_is_better: per task.
    pool: per task {'size', 'best_report', 'best_objective', 'has_test'} (tabular mode).
    transfers: per task, the near tasks and their weights/distances.
  """

  config: StudyConfig
  tasks: list[str]
  curves: dict[str, np.ndarray]
  higher_is_better: list[bool]
  pool: list[dict[str, Any]]
  transfers: list[dict[str, Any]]
  seconds: float = 0.0

  def mean_curve(self, task: int, algorithm: str, prior: str, name: str = "report"
                 ) -> np.ndarray:
    a = self.config.algorithms.index(algorithm)
    p = self.config.priors.index(prior)
    return np.nanmean(self.curves[name][task, a, p], axis=0)

  def to_dict(self) -> dict[str, Any]:
    def clean(array):
      return np.where(np.isfinite(array), array, np.nan).tolist()
    return {"config": {**dataclasses.asdict(self.config),
                       "searcher_kwargs": {k: dict(v) for k, v in
                                           self.config.searcher_kwargs.items()}},
            "tasks": self.tasks, "higher_is_better": self.higher_is_better,
            "pool": self.pool, "transfers": self.transfers, "seconds": self.seconds,
            "curves": {name: clean(c) for name, c in self.curves.items()},
            "summary": summary_rows(self)}


Distances = Callable[[str], Mapping[str, float]] | Mapping[str, Mapping[str, float]]
# make_evaluator(task) -> (evaluate_fn, evaluate_batch or None, pool or None, higher_is_better)
EvaluatorFactory = Callable[[str], tuple[Any, Any, Any, bool]]


def _lookup(bank, task: str, space: DesignSpace, cache: dict[str, BankLookup]) -> BankLookup:
  if task not in cache:
    cache[task] = BankLookup(bank, task, space)
  return cache[task]


def _finite_or_none(value: float) -> float | None:
  return float(value) if math.isfinite(value) else None


def prior_agreement(transfer: Mapping[str, Any]) -> float | None:
  """The transfer weights' mean of `pool_agreement` over the prior's source tasks that share
  designs with the held-out task (None if none does)."""
  pairs = [(w, tau) for w, tau in zip(transfer["weights"], transfer.get("pool_tau", []))
           if tau is not None]
  if not pairs or sum(w for w, _ in pairs) <= 0:
    return None
  return float(sum(w * tau for w, tau in pairs) / sum(w for w, _ in pairs))


def _distances_for(distances: Distances, task: str) -> dict[str, float]:
  values = distances(task) if callable(distances) else distances[task]
  return {t: float(d) for t, d in values.items() if t != task}


def _empty_curves(num_tasks: int, config: StudyConfig) -> dict[str, np.ndarray]:
  """NaN [tasks, algorithms, priors, runs, trials] arrays, one per `EfficiencyResult` curve."""
  shape = (num_tasks, len(config.algorithms), len(config.priors), config.runs, config.trials)
  return {name: np.full(shape, np.nan)
          for name in ("report", "objective", "report_at_best", "epochs")}


def _pool_summary(lookup: BankLookup, seeds_of: BankLookup | None = None) -> dict[str, Any]:
  """What `EfficiencyResult.pool` records of a held-out task's tabular pool; the seed agreement
  is `seeds_of`'s where the pool itself scores fewer seeds (default: the pool's own)."""
  values, reports = lookup.values(), lookup.reports()
  best = np.max if lookup.higher_is_better else np.min
  seed_tau, seed_shared = (seeds_of or lookup).seed_agreement()
  return {"size": len(lookup), "has_test": lookup.has_report,
          "seed_tau": _finite_or_none(seed_tau), "seed_shared": seed_shared,
          "best_objective": float(best(values)), "best_report": float(best(reports)),
          "median_report": float(np.median(reports))}


def _reporting_rounds(evaluate_batch, algorithm: str, rounds: int,
                      say: Callable[[str], None]):
  """`evaluate_batch` that says which round of `rounds` it evaluated, how many suggestions
  (and distinct designs: the runs' suggestions often coincide) and in how long, so a long
  real-training study shows where it is (and where a resumed one picks up). `rounds` counts
  full batches; a searcher that suggests fewer makes more rounds, which say so ("round 31 (30
  expected)") instead of a count past its total."""
  done = 0

  def evaluate(designs, budgets):
    nonlocal done
    started = time.perf_counter()
    evaluations = evaluate_batch(designs, budgets)
    done += 1
    distinct = len({(d.design_id, b) for d, b in zip(designs, budgets)})
    label = f"{done}/{rounds}" if done <= rounds else f"{done} ({rounds} expected)"
    say(f"    {algorithm} round {label}: {len(designs)} suggestions, {distinct} "
        f"distinct, {time.perf_counter() - started:.1f} s")
    return evaluations

  return evaluate


def _search_task(curves: dict[str, np.ndarray], ti: int, config: StudyConfig,
                 space: DesignSpace, transferred: prior_lib.Prior, evaluate_fn, evaluate_batch,
                 pool, higher_is_better: bool, say: Callable[[str], None]) -> None:
  """Every (algorithm, prior, run) search of held-out task `ti`, into `curves[...][ti]`.

  An algorithm's priors x runs searches run in lock step (`run_searches`): with real training
  (`evaluate_batch`) each round's suggestions of all of them train as one population; a
  table gives each search what it would give it alone."""
  for ai, algorithm in enumerate(config.algorithms):
    kwargs = dict(config.searcher_kwargs.get(algorithm, {}))
    searches = [(pi, run) for pi in range(len(config.priors)) for run in range(config.runs)]
    searchers = [make_searcher(algorithm, space,
                               transferred if config.priors[pi] == "transferred" else None,
                               seed=config.seed + run, pool=pool, **kwargs)
                 for pi, run in searches]
    reporting = None if evaluate_batch is None else _reporting_rounds(
        evaluate_batch, algorithm, math.ceil(config.trials / config.batch_size), say)
    results = run_searches(searchers, evaluate_fn, config.trials, batch_size=config.batch_size,
                           evaluate_batch=reporting, higher_is_better=higher_is_better)
    for (pi, run), result in zip(searches, results):
      n = len(result.trials)
      report = np.where(np.isnan(result.report_best_so_far), result.best_so_far,
                        result.report_best_so_far)
      at_best = np.where(np.isnan(result.report_at_best), result.best_so_far,
                         result.report_at_best)
      curves["report"][ti, ai, pi, run, :n] = report
      curves["objective"][ti, ai, pi, run, :n] = result.best_so_far
      curves["report_at_best"][ti, ai, pi, run, :n] = at_best
      curves["epochs"][ti, ai, pi, run, :n] = result.epochs_so_far
    for pi, prior_kind in enumerate(config.priors):
      mean = np.nanmean(curves["report"][ti, ai, pi], axis=0)
      say(f"    {algorithm:>9} {prior_kind:>11}: best after "
          + ", ".join(f"t={t}: {mean[t - 1]:.4f}" for t in REPORT_TRIALS
                      if t <= config.trials))


def search_efficiency(bank, space: DesignSpace, tasks: Sequence[str], distances: Distances,
                      config: StudyConfig = StudyConfig(),
                      make_evaluator: EvaluatorFactory | None = None,
                      bank_tasks: Sequence[str] | None = None,
                      print_fn: Callable[[str], None] | None = print,
                      distributions: Mapping[str, prior_lib.Prior] | None = None
                      ) -> EfficiencyResult:
  """Runs the leave-one-task-out study.

  Args:
    bank: the task-model bank.
    space: the search space (AutoTransfer's).
    tasks: the held-out tasks to search on.
    distances: held-out task -> {bank task: distance}, as a mapping or a function; entries for
      the held-out task itself are dropped (leakage).
    config: study settings.
    make_evaluator: per task, (evaluate_fn, evaluate_batch, pool, higher_is_better); default:
      the tabular `BankLookup` over the task's designs in the bank.
    bank_tasks: tasks whose distributions may be transferred (default: every bank task).
    print_fn: progress lines (None: silent).
    distributions: the bank tasks' design distributions at `config.top_k`, when the caller has
      them already (`prior.bank_distributions`; default: read from the bank for `bank_tasks`).
  """
  started = time.time()
  say = print_fn or (lambda _: None)
  distributions, thin = prior_lib.split_by_pool(
      distributions if distributions is not None
      else prior_lib.bank_distributions(bank, space, bank_tasks, config.top_k),
      config.min_source_designs)
  if thin:
    say(f"not prior sources (fewer than {config.min_source_designs} designs): "
        + ", ".join(thin))
  distributions, note = prior_lib.select_by_coverage(distributions,
                                                     config.full_coverage_sources)
  if note:
    say(note)
  curves = _empty_curves(len(tasks), config)
  higher, pools, transfers = [], [], []
  lookups: dict[str, BankLookup] = {}
  for ti, task in enumerate(tasks):
    if make_evaluator is None:
      lookup = _lookup(bank, task, space, lookups)
      evaluate_fn, evaluate_batch, pool = lookup, None, lookup.pool
      higher_is_better = lookup.higher_is_better
      pools.append(_pool_summary(lookup))
    else:
      evaluate_fn, evaluate_batch, pool, higher_is_better = make_evaluator(task)
      pools.append({})
    higher.append(bool(higher_is_better))
    others = {t: p for t, p in distributions.items() if t != task}
    transfer = prior_lib.transfer_prior(others, _distances_for(distances, task),
                                        config.d_thres, config.nearest)
    transferred = transfer.prior.smoothed(config.smoothing) if config.smoothing else transfer.prior
    agreement = {}
    if make_evaluator is None:  # the oracle needs the held-out task's table
      for source in transfer.weights:
        agreement[source] = pool_agreement(lookup, _lookup(bank, source, space, lookups))
    transfers.append({"tasks": list(transfer.weights), "weights": list(transfer.weights.values()),
                      "distances": list(transfer.distances.values()), "rule": transfer.rule,
                      "fallback": transfer.fallback,
                      "pool_tau": [_finite_or_none(agreement.get(t, (math.nan, 0))[0])
                                   for t in transfer.weights],
                      "pool_shared": [agreement.get(t, (math.nan, 0))[1]
                                      for t in transfer.weights]})
    seeds = (f" (seed tau {pools[-1]['seed_tau']:+.2f} over {pools[-1]['seed_shared']} designs)"
             if pools[-1].get("seed_tau") is not None else "")
    say(f"[{ti + 1}/{len(tasks)}] {task}: pool {pools[-1].get('size', '-')}{seeds}, prior from "
        + ", ".join(f"{t} (w={w:.2f}" + (f", pool tau {agreement[t][0]:+.2f} over "
                                          f"{agreement[t][1]} shared" if t in agreement else "")
                    + ")" for t, w in transfer.weights.items()))
    _search_task(curves, ti, config, space, transferred, evaluate_fn, evaluate_batch, pool,
                 higher_is_better, say)
  return EfficiencyResult(config=config, tasks=list(tasks), curves=curves,
                          higher_is_better=higher, pool=pools, transfers=transfers,
                          seconds=time.time() - started)


@dataclasses.dataclass
class _Ceiling:
  """One held-out task of a ceiling study: its pool, the prior taken whole from one source."""
  lookup: BankLookup
  prior: prior_lib.Prior
  source: str
  pool_summary: dict[str, Any]
  pool_tau: float | None
  shared: int
  message: str


def _ceiling_study(tasks: Sequence[str], config: StudyConfig, rule: str,
                   ceiling_of: Callable[[str], _Ceiling],
                   print_fn: Callable[[str], None] | None) -> EfficiencyResult:
  """Runs every search of `tasks` with the prior `ceiling_of(task)` gives (the ceilings
  below); `rule` names how the prior was taken in `transfers`."""
  started = time.time()
  say = print_fn or (lambda _: None)
  curves = _empty_curves(len(tasks), config)
  higher, pools, transfers = [], [], []
  for ti, task in enumerate(tasks):
    c = ceiling_of(task)
    pools.append(c.pool_summary)
    higher.append(bool(c.lookup.higher_is_better))
    transfers.append({"tasks": [c.source], "weights": [1.0], "distances": [0.0], "rule": rule,
                      "fallback": False, "pool_tau": [c.pool_tau], "pool_shared": [c.shared]})
    say(f"[{ti + 1}/{len(tasks)}] {task}: {c.message}")
    prior = c.prior.smoothed(config.smoothing) if config.smoothing else c.prior
    _search_task(curves, ti, config, c.lookup.space, prior, c.lookup, None, c.lookup.pool,
                 c.lookup.higher_is_better, say)
  return EfficiencyResult(config=config, tasks=list(tasks), curves=curves,
                          higher_is_better=higher, pool=pools, transfers=transfers,
                          seconds=time.time() - started)


def self_transfer(bank, space: DesignSpace, tasks: Sequence[str],
                  config: StudyConfig = StudyConfig(), held_seeds: Collection[int] = (1,),
                  print_fn: Callable[[str], None] | None = print) -> EfficiencyResult:
  """The study with the best source any bank could hold: each task's own other seeds.

  Task t's pool is its designs trained with both a seed in `held_seeds` and another seed,
  scored on the `held_seeds` only; the transferred prior is t's design distribution over its
  other seeds' results on the same designs (top-K of their mean). A perfect task embedding
  next to a bank task that ranks designs exactly as t does up to training noise gives no
  better source, so what TPE with this prior needs to reach uniform TPE's result bounds what a
  prior transferred from other tasks can do on this pool. The result has the shape of
  `search_efficiency`'s; `transfers[i]["tasks"]` names the source as '<task> seeds <list>'.

  Raises:
    ValueError: a task without a design trained with a held seed and another seed.
  """
  held = {int(s) for s in held_seeds}

  def ceiling_of(task: str) -> _Ceiling:
    results = bank.query(task=task, status=OK)
    seeds_of: dict[str, set[int]] = {}
    for r in results:
      seeds_of.setdefault(r.key.design_id, set()).add(r.key.seed)
    both = {d for d, seeds in seeds_of.items() if seeds & held and seeds - held}
    if not both:
      raise ValueError(f"task {task!r} has no design trained with one of the seeds "
                       f"{sorted(held)} and another seed")
    lookup = BankLookup(bank, task, space, seeds=held, design_ids=both, results=results)
    others = [r for r in results if r.key.design_id in both and r.key.seed not in held]
    source = f"{task} seeds {','.join(map(str, sorted({r.key.seed for r in others})))}"
    # The pool scores the held seeds; the seed agreement is over every seed of its designs.
    summary = _pool_summary(lookup, seeds_of=BankLookup(bank, task, space, design_ids=both,
                                                         results=results))
    return _Ceiling(lookup, prior_lib.task_distribution(others, space, config.top_k,
                                                         lookup.metric),
                    source, summary, None, len(both),
                    f"pool {len(lookup)} (seeds {sorted(held)}), prior from {source}")

  return _ceiling_study(tasks, config, "self", ceiling_of, print_fn)


def in_sample_transfer(bank, space: DesignSpace, tasks: Sequence[str],
                       config: StudyConfig = StudyConfig(),
                       print_fn: Callable[[str], None] | None = print,
                       distributions: Mapping[str, prior_lib.Prior] | None = None
                       ) -> EfficiencyResult:
  """The study with each task's prior built from the very results its searches read: its own
  top-K design distribution over its pool (validation-ranked, as every prior is).

  Not a method (it reads the held-out task's answers): the ceiling of a top-K per-dimension
  prior on that pool. A transferred prior is a mix of other tasks' such distributions, so
  where even the task's own falls short of a target, no source can reach it with that K;
  where it reaches the target and a transferred prior does not, the sources are what is
  missing. `distributions`: the tasks' own distributions at `config.top_k`, when the caller has
  them (default: computed from the bank). The result has the shape of `search_efficiency`'s;
  `transfers[i]["tasks"]` names the source as '<task> (in sample)'.
  """
  def ceiling_of(task: str) -> _Ceiling:
    if distributions is not None and task in distributions:
      lookup, prior = BankLookup(bank, task, space), distributions[task]
    else:  # one query serves the pool and the prior
      results = bank.query(task=task, status=OK)
      lookup = BankLookup(bank, task, space, results=results)
      prior = prior_lib.task_distribution(results, space, config.top_k, lookup.metric)
    return _Ceiling(lookup, prior, f"{task} (in sample)", _pool_summary(lookup), 1.0,
                    len(lookup), f"pool {len(lookup)}, prior from its own top {config.top_k}")

  return _ceiling_study(tasks, config, "in_sample", ceiling_of, print_fn)


def pinned_distances(path: str | os.PathLike, kind: str, tasks: Sequence[str],
                     compute: Callable[[str], Mapping[str, float]],
                     print_fn: Callable[[str], None] | None = print
                     ) -> dict[str, dict[str, float]]:
  """Each held-out task's distances to the bank tasks: read from the JSON file at `path`
  where an earlier run stored them for distance `kind`, else `compute(task)`, added to it.

  A study with real training resumes by replaying its seeded searches against the results
  stored so far, which takes the same prior, hence the same distances. The learned
  embedding's are not reproducible between runs on a GPU (g's training gathers task
  embeddings by triplet index, and the gather's gradient is an unordered scatter-add; on one
  H200, three runs put Cora's prior on CiteSeer at weights 0.52, 0.46 and 0.28) nor between
  platforms, so a study keeps the first run's. File: {kind: {held-out task: {bank task:
  distance}}}; delete it (or a task's entry) to compute them again, e.g. after the bank has
  grown.

  Raises:
    ValueError: a file that is not such a mapping (it is left as it is).
  """
  say = print_fn or (lambda _: None)
  path = os.fspath(path)
  stored: dict[str, Any] = {}
  if os.path.exists(path):
    with open(path) as f:
      try:
        stored = json.load(f)
      except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error}); delete it to compute the distances "
                         "again") from error
    if not _is_distance_file(stored):
      raise ValueError(f"{path}: expected {{distance kind: {{held-out task: {{bank task: "
                       "distance}}}}}}; delete it to compute the distances again")
  pinned = stored.setdefault(kind, {})
  computed = False
  for task in tasks:
    if task in pinned:
      say(f"{task}: {kind} distances read from {path} (an earlier run's: its searches replay)")
    else:
      pinned[task] = {t: float(d) for t, d in compute(task).items()}
      computed = True
  if computed:
    files.write_json_atomic(path, stored, indent=1, sort_keys=True)
  return {task: dict(pinned[task]) for task in tasks}


def _is_distance_file(stored: Any) -> bool:
  """Whether `stored` is {kind: {held-out task: {bank task: number}}}."""
  def is_map(value, check_value):
    return isinstance(value, dict) and all(check_value(v) for v in value.values())

  is_row = lambda row: is_map(row, lambda d: isinstance(d, (int, float)))
  return is_map(stored, lambda by_task: is_map(by_task, is_row))


def pool_agreement(a: BankLookup, b: BankLookup, min_shared: int = 10) -> tuple[float, int]:
  """Kendall tau between two tasks' objectives over the designs both pools hold, and how many
  they share (tau NaN below `min_shared`). An oracle of what a prior transferred from `b` can
  know about `a`: with the same designs drawn for every task (`experiments.design_space
  --plan=random`), tau near 0 means b's best designs are no better than any on a."""
  mine, theirs = a.objectives(), b.objectives()
  shared = sorted(set(mine) & set(theirs))
  if len(shared) < max(min_shared, 2):
    return math.nan, len(shared)
  sign = 1.0 if a.higher_is_better == b.higher_is_better else -1.0
  tau = similarity_lib.kendall_tau([mine[v] for v in shared], [theirs[v] for v in shared])
  return sign * tau, len(shared)


def pool_distances(bank, space: DesignSpace, new_task: str, bank_tasks: Sequence[str],
                   min_shared: int = 10) -> dict[str, float]:
  """{bank task: 1 - pool_agreement with new_task} over the bank tasks sharing at least
  `min_shared` designs with it (a task with no ok trial in `space` shares none). An ORACLE
  distance: it reads the new task's own results, so a study run with it shows the best a task
  embedding could do with this bank (which sources a perfect embedding would pick), not a
  method to deploy."""
  target = BankLookup(bank, new_task, space)
  out = {}
  for task in bank_tasks:
    if task == new_task:
      continue
    try:
      source = BankLookup(bank, task, space)
    except ValueError:  # no ok trial of the task inside the space
      continue
    tau, _ = pool_agreement(target, source, min_shared)
    if math.isfinite(tau):
      out[task] = 1.0 - tau
  if not out:
    raise ValueError(f"no bank task shares at least {min_shared} designs with {new_task!r} in "
                     f"space {space.name!r}: the pool distance compares tasks design by design, "
                     "so their pools must come from one design list (experiments.design_space "
                     "--plan=random draws the same designs for every task)")
  return out


def trials_to_reach(curve: np.ndarray, target: float, higher_is_better: bool) -> int | None:
  """First t (1-based) with curve[t-1] at least as good as target; None if never."""
  reached = curve >= target if higher_is_better else curve <= target
  hits = np.flatnonzero(reached)
  return int(hits[0]) + 1 if hits.size else None


def summary_rows(result: EfficiencyResult, name: str = "report",
                 reference: tuple[str, str] = ("tpe", "uniform")) -> list[dict[str, Any]]:
  """One row per (task, algorithm, prior): mean/std at REPORT_TRIALS, trials to reach the
  reference's (plain TPE's) mean at the last trial (`trials_to_reference`, the paper's Table 4
  count), and, as a diagnostic of how far a miss is, trials to come within one standard error
  of that mean (`trials_to_reference_se`: its std over runs / sqrt(runs); two means closer than
  that are not told apart by this many runs; equal to the strict count where every reference
  run ends on the same value, e.g. the pool's best)."""
  config = result.config
  rows = []
  for ti, task in enumerate(result.tasks):
    target = target_se = None
    if reference[0] in config.algorithms and reference[1] in config.priors:
      # The target is the reference's mean curve itself, summed as every mean curve is, so
      # the reference reaches its own result at its last trial to the last bit.
      target = float(result.mean_curve(ti, *reference, name=name)[-1])
      last = result.curves[name][ti, config.algorithms.index(reference[0]),
                                 config.priors.index(reference[1]), :, -1]
      last = last[np.isfinite(last)]
      if not math.isfinite(target) or not last.size:
        target = None
      else:
        se = float(np.std(last)) / math.sqrt(last.size)
        target_se = target - se if result.higher_is_better[ti] else target + se
    for ai, algorithm in enumerate(config.algorithms):
      for pi, prior in enumerate(config.priors):
        runs = result.curves[name][ti, ai, pi]
        mean, std = np.nanmean(runs, axis=0), np.nanstd(runs, axis=0)
        row = {"task": task, "algorithm": algorithm, "prior": prior}
        for t in REPORT_TRIALS:
          if t <= config.trials:
            row[f"t{t}"] = float(mean[t - 1])
            row[f"t{t}_std"] = float(std[t - 1])
        row["trials_to_reference"] = (None if target is None
                                      else trials_to_reach(mean, target,
                                                           result.higher_is_better[ti]))
        row["trials_to_reference_se"] = (None if target_se is None
                                         else trials_to_reach(mean, target_se,
                                                              result.higher_is_better[ti]))
        rows.append(row)
  return rows


def format_table(result: EfficiencyResult, name: str = "report") -> str:
  """A text table of `summary_rows`."""
  rows = summary_rows(result, name)
  ts = [t for t in REPORT_TRIALS if t <= result.config.trials]
  label = f"to TPE@{result.config.trials}"
  header = (f"{'task':<34} {'algorithm':>9} {'prior':>11} "
            + " ".join(f"{'t=' + str(t):>15}" for t in ts) + f" {label:>9} {'-1 SE':>6}")
  lines = [header, "-" * len(header)]
  for row in rows:
    cells = " ".join(f"{row[f't{t}']:>7.4f}+-{row[f't{t}_std']:<6.4f}" for t in ts)
    reach, reach_se = row["trials_to_reference"], row["trials_to_reference_se"]
    lines.append(f"{row['task'][-34:]:<34} {row['algorithm']:>9} {row['prior']:>11} {cells} "
                 f"{'-' if reach is None else reach:>9} {'-' if reach_se is None else reach_se:>6}")
  lines += ["", f"{label}: first trial whose mean reaches plain TPE's mean after "
            f"{result.config.trials} trials ('-': never); -1 SE: within one standard error of "
            "that mean (a diagnostic of near misses)."]
  tpe_rows = [row for row in rows if row["algorithm"] == "tpe" and row["prior"] == "transferred"]
  if tpe_rows:
    def within_target(key):
      return sum(1 for row in tpe_rows if row[key] is not None and row[key] <= TARGET_TRIALS)
    lines.append(f"TPE with the transferred prior within {TARGET_TRIALS} trials: "
                 f"{within_target('trials_to_reference')} of {len(tpe_rows)} tasks "
                 f"(within one SE: {within_target('trials_to_reference_se')}).")
  agreements = [(task, prior_agreement(transfer), pool.get("seed_tau"))
                for task, transfer, pool in zip(result.tasks, result.transfers, result.pool)]
  if any(tau is not None for _, *taus in agreements for tau in taus):
    lines += ["", "Kendall tau. pool: the held-out task's results against its prior's source "
              "tasks' over the designs both hold", "  (transfer-weighted mean); seeds: one "
              "training seed's results against another's on the held-out task itself",
              "  (mean over seed pairs; '-': one seed)",
              f"  {'task':<34} {'pool':>6} {'seeds':>6}"]
    lines += [f"  {task[-34:]:<34} " + " ".join(f"{'-' if tau is None else f'{tau:+.3f}':>6}"
                                                for tau in taus)
              for task, *taus in agreements]
  return "\n".join(lines)


def plot_curves(result: EfficiencyResult, path: str, name: str = "report") -> str:
  """Best-so-far curves (mean over runs, shaded +- std/sqrt(runs)), one panel per task; colour
  = algorithm, solid = transferred prior, dashed = uniform. Writes a PNG; returns the path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  config = result.config
  cols = min(3, len(result.tasks))
  rows = math.ceil(len(result.tasks) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  t = np.arange(1, config.trials + 1)
  for ti, task in enumerate(result.tasks):
    ax = axes[ti // cols][ti % cols]
    for ai, algorithm in enumerate(config.algorithms):
      for pi, prior in enumerate(config.priors):
        runs = result.curves[name][ti, ai, pi]
        mean = np.nanmean(runs, axis=0)
        sem = np.nanstd(runs, axis=0) / math.sqrt(runs.shape[0])
        style = "-" if prior == "transferred" else "--"
        ax.plot(t, mean, style, color=colors[ai % len(colors)], lw=1.4,
                label=f"{algorithm} ({prior})")
        ax.fill_between(t, mean - sem, mean + sem, color=colors[ai % len(colors)], alpha=0.12)
    ax.set_title(task, fontsize=9)
    ax.set_xlabel("trial")
    ax.set_ylabel("best so far")
    ax.grid(alpha=0.3)
  for k in range(len(result.tasks), rows * cols):
    axes[k // cols][k % cols].axis("off")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=130)
  plt.close(fig)
  return path


def save(result: EfficiencyResult, out_dir: str) -> list[str]:
  """Writes search_efficiency.json, search_efficiency.txt (table) and search_efficiency.png."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  path = os.path.join(out_dir, "search_efficiency.json")
  with open(path, "w") as f:
    json.dump(result.to_dict(), f, indent=1)
    f.write("\n")
  paths.append(path)
  path = os.path.join(out_dir, "search_efficiency.txt")
  with open(path, "w") as f:
    f.write(format_table(result) + "\n")
  paths.append(path)
  paths.append(plot_curves(result, os.path.join(out_dir, "search_efficiency.png")))
  return paths
