"""The ask/tell interface of design search, the candidate pool, and the search driver.

    searcher = TPESearcher(space, prior=transfer.prior, seed=0)
    result = run_search(searcher, evaluate_fn, budget=30, batch_size=4)
    result.best_design, result.best_so_far          # [budget] best value after t trials

A searcher works on choice-index vectors ([W] ints, one per dimension of the `DesignSpace`,
`gnnjax.tasks.prior.choice_vector`) and hands out `Suggestion`s (a design and, for HyperBand,
an epoch budget). `ask(n)` may return fewer than n suggestions (HyperBand at the end of a rung,
evolution with its whole population in flight) but never zero while the search can go on;
`tell` takes the suggestions back with their values, larger is better (the driver negates
losses). Every searcher starts from a `Prior` (uniform when none is given) and consumes it as
AutoTransfer's tuners do (see each module). No searcher proposes the same design twice, except
HyperBand, which re-evaluates a design at a larger budget.

A `CandidatePool` restricts a search to a finite set of designs, e.g. the designs a bank
already holds for a task (the tabular benchmark, `gnnjax.search.evaluate.BankLookup`). Sampling
from a prior then samples from the prior conditioned on the pool (pool member i with
probability proportional to prod_w P_w(c_w(i)), without replacement); each searcher says how
its other moves map onto the pool.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from gnnjax.design.design import Design
from gnnjax.design.spaces import DesignSpace
from gnnjax.tasks.prior import Prior, choice_vector, design_from_vector

Vector = tuple  # choice indices, hashable

# After this many draws that only hit designs already proposed, sampling from a prior falls back
# to uniform draws (the prior's support is exhausted).
MAX_REJECTIONS = 200


class SearchExhausted(RuntimeError):
  """Every design of the space (or pool) has been proposed."""


class PendingResults(RuntimeError):
  """The searcher needs the values of its pending suggestions before it can suggest more
  (HyperBand between rungs)."""


@dataclasses.dataclass(frozen=True)
class Suggestion:
  """One evaluation asked for.

  Attributes:
    id: running number of the suggestion within its searcher.
    design: the design to evaluate.
    budget_epochs: epochs to train it for (HyperBand); None means the design's own epochs.
    vector: the design's choice indices.
    info: searcher-specific notes (e.g. HyperBand's bracket and rung, 'warmup').
  """

  id: int
  design: Design
  budget_epochs: int | None
  vector: Vector
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def epochs(self) -> int:
    return self.design.epochs if self.budget_epochs is None else self.budget_epochs


class CandidatePool:
  """A finite set of designs of a space that a search may propose (no other design).

  Attributes:
    space: the design space.
    vectors: [P, W] choice indices of the pool members.
  """

  def __init__(self, space: DesignSpace, designs: Iterable[Design | Mapping[str, Any]]):
    vectors = {}
    for design in designs:
      vector = choice_vector(space, design)
      if vector is None:
        raise ValueError(f"pool design {design} is not in space {space.name!r}")
      vectors[tuple(int(i) for i in vector)] = None
    if not vectors:
      raise ValueError("a candidate pool needs at least one design")
    self.space = space
    self.vectors = np.array(list(vectors), np.int64).reshape(len(vectors), len(space.dim_names))
    self._index = {v: i for i, v in enumerate(vectors)}

  def __len__(self) -> int:
    return self.vectors.shape[0]

  def __contains__(self, vector: Sequence[int]) -> bool:
    return tuple(int(i) for i in vector) in self._index

  def available(self, exclude: set[Vector]) -> np.ndarray:
    """Indices of members not in `exclude`."""
    return np.array([i for v, i in self._index.items() if v not in exclude], np.int64)

  def log_weights(self, probs: Sequence[np.ndarray], members: np.ndarray) -> np.ndarray:
    """sum_w log P_w(c_w(i)) for the given members ([M]); -inf outside the support."""
    with np.errstate(divide="ignore"):
      logs = [np.log(p)[self.vectors[members, w]] for w, p in enumerate(probs)]
    return np.sum(logs, axis=0) if logs else np.zeros(len(members))

  def sample(self, rng: np.random.Generator, probs: Sequence[np.ndarray], n: int,
             exclude: set[Vector]) -> list[Vector]:
    """Up to n distinct members outside `exclude`, drawn without replacement with probability
    proportional to prod_w probs[w][c_w]; when no remaining member has positive weight, the
    rest are drawn uniformly."""
    members = self.available(exclude)
    out: list[Vector] = []
    if members.size == 0 or n <= 0:
      return out
    weights = np.exp(self.log_weights(probs, members))
    positive = members[weights > 0]
    take = min(n, positive.size)
    if take:
      p = weights[weights > 0]
      chosen = rng.choice(positive, size=take, replace=False, p=p / p.sum())
      out.extend(tuple(int(i) for i in self.vectors[c]) for c in chosen)
    if len(out) < n:
      rest = np.setdiff1d(members, positive, assume_unique=True)
      more = min(n - len(out), rest.size)
      if more:
        chosen = rng.choice(rest, size=more, replace=False)
        out.extend(tuple(int(i) for i in self.vectors[c]) for c in chosen)
    return out


class Searcher(abc.ABC):
  """Base class: a search over a design space, optionally restricted to a candidate pool.

  Args:
    space: the design space.
    prior: the design prior (default uniform); must be over `space`.
    seed: seeds the searcher's NumPy Generator (same seed, same tells -> same suggestions).
    pool: restrict suggestions to these designs (tabular benchmark).
  """

  name = "base"

  def __init__(self, space: DesignSpace, prior: Prior | None = None, seed: int = 0,
               pool: CandidatePool | None = None):
    if prior is not None and prior.space.dims != space.dims:
      raise ValueError(f"the prior is over space {prior.space.name!r}, not {space.name!r}")
    if pool is not None and pool.space.dims != space.dims:
      raise ValueError(f"the pool is over space {pool.space.name!r}, not {space.name!r}")
    self.space = space
    self.prior = prior if prior is not None else Prior.uniform(space)
    self.uniform = Prior.uniform(space)
    self.pool = pool
    self.rng = np.random.default_rng(seed)
    self.proposed: set[Vector] = set()   # every design suggested so far
    self.history: list[tuple[Vector, float]] = []  # (vector, value) in tell order
    self._pending: dict[int, Suggestion] = {}
    self._next_id = 0

  # -- interface -------------------------------------------------------------------------------

  def ask(self, n: int = 1) -> list[Suggestion]:
    """Up to `n` suggestions (at least one unless the space is exhausted).

    Raises:
      SearchExhausted: nothing left to propose.
      PendingResults: nothing can be proposed before pending suggestions are told.
    """
    if n < 1:
      raise ValueError(f"ask(n) needs n >= 1, got {n}")
    suggestions = self._ask(n)
    if not suggestions and self._pending:
      raise PendingResults(f"{self.name}: nothing to suggest until the {len(self._pending)} "
                           "pending suggestion(s) are told")
    if not suggestions:
      raise SearchExhausted(f"{self.name}: nothing left to propose in space {self.space.name!r}"
                            + (f" (pool of {len(self.pool)})" if self.pool is not None else ""))
    for s in suggestions:
      self._pending[s.id] = s
    return suggestions

  def tell(self, suggestions: Sequence[Suggestion], values: Sequence[float]) -> None:
    """Results of earlier suggestions (larger is better; NaN counts as the worst value)."""
    if len(suggestions) != len(values):
      raise ValueError(f"tell: {len(suggestions)} suggestions but {len(values)} values")
    for s, v in zip(suggestions, values):
      if s.id not in self._pending:
        raise ValueError(f"tell: suggestion {s.id} was not asked for, or was told already")
      del self._pending[s.id]
      value = -math.inf if v is None or math.isnan(float(v)) else float(v)
      self.history.append((s.vector, value))
      self._tell(s, value)

  @property
  def pending(self) -> list[Suggestion]:
    return list(self._pending.values())

  @abc.abstractmethod
  def _ask(self, n: int) -> list[Suggestion]:
    ...

  def _tell(self, suggestion: Suggestion, value: float) -> None:
    """Hook for searchers that keep their own state."""

  # -- helpers ---------------------------------------------------------------------------------

  def _suggest(self, vector: Sequence[int], budget_epochs: int | None = None,
               **info: Any) -> Suggestion:
    vector = tuple(int(i) for i in vector)
    self.proposed.add(vector)
    suggestion = Suggestion(self._next_id, design_from_vector(self.space, vector), budget_epochs,
                            vector, info)
    self._next_id += 1
    return suggestion

  def _exhausted(self) -> bool:
    total = len(self.pool) if self.pool is not None else self.space.size
    return len(self.proposed) >= total

  def _draw(self, n: int, probs: Sequence[np.ndarray] | None = None) -> list[Vector]:
    """Up to n new (never proposed) vectors from the product distribution `probs` (default:
    the prior); conditioned on the pool when there is one. When the distribution's support is
    used up, the remaining draws are uniform."""
    probs = list(probs) if probs is not None else self.prior.vectors()
    if self.pool is not None:
      return self.pool.sample(self.rng, probs, n, self.proposed)
    out: list[Vector] = []
    taken = set(self.proposed)
    rejections = 0
    while len(out) < n and len(taken) < self.space.size:
      use = probs if rejections < MAX_REJECTIONS else self.uniform.vectors()
      vector = tuple(int(self.rng.choice(p.size, p=p)) for p in use)
      if vector in taken:
        rejections += 1
        continue
      taken.add(vector)
      out.append(vector)
    return out

  def best(self) -> tuple[Design, float] | None:
    """The best design told so far and its value."""
    if not self.history:
      return None
    vector, value = max(self.history, key=lambda h: h[1])
    return design_from_vector(self.space, vector), value


# ----------------------------------------------------------------------------------------------
# Driver.


@dataclasses.dataclass
class Evaluation:
  """What an evaluation function may return instead of a bare float.

  Attributes:
    value: the objective the searcher sees (validation metric).
    report: the metric reported in studies (e.g. test metric at the best validation epoch).
    info: anything else (seconds, status) kept in the trial record.
  """

  value: float
  report: float | None = None
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrialRecord:
  """One evaluation of a search."""

  trial: int
  design: Design
  budget_epochs: int
  value: float
  report: float | None
  info: dict[str, Any]


@dataclasses.dataclass
class SearchResult:
  """A finished search.

  Attributes:
    trials: every evaluation in order.
    best_so_far: [T] best objective value after t = 1..T trials (in the driver's direction).
    report_best_so_far: [T] best reported value after t trials (the paper's curves: the best
      test accuracy among the first t trials).
    report_at_best: [T] the reported value of the trial with the best objective so far.
    epochs_so_far: [T] training epochs spent after t trials.
    higher_is_better: the objective's direction.
  """

  searcher: str
  trials: list[TrialRecord]
  best_so_far: np.ndarray
  report_best_so_far: np.ndarray
  report_at_best: np.ndarray
  epochs_so_far: np.ndarray
  higher_is_better: bool = True
  seconds: float = 0.0

  @property
  def best_trial(self) -> TrialRecord:
    sign = 1.0 if self.higher_is_better else -1.0
    values = [sign * t.value if math.isfinite(t.value) else -math.inf for t in self.trials]
    return self.trials[int(np.argmax(values))]

  @property
  def best_design(self) -> Design:
    return self.best_trial.design

  def to_dict(self) -> dict[str, Any]:
    def clean(x):
      return None if x is None or not math.isfinite(x) else float(x)
    best = self.best_trial
    return {"searcher": self.searcher, "higher_is_better": self.higher_is_better,
            "seconds": self.seconds,
            "best": {"trial": best.trial, "value": clean(best.value),
                     "report": clean(best.report), "budget_epochs": best.budget_epochs,
                     "design_id": best.design.design_id, "design": best.design.to_dict()},
            "best_so_far": [clean(v) for v in self.best_so_far],
            "report_best_so_far": [clean(v) for v in self.report_best_so_far],
            "report_at_best": [clean(v) for v in self.report_at_best],
            "epochs_so_far": self.epochs_so_far.tolist(),
            "trials": [{"trial": t.trial, "design_id": t.design.design_id,
                        "design": t.design.to_dict(), "budget_epochs": t.budget_epochs,
                        "value": clean(t.value), "report": clean(t.report), "info": t.info}
                       for t in self.trials]}


EvaluateFn = Callable[[Design, int], "float | Evaluation"]
BatchEvaluateFn = Callable[[Sequence[Design], Sequence[int]], Sequence["float | Evaluation"]]


def _as_evaluation(value: Any) -> Evaluation:
  if isinstance(value, Evaluation):
    return value
  return Evaluation(value=float(value))


class _Track:
  """The trials of one search and its best-so-far curves, as `run_searches` records them."""

  def __init__(self, searcher: Searcher, higher_is_better: bool):
    self.searcher = searcher
    self.sign = 1.0 if higher_is_better else -1.0
    self.higher_is_better = higher_is_better
    self.trials: list[TrialRecord] = []
    self.best, self.best_report, self.at_best, self.epochs = [], [], [], []
    self.current, self.current_report, self.current_at_best = -math.inf, -math.inf, math.nan
    self.spent = 0
    self.done = False
    self.seconds = 0.0

  def record(self, suggestion: Suggestion, evaluation: Evaluation, budget: int) -> TrialRecord:
    record = TrialRecord(len(self.trials) + 1, suggestion.design, budget,
                         float(evaluation.value),
                         None if evaluation.report is None else float(evaluation.report),
                         {**dict(suggestion.info), **dict(evaluation.info)})
    self.trials.append(record)
    score = self.sign * record.value if math.isfinite(record.value) else -math.inf
    if score > self.current:
      self.current = score
      self.current_at_best = math.nan if record.report is None else record.report
    if record.report is not None and math.isfinite(record.report):
      self.current_report = max(self.current_report, self.sign * record.report)
    self.spent += budget
    finite = lambda v: self.sign * v if math.isfinite(v) else math.nan
    self.best.append(finite(self.current))
    self.best_report.append(finite(self.current_report))
    self.at_best.append(self.current_at_best)
    self.epochs.append(self.spent)
    return record

  def result(self) -> SearchResult:
    return SearchResult(searcher=self.searcher.name, trials=self.trials,
                        best_so_far=np.array(self.best),
                        report_best_so_far=np.array(self.best_report),
                        report_at_best=np.array(self.at_best),
                        epochs_so_far=np.array(self.epochs),
                        higher_is_better=self.higher_is_better, seconds=self.seconds)


def run_search(searcher: Searcher, evaluate_fn: EvaluateFn | None, budget: int, *,
               batch_size: int = 1, evaluate_batch: BatchEvaluateFn | None = None,
               higher_is_better: bool = True,
               progress: Callable[[TrialRecord, float], None] | None = None) -> SearchResult:
  """Runs `budget` evaluations of a searcher's suggestions.

  Args:
    searcher: the search algorithm.
    evaluate_fn: evaluate_fn(design, budget_epochs) -> validation metric (or `Evaluation`);
      budget_epochs is the suggestion's (HyperBand) or the design's epochs.
    budget: number of evaluations (trials).
    batch_size: suggestions asked for at once (evaluated together by `evaluate_batch`).
    evaluate_batch: evaluate_batch(designs, budgets) -> one result per design; used instead of
      evaluate_fn when given (e.g. the population engine trains the batch as one program).
    higher_is_better: the objective's direction (searchers maximise; losses are negated).
    progress: called as progress(record, best_so_far) after every trial.

  Returns:
    A SearchResult with `budget` trials (fewer if the space ran out).
  """
  on_trial = None if progress is None else (lambda _, record, best: progress(record, best))
  return run_searches([searcher], evaluate_fn, budget, batch_size=batch_size,
                      evaluate_batch=evaluate_batch, higher_is_better=higher_is_better,
                      progress=on_trial)[0]


def run_searches(searchers: Sequence[Searcher], evaluate_fn: EvaluateFn | None, budget: int,
                 *, batch_size: int = 1, evaluate_batch: BatchEvaluateFn | None = None,
                 higher_is_better: bool = True,
                 progress: Callable[[int, TrialRecord, float], None] | None = None
                 ) -> list[SearchResult]:
  """Independent searches run in lock step: each round, every search not yet done asks for up
  to `batch_size` suggestions, and the round's suggestions of all of them are evaluated by
  ONE `evaluate_batch` call, so real training trains them as one population (e.g. the 10 runs
  x 2 priors of a search-efficiency study: 20 designs per engine call instead of 20 calls).
  A search's trials, curves and result are those `run_search` gives it alone, provided an
  evaluation depends only on its (design, budget) (a table, a seeded training).

  Args:
    searchers: the searches (each its own state; none is shared).
    evaluate_fn, budget, batch_size, evaluate_batch, higher_is_better: as `run_search`, per
      search.
    progress: called as progress(search index, record, best_so_far) after every trial.

  Returns:
    One SearchResult per searcher, in order (`seconds`: the wall time until it was done,
    shared rounds included).
  """
  if budget < 1:
    raise ValueError(f"budget must be >= 1, got {budget}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if evaluate_fn is None and evaluate_batch is None:
    raise ValueError("give evaluate_fn or evaluate_batch")
  tracks = [_Track(searcher, higher_is_better) for searcher in searchers]
  started = time.perf_counter()
  while True:
    asked = []  # (track index, suggestions) of this round
    for index, track in enumerate(tracks):
      if track.done:
        continue
      left = budget - len(track.trials)
      try:
        suggestions = track.searcher.ask(min(batch_size, left))[:left]
      except SearchExhausted:
        track.done, track.seconds = True, time.perf_counter() - started
        continue
      asked.append((index, suggestions))
    if not asked:
      break
    suggestions = [s for _, batch in asked for s in batch]
    designs = [s.design for s in suggestions]
    budgets = [s.epochs() for s in suggestions]
    if evaluate_batch is not None:
      raw = list(evaluate_batch(designs, budgets))
      if len(raw) != len(designs):
        raise ValueError(f"evaluate_batch returned {len(raw)} results for {len(designs)} "
                         "designs")
    else:
      raw = [evaluate_fn(d, b) for d, b in zip(designs, budgets)]
    evaluations = iter([_as_evaluation(r) for r in raw])
    for index, batch in asked:
      track = tracks[index]
      results = [next(evaluations) for _ in batch]
      track.searcher.tell(batch, [track.sign * e.value for e in results])
      for suggestion, evaluation in zip(batch, results):
        record = track.record(suggestion, evaluation, suggestion.epochs())
        if progress is not None:
          progress(index, record, track.sign * track.current)
      if len(track.trials) >= budget:
        track.done, track.seconds = True, time.perf_counter() - started
  return [track.result() for track in tracks]
