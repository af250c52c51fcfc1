"""Categorical TPE with a design prior (NNI's TPE re-implementation, as AutoTransfer's
`tpe_tuner.py` modifies it; Bergstra et al. 2011).

* Warm-up: the first `n_startup` suggestions (paper: 5 "fully random" warm-up trials; NNI's
  default is 20) are drawn from the PRIOR.
* Then, per dimension w with n_w choices: the history is split into the n_good =
  min(ceil(gamma sqrt(N)), linear_forgetting) best trials and the rest; the densities are

      p_good(c) = (sum_{good trials with c} weight + w_c) / normaliser,
      p_bad(c)  = the same over the other trials,

  where the pseudo-counts w_c = prior_c * n_w are the prior (a uniform prior gives 1 each, the
  stock `prior_weight` 1.0). `n_ei_candidates` (24) choices are drawn from p_good and the one
  maximising log p_good - log p_bad is suggested. Dimensions are handled independently, as in
  NNI and hyperopt.
* Batches (and any suggestion made while others are pending) use the "best" constant liar:
  pending suggestions join the history with the best value told so far. Before any value is
  told, model steps draw from the prior.

Choices with prior 0 and no good trial have p_good = 0 and are never suggested (the
transferred prior removes them, as the reference code does).

Deviation, deliberate: linear forgetting (weights ramping from 1/n up to 1 over the oldest
n - 25 trials of a group once it holds more than 25) is applied in trial order, as hyperopt
intends; NNI applies the ramp in loss order. It only matters past ~27 trials.

With a candidate pool, the candidates are `n_ei_candidates` distinct unused pool members drawn
with probability proportional to prod_w p_good_w, scored by sum_w (log p_good_w - log p_bad_w):
the same criterion, taken jointly over the designs the pool holds.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from gnnjax.design.spaces import DesignSpace
from gnnjax.search.base import CandidatePool, Searcher, Suggestion, Vector
from gnnjax.tasks.prior import Prior

DEFAULT_STARTUP = 5


def linear_forgetting_weights(n: int, linear_forgetting: int = 25) -> np.ndarray:
  """Weights of n trials in time order: 1 each while n < lf (= linear_forgetting); otherwise
  a ramp linspace(1/n, 1, n - lf) over the oldest n - lf trials and 1 for the newest lf
  (hyperopt / NNI)."""
  if n < linear_forgetting:
    return np.ones(n)
  return np.concatenate([np.linspace(1.0 / n, 1.0, n - linear_forgetting),
                         np.ones(linear_forgetting)])


def split_good_bad(values: Sequence[float], gamma: float = 0.25,
                   linear_forgetting: int = 25) -> tuple[np.ndarray, np.ndarray]:
  """Indices (in trial order) of the good and the bad trials: the n_good = min(ceil(gamma
  sqrt(N)), linear_forgetting) largest values are good (ties: earlier trial first)."""
  values = np.asarray(values, np.float64)
  n_good = min(math.ceil(gamma * math.sqrt(values.size)), linear_forgetting)
  order = np.argsort(-values, kind="stable")
  return np.sort(order[:n_good]), np.sort(order[n_good:])


def categorical_densities(choices: Sequence[int], values: Sequence[float], size: int,
                          prior_weights: Sequence[float], gamma: float = 0.25,
                          linear_forgetting: int = 25) -> tuple[np.ndarray, np.ndarray]:
  """p_good, p_bad ([size] each) of one dimension.

  Args:
    choices: [N] the choice index each trial took in this dimension (trial order).
    values: [N] the trials' values (larger is better).
    size: number of choices.
    prior_weights: [size] pseudo-counts w_c = prior_c * size.
  """
  choices = np.asarray(choices, np.int64)
  good, bad = split_good_bad(values, gamma, linear_forgetting)
  prior_weights = np.asarray(prior_weights, np.float64)
  out = []
  for group in (good, bad):
    counts = np.bincount(choices[group], linear_forgetting_weights(group.size, linear_forgetting),
                         minlength=size)
    total = counts + prior_weights
    out.append(total / total.sum())
  return out[0], out[1]


def log_ratio_scores(densities: Sequence[tuple[np.ndarray, np.ndarray]],
                     candidates: Sequence[Vector]) -> np.ndarray:
  """TPE's acquisition, sum_w log p_good(c_w) - log p_bad(c_w), per candidate [n].

  A choice both densities give zero probability (a prior with zeros and no observation there)
  scores -inf, as one only the good density rules out does: 0/0 would be NaN, and argmax
  returns the first NaN, which would pick exactly the candidates the good model rules out."""
  c = np.asarray(candidates, np.int64).reshape(len(candidates), -1)
  with np.errstate(divide="ignore", invalid="ignore"):
    scores = sum(np.log(g[c[:, w]]) - np.log(b[c[:, w]]) for w, (g, b) in enumerate(densities))
  return np.where(np.isnan(scores), -np.inf, scores)


class TPESearcher(Searcher):
  """Categorical TPE whose warm-up and pseudo-counts come from the prior.

  Args:
    n_startup: warm-up suggestions drawn from the prior (paper: 5).
    n_ei_candidates: candidates drawn from p_good per dimension (24).
    gamma: fraction parameter of the good/bad split (0.25).
    linear_forgetting: 25.
  """

  name = "tpe"

  def __init__(self, space: DesignSpace, prior: Prior | None = None, seed: int = 0,
               pool: CandidatePool | None = None, n_startup: int = DEFAULT_STARTUP,
               n_ei_candidates: int = 24, gamma: float = 0.25, linear_forgetting: int = 25):
    super().__init__(space, prior, seed, pool)
    if n_startup < 0 or n_ei_candidates < 1 or not 0 < gamma <= 1 or linear_forgetting < 1:
      raise ValueError(f"invalid TPE arguments: n_startup={n_startup} (>= 0), n_ei_candidates="
                       f"{n_ei_candidates} (>= 1), gamma={gamma} (in (0, 1]), "
                       f"linear_forgetting={linear_forgetting} (>= 1)")
    self.n_startup = n_startup
    self.n_ei_candidates = n_ei_candidates
    self.gamma = gamma
    self.linear_forgetting = linear_forgetting
    self.prior_weights = [p * p.size for p in self.prior.vectors()]

  def densities(self, records: Sequence[tuple[Vector, float]]
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per dimension, (p_good, p_bad) of a history [(vector, value)] in trial order."""
    vectors = np.array([r[0] for r in records], np.int64).reshape(len(records), -1)
    values = [r[1] for r in records]
    return [categorical_densities(vectors[:, w], values, len(self.prior_weights[w]),
                                  self.prior_weights[w], self.gamma, self.linear_forgetting)
            for w in range(len(self.prior_weights))]

  def _ask(self, n: int) -> list[Suggestion]:
    out: list[Suggestion] = []
    for _ in range(n):
      made = len(self.history) + len(self._pending) + len(out)
      if made < self.n_startup or not self.history:
        drawn = self._draw(1)
        if not drawn:
          break
        out.append(self._suggest(drawn[0], kind="warmup" if made < self.n_startup else "prior"))
        continue
      lie = max(value for _, value in self.history)
      records = list(self.history) + [(s.vector, lie) for s in (*self._pending.values(), *out)]
      vector = self._propose(self.densities(records))
      if vector is None:
        break
      out.append(self._suggest(vector, kind="tpe"))
    return out

  def _propose(self, densities: list[tuple[np.ndarray, np.ndarray]]) -> Vector | None:
    if self.pool is not None:
      candidates = self.pool.sample(self.rng, [g for g, _ in densities], self.n_ei_candidates,
                                    self.proposed)
      if not candidates:
        return None
      return candidates[int(np.argmax(log_ratio_scores(densities, candidates)))]
    for _ in range(50):
      vector = []
      for good, bad in densities:  # dimensions are independent: the best choice per dimension
        samples = self.rng.choice(good.size, self.n_ei_candidates, p=good)
        scores = log_ratio_scores([(good, bad)], samples[:, None])
        vector.append(int(samples[np.argmax(scores)]))
      if tuple(vector) not in self.proposed:
        return tuple(vector)
    drawn = self._draw(1)  # the model keeps proposing known designs: fall back on the prior
    return drawn[0] if drawn else None
