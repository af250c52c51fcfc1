"""Dilated k-nearest-neighbour graphs (DeepGCNs), built on device from node features.

DeepGCNs (Li et al., ICCV'19) recompute a k-NN graph from the current features in every block
and dilate it: of the k*d nearest neighbours (sorted, self first), keep ranks 0, d, 2d, ...,
(k-1)d, so N^(d)(v) = {u_1, u_(1+d), ..., u_(1+(k-1)d)}. Stochastic dilation (training only):
with probability epsilon per call, keep instead a random subset of k of the k*d neighbours
(one subset shared by every point of the batch, as the reference implementation draws it).

Distances are squared Euclidean, -2 x x^T + |x|^2 + |x|^2^T, computed under stop_gradient: no
gradient flows through the graph construction (the indices are integers anyway). Self is
always the first neighbour (its distance is forced below every other, so duplicated points
cannot displace it).

Two layouts, one result:

* **Flat** (`points_per_graph=None`): one [N, N] distance matrix over the whole padded batch;
  pairs of nodes of different graphs (the padding graph included) get distance +inf. Works for
  any padded batch; O(N^2) memory and time.
* **Blocked** (`points_per_graph=P`): every real graph has exactly P nodes (point clouds of equal
  size). Real nodes then fill the first B*P rows, so the first floor(N/P)*P rows are reshaped to
  [N/P, P, F] and searched per block (O(N P)); the remaining padding rows get self-loops. The
  graph-id mask is applied inside blocks too, so a batch that violates the equal-size
  assumption gets a wrong (smaller) neighbourhood but still never connects two graphs.

The result is the input graph with new senders/receivers: E = N*k edges, edge e = (sender
neighbour j -> receiver i) with receivers sorted (node i owns edges [i*k, (i+1)*k)), and
n_edge = k * n_node, so `gnnjax.graph.edge_mask` masks exactly the padding graph's edges. Those
are self-loops on padding nodes, so padding never touches a real node even unmasked. A
neighbour slot that cannot be filled within the node's own graph (the graph has fewer than
k*d nodes) is filled with the node itself (a duplicate self-loop: neutral for max
aggregation, extra self weight for mean/sum).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph

from gnnjax import graph as graph_lib

Array = jax.Array

STOCHASTIC_EPSILON = 0.2  # DeepGCNs' default probability of a stochastic dilation


def pairwise_sq_distances(x: Array) -> Array:
  """float [..., M, F] -> [..., M, M] squared distances -2 x x^T + |x|^2 + |x|^2^T."""
  inner = jnp.einsum("...if,...jf->...ij", x, x)
  sq = jnp.sum(x * x, axis=-1)
  return -2.0 * inner + sq[..., :, None] + sq[..., None, :]


def effective_dilation(k: int, dilation: int, num_candidates: int) -> int:
  """The dilation actually used: the largest d' <= dilation with k * d' <= num_candidates."""
  if k < 1 or dilation < 1:
    raise ValueError(f"k and dilation must be >= 1, got k={k}, dilation={dilation}")
  if k > num_candidates:
    raise ValueError(f"k={k} neighbours asked for among only {num_candidates} candidate nodes")
  return max(1, min(dilation, num_candidates // k))


def dilation_ranks(k: int, dilation: int | Array, *, train: bool = False,
                   stochastic: bool = False, epsilon: float = STOCHASTIC_EPSILON,
                   rng: Array | None = None, max_dilation: int | None = None) -> Array:
  """int32 [k]: which of the k*dilation sorted neighbours to keep.

  Deterministic: 0, d, ..., (k-1)d. Stochastic (only when `train` and `stochastic`): with
  probability `epsilon`, the first k of a random permutation of range(k*d) instead. A traced
  `dilation` (e.g. inside a scan over blocks) needs a static `max_dilation` >= it: the random
  subset is then drawn by sorting random scores over range(k*max_dilation), the ranks >= k*d
  excluded, which gives the same distribution.
  """
  regular = jnp.arange(k, dtype=jnp.int32) * dilation
  if not (train and stochastic):
    return regular
  if rng is None:
    raise ValueError("stochastic dilation in training needs an rng key")
  coin_key, perm_key = jax.random.split(rng)
  if max_dilation is None:
    subset = jax.random.permutation(perm_key, k * dilation)[:k].astype(jnp.int32)
  else:
    scores = jax.random.uniform(perm_key, (k * max_dilation,))
    scores = jnp.where(jnp.arange(k * max_dilation) < k * dilation, scores, 2.0)
    subset = jnp.argsort(scores)[:k].astype(jnp.int32)
  return jnp.where(jax.random.uniform(coin_key) < epsilon, subset, regular)


def dilated_knn_indices(x: Array, graph_ids: Array, k: int, dilation: int | Array = 1, *,
                        train: bool = False, stochastic: bool = False,
                        epsilon: float = STOCHASTIC_EPSILON, rng: Array | None = None,
                        max_dilation: int | None = None) -> Array:
  """Dilated k-NN within groups of rows.

  Args:
    x: float [B, M, F] features (B independent blocks of M rows).
    graph_ids: int [B, M]; rows with different ids never become neighbours.
    k: neighbours kept per row.
    dilation: d; clipped so that k*d <= M (see `effective_dilation`). May be traced if
      `max_dilation` is given.
    train, stochastic, epsilon, rng: stochastic dilation (see `dilation_ranks`).
    max_dilation: static upper bound of a traced `dilation`: the k*max_dilation nearest are
      sorted once and the dilated ranks picked from them (same result as the static path).

  Returns:
    int32 [B, M, k] neighbour row indices within the block; column 0 is the row itself; slots
    without a same-id neighbour hold the row itself.
  """
  if x.ndim != 3 or graph_ids.shape != x.shape[:2]:
    raise ValueError(f"expected x [B, M, F] and graph_ids [B, M], got {x.shape} and "
                     f"{graph_ids.shape}")
  m = x.shape[1]
  if max_dilation is None:
    d = d_max = effective_dilation(k, dilation, m)
  else:
    d_max = effective_dilation(k, max_dilation, m)
    d = jnp.clip(jnp.asarray(dilation, jnp.int32), 1, d_max)
  x = jax.lax.stop_gradient(x)
  dist = pairwise_sq_distances(x)
  same = graph_ids[:, :, None] == graph_ids[:, None, :]
  dist = jnp.where(same, dist, jnp.inf)
  eye = jnp.eye(m, dtype=bool)
  dist = jnp.where(eye, -jnp.inf, dist)  # self first, whatever the rounding
  # [B, M, k*d], ascending distance, ties: lower index first.
  _, nearest = jax.lax.top_k(-dist, k * d_max)
  ranks = dilation_ranks(k, d, train=train, stochastic=stochastic, epsilon=epsilon, rng=rng,
                         max_dilation=None if max_dilation is None else d_max)
  nbr = jnp.take(nearest, ranks, axis=-1).astype(jnp.int32)
  self_idx = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[None, :, None], nbr.shape)
  nbr_ids = jnp.take_along_axis(graph_ids[:, :, None], nbr.reshape(nbr.shape[0], -1, 1),
                                axis=1).reshape(nbr.shape)
  return jnp.where(nbr_ids == graph_ids[:, :, None], nbr, self_idx)


def knn_graph(x: Array, graph: jraph.GraphsTuple, k: int, dilation: int | Array = 1, *,
              points_per_graph: int | None = None, train: bool = False, stochastic: bool = False,
              epsilon: float = STOCHASTIC_EPSILON, rng: Array | None = None,
              max_dilation: int | None = None) -> jraph.GraphsTuple:
  """The dilated k-NN graph of `x` per graph of a padded batch.

  Args:
    x: float [N, F] node features (the padded batch's nodes; padding rows are ignored).
    graph: the padded batch (n_node gives graph membership and padding).
    k: neighbours per node (self included).
    dilation: DeepGCNs' dilation d (clipped so that k*d fits the candidates).
    points_per_graph: P for the blocked layout (every real graph has exactly P nodes), or None
      for the flat [N, N] search.
    train, stochastic, epsilon, rng: stochastic dilation, used only when train and stochastic.
    max_dilation: static bound that allows a traced `dilation` (see `dilated_knn_indices`).

  Returns:
    `graph` with senders/receivers int32 [N*k], n_edge = k * n_node, and edges {} (the input
    graph's edge features do not apply to the new edges).
  """
  n = x.shape[0]
  if x.ndim != 2:
    raise ValueError(f"x must be [N, F], got shape {x.shape}")
  ids = graph_lib.node_graph_index(graph)
  real = graph_lib.node_mask(graph)
  # Zeros on padding rows keep huge padding values from turning distances into NaN.
  x = jnp.where(real[:, None], x, 0.0)
  if points_per_graph is None:
    senders = dilated_knn_indices(x[None], ids[None], k, dilation, train=train,
                                  stochastic=stochastic, epsilon=epsilon, rng=rng,
                                  max_dilation=max_dilation)[0]
  else:
    p = int(points_per_graph)
    if p < 1:
      raise ValueError(f"points_per_graph must be >= 1, got {points_per_graph}")
    blocks = n // p
    if blocks == 0:
      raise ValueError(f"batch of {n} nodes holds no block of points_per_graph={p} nodes")
    covered = blocks * p
    local = dilated_knn_indices(x[:covered].reshape(blocks, p, -1),
                                ids[:covered].reshape(blocks, p), k, dilation, train=train,
                                stochastic=stochastic, epsilon=epsilon, rng=rng,
                                max_dilation=max_dilation)
    offsets = (jnp.arange(blocks, dtype=jnp.int32) * p)[:, None, None]
    senders = (local + offsets).reshape(covered, k)
    tail = jnp.broadcast_to(jnp.arange(covered, n, dtype=jnp.int32)[:, None], (n - covered, k))
    senders = jnp.concatenate([senders, tail], axis=0)
  receivers = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
  senders = senders.reshape(-1)
  # Padding receivers keep only self-loops (jraph: padding edges stay on padding nodes).
  senders = jnp.where(real[receivers], senders, receivers)
  return graph._replace(senders=senders, receivers=receivers, edges={},
                        n_edge=jnp.asarray(graph.n_node) * k)
