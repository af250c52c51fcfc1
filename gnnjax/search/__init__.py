"""Design search with transferred priors (AutoTransfer, Cao et al. 2023, sec. 4.4 and App. A).

* `base`: the ask/tell `Searcher`, `CandidatePool` (search restricted to given designs) and the
  `run_search` driver (best-so-far per trial); `run_searches` runs independent searches in
  lock step, each round's suggestions evaluated as one batch (one population to train).
* `random_search`, `evolution`, `tpe`, `hyperband`: the four algorithms, each starting from a
  `gnnjax.tasks.prior.Prior` (uniform or transferred).
* `evaluate`: evaluation functions: a lookup into the task-model bank (tabular benchmark) and
  real training with the population engine.
* `efficiency`: the leave-one-task-out search-efficiency study.
"""

from gnnjax.search.base import (CandidatePool, Evaluation, PendingResults, SearchExhausted,
                                SearchResult, Searcher, Suggestion, TrialRecord, run_search,
                                run_searches)
from gnnjax.search.evolution import EvolutionSearcher
from gnnjax.search.hyperband import HyperBandSearcher, bracket_schedule
from gnnjax.search.random_search import RandomSearcher
from gnnjax.search.tpe import TPESearcher

ALGORITHMS = {
    "random": RandomSearcher,
    "evolution": EvolutionSearcher,
    "tpe": TPESearcher,
    "hyperband": HyperBandSearcher,
}


def make_searcher(algorithm: str, space, prior=None, seed: int = 0, pool=None,
                  **kwargs) -> Searcher:
  """A searcher by name ('random', 'evolution', 'tpe', 'hyperband'); kwargs go to its class."""
  try:
    cls = ALGORITHMS[algorithm]
  except KeyError:
    raise ValueError(f"unknown search algorithm {algorithm!r}; choose from "
                     f"{sorted(ALGORITHMS)}") from None
  return cls(space, prior=prior, seed=seed, pool=pool, **kwargs)


__all__ = [
    "ALGORITHMS", "CandidatePool", "Evaluation", "EvolutionSearcher", "HyperBandSearcher",
    "PendingResults", "RandomSearcher", "SearchExhausted", "SearchResult", "Searcher",
    "Suggestion", "TPESearcher", "TrialRecord", "bracket_schedule", "make_searcher",
    "run_search", "run_searches",
]
