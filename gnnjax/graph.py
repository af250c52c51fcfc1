"""Helpers on `jraph.GraphsTuple`, the one graph type of gnnjax.

Two kinds of helper live here:

* Host-side structure edits (NumPy, data-dependent shapes, not jittable): `to_undirected`,
  `add_self_loops`, `remove_self_loops`, `sort_edges`. Data pipelines apply them once.
* Device-side quantities (jittable, static shapes): padding masks, per-node graph ids, degrees,
  symmetric GCN normalisation, `zero_out_padding`.

Padding follows jraph's convention: a padded graph ends with one padding graph that owns every
padding node and edge (padding edges are self-loops on the first padding node), followed by
empty graphs. All model code assumes its input is padded (see `gnnjax.batching`), so the masks
below are always meaningful; a graph that was never padded would have its last real graph
treated as padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph
import numpy as np

Array = jax.Array

# ----------------------------------------------------------------------------------------------
# Padding masks (jittable). Real = True.


def _jnp_counts(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
  # jraph indexes n_node with traced values; NumPy counts captured by a jitted function would
  # fail there, so the counts are made JAX arrays first.
  return graph._replace(n_node=jnp.asarray(graph.n_node), n_edge=jnp.asarray(graph.n_edge))


def node_mask(graph: jraph.GraphsTuple) -> Array:
  """bool [N]: True for real nodes of a padded graph."""
  return jraph.get_node_padding_mask(_jnp_counts(graph))


def edge_mask(graph: jraph.GraphsTuple) -> Array:
  """bool [E]: True for real edges of a padded graph."""
  return jraph.get_edge_padding_mask(_jnp_counts(graph))


def graph_mask(graph: jraph.GraphsTuple) -> Array:
  """bool [G]: True for real graphs of a padded graph."""
  return jraph.get_graph_padding_mask(_jnp_counts(graph))


def num_nodes(graph: jraph.GraphsTuple) -> int:
  """Static total node count N, read from the shape of the node arrays."""
  leaves = jax.tree.leaves(graph.nodes)
  if not leaves:
    raise ValueError("graph.nodes holds no arrays; gnnjax reads the static node count from them")
  return int(leaves[0].shape[0])


def node_graph_index(graph: jraph.GraphsTuple) -> Array:
  """int32 [N]: the graph each node belongs to."""
  n_graph = graph.n_node.shape[0]
  return jnp.repeat(jnp.arange(n_graph, dtype=jnp.int32), graph.n_node,
                    total_repeat_length=num_nodes(graph))


def zero_out_padding(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
  """Zeros every padded node, edge and graph feature (jraph's version uses removed JAX APIs)."""

  def _mask_leaves(tree, mask):
    def _mask(x):
      return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, jnp.zeros_like(x))
    return jax.tree.map(_mask, tree)

  return graph._replace(
      nodes=_mask_leaves(graph.nodes, node_mask(graph)),
      edges=_mask_leaves(graph.edges, edge_mask(graph)),
      globals=_mask_leaves(graph.globals, graph_mask(graph)))


# ----------------------------------------------------------------------------------------------
# Degrees and normalisation (jittable; padding edges never count).


def in_degree(graph: jraph.GraphsTuple, edge_weight: Array | None = None) -> Array:
  """float32 [N]: sum of (weights of) real edges arriving at each node."""
  w = edge_mask(graph).astype(jnp.float32)
  if edge_weight is not None:
    w = w * edge_weight
  return jax.ops.segment_sum(w, graph.receivers, num_segments=num_nodes(graph))


def out_degree(graph: jraph.GraphsTuple, edge_weight: Array | None = None) -> Array:
  """float32 [N]: sum of (weights of) real edges leaving each node."""
  w = edge_mask(graph).astype(jnp.float32)
  if edge_weight is not None:
    w = w * edge_weight
  return jax.ops.segment_sum(w, graph.senders, num_segments=num_nodes(graph))


def gcn_normalization(graph: jraph.GraphsTuple, add_self_loops: bool = True,
                      edge_weight: Array | None = None) -> tuple[Array, Array]:
  """Symmetric normalisation D^-1/2 (A + I) D^-1/2 of Kipf & Welling, without copying edges.

  Self-loops follow PyG's `add_remaining_self_loops`: existing self-loop edges are replaced by
  exactly one loop per node, whose weight is that of the node's last self-loop edge (1 if it
  has none). Without `add_self_loops`, self-loop edges count as ordinary edges.

  Args:
    graph: padded graph with E edges and N nodes.
    add_self_loops: whether to use A + I.
    edge_weight: optional float [E] weights of A.

  Returns:
    (edge_coef [E], self_coef [N]): out_i = self_coef_i x_i + sum_{e: j->i} edge_coef_e x_j.
    Padding edges (and replaced self-loop edges) get coefficient 0.
  """
  n = num_nodes(graph)
  emask = edge_mask(graph)
  w = emask.astype(jnp.float32) if edge_weight is None else jnp.where(emask, edge_weight, 0.0)
  if add_self_loops:
    is_loop = (graph.senders == graph.receivers) & emask
    edge_ids = jnp.arange(w.shape[0])
    last_loop = jax.ops.segment_max(jnp.where(is_loop, edge_ids, -1), graph.receivers,
                                    num_segments=n)
    self_w = jnp.where(last_loop >= 0, w[jnp.maximum(last_loop, 0)], 1.0)
    w = jnp.where(is_loop, 0.0, w)
  else:
    self_w = jnp.zeros((n,), w.dtype)
  deg = jax.ops.segment_sum(w, graph.receivers, num_segments=n) + self_w
  inv_sqrt = jnp.where(deg > 0, jax.lax.rsqrt(jnp.maximum(deg, 1e-30)), 0.0)
  edge_coef = inv_sqrt[graph.senders] * w * inv_sqrt[graph.receivers]
  return edge_coef, self_w * inv_sqrt * inv_sqrt


# ----------------------------------------------------------------------------------------------
# Host-side structure edits (NumPy; data-dependent output sizes).


def _map_edges(graph: jraph.GraphsTuple, index: np.ndarray, senders: np.ndarray,
               receivers: np.ndarray) -> jraph.GraphsTuple:
  """Rebuilds a single graph's edges from `index` into its old edge arrays."""
  edges = jax.tree.map(lambda e: np.asarray(e)[index], graph.edges)
  return graph._replace(senders=senders.astype(np.int32), receivers=receivers.astype(np.int32),
                        edges=edges, n_edge=np.array([len(senders)], np.int32))


def _require_single(graph: jraph.GraphsTuple, fn: str) -> None:
  if np.asarray(graph.n_node).shape[0] != 1:
    raise ValueError(f"{fn} works on one unbatched graph (n_node has shape "
                     f"{np.asarray(graph.n_node).shape}); apply it before batching")


def sort_edges(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
  """Sorts edges by (receiver, sender): CSR order, which makes segment ops faster on GPU."""
  s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
  order = np.lexsort((s, r))
  return _map_edges(graph, order, s[order], r[order]) if len(s) else graph


def remove_self_loops(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
  _require_single(graph, "remove_self_loops")
  s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
  keep = np.nonzero(s != r)[0]
  return _map_edges(graph, keep, s[keep], r[keep])


def add_self_loops(graph: jraph.GraphsTuple, edge_fill: float | int = 0) -> jraph.GraphsTuple:
  """Appends one self-loop per node (after removing existing ones); loop features = edge_fill."""
  graph = remove_self_loops(graph)
  n = int(np.asarray(graph.n_node)[0])
  loops = np.arange(n)
  s = np.concatenate([np.asarray(graph.senders), loops])
  r = np.concatenate([np.asarray(graph.receivers), loops])
  edges = jax.tree.map(
      lambda e: np.concatenate([np.asarray(e), np.full((n,) + e.shape[1:], edge_fill, e.dtype)]),
      graph.edges)
  return graph._replace(senders=s.astype(np.int32), receivers=r.astype(np.int32), edges=edges,
                        n_edge=np.array([len(s)], np.int32))


def to_undirected(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
  """Adds the reverse of every edge and drops duplicates (first occurrence's features kept).

  The result is sorted by (receiver, sender). Self-loops are kept once.
  """
  _require_single(graph, "to_undirected")
  s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
  both_s = np.concatenate([s, r])
  both_r = np.concatenate([r, s])
  source = np.concatenate([np.arange(len(s)), np.arange(len(s))])
  n = int(np.asarray(graph.n_node)[0])
  key = both_r.astype(np.int64) * max(n, 1) + both_s
  _, first = np.unique(key, return_index=True)  # unique sorts by key = (receiver, sender)
  return _map_edges(graph, source[first], both_s[first], both_r[first])
