"""HyperBand (Li et al. 2018) with a design prior (AutoTransfer's `hyperband_advisor.py`:
every new configuration is sampled from the prior).

Schedule for maximum resource R and reduction factor eta: s_max = floor(log_eta R); brackets
s = s_max, ..., 0 (then again from s_max), each a successive halving that starts
n = ceil((s_max + 1) / (s + 1) * eta^s) new configurations at resource r = R eta^-s; rung i
(0..s) evaluates n_i = floor(n eta^-i) configurations at r_i = r eta^i and keeps the
floor(n_i / eta) best for the next rung.

A resource r means a fraction r / R of a design's epochs: `budget_epochs = max(1,
round(design.epochs * r / R))` (R = 60, eta = 3 as NNI's defaults). Every evaluation (a
configuration at one rung) is one trial of the driver's budget. The reference code injects
the budget but its trials ignore it (every trial trains fully); here the evaluation function
receives it (the bank lookup reads the validation curve up to that epoch; real training trains
that many epochs). Brackets run one after another ('serial' in NNI's terms), rung by rung: a
rung's survivors are known only when all its values are told.
"""

from __future__ import annotations

import dataclasses
import math

from gnnjax.design.spaces import DesignSpace
from gnnjax.search.base import CandidatePool, Searcher, Suggestion, Vector
from gnnjax.tasks.prior import Prior, design_from_vector

_EPSILON = 1e-9


@dataclasses.dataclass(frozen=True)
class Rung:
  """Configurations evaluated and the resource each gets."""

  configs: int
  resource: float


def bracket_schedule(max_resource: float, eta: float) -> list[list[Rung]]:
  """The brackets s = s_max..0 of one HyperBand iteration, each a list of rungs.

  Raises:
    ValueError: R < 1 or eta <= 1.
  """
  if max_resource < 1 or eta <= 1:
    raise ValueError(f"HyperBand needs R >= 1 and eta > 1, got R={max_resource}, eta={eta}")
  s_max = math.floor(math.log(max_resource, eta) + _EPSILON)
  brackets = []
  for s in range(s_max, -1, -1):
    n = math.ceil((s_max + 1) / (s + 1) * eta ** s - _EPSILON)
    r = max_resource * eta ** -s
    brackets.append([Rung(math.floor(n * eta ** -i + _EPSILON), r * eta ** i)
                     for i in range(s + 1)])
  return brackets


class HyperBandSearcher(Searcher):
  """HyperBand whose new configurations are drawn from the prior.

  Args:
    max_resource: R (60).
    eta: reduction factor (3).
    ignore_budget: train every evaluation for the design's full epochs, as the reference
      code's trials do (the schedule still decides which designs are evaluated again).
  """

  name = "hyperband"

  def __init__(self, space: DesignSpace, prior: Prior | None = None, seed: int = 0,
               pool: CandidatePool | None = None, max_resource: float = 60,
               eta: float = 3, ignore_budget: bool = False):
    super().__init__(space, prior, seed, pool)
    self.ignore_budget = ignore_budget
    self.max_resource = max_resource
    self.eta = eta
    self.schedule = bracket_schedule(max_resource, eta)
    self._bracket = -1        # index into schedule (cycles)
    self._rung = 0
    self._queue: list[Vector] = []    # configurations of the current rung not yet suggested
    self._waiting = 0                 # suggested in the current rung, value not yet told
    self._results: list[tuple[Vector, float]] = []  # told values of the current rung
    self._start_bracket()

  def budget_epochs(self, vector: Vector, resource: float) -> int | None:
    """Epochs for a resource: the fraction resource / R of the design's epochs (>= 1); None
    (the design's own epochs) with ignore_budget."""
    if self.ignore_budget:
      return None
    epochs = design_from_vector(self.space, vector).epochs
    return max(1, int(round(epochs * resource / self.max_resource)))

  def _start_bracket(self) -> None:
    self._bracket += 1
    self._rung = 0
    rungs = self.schedule[self._bracket % len(self.schedule)]
    self._queue = self._draw(rungs[0].configs)
    self._waiting = 0
    self._results = []

  @property
  def current(self) -> tuple[int, int, Rung]:
    """(bracket number, rung index, rung) now being evaluated."""
    rungs = self.schedule[self._bracket % len(self.schedule)]
    return self._bracket, self._rung, rungs[self._rung]

  def _ask(self, n: int) -> list[Suggestion]:
    out = []
    while len(out) < n:
      if not self._queue:
        if self._waiting:
          break  # the rung's survivors depend on the pending values
        if not self._advance():
          break
        continue
      vector = self._queue.pop(0)
      bracket, rung, spec = self.current
      s = len(self.schedule) - 1 - bracket % len(self.schedule)
      out.append(self._suggest(vector, self.budget_epochs(vector, spec.resource),
                               bracket=bracket, s=s, rung=rung, resource=spec.resource))
      self._waiting += 1
    return out

  def _tell(self, suggestion: Suggestion, value: float) -> None:
    self._waiting -= 1
    self._results.append((suggestion.vector, value))

  def _advance(self) -> bool:
    """Moves to the next rung (or bracket) once the current rung is complete; False when no
    new configuration can be drawn any more."""
    rungs = self.schedule[self._bracket % len(self.schedule)]
    keep = math.floor(len(self._results) / self.eta) if self._results else 0
    if self._rung + 1 < len(rungs) and keep >= 1:
      ranked = sorted(range(len(self._results)), key=lambda i: (-self._results[i][1], i))
      self._queue = [self._results[i][0] for i in ranked[:keep]]
      self._rung += 1
      self._results = []
      return True
    self._start_bracket()
    return bool(self._queue)
