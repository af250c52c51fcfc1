"""Input pipelines: which padded batches a split sees.

* `GraphTaskPipeline` (inductive graph tasks): each split is a set of graph indices; batches of
  `batch_size` graphs, shuffled per epoch for training, padded to a budget ladder shared by all
  splits (so eval and train reuse compilations).
* `NodeTaskPipeline` (transductive node tasks): every split sees all graphs with all their edges;
  the split only changes which nodes count (`nodes['<split>_mask']`). A single-graph dataset
  (Cora) is one full batch, padded once.
* `EdgeTaskPipeline` (transductive link prediction): the same batches; the split changes which
  query pairs count (`globals['pair_<split>_mask']`, see gnnjax.data.links).

Shuffling uses `np.random.default_rng((seed, epoch))`, so epoch k's order does not depend on
how many epochs ran before it: a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import jraph
import numpy as np

from gnnjax import batching
from gnnjax.data import dataset as ds


class GraphTaskPipeline:
  """Mini-batches of whole graphs for graph-level tasks."""

  task_level = ds.GRAPH
  static_train = False  # shuffled per epoch

  def __init__(self, dataset: ds.GraphDataset, splits: Mapping[str, Sequence[int]],
               batch_size: int, seed: int = 0):
    if dataset.task_level != ds.GRAPH:
      raise ValueError(f"{dataset.name} is a {dataset.task_level}-level task; use NodeTaskPipeline")
    self.dataset = dataset
    self.splits = {k: np.asarray(v, np.int64) for k, v in splits.items() if len(v)}
    if "train" not in self.splits:
      raise ValueError("splits must contain a non-empty 'train' split")
    self.batch_size = batch_size
    self.seed = seed
    self.packed = batching.PackedGraphs.from_graphs(dataset.graphs)
    self.ladder = batching.budget_ladder(self.packed, batch_size)

  @property
  def split_names(self) -> list[str]:
    return list(self.splits)

  def steps_per_epoch(self) -> int:
    return -(-len(self.splits["train"]) // self.batch_size)

  def train_batches(self, epoch: int) -> Iterator[jraph.GraphsTuple]:
    rng = np.random.default_rng((self.seed, epoch))
    return batching.iterate_batches(self.packed, self.batch_size, self.ladder, rng=rng,
                                    indices=self.splits["train"])

  def train_budgets(self, epoch: int) -> Iterator[batching.Budget]:
    """The budget (padded shape) of each of `train_batches(epoch)`, without building them."""
    rng = np.random.default_rng((self.seed, epoch))
    return batching.iterate_budgets(self.packed, self.batch_size, self.ladder, rng=rng,
                                    indices=self.splits["train"])

  def eval_batches(self) -> Iterator[tuple[jraph.GraphsTuple, tuple[str, ...]]]:
    """(batch, splits it scores) pairs covering every split once."""
    for split, idx in self.splits.items():
      for batch in batching.iterate_batches(self.packed, self.batch_size, self.ladder,
                                            indices=idx):
        yield batch, (split,)

  def eval_budgets(self) -> Iterator[batching.Budget]:
    """The budget of each of `eval_batches()`, without building them."""
    for idx in self.splits.values():
      yield from batching.iterate_budgets(self.packed, self.batch_size, self.ladder, indices=idx)

  def example_batch(self) -> jraph.GraphsTuple:
    return next(iter(self.train_batches(0)))


class NodeTaskPipeline:
  """All graphs, all edges; splits are node masks (transductive node tasks)."""

  task_level = ds.NODE

  def __init__(self, dataset: ds.GraphDataset, batch_size: int | None = None, seed: int = 0):
    if dataset.task_level != self.task_level:
      raise ValueError(f"{dataset.name} is a {dataset.task_level}-level task; use "
                       f"make_pipeline, which picks the pipeline of the task level")
    self._split_names = [s for s in ("train", "val", "test")
                         if any(self._split_mask(g, s).any() for g in dataset.graphs)]
    if "train" not in self._split_names:
      raise ValueError(self._missing_train_message(dataset))
    self.dataset = dataset
    self.batch_size = batch_size or len(dataset)
    self.seed = seed
    self.packed = batching.PackedGraphs.from_graphs(dataset.graphs)
    self.ladder = batching.budget_ladder(self.packed, self.batch_size)
    self._full = (self.packed.gather(np.arange(len(dataset)), self.ladder[-1])
                  if self.batch_size >= len(dataset) else None)

  @property
  def static_train(self) -> bool:
    """Whether every epoch trains on the same batch object (one full batch)."""
    return self._full is not None

  @staticmethod
  def _split_mask(graph: jraph.GraphsTuple, split: str) -> np.ndarray:
    return np.asarray(graph.nodes.get(f"{split}_mask", False))

  @staticmethod
  def _missing_train_message(dataset: ds.GraphDataset) -> str:
    return (f"{dataset.name} has no 'train_mask' on its nodes; apply a node split "
            "(gnnjax.data.splits.random_node_split) first")

  @property
  def split_names(self) -> list[str]:
    return list(self._split_names)

  def steps_per_epoch(self) -> int:
    return -(-len(self.dataset) // self.batch_size)

  def train_batches(self, epoch: int) -> Iterator[jraph.GraphsTuple]:
    if self._full is not None:
      return iter([self._full])
    rng = np.random.default_rng((self.seed, epoch))
    return batching.iterate_batches(self.packed, self.batch_size, self.ladder, rng=rng)

  def train_budgets(self, epoch: int) -> Iterator[batching.Budget]:
    """The budget (padded shape) of each of `train_batches(epoch)`, without building them."""
    if self._full is not None:
      return iter([self.ladder[-1]])
    rng = np.random.default_rng((self.seed, epoch))
    return batching.iterate_budgets(self.packed, self.batch_size, self.ladder, rng=rng)

  def eval_batches(self) -> Iterator[tuple[jraph.GraphsTuple, tuple[str, ...]]]:
    batches = ([self._full] if self._full is not None else
               batching.iterate_batches(self.packed, self.batch_size, self.ladder))
    for batch in batches:
      yield batch, tuple(self._split_names)

  def eval_budgets(self) -> Iterator[batching.Budget]:
    """The budget of each of `eval_batches()`, without building them."""
    if self._full is not None:
      return iter([self.ladder[-1]])
    return batching.iterate_budgets(self.packed, self.batch_size, self.ladder)

  def example_batch(self) -> jraph.GraphsTuple:
    return next(iter(self.train_batches(0)))


class EdgeTaskPipeline(NodeTaskPipeline):
  """All graphs, their message-passing (train) edges; splits are query-pair masks."""

  task_level = ds.EDGE

  @staticmethod
  def _split_mask(graph: jraph.GraphsTuple, split: str) -> np.ndarray:
    return np.asarray(graph.globals.get(f"pair_{split}_mask", False))

  @staticmethod
  def _missing_train_message(dataset: ds.GraphDataset) -> str:
    return (f"{dataset.name} has no train pairs; split its edges first "
            "(gnnjax.data.apply_split or gnnjax.data.links.split_links)")


def make_pipeline(dataset: ds.GraphDataset, splits: Mapping[str, Sequence[int]] | None,
                  batch_size: int, seed: int = 0):
  """The pipeline for the dataset's task level (`splits` are graph indices; node and edge
  tasks: None)."""
  if dataset.task_level == ds.NODE:
    return NodeTaskPipeline(dataset, batch_size, seed)
  if dataset.task_level == ds.EDGE:
    return EdgeTaskPipeline(dataset, batch_size, seed)
  if splits is None:
    raise ValueError("graph-level tasks need graph index splits")
  return GraphTaskPipeline(dataset, splits, batch_size, seed)
