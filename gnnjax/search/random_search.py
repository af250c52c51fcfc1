"""Random search from a prior (AutoTransfer's `random_tuner.py`): every dimension is drawn
independently from its prior vector (uniform prior: plain random search). Designs already
proposed are redrawn, so a trial budget never re-trains a design; with a candidate pool the
draws are from the prior conditioned on the pool."""

from __future__ import annotations

from gnnjax.search.base import Searcher, Suggestion


class RandomSearcher(Searcher):
  """Samples every suggestion from the prior."""

  name = "random"

  def _ask(self, n: int) -> list[Suggestion]:
    return [self._suggest(v) for v in self._draw(n)]
