"""Train/val/test splits of graphs (inductive) and of nodes (transductive).

Everything here is plain NumPy seeded with `np.random.default_rng(seed)`, so a split is a pure
function of its arguments.

Split sizes follow GraphGym: every split but the last one with a non-zero fraction gets
`floor(fraction * n)` items and that last one takes the remainder. So (0.8, 0.1, 0.1) of 10 gives
8/1/1, and (0.8, 0.2, 0.0) of 64 nodes gives 51/13/0 (the 0.0 split stays empty).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jraph
import numpy as np

from gnnjax.data.dataset import NODE, GraphDataset

SPLIT_KEYS = ("train", "val", "test")

# Guards floor() against products such as 0.29 * 100 = 28.999999999999996.
_FLOOR_SLACK = 1e-9


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
  """Validates (train, val, test) fractions; returns them as a float64 `[3]` array."""
  fractions = np.asarray(fractions, dtype=np.float64)
  if fractions.shape != (len(SPLIT_KEYS),):
    raise ValueError(f"fractions must be {len(SPLIT_KEYS)} numbers for {SPLIT_KEYS}, "
                     f"got {fractions.tolist()}")
  if np.any(fractions < 0) or not np.all(np.isfinite(fractions)):
    raise ValueError(f"fractions must be finite and non-negative, got {fractions.tolist()}")
  if abs(fractions.sum() - 1.0) > 1e-6:
    raise ValueError(f"fractions must sum to 1, got {fractions.tolist()} (sum {fractions.sum()})")
  return fractions


def split_sizes(num_items: int, fractions: Sequence[float]) -> np.ndarray:
  """How many items each split gets (module doc: floor, remainder to the last non-empty split).

  Args:
    num_items: number of items to split.
    fractions: (train, val, test) fractions summing to 1.

  Returns:
    int64 `[3]` sizes summing to `num_items`.
  """
  fractions = _check_fractions(fractions)
  sizes = np.floor(fractions * num_items + _FLOOR_SLACK).astype(np.int64)
  sizes[fractions == 0] = 0
  last_nonzero = int(np.flatnonzero(fractions)[-1])
  sizes[last_nonzero] = num_items - sizes.sum() + sizes[last_nonzero]
  return sizes


def _cut(order: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
  """Cuts `order` into consecutive pieces of `sizes`, one per split key (each piece sorted)."""
  pieces = np.split(order, np.cumsum(sizes)[:-1])
  return {key: np.sort(piece).astype(np.int64) for key, piece in zip(SPLIT_KEYS, pieces)}


def random_graph_split(num_graphs: int, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                       seed: int = 0) -> dict[str, np.ndarray]:
  """A random inductive split of graph indices.

  Args:
    num_graphs: number of graphs in the dataset.
    fractions: (train, val, test) fractions summing to 1 within 1e-6; a zero fraction gives an
      empty split.
    seed: seed of the permutation.

  Returns:
    {'train', 'val', 'test'} -> sorted int64 index arrays that partition range(num_graphs).
  """
  if num_graphs < 0:
    raise ValueError(f"num_graphs must be >= 0, got {num_graphs}")
  sizes = split_sizes(num_graphs, fractions)
  order = np.random.default_rng(seed).permutation(num_graphs)
  return _cut(order, sizes)


def _encode_by_first_appearance(labels: np.ndarray) -> np.ndarray:
  """Class ids 0..C-1 numbered in order of each class's first occurrence (as scikit-learn does)."""
  _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
  rank_of_class = np.argsort(np.argsort(first_index))
  return rank_of_class[inverse.reshape(-1)]


def stratified_kfold(labels: Sequence[int] | np.ndarray, num_folds: int = 10,
                     seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
  """Class-stratified k-fold cross-validation, like scikit-learn's StratifiedKFold(shuffle=True).

  Each class's members are shuffled and dealt round-robin over the folds, classes one after
  another, so every fold holds each class's count up to +-1 and the fold sizes differ by at most
  one. The per-fold class counts equal scikit-learn's; which members land where depends on the
  seed.

  Args:
    labels: `[N]` class labels (any values comparable with each other).
    num_folds: number of folds k, 2 <= k <= N.
    seed: seed of the shuffling.

  Returns:
    k pairs (train_idx, test_idx) of sorted int64 arrays; the test folds partition range(N) and
    each train_idx is the complement of its test_idx.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be a vector, got shape {labels.shape}")
  num_items = labels.shape[0]
  if not 2 <= num_folds <= num_items:
    raise ValueError(f"num_folds must be in [2, {num_items}] for {num_items} labels, "
                     f"got {num_folds}")
  classes = _encode_by_first_appearance(labels)
  shuffled = np.random.default_rng(seed).permutation(num_items)
  # Stable sort keeps the shuffled order within each class.
  dealt = shuffled[np.argsort(classes[shuffled], kind="stable")]
  fold_of = np.empty(num_items, dtype=np.int64)
  fold_of[dealt] = np.arange(num_items) % num_folds
  everything = np.arange(num_items, dtype=np.int64)
  return [(everything[fold_of != fold], everything[fold_of == fold]) for fold in range(num_folds)]


def with_node_split(graph: jraph.GraphsTuple, train_mask: np.ndarray, val_mask: np.ndarray,
                    test_mask: np.ndarray) -> jraph.GraphsTuple:
  """A copy of `graph` whose nodes carry the given split masks.

  Args:
    graph: a single host-side graph with `n` nodes.
    train_mask, val_mask, test_mask: bool `[n]`, pairwise disjoint.

  Returns:
    The graph with bool `[n]` nodes['train_mask'], ['val_mask'], ['test_mask'] added (or
    replaced); other fields are shared with `graph`.
  """
  num_nodes = int(np.sum(graph.n_node))
  masks = {}
  for key, mask in zip(SPLIT_KEYS, (train_mask, val_mask, test_mask)):
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != (num_nodes,):
      raise ValueError(f"{key}_mask must be bool [{num_nodes}], got {mask.dtype} {mask.shape}")
    masks[f"{key}_mask"] = mask
  overlap = (masks["train_mask"].astype(np.int8) + masks["val_mask"] + masks["test_mask"]) > 1
  if overlap.any():
    raise ValueError(f"split masks overlap on {int(overlap.sum())} node(s), e.g. node "
                     f"{int(np.flatnonzero(overlap)[0])}")
  return graph._replace(nodes={**graph.nodes, **masks})


def _labelled_nodes(graph: jraph.GraphsTuple) -> np.ndarray:
  """int64 ids of the nodes of `graph` that have a label (all unless nodes['label_mask'])."""
  num_nodes = int(np.sum(graph.n_node))
  if "label_mask" in graph.nodes:
    return np.flatnonzero(np.asarray(graph.nodes["label_mask"], dtype=bool))
  return np.arange(num_nodes, dtype=np.int64)


def _masks_from_ids(num_nodes: int, ids: dict[str, np.ndarray]) -> list[np.ndarray]:
  masks = []
  for key in SPLIT_KEYS:
    mask = np.zeros(num_nodes, dtype=bool)
    mask[ids[key]] = True
    masks.append(mask)
  return masks


def random_node_split(dataset: GraphDataset, fractions: Sequence[float] = (0.8, 0.2, 0.0),
                      seed: int = 0, per_graph: bool = True) -> GraphDataset:
  """A random transductive split of the labelled nodes.

  Args:
    dataset: a node-level dataset; nodes without a label (nodes['label_mask'] False) are left
      out of every split.
    fractions: (train, val, test) fractions summing to 1.
    seed: seed of the permutations (one generator, used graph after graph).
    per_graph: True splits each graph's labelled nodes on its own, as GraphGym does (permute,
      first floor(f_train * n) train, then val, then test); False pools the labelled nodes of
      all graphs and splits them once.

  Returns:
    A new dataset (same task) whose graphs carry bool nodes['train_mask'/'val_mask'/'test_mask'].
  """
  if dataset.task_level != NODE:
    raise ValueError(f"random_node_split needs a node-level dataset; {dataset.name!r} is "
                     f"{dataset.task_level}-level")
  _check_fractions(fractions)
  rng = np.random.default_rng(seed)
  if per_graph:
    graphs = []
    for graph in dataset.graphs:
      labelled = _labelled_nodes(graph)
      ids = _cut(rng.permutation(labelled), split_sizes(labelled.size, fractions))
      graphs.append(with_node_split(graph, *_masks_from_ids(int(np.sum(graph.n_node)), ids)))
    return dataclasses.replace(dataset, graphs=graphs)
  return _pooled_node_split(dataset, fractions, rng)


def _pooled_node_split(dataset: GraphDataset, fractions: Sequence[float],
                       rng: np.random.Generator) -> GraphDataset:
  """One split over the labelled nodes of all graphs, addressed by dataset-wide node ids."""
  sizes = [int(np.sum(g.n_node)) for g in dataset.graphs]
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  labelled = np.concatenate([_labelled_nodes(g) + off for g, off in zip(dataset.graphs, offsets)])
  ids = _cut(rng.permutation(labelled), split_sizes(labelled.size, fractions))
  all_masks = _masks_from_ids(int(offsets[-1]), ids)
  graphs = [
      with_node_split(graph, *(mask[start:stop] for mask in all_masks))
      for graph, start, stop in zip(dataset.graphs, offsets[:-1], offsets[1:])
  ]
  return dataclasses.replace(dataset, graphs=graphs)
