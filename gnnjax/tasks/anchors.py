"""Anchor designs: the fixed set of models whose performance (or FIM) characterises a task.

Two sources:

* `AUTOTRANSFER_ANCHORS`: the 12 anchors of AutoTransfer (Cao et al. 2023,
  `run/configs/anchors/model{1..12}.yaml`), identical to GraphGym's anchors. Common settings:
  GeneralConv with a self weight (GraphGym HEAD's `self_msg='concat'`, the conv AutoTransfer's
  trials use), dim_inner 256, PReLU, batch norm, no dropout, add pooling, l2norm, Adam, lr 0.01,
  400 epochs, batch 32, weight decay 5e-4. They lie in GraphGym's round-2 grid, and share every
  fixed setting of `spaces.AUTOTRANSFER` except lr 0.01 / 400 epochs, which the anchor yamls set
  and Table 3's space does not contain.
* `select_anchors`: GraphGym's procedure (You et al. 2020, sec. 6): sample M designs from a
  space, train them on a small task (with the population engine), sort by performance and pick
  U evenly spaced from worst to best.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from gnnjax.data import dataset as ds
from gnnjax.design import spaces as spaces_lib
from gnnjax.design import trial as trial_lib
from gnnjax.design.design import Design

# Settings shared by the 12 anchor yamls (AutoTransfer brief sec. 3).
ANCHOR_BASE = Design(
    conv_type="generalconv", conv_variant="self", heads=1, dim_inner=256, activation="prelu",
    batch_norm=True, dropout=0.0, graph_pooling="add", l2norm=True, batch_size=32,
    optimizer="adam", learning_rate=0.01, epochs=400, weight_decay=5e-4, momentum=0.9)

# (layers_pre_mp, layers_mp, layers_post_mp, stage_type, aggregation) of model1..model12.
_ANCHOR_TABLE = (
    (1, 8, 2, "skipsum", "add"),
    (1, 4, 2, "skipconcat", "add"),
    (2, 6, 3, "skipconcat", "add"),
    (2, 2, 2, "skipconcat", "add"),
    (2, 4, 3, "skipsum", "max"),
    (2, 6, 2, "skipsum", "max"),
    (2, 8, 3, "skipsum", "mean"),
    (2, 6, 3, "skipsum", "mean"),
    (2, 6, 2, "skipconcat", "mean"),
    (2, 2, 2, "skipconcat", "mean"),
    (1, 2, 2, "skipconcat", "max"),
    (1, 2, 3, "skipconcat", "mean"),
)

AUTOTRANSFER_ANCHORS: tuple[Design, ...] = tuple(
    ANCHOR_BASE.replace(layers_pre_mp=pre, layers_mp=mp, layers_post_mp=post, stage_type=stage,
                        aggregation=agg)
    for pre, mp, post, stage, agg in _ANCHOR_TABLE)
ANCHOR_NAMES: tuple[str, ...] = tuple(f"model{i + 1}" for i in range(len(_ANCHOR_TABLE)))


def anchors_with_epochs(epochs: int | None = None) -> tuple[Design, ...]:
  """AutoTransfer's 12 anchors trained for `epochs` (None or 0: their own 400).

  A bank built on a compute budget caps the anchors' epochs; a design's id covers its epochs,
  so whoever reads the anchors' trials back must ask for the same value."""
  if not epochs:
    return AUTOTRANSFER_ANCHORS
  if epochs < 1:
    raise ValueError(f"anchor epochs must be >= 1 (or 0 for the anchors' own), got {epochs}")
  return tuple(a.replace(epochs=int(epochs)) for a in AUTOTRANSFER_ANCHORS)


def evenly_spaced(num_items: int, count: int) -> np.ndarray:
  """`count` indices into a sorted list of `num_items`, evenly spaced from the first (worst) to
  the last (best), both included: round(k (num_items - 1) / (count - 1)), k = 0..count-1.

  Raises:
    ValueError: count < 1 or count > num_items.
  """
  if count < 1 or count > num_items:
    raise ValueError(f"cannot pick {count} anchors from {num_items} ranked designs; need "
                     f"1 <= count <= {num_items}")
  if count == 1:
    return np.array([num_items - 1])
  # floor(x + 0.5) rather than np.round's banker's rounding, so the spacing is symmetric.
  return np.floor(np.arange(count) * (num_items - 1) / (count - 1) + 0.5).astype(np.int64)


def performance(result: trial_lib.TrialResult, metric: str = "val",
                which: str = "final") -> float:
  """A trial's score for ranking anchors: `which` ('final' = last evaluation, as GraphGym;
  'best' = at the best validation epoch) value of `metric` ('<split>_<name>', or a bare
  '<split>' for the task's own metric, `trial.score_metric`: accuracy, ROC-AUC on
  MoleculeNet). NaN when the trial failed, diverged or lacks the metric (such designs rank
  worst)."""
  if which not in ("final", "best"):
    raise ValueError(f"which must be 'final' or 'best', got {which!r}")
  if result.status != trial_lib.OK:
    return math.nan
  split, _, name = metric.partition("_")
  value = trial_lib.score_of(getattr(result, which).get(split, {}), name or None)
  return math.nan if value is None else float(value)


def rank_designs(designs: Sequence[Design], results: Sequence[trial_lib.TrialResult],
                 seeds: int, metric: str = "val", higher_is_better: bool = True
                 ) -> tuple[list[Design], np.ndarray]:
  """Designs sorted from worst to best by their mean score over seeds (NaN scores first).

  Args:
    designs: the designs trained.
    results: `train_population`'s output: designs outer, `seeds` results each.
    seeds: seeds per design.
  Returns:
    (designs worst -> best, their mean scores in that order).
  """
  if len(results) != len(designs) * seeds:
    raise ValueError(f"expected {len(designs)} x {seeds} results, got {len(results)}")
  scores = np.array([np.mean([performance(r, metric) for r in results[i * seeds:(i + 1) * seeds]])
                     for i in range(len(designs))])
  key = scores if higher_is_better else -scores
  key = np.where(np.isnan(key), -np.inf, key)
  order = np.argsort(key, kind="stable")
  return [designs[i] for i in order], scores[order]


def select_anchors(dataset: ds.GraphDataset, space: spaces_lib.DesignSpace | None = None,
                   num_sampled: int = 100, num_anchors: int = 12, seeds: Sequence[int] = (1,),
                   sample_seed: int = 0, metric: str = "val",
                   higher_is_better: bool = True,
                   train_fn: Callable[..., list[trial_lib.TrialResult]] | None = None,
                   **train_kwargs) -> tuple[list[Design], np.ndarray]:
  """GraphGym's anchor selection: sample, train, sort, pick evenly from worst to best.

  Args:
    dataset: the (small) task the sampled designs are trained on.
    space: the design space sampled (default `spaces.GRAPHGYM_ROUND2`, where GraphGym's own
      anchors lie).
    num_sampled: M, designs sampled uniformly without replacement.
    num_anchors: U, anchors kept.
    seeds: training seeds per design (scores are averaged over them).
    sample_seed: seed of the design sample.
    metric: '<split>_<metric>' of the final evaluation used as performance ('<split>': the
      task's own metric, see `performance`).
    higher_is_better: direction of `metric`.
    train_fn: trains the designs (default `gnnjax.design.engine.train_population`); called as
      train_fn(designs, dataset, seeds, **train_kwargs).

  Returns:
    (anchors worst -> best, their mean scores).
  """
  space = space if space is not None else spaces_lib.GRAPHGYM_ROUND2
  if num_anchors > num_sampled:
    raise ValueError(f"num_anchors ({num_anchors}) must be <= num_sampled ({num_sampled})")
  designs = space.sample(sample_seed, num_sampled)
  if train_fn is None:
    from gnnjax.design import engine  # deferred: the engine compiles, anchors need not
    train_fn = engine.train_population
  results = train_fn(designs, dataset, list(seeds), **train_kwargs)
  ranked, scores = rank_designs(designs, results, len(seeds), metric, higher_is_better)
  picks = evenly_spaced(len(ranked), num_anchors)
  return [ranked[i] for i in picks], scores[picks]
