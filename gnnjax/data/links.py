"""Link prediction (edge-level tasks): transductive edge splits with negative samples.

GraphGym's link-prediction protocol (DeepSNAP, `task='link_pred'`, `edge_train_mode='all'`,
`edge_negative_sampling_ratio=1.0`, `resample_negative=False`): the undirected edges of a graph
are split 80/10/10 into train/val/test; message passing runs over the train edges (both
directions); every split scores its positive pairs and as many negative pairs, i.e. node pairs
that are not edges of the full graph, drawn once per seed.

An edge-level graph keeps `nodes['x']` and the train edges, and carries its query pairs in
`globals` with a leading graph axis (so batching and padding carry them like graph labels):

  globals['pairs']            int32 [1, Q, 2]  (u, v) node ids within the graph
  globals['pair_y']           int32 [1, Q]     1 for an edge, 0 for a negative sample
  globals['pair_<split>_mask'] bool [1, Q]     which pairs belong to train / val / test

A model returns one logit per pair, [G * Q] for a batch of G graph slots (see
`gnnjax.models.graphgym`), and `gnnjax.training.losses.targets_and_mask` flattens labels and
masks the same way.
"""

from __future__ import annotations

from typing import Sequence

import jraph
import numpy as np

from gnnjax.data import splits as splits_lib
from gnnjax.data.dataset import BINARY, EDGE, GraphDataset, make_graph

PAIR_KEYS = ("pairs", "pair_y") + tuple(f"pair_{s}_mask" for s in splits_lib.SPLIT_KEYS)
GRAPHGYM_LINK_FRACTIONS = (0.8, 0.1, 0.1)


def undirected_edges(graph: jraph.GraphsTuple) -> np.ndarray:
  """int64 [M, 2]: the graph's distinct undirected edges (u < v), self-loops dropped, sorted."""
  senders = np.asarray(graph.senders, np.int64)
  receivers = np.asarray(graph.receivers, np.int64)
  low, high = np.minimum(senders, receivers), np.maximum(senders, receivers)
  keep = low != high
  pairs = np.stack([low[keep], high[keep]], axis=1)
  return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def sample_negative_pairs(num_nodes: int, num_samples: int, forbidden: np.ndarray,
                          rng: np.random.Generator) -> np.ndarray:
  """int64 [num_samples, 2] distinct node pairs (u < v) that are not in `forbidden` [M, 2].

  Rejection sampling in vectorised rounds; fails clearly when the graph is too dense to have
  that many non-edges.
  """
  available = num_nodes * (num_nodes - 1) // 2 - len(forbidden)
  if num_samples > available:
    raise ValueError(f"cannot draw {num_samples} negative pairs: the graph has only {available} "
                     f"node pairs that are not edges")
  taken = set((forbidden[:, 0] * num_nodes + forbidden[:, 1]).tolist())
  chosen: list[int] = []
  chosen_set: set[int] = set()
  while len(chosen) < num_samples:
    need = num_samples - len(chosen)
    u = rng.integers(0, num_nodes, size=2 * need + 16)
    v = rng.integers(0, num_nodes, size=2 * need + 16)
    low, high = np.minimum(u, v), np.maximum(u, v)
    for code in (low * num_nodes + high)[low != high].tolist():
      if code not in taken and code not in chosen_set:
        chosen.append(code)
        chosen_set.add(code)
        if len(chosen) == num_samples:
          break
  codes = np.asarray(chosen, np.int64)
  return np.stack([codes // num_nodes, codes % num_nodes], axis=1)


def link_split(graph: jraph.GraphsTuple, fractions: Sequence[float] = GRAPHGYM_LINK_FRACTIONS,
               negative_ratio: float = 1.0, seed: int = 0) -> jraph.GraphsTuple:
  """One graph's edge split with negatives, as an edge-level graph (module docstring).

  Args:
    graph: a host-side undirected graph (both directions stored; direction is ignored).
    fractions: (train, val, test) fractions of the undirected edges (GraphGym: 0.8/0.1/0.1).
    negative_ratio: negative pairs per positive pair, in every split.
    seed: seeds the edge permutation and the negatives.

  Returns:
    The graph with only the train edges (both directions; edge features dropped), node
    features kept (labels and node split masks dropped), and the pair arrays in globals.
  """
  if negative_ratio < 0:
    raise ValueError(f"negative_ratio must be >= 0, got {negative_ratio}")
  num_nodes = int(graph.n_node[0])
  edges = undirected_edges(graph)
  if len(edges) < 3:
    raise ValueError(f"a link split needs at least 3 undirected edges, the graph has {len(edges)}")
  rng = np.random.default_rng(seed)
  sizes = splits_lib.split_sizes(len(edges), fractions)
  order = rng.permutation(len(edges))
  positives = dict(zip(splits_lib.SPLIT_KEYS, np.split(edges[order], np.cumsum(sizes)[:-1])))
  num_negatives = [int(round(negative_ratio * len(positives[s]))) for s in splits_lib.SPLIT_KEYS]
  negatives_all = sample_negative_pairs(num_nodes, sum(num_negatives), edges, rng)
  negatives = dict(zip(splits_lib.SPLIT_KEYS,
                       np.split(negatives_all, np.cumsum(num_negatives)[:-1])))

  pairs, labels, owner = [], [], []
  for index, split in enumerate(splits_lib.SPLIT_KEYS):
    for part, label in ((positives[split], 1), (negatives[split], 0)):
      pairs.append(part)
      labels.append(np.full(len(part), label, np.int32))
      owner.append(np.full(len(part), index, np.int32))
  pairs_arr = np.concatenate(pairs).astype(np.int32)
  owner_arr = np.concatenate(owner)
  globals_ = {"pairs": pairs_arr[None], "pair_y": np.concatenate(labels)[None]}
  for index, split in enumerate(splits_lib.SPLIT_KEYS):
    globals_[f"pair_{split}_mask"] = (owner_arr == index)[None]
  train = positives["train"]
  senders = np.concatenate([train[:, 0], train[:, 1]])
  receivers = np.concatenate([train[:, 1], train[:, 0]])
  return make_graph(senders, receivers, num_nodes, {"x": graph.nodes["x"]},
                    graph_features=globals_)


def as_link_task(dataset: GraphDataset, name: str | None = None) -> GraphDataset:
  """The unsplit link-prediction task on a dataset's graphs (split it with `split_links`)."""
  if dataset.node_features_categorical:
    raise ValueError(f"{dataset.name}: link prediction needs float node features")
  return GraphDataset(name=name or f"{dataset.name}/link", graphs=list(dataset.graphs),
                      task_level=EDGE, task_type=BINARY, num_outputs=1,
                      report={**dataset.report, "link_source": dataset.name})


def pad_pairs(graphs: Sequence[jraph.GraphsTuple]) -> list[jraph.GraphsTuple]:
  """Pads every graph's pair arrays to the largest pair count Q (padded pairs are (0, 0), label
  0, in no split), so that graphs batch together (pair arrays are [1, Q, ...] per graph)."""
  num_pairs = max(g.globals["pairs"].shape[1] for g in graphs)

  def pad(value: np.ndarray) -> np.ndarray:
    width = [(0, 0), (0, num_pairs - value.shape[1])] + [(0, 0)] * (value.ndim - 2)
    return np.pad(value, width)

  return [g._replace(globals={k: pad(v) if k in PAIR_KEYS else v for k, v in g.globals.items()})
          for g in graphs]


def split_links(dataset: GraphDataset, fractions: Sequence[float] = GRAPHGYM_LINK_FRACTIONS,
                negative_ratio: float = 1.0, seed: int = 0) -> GraphDataset:
  """Applies `link_split` to every graph of an edge-level dataset (seed offset per graph) and
  pads the pair arrays to one length (`pad_pairs`)."""
  if dataset.task_level != EDGE:
    raise ValueError(f"{dataset.name} is a {dataset.task_level}-level task, not a link task")
  graphs = pad_pairs([link_split(g, fractions, negative_ratio, seed=seed * 100_003 + i)
                      for i, g in enumerate(dataset.graphs)])
  return GraphDataset(name=dataset.name, graphs=graphs, task_level=EDGE, task_type=BINARY,
                      num_outputs=1, report={**dataset.report, "link_split": {
                          "fractions": list(fractions), "negative_ratio": negative_ratio,
                          "seed": seed}})
