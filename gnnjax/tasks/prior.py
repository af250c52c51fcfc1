"""Design distributions and the transferred design prior of AutoTransfer (Cao et al. 2023, sec.
4.4 and Eq. 3).

A `Prior` is, for each dimension of a `DesignSpace`, a probability vector over that dimension's
choices; designs are drawn dimension by dimension independently (the product of the marginals,
as the paper's P(C|T) = prod_w P(c_w|T) and the reference code's tuners do).

* A bank task's design distribution (`task_distribution`): per dimension, the frequency of each
  choice among the task's top-K designs (K = 16) in the bank, ranked by the task's validation
  metric. Designs are scored by their mean over seeds of the metric at the best validation
  epoch (`which='best'`; 'final' = last evaluation); failed and diverged trials and trials
  outside the space (e.g. the anchors' lr 0.01 / 400 epochs) are left out.
* The transferred prior of a new task (`transfer_prior`): inverse-distance weighting of the
  distributions of near bank tasks,

      P_t(c_w) = sum_{i in S} P(c_w | T_i) / d_i  /  sum_{i in S} 1 / d_i,

  with S either {i : d_i <= d_thres} (the paper; it never gives a value for d_thres) or the k
  nearest tasks (the released code: k = 3, no threshold). With a threshold that selects no task
  the k nearest are used instead (the result says so). A task at distance 0 (d_i <= 1e-12)
  takes all the weight (the limit of 1/d; several such tasks share it equally). Mixing is per
  dimension, as the code does; the paper's Eq. 3 mixes the joint products, which has the same
  marginals. Choices absent from every selected top-K get probability 0 (the code drops them
  from the search space); `Prior.smoothed(eps)` mixes in the uniform prior if that is unwanted.

Distances come in as a mapping bank task -> distance (e.g. d_e = 1 - z_e(new) . z_e(i) from
`gnnjax.tasks.embedding`), so this module does not depend on how they were computed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from gnnjax import metrics as metrics_lib
from gnnjax.design.design import Design
from gnnjax.design.spaces import DesignSpace
from gnnjax.design.trial import OK, SCORE_METRICS, TrialResult

DEFAULT_TOP_K = 16
DEFAULT_NEAREST = 3
# Metrics looked for (in this order) when a task's validation metric is not named: the
# analyses' order (trial.SCORE_METRICS), then the regression metrics the searchers also take.
_METRIC_PREFERENCE = SCORE_METRICS + ("mae", "rmse")
_ZERO_DISTANCE = 1e-12
_SUM_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------------------------
# Choices of a design.


def choice_index(space: DesignSpace, dim: str, values: Mapping[str, Any]) -> int | None:
  """Index of the choice of dimension `dim` that the design `values` (field -> value) takes,
  or None when it takes none of them. Only the dimension's own fields are compared, so a
  design trained with a resolved dim_inner still matches a budget-matched space."""
  for i, choice in enumerate(space.dims[dim]):
    fields = choice if isinstance(choice, Mapping) else {dim: choice}
    if all(field in values and values[field] == value for field, value in fields.items()):
      return i
  return None


def choice_vector(space: DesignSpace, design: Design | Mapping[str, Any]) -> np.ndarray | None:
  """[W] choice indices of a design (dimension order of the space), or None if some dimension's
  value is not among its choices."""
  values = design.to_dict() if isinstance(design, Design) else dict(design)
  out = []
  for dim in space.dim_names:
    index = choice_index(space, dim, values)
    if index is None:
      return None
    out.append(index)
  return np.array(out, np.int64)


def design_from_vector(space: DesignSpace, vector: Sequence[int]) -> Design:
  """The design of the space whose choice indices are `vector` ([W])."""
  index = 0
  for dim, digit in zip(space.dim_names, vector):
    radix = len(space.dims[dim])
    digit = int(digit)
    if not 0 <= digit < radix:
      raise ValueError(f"choice index {digit} out of range for dimension {dim!r} "
                       f"({radix} choices)")
    index = index * radix + digit
  return space.design_at(index)


# ----------------------------------------------------------------------------------------------
# The prior.


def _label(choice: Any) -> Any:
  """JSON form of a choice (values as they are; joint choices as dicts)."""
  return dict(choice) if isinstance(choice, Mapping) else choice


class Prior:
  """Per dimension of a space, a probability vector over its choices.

  Attributes:
    space: the design space.
    probs: dimension -> float64 [num choices], non-negative, summing to 1.
    info: free-form provenance (tasks and weights of a transferred prior, K, metric); JSON-able.
  """

  def __init__(self, space: DesignSpace, probs: Mapping[str, Sequence[float]],
               info: Mapping[str, Any] | None = None):
    missing = [d for d in space.dim_names if d not in probs]
    unknown = [d for d in probs if d not in space.dims]
    if missing or unknown:
      raise ValueError(f"a prior needs one probability vector per dimension of space "
                       f"{space.name!r} {list(space.dim_names)}; missing {missing}, unknown "
                       f"{unknown}")
    self.space = space
    self.probs: dict[str, np.ndarray] = {}
    for dim in space.dim_names:
      p = np.asarray(probs[dim], np.float64)
      size = len(space.dims[dim])
      if p.shape != (size,):
        raise ValueError(f"dimension {dim!r}: expected {size} probabilities (one per choice "
                         f"{list(space.dims[dim])}), got shape {p.shape}")
      if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"dimension {dim!r}: probabilities must be finite and >= 0, got {p}")
      total = p.sum()
      if abs(total - 1.0) > _SUM_TOLERANCE:
        raise ValueError(f"dimension {dim!r}: probabilities sum to {total}, not 1")
      self.probs[dim] = p / total
    self.info = dict(info or {})

  # -- constructors ----------------------------------------------------------------------------

  @classmethod
  def uniform(cls, space: DesignSpace) -> "Prior":
    """Every choice of every dimension equally likely (plain search)."""
    return cls(space, {d: np.full(len(c), 1.0 / len(c)) for d, c in space.dims.items()},
               {"kind": "uniform"})

  @classmethod
  def from_counts(cls, space: DesignSpace, counts: Mapping[str, Sequence[float]],
                  info: Mapping[str, Any] | None = None) -> "Prior":
    """Normalised counts per dimension (every dimension needs a positive total)."""
    probs = {}
    for dim in space.dim_names:
      c = np.asarray(counts[dim], np.float64)
      if c.sum() <= 0:
        raise ValueError(f"dimension {dim!r}: counts {c} have no positive total")
      probs[dim] = c / c.sum()
    return cls(space, probs, info)

  @classmethod
  def from_designs(cls, space: DesignSpace, designs: Sequence[Design | Mapping[str, Any]],
                   info: Mapping[str, Any] | None = None) -> "Prior":
    """Per-dimension choice frequencies among `designs` (all must lie in the space)."""
    if not designs:
      raise ValueError("cannot build a design distribution from no designs")
    counts = {d: np.zeros(len(c)) for d, c in space.dims.items()}
    for design in designs:
      vector = choice_vector(space, design)
      if vector is None:
        raise ValueError(f"design {design} is not in space {space.name!r}")
      for dim, index in zip(space.dim_names, vector):
        counts[dim][index] += 1
    return cls.from_counts(space, counts, info)

  # -- views -----------------------------------------------------------------------------------

  @property
  def dim_names(self) -> tuple[str, ...]:
    return self.space.dim_names

  def vectors(self) -> list[np.ndarray]:
    """The probability vectors in the space's dimension order."""
    return [self.probs[d] for d in self.dim_names]

  def log_prob(self, design: Design | Mapping[str, Any]) -> float:
    """log P(design) under the product of marginals (-inf outside the support)."""
    vector = choice_vector(self.space, design)
    if vector is None:
      raise ValueError(f"design {design} is not in space {self.space.name!r}")
    with np.errstate(divide="ignore"):
      return float(sum(np.log(self.probs[d][i]) for d, i in zip(self.dim_names, vector)))

  def support_size(self) -> int:
    """Number of designs with non-zero probability."""
    return math.prod(int(np.count_nonzero(p)) for p in self.vectors())

  def entropy(self) -> float:
    """Entropy (nats) of the product distribution: the sum of the marginals' entropies."""
    total = 0.0
    for p in self.vectors():
      q = p[p > 0]
      total -= float(np.sum(q * np.log(q)))
    return total

  def smoothed(self, epsilon: float) -> "Prior":
    """(1 - epsilon) * self + epsilon * uniform, per dimension (every choice stays possible)."""
    if not 0.0 <= epsilon <= 1.0:
      raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    probs = {d: (1 - epsilon) * p + epsilon / p.size for d, p in self.probs.items()}
    return Prior(self.space, probs, {**self.info, "smoothing": epsilon})

  # -- sampling --------------------------------------------------------------------------------

  def sample_vectors(self, rng: np.random.Generator | int, n: int) -> np.ndarray:
    """[n, W] choice indices, each dimension drawn independently from its vector (with
    replacement: the same design can come twice)."""
    if n < 0:
      raise ValueError(f"n must be >= 0, got {n}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    columns = [rng.choice(p.size, size=n, p=p) for p in self.vectors()]
    return np.stack(columns, axis=1).astype(np.int64) if columns else np.zeros((n, 0), np.int64)

  def sample(self, rng: np.random.Generator | int, n: int) -> list[Design]:
    """`n` designs drawn from the prior (with replacement)."""
    return [design_from_vector(self.space, v) for v in self.sample_vectors(rng, n)]

  # -- serialisation ---------------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return {"space": self.space.name,
            "dims": {d: {"choices": [_label(c) for c in self.space.dims[d]],
                         "probs": self.probs[d].tolist()} for d in self.dim_names},
            "info": self.info}

  def to_json(self, indent: int | None = 1) -> str:
    return json.dumps(self.to_dict(), indent=indent)

  @classmethod
  def from_dict(cls, space: DesignSpace, record: Mapping[str, Any]) -> "Prior":
    """Reads `to_dict`'s output back for `space`; the stored choices must equal the space's.

    Raises:
      ValueError: another space's prior (different dimensions or choices).
    """
    dims = record.get("dims")
    if not isinstance(dims, Mapping):
      raise ValueError("a prior record needs 'dims': {dimension: {'choices': [...], "
                       "'probs': [...]}}")
    if list(dims) != list(space.dim_names):
      raise ValueError(f"prior dimensions {list(dims)} do not match space {space.name!r} "
                       f"{list(space.dim_names)}")
    for dim, entry in dims.items():
      stored = [_label(c) for c in entry["choices"]]
      expected = [_label(c) for c in space.dims[dim]]
      if stored != expected:
        raise ValueError(f"dimension {dim!r}: prior choices {stored} differ from the space's "
                         f"{expected}")
    return cls(space, {d: e["probs"] for d, e in dims.items()}, record.get("info"))

  @classmethod
  def from_json(cls, space: DesignSpace, text: str) -> "Prior":
    return cls.from_dict(space, json.loads(text))

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      f.write(self.to_json())
      f.write("\n")

  def summary(self, top: int = 3) -> str:
    """One line per dimension with its `top` most likely choices."""
    lines = []
    for dim in self.dim_names:
      p = self.probs[dim]
      order = np.argsort(-p, kind="stable")[:top]
      parts = [f"{_short(self.space.dims[dim][i])}={p[i]:.2f}" for i in order if p[i] > 0]
      lines.append(f"  {dim:>15}: " + ", ".join(parts))
    return "\n".join(lines)

  def __repr__(self) -> str:
    return (f"Prior({self.space.name!r}, support {self.support_size()} of {self.space.size}, "
            f"entropy {self.entropy():.2f})")


def _short(choice: Any) -> str:
  if isinstance(choice, Mapping):
    return "/".join(str(v) for v in choice.values())
  return str(choice)


def mix(priors: Sequence[Prior], weights: Sequence[float],
        info: Mapping[str, Any] | None = None) -> Prior:
  """sum_i w_i P_i / sum_i w_i, per dimension (all priors over the same space)."""
  if not priors or len(priors) != len(weights):
    raise ValueError(f"need as many weights as priors (>= 1), got {len(priors)} priors and "
                     f"{len(weights)} weights")
  w = np.asarray(weights, np.float64)
  if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
    raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w}")
  space = priors[0].space
  for p in priors[1:]:
    if p.space.dims != space.dims:
      raise ValueError(f"cannot mix priors over different spaces ({space.name!r}, "
                       f"{p.space.name!r})")
  w = w / w.sum()
  probs = {d: sum(wi * p.probs[d] for wi, p in zip(w, priors)) for d in space.dim_names}
  return Prior(space, probs, info)


# ----------------------------------------------------------------------------------------------
# Design distributions of bank tasks.


def task_metric(results: Sequence[TrialResult], split: str = "val") -> str:
  """The metric a task's trials report on `split`, by preference accuracy, roc_auc, ap,
  micro_f1, mae, rmse.

  Raises:
    ValueError: no trial reports any of them.
  """
  seen: set[str] = set()
  for r in results:
    seen.update(r.best.get(split, {}))
    seen.update(r.final.get(split, {}))
  for name in _METRIC_PREFERENCE:
    if name in seen:
      return name
  raise ValueError(f"no known {split} metric among the trials (found {sorted(seen)}); "
                   f"expected one of {list(_METRIC_PREFERENCE)}")


@dataclasses.dataclass
class ScoredDesign:
  """A design of a task with its score (mean over seeds) and the seeds behind it."""

  design: dict[str, Any]
  vector: np.ndarray
  score: float
  seeds: int


def score_designs(results: Sequence[TrialResult], space: DesignSpace, metric: str,
                  split: str = "val", which: str = "best") -> tuple[list[ScoredDesign], int]:
  """Per design (by design_id) of the space, the mean over its ok seeds of
  `which`[split][metric]; returns (scored designs, number of trials left out: not ok, metric
  missing or outside the space)."""
  if which not in ("best", "final"):
    raise ValueError(f"which must be 'best' or 'final', got {which!r}")
  by_id: dict[str, list] = {}
  skipped = 0
  for r in results:
    value = getattr(r, which).get(split, {}).get(metric)
    vector = choice_vector(space, r.design)
    if r.status != OK or value is None or not math.isfinite(value) or vector is None:
      skipped += 1
      continue
    by_id.setdefault(r.key.design_id, [r.design, vector, []])[2].append(float(value))
  scored = [ScoredDesign(design, vector, float(np.mean(values)), len(values))
            for design, vector, values in by_id.values()]
  return scored, skipped


def top_k(scored: Sequence[ScoredDesign], k: int, higher_is_better: bool) -> list[ScoredDesign]:
  """The k best scored designs (ties broken by design JSON, so the choice is deterministic)."""
  if k < 1:
    raise ValueError(f"K must be >= 1, got {k}")
  sign = -1.0 if higher_is_better else 1.0
  ordered = sorted(scored, key=lambda s: (sign * s.score, json.dumps(s.design, sort_keys=True)))
  return ordered[:k]


def task_distribution(results: Sequence[TrialResult], space: DesignSpace,
                      k: int = DEFAULT_TOP_K, metric: str | None = None, split: str = "val",
                      which: str = "best") -> Prior:
  """A task's design distribution: per-dimension choice frequencies over its top-K designs.

  Args:
    results: the task's trials (e.g. `bank.query(task=...)`).
    space: the design space (trials outside it are ignored).
    k: K (paper: 16); fewer designs than K use all of them.
    metric: validation metric name (default: `task_metric`); its direction comes from
      `gnnjax.metrics`.
    split: split the designs are ranked on (the tuner's objective: 'val').
    which: 'best' (at the best validation epoch) or 'final' (last evaluation).

  Raises:
    ValueError: no usable trial.
  """
  metric = metric or task_metric(results, split)
  higher = metrics_lib.get_metric(metric).higher_is_better
  scored, skipped = score_designs(results, space, metric, split, which)
  if not scored:
    raise ValueError(f"no ok trial with {which} {split}_{metric} inside space {space.name!r} "
                     f"({skipped} trials left out)")
  best = top_k(scored, k, higher)
  counts = {d: np.zeros(len(c)) for d, c in space.dims.items()}
  for s in best:
    for dim, index in zip(space.dim_names, s.vector):
      counts[dim][index] += 1
  # A choice the pool never tried gets no top-K mass whatever its merit: the distribution says
  # nothing about it (`split_by_coverage`).
  vectors = np.array([s.vector for s in scored])
  tried = {d: np.bincount(vectors[:, j], minlength=len(space.dims[d]))
           for j, d in enumerate(space.dim_names)}
  untried = {d: [_short(space.dims[d][i]) for i in np.flatnonzero(n == 0)]
             for d, n in tried.items() if (n == 0).any()}
  info = {"kind": "task", "k": k, "designs_used": len(best), "designs_scored": len(scored),
          "trials_left_out": skipped, "metric": f"{which}_{split}_{metric}",
          "top_score": best[0].score, "kth_score": best[-1].score, "untried_choices": untried}
  return Prior.from_counts(space, counts, info)


def bank_distributions(bank, space: DesignSpace, tasks: Sequence[str] | None = None,
                       k: int = DEFAULT_TOP_K, metric: str | None = None,
                       which: str = "best", min_designs: int = 1) -> dict[str, Prior]:
  """task -> design distribution for the bank's tasks (default: all) that have at least
  `min_designs` usable designs in the space; tasks with fewer are left out."""
  out = {}
  for task in (tasks if tasks is not None else bank.tasks()):
    results = bank.query(task=task, status=OK)
    try:
      prior = task_distribution(results, space, k, metric, "val", which)
    except ValueError:
      continue
    prior.info["task"] = task
    out[task] = prior
  return split_by_pool(out, min_designs)[0]


def split_by_pool(distributions: Mapping[str, Prior], min_designs: int
                  ) -> tuple[dict[str, Prior], list[str]]:
  """(the distributions drawn from at least `min_designs` scored designs, the sorted names of
  the others): a top-K distribution of a pool not much larger than K is mostly the pool itself,
  whatever the task prefers, so such tasks are poor prior sources."""
  kept = {t: p for t, p in distributions.items() if p.info["designs_scored"] >= min_designs}
  return kept, sorted(set(distributions) - set(kept))


def split_by_coverage(distributions: Mapping[str, Prior]
                      ) -> tuple[dict[str, Prior], dict[str, dict[str, list[str]]]]:
  """(the distributions whose pools tried every choice of every dimension, {task: {dimension:
  untried choices}} for the others).

  A pool that never tried a choice (a partial pool: a population stopped after its first
  program groups holds only some conv types) gives that choice no top-K mass, so its prior
  steers every search away from it on no evidence. AutoTransfer's bank pools are uniform draws
  that cover the space; this keeps only such sources."""
  kept, partial = {}, {}
  for task, prior in distributions.items():
    untried = prior.info.get("untried_choices") or {}
    if untried:
      partial[task] = untried
    else:
      kept[task] = prior
  return kept, partial


def describe_untried(partial: Mapping[str, Mapping[str, Sequence[str]]]) -> str:
  """'task, task2 (dim: a, b; dim2: c); task3 (dim: d)' for `split_by_coverage`'s second
  result: tasks that miss the same choices are named together (a bank built with a dimension
  pinned misses the same choices in every task)."""
  groups: dict[str, list[str]] = {}
  for task, dims in sorted(partial.items()):
    missing = "; ".join(f"{d}: {', '.join(c)}" for d, c in dims.items())
    groups.setdefault(missing, []).append(task)
  return "; ".join(f"{', '.join(tasks)} ({missing})" for missing, tasks in groups.items())


def select_by_coverage(distributions: Mapping[str, Prior], leave_out_partial: bool,
                       hint: str = "") -> tuple[dict[str, Prior], str | None]:
  """(the prior sources: all of `distributions`, or with `leave_out_partial` only those whose
  pools tried every choice; a line naming the partial pools, None when there are none).
  `hint` follows the line's subject (e.g. the flag that leaves them out)."""
  covering, partial = split_by_coverage(distributions)
  if not partial:
    return dict(distributions), None
  note = (("not prior sources" if leave_out_partial else "prior sources")
          + f" whose pools never tried some choices{hint}: " + describe_untried(partial))
  return (covering if leave_out_partial else dict(distributions)), note


# ----------------------------------------------------------------------------------------------
# The transferred prior.


@dataclasses.dataclass
class Transfer:
  """A transferred prior and how it was made.

  Attributes:
    prior: the mixed prior.
    weights: selected bank task -> normalised weight (sums to 1), nearest first.
    distances: the selected tasks' distances, same order.
    rule: 'threshold' or 'nearest'.
    fallback: True when a threshold selected no task and the k nearest were used instead.
    ignored: tasks with a distance but no design distribution.
  """

  prior: Prior
  weights: dict[str, float]
  distances: dict[str, float]
  rule: str
  fallback: bool = False
  ignored: list[str] = dataclasses.field(default_factory=list)


def idw_weights(distances: Sequence[float]) -> np.ndarray:
  """Normalised inverse-distance weights 1/d_i / sum_j 1/d_j. Distances <= 1e-12 count as 0:
  such tasks share all the weight equally (the limit of 1/d).

  Raises:
    ValueError: empty, negative or non-finite distances.
  """
  d = np.asarray(distances, np.float64)
  if d.size == 0:
    raise ValueError("no distances to weight")
  if not np.isfinite(d).all() or np.any(d < 0):
    raise ValueError(f"distances must be finite and >= 0, got {d}")
  zero = d <= _ZERO_DISTANCE
  if zero.any():
    return zero / zero.sum()
  w = 1.0 / d
  return w / w.sum()


def select_tasks(distances: Mapping[str, float], d_thres: float | None = None,
                 k: int = DEFAULT_NEAREST) -> tuple[list[str], str, bool]:
  """The near set S: tasks with distance <= d_thres (paper) or, with d_thres None, the k
  nearest (released code); a threshold that keeps no task falls back to the k nearest.

  Returns:
    (tasks nearest first, rule 'threshold' | 'nearest', fallback used).
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  order = sorted(distances, key=lambda t: (float(distances[t]), t))
  if d_thres is not None:
    chosen = [t for t in order if float(distances[t]) <= d_thres]
    if chosen:
      return chosen, "threshold", False
    return order[:k], "nearest", True
  return order[:k], "nearest", False


def transfer_prior(distributions: Mapping[str, Prior], distances: Mapping[str, float],
                   d_thres: float | None = None, k: int = DEFAULT_NEAREST) -> Transfer:
  """The transferred design prior of a new task (Eq. 3).

  Args:
    distributions: bank task -> its design distribution (`task_distribution`).
    distances: bank task -> distance to the new task (smaller = closer), e.g. the embedding
      distance 1 - z_e(new) . z_e(task). Tasks without a distribution are ignored.
    d_thres: the paper's threshold (S = {d <= d_thres}); None uses the k nearest (code).
    k: tasks used by the nearest rule and by the fallback.

  Raises:
    ValueError: no task has both a distance and a distribution.
  """
  usable = {t: float(d) for t, d in distances.items() if t in distributions}
  ignored = sorted(t for t in distances if t not in distributions)
  if not usable:
    raise ValueError(f"no task has both a distance and a design distribution (distances for "
                     f"{sorted(distances)}, distributions for {sorted(distributions)})")
  chosen, rule, fallback = select_tasks(usable, d_thres, k)
  weights = idw_weights([usable[t] for t in chosen])
  info = {"kind": "transferred", "rule": rule, "d_thres": d_thres, "k": k,
          "fallback": fallback, "tasks": chosen, "weights": weights.tolist(),
          "distances": [usable[t] for t in chosen]}
  prior = mix([distributions[t] for t in chosen], weights, info)
  return Transfer(prior=prior, weights=dict(zip(chosen, weights.tolist())),
                  distances={t: usable[t] for t in chosen}, rule=rule, fallback=fallback,
                  ignored=ignored)

