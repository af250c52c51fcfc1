"""Evolutionary search from a prior (NNI's naive evolution, as AutoTransfer's
`evolution_tuner.py` modifies it).

* The initial population (`population_size` individuals; the paper's 5 warm-up trials) is drawn
  from the prior; unevaluated individuals are handed out first.
* Afterwards each suggestion is a tournament of two: two random members are compared, the worse
  leaves the population, and a copy of the better is mutated by re-drawing ONE randomly chosen
  dimension from the prior. Children join the population when their value is told.

Designs already proposed are not proposed again: a mutation that lands on one is redrawn (a
different dimension or value); after `MAX_REJECTIONS` such attempts (the parent's prior
neighbourhood is used up) a fresh draw from the prior replaces it. If every member is in flight
(batch asks larger than the population), the remaining suggestions of the batch are fresh
draws from the prior only when nothing else could be suggested; otherwise `ask` returns fewer.

With a candidate pool, a mutation of dimension w picks, among the unused pool members whose
value of w differs from the parent's, those nearest the parent (Hamming distance over the
choice indices), with probability proportional to the prior of their value of w.
"""

from __future__ import annotations

import numpy as np

from gnnjax.design.spaces import DesignSpace
from gnnjax.search.base import MAX_REJECTIONS, CandidatePool, Searcher, Suggestion, Vector
from gnnjax.tasks.prior import Prior

DEFAULT_POPULATION = 5


class EvolutionSearcher(Searcher):
  """Tournament-of-two evolution with prior-driven initialisation and mutation.

  Args:
    population_size: initial population drawn from the prior (default 5, the paper's warm-up;
      NNI's default is 32).
  """

  name = "evolution"

  def __init__(self, space: DesignSpace, prior: Prior | None = None, seed: int = 0,
               pool: CandidatePool | None = None, population_size: int = DEFAULT_POPULATION):
    super().__init__(space, prior, seed, pool)
    if population_size < 1:
      raise ValueError(f"population_size must be >= 1, got {population_size}")
    self.population_size = population_size
    initial = self._draw(population_size)
    self.proposed.update(initial)  # reserved: later draws must not duplicate them
    # [vector, value or None (not evaluated yet)]
    self.population: list[list] = [[v, None] for v in initial]

  def _ask(self, n: int) -> list[Suggestion]:
    out = []
    for _ in range(n):
      fresh = next((i for i, (_, value) in enumerate(self.population) if value is None), None)
      if fresh is not None:
        vector, _ = self.population.pop(fresh)
        out.append(self._suggest(vector, kind="initial"))
        continue
      if not self.population:
        break
      order = self.rng.permutation(len(self.population))
      self.population = [self.population[i] for i in order]
      if len(self.population) > 1 and self.population[0][1] < self.population[1][1]:
        self.population[0] = self.population[1]
      parent = self.population[0][0]
      if len(self.population) > 1:
        self.population.pop(1)
      child, dim = self._mutate(parent)
      if child is None:
        break
      out.append(self._suggest(child, kind="mutation", dim=dim))
    if not out:
      out = [self._suggest(v, kind="prior") for v in self._draw(1)]
    return out

  def _tell(self, suggestion: Suggestion, value: float) -> None:
    self.population.append([suggestion.vector, value])

  # -- mutation --------------------------------------------------------------------------------

  def _mutate(self, parent: Vector) -> tuple[Vector | None, str | None]:
    """A child differing from `parent` in one dimension re-drawn from the prior (or the pool
    member nearest such a child); None if nothing new is left."""
    names = self.space.dim_names
    if self.pool is not None:
      w = int(self.rng.integers(len(names)))
      child = self._pool_mutation(parent, w)
      return child, names[w]
    probs = self.prior.vectors()
    for _ in range(MAX_REJECTIONS):
      w = int(self.rng.integers(len(names)))
      p = probs[w]
      child = list(parent)
      child[w] = int(self.rng.choice(p.size, p=p))
      child = tuple(child)
      if child not in self.proposed:
        return child, names[w]
    drawn = self._draw(1)
    return (drawn[0], None) if drawn else (None, None)

  def _pool_mutation(self, parent: Vector, w: int) -> Vector | None:
    members = self.pool.available(self.proposed)
    if members.size == 0:
      return None
    vectors = self.pool.vectors[members]
    differs = vectors[:, w] != parent[w]
    if differs.any():
      members, vectors = members[differs], vectors[differs]
    distance = np.sum(vectors != np.asarray(parent), axis=1)
    nearest = distance == distance.min()
    members, vectors = members[nearest], vectors[nearest]
    weights = self.prior.vectors()[w][vectors[:, w]]
    if weights.sum() <= 0:
      weights = np.ones(len(members))
    pick = self.rng.choice(len(members), p=weights / weights.sum())
    return tuple(int(i) for i in vectors[pick])
