"""Packing graphs into a few fixed padded shapes, so `jit` compiles a handful of times per dataset.

`PackedGraphs` holds a list of single graphs as flat concatenated NumPy arrays plus offsets, so
that a batch is a couple of vectorised gathers instead of a Python concatenation per graph.
A batch of B graphs is padded, as `jraph.pad_with_graphs` does, to a `Budget` drawn from a short
geometric ladder (`budget_ladder`): the smallest rung that fits the batch. Every batch therefore
has one of a few static shapes and carries jraph's padding structure, from which
`gnnjax.graph.{node,edge,graph}_mask` recover what is real.

    packed = PackedGraphs.from_graphs(dataset.graphs)
    ladder = budget_ladder(packed, batch_size=32)
    for batch in iterate_batches(packed, batch_size=32, ladder=ladder, rng=np.random.default_rng(0)):
      ...  # batch: padded GraphsTuple with 33 graph slots and a ladder rung's node/edge counts
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jraph
import numpy as np


class Budget(NamedTuple):
  """Padded sizes of a batch: total nodes, edges and graph slots (padding included)."""
  n_node: int
  n_edge: int
  n_graph: int


def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
  return np.concatenate([[0], np.cumsum(x)[:-1]]).astype(np.int64)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """Concatenation of arange(s, s + c) for each (s, c), vectorised."""
  total = int(counts.sum())
  return np.repeat(starts - _exclusive_cumsum(counts), counts) + np.arange(total)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  out = np.zeros((rows,) + x.shape[1:], x.dtype)
  out[:x.shape[0]] = x
  return out


@dataclasses.dataclass(frozen=True)
class PackedGraphs:
  """A list of graphs stored as concatenated arrays.

  Attributes:
    nodes, edges, globals: pytrees of arrays with all graphs' rows concatenated
      ([sum n_node, ...], [sum n_edge, ...], [G, ...]).
    senders, receivers: int32 [sum n_edge], node ids local to their graph.
    n_node, n_edge: int64 [G].
    node_offsets, edge_offsets: int64 [G], where each graph's rows start.
  """

  nodes: Any
  edges: Any
  globals: Any
  senders: np.ndarray
  receivers: np.ndarray
  n_node: np.ndarray
  n_edge: np.ndarray
  node_offsets: np.ndarray
  edge_offsets: np.ndarray

  @classmethod
  def from_graphs(cls, graphs: Sequence[jraph.GraphsTuple]) -> "PackedGraphs":
    if not graphs:
      raise ValueError("cannot pack an empty list of graphs")
    for i, g in enumerate(graphs):
      if np.asarray(g.n_node).shape != (1,):
        raise ValueError(f"graph {i} holds {np.asarray(g.n_node).shape[0]} graphs; pack single "
                         "graphs (unbatch first)")
    n_node = np.array([int(g.n_node[0]) for g in graphs], np.int64)
    n_edge = np.array([int(g.n_edge[0]) for g in graphs], np.int64)
    cat = lambda *xs: np.concatenate([np.asarray(x) for x in xs], axis=0)
    return cls(
        nodes=jax.tree.map(cat, *[g.nodes for g in graphs]),
        edges=jax.tree.map(cat, *[g.edges for g in graphs]),
        globals=jax.tree.map(cat, *[g.globals for g in graphs]),
        senders=cat(*[g.senders for g in graphs]).astype(np.int32),
        receivers=cat(*[g.receivers for g in graphs]).astype(np.int32),
        n_node=n_node,
        n_edge=n_edge,
        node_offsets=_exclusive_cumsum(n_node),
        edge_offsets=_exclusive_cumsum(n_edge),
    )

  def __len__(self) -> int:
    return int(self.n_node.shape[0])

  def gather(self, indices: Sequence[int], budget: Budget | None = None) -> jraph.GraphsTuple:
    """Batches the graphs at `indices` and pads them to `budget` (jraph's padding layout).

    With `budget=None` the batch is returned unpadded.
    """
    idx = np.asarray(indices, np.int64)
    n_node, n_edge = self.n_node[idx], self.n_edge[idx]
    node_rows = _ranges(self.node_offsets[idx], n_node)
    edge_rows = _ranges(self.edge_offsets[idx], n_edge)
    shift = np.repeat(_exclusive_cumsum(n_node), n_edge)
    senders = self.senders[edge_rows] + shift
    receivers = self.receivers[edge_rows] + shift
    nodes = jax.tree.map(lambda x: x[node_rows], self.nodes)
    edges = jax.tree.map(lambda x: x[edge_rows], self.edges)
    globals_ = jax.tree.map(lambda x: x[idx], self.globals)
    if budget is None:
      return jraph.GraphsTuple(nodes=nodes, edges=edges, senders=senders.astype(np.int32),
                               receivers=receivers.astype(np.int32), globals=globals_,
                               n_node=n_node.astype(np.int32), n_edge=n_edge.astype(np.int32))
    real_nodes, real_edges, real_graphs = int(n_node.sum()), int(n_edge.sum()), len(idx)
    if (budget.n_node < real_nodes + 1 or budget.n_edge < real_edges
        or budget.n_graph < real_graphs + 1):
      raise ValueError(f"batch of {real_graphs} graphs, {real_nodes} nodes, {real_edges} edges "
                       f"does not fit {budget} (needs one spare node and one spare graph slot)")
    # Like jraph.pad_with_graphs: one padding graph takes all padding nodes and edges; padding
    # edges are self-loops on the first padding node, so they never touch a real node.
    pad_id = real_nodes
    senders = np.concatenate([senders, np.full(budget.n_edge - real_edges, pad_id)])
    receivers = np.concatenate([receivers, np.full(budget.n_edge - real_edges, pad_id)])
    empty_graphs = budget.n_graph - real_graphs - 1
    return jraph.GraphsTuple(
        nodes=jax.tree.map(lambda x: _pad_rows(x, budget.n_node), nodes),
        edges=jax.tree.map(lambda x: _pad_rows(x, budget.n_edge), edges),
        senders=senders.astype(np.int32),
        receivers=receivers.astype(np.int32),
        globals=jax.tree.map(lambda x: _pad_rows(x, budget.n_graph), globals_),
        n_node=np.concatenate([n_node, [budget.n_node - real_nodes], np.zeros(empty_graphs)]
                              ).astype(np.int32),
        n_edge=np.concatenate([n_edge, [budget.n_edge - real_edges], np.zeros(empty_graphs)]
                              ).astype(np.int32),
    )


def _round_up(x: float, multiple: int) -> int:
  return int(math.ceil(x / multiple) * multiple)


def budget_ladder(packed: PackedGraphs, batch_size: int, growth: float = 1.25,
                  node_multiple: int = 8, edge_multiple: int = 64) -> list[Budget]:
  """A short ladder of budgets that fits any batch of at most `batch_size` graphs.

  The lowest rung is the expected size of a batch (mean graph size x batch size); each rung
  grows by `growth`; the top rung is the worst case (the `batch_size` largest graphs), so
  every batch fits somewhere. With growth 1.25 and typical size spreads this is 2-8 shapes,
  and padding wastes at most 25% above the expected size.

  Returns:
    Budgets sorted from smallest to largest, each with n_graph = batch_size + 1.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  b = min(batch_size, len(packed))
  worst_nodes = int(np.sort(packed.n_node)[::-1][:b].sum())
  worst_edges = int(np.sort(packed.n_edge)[::-1][:b].sum())
  top = Budget(_round_up(worst_nodes + 1, node_multiple), _round_up(max(worst_edges, 1),
                                                                    edge_multiple), b + 1)
  mean_nodes = float(packed.n_node.mean()) * b
  mean_edges = float(packed.n_edge.mean()) * b
  ladder = []
  scale = 1.0
  while True:
    rung = Budget(_round_up(mean_nodes * scale + 1, node_multiple),
                  _round_up(max(mean_edges * scale, 1), edge_multiple), b + 1)
    if rung.n_node >= top.n_node and rung.n_edge >= top.n_edge:
      break
    ladder.append(Budget(min(rung.n_node, top.n_node), min(rung.n_edge, top.n_edge), b + 1))
    scale *= growth
  ladder.append(top)
  return sorted(set(ladder))


def fit_budget(ladder: Sequence[Budget], n_node: int, n_edge: int) -> Budget:
  """The smallest rung with room for `n_node` real nodes (+1 padding) and `n_edge` edges."""
  for rung in ladder:
    if rung.n_node >= n_node + 1 and rung.n_edge >= n_edge:
      return rung
  raise ValueError(f"no budget in the ladder fits {n_node} nodes and {n_edge} edges; largest is "
                   f"{ladder[-1]}")


def iterate_batches(packed: PackedGraphs, batch_size: int, ladder: Sequence[Budget] | None = None,
                    rng: np.random.Generator | None = None, indices: Sequence[int] | None = None,
                    drop_last: bool = False) -> Iterator[jraph.GraphsTuple]:
  """Yields padded batches of `batch_size` graphs (the last one may be smaller).

  Args:
    packed: the graphs.
    batch_size: real graphs per batch.
    ladder: budgets to pad to (default: `budget_ladder(packed, batch_size)`).
    rng: if given, the order is shuffled with it (pass a per-epoch generator for resumable,
      reproducible order); otherwise graphs come in index order.
    indices: restrict to these graphs (e.g. a split).
    drop_last: drop a final partial batch.
  """
  for chunk, budget in _planned_batches(packed, batch_size, ladder, rng, indices, drop_last):
    yield packed.gather(chunk, budget)


def iterate_budgets(packed: PackedGraphs, batch_size: int, ladder: Sequence[Budget] | None = None,
                    rng: np.random.Generator | None = None, indices: Sequence[int] | None = None,
                    drop_last: bool = False) -> Iterator[Budget]:
  """The budget of each batch `iterate_batches` yields with the same arguments, without
  gathering the batches (e.g. to compile every batch shape of a run before it starts)."""
  for _, budget in _planned_batches(packed, batch_size, ladder, rng, indices, drop_last):
    yield budget


def _planned_batches(packed: PackedGraphs, batch_size: int, ladder: Sequence[Budget] | None,
                     rng: np.random.Generator | None, indices: Sequence[int] | None,
                     drop_last: bool) -> Iterator[tuple[np.ndarray, Budget]]:
  """(graph indices, budget) of each batch: the one plan behind iterate_batches/_budgets."""
  ladder = ladder or budget_ladder(packed, batch_size)
  order = np.arange(len(packed)) if indices is None else np.asarray(indices, np.int64)
  if rng is not None:
    order = rng.permutation(order)
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    if drop_last and len(chunk) < batch_size:
      break
    yield chunk, fit_budget(ladder, int(packed.n_node[chunk].sum()),
                            int(packed.n_edge[chunk].sum()))


def pad_single_graph(graph: jraph.GraphsTuple, node_multiple: int = 8,
                     edge_multiple: int = 64) -> jraph.GraphsTuple:
  """Pads one graph (e.g. a transductive node task) to rounded sizes for full-batch training."""
  packed = PackedGraphs.from_graphs([graph])
  n, e = int(packed.n_node[0]), int(packed.n_edge[0])
  return packed.gather([0], Budget(_round_up(n + 1, node_multiple),
                                   _round_up(max(e, 1), edge_multiple), 2))
