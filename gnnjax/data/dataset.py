"""The dataset container every loader returns.

A `GraphDataset` is a list of host-side (NumPy) `jraph.GraphsTuple`s, one graph each, plus the
task description the training code needs. Conventions shared by all loaders:

* `graph.nodes` is a dict. `'x'` holds node features: float32 `[n, F]`, or int32 `[n, K]` for
  categorical features that a model embeds (molecules: atom type, chirality). Node-level tasks
  add `'y'` (int32 `[n]` class ids, or float32 `[n, T]`) and, when some nodes have no label,
  `'label_mask'` (bool `[n]`). Transductive splits add bool `'train_mask'`, `'val_mask'`,
  `'test_mask'` (see `gnnjax.data.splits.with_node_split`).
* `graph.edges` is a dict (possibly empty): `'x'` float32 `[e, Fe]` or int32 `[e, K]`.
* `graph.globals` is a dict. Graph-level tasks put the label in `'y'` with a leading graph axis:
  int32 `[1]` (multiclass / binary class ids) or float32 `[1, T]` (multi-task binary targets in
  {0, 1}, or regression targets), with `'y_mask'` bool `[1, T]` where labels may be missing.
* `senders` / `receivers` are int32 `[e]`; an undirected graph stores both directions.
* `n_node` / `n_edge` are int32 `[1]`.

Keeping labels and masks inside the GraphsTuple means batching and padding (jraph pads every
leaf of nodes/edges/globals) carry them along with no extra bookkeeping.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jraph
import numpy as np

NODE = "node"
EDGE = "edge"  # link prediction: one logit per query node pair (see gnnjax.data.links)
GRAPH = "graph"
TASK_LEVELS = (NODE, EDGE, GRAPH)

MULTICLASS = "multiclass"  # one label per example, `num_classes` >= 2 logits, softmax CE
BINARY = "binary"  # one {0,1} label per example, one logit, sigmoid BCE
MULTITASK = "multitask"  # T independent {0,1} labels with missing-label mask, T logits
REGRESSION = "regression"  # T real targets (optionally masked), T outputs, MSE/MAE
TASK_TYPES = (MULTICLASS, BINARY, MULTITASK, REGRESSION)


@dataclasses.dataclass
class GraphDataset:
  """A collection of graphs and the task defined on them.

  Attributes:
    name: dataset name, e.g. 'cora', 'MUTAG', 'bbbp', 'smallworld/clustering'.
    graphs: host-side graphs, one `GraphsTuple` per graph (conventions in the module doc).
    task_level: 'node' (labels on nodes), 'edge' (labels on node pairs, gnnjax.data.links) or
      'graph' (one label per graph).
    task_type: one of TASK_TYPES.
    num_outputs: width of the model output: number of classes for multiclass, 1 for binary,
      number of tasks for multitask and regression.
    report: loader facts worth logging (source files, skipped rows and why, label remaps).
  """

  name: str
  graphs: list[jraph.GraphsTuple]
  task_level: str
  task_type: str
  num_outputs: int
  report: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.task_level not in TASK_LEVELS:
      raise ValueError(f"task_level must be one of {TASK_LEVELS}, got {self.task_level!r}")
    if self.task_type not in TASK_TYPES:
      raise ValueError(f"task_type must be one of {TASK_TYPES}, got {self.task_type!r}")
    if not self.graphs:
      raise ValueError(f"dataset {self.name!r} has no graphs")

  def __len__(self) -> int:
    return len(self.graphs)

  @property
  def num_node_features(self) -> int:
    """Width of `nodes['x']` (number of columns; categorical features count their columns)."""
    return int(self.graphs[0].nodes["x"].shape[1])

  @property
  def node_features_categorical(self) -> bool:
    return np.issubdtype(self.graphs[0].nodes["x"].dtype, np.integer)

  @property
  def num_edge_features(self) -> int:
    edges = self.graphs[0].edges or {}
    return int(edges["x"].shape[1]) if "x" in edges else 0

  @property
  def graph_labels(self) -> np.ndarray:
    """Graph-level labels stacked over graphs: `[G]` ints or `[G, T]` floats."""
    return np.concatenate([g.globals["y"] for g in self.graphs], axis=0)

  def subset(self, indices: Sequence[int], name: str | None = None) -> "GraphDataset":
    """A dataset holding the graphs at `indices` (same task)."""
    return dataclasses.replace(
        self, name=name or self.name, graphs=[self.graphs[int(i)] for i in indices])

  def summary(self) -> str:
    n_nodes = sum(int(g.n_node[0]) for g in self.graphs)
    n_edges = sum(int(g.n_edge[0]) for g in self.graphs)
    return (f"{self.name}: {len(self.graphs)} graph(s), {n_nodes} nodes, {n_edges} directed edges, "
            f"{self.num_node_features} node features, {self.task_level}-level {self.task_type} "
            f"with {self.num_outputs} output(s)")


def make_graph(
    senders: np.ndarray,
    receivers: np.ndarray,
    num_nodes: int,
    node_features: dict[str, np.ndarray],
    edge_features: dict[str, np.ndarray] | None = None,
    graph_features: dict[str, np.ndarray] | None = None,
) -> jraph.GraphsTuple:
  """Builds one host-side graph with the dtype conventions of this module."""
  senders = np.asarray(senders, dtype=np.int32)
  receivers = np.asarray(receivers, dtype=np.int32)
  if senders.shape != receivers.shape or senders.ndim != 1:
    raise ValueError(f"senders/receivers must be equal-length vectors, got {senders.shape} "
                     f"and {receivers.shape}")
  for key, value in node_features.items():
    if value.shape[0] != num_nodes:
      raise ValueError(f"nodes[{key!r}] has {value.shape[0]} rows, expected {num_nodes}")
  for key, value in (edge_features or {}).items():
    if value.shape[0] != senders.shape[0]:
      raise ValueError(f"edges[{key!r}] has {value.shape[0]} rows, expected {senders.shape[0]}")
  return jraph.GraphsTuple(
      nodes=dict(node_features),
      edges=dict(edge_features or {}),
      senders=senders,
      receivers=receivers,
      globals=dict(graph_features or {}),
      n_node=np.array([num_nodes], dtype=np.int32),
      n_edge=np.array([senders.shape[0]], dtype=np.int32),
  )


class DataFormatError(ValueError):
  """A dataset file is malformed; the message names the file, line or value and what was expected."""
