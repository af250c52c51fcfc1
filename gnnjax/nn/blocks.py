"""Sum, max, min, GCN's normalised sum and GAT's attention over a batch of small graphs as
dense per-graph blocks.

A padded batch of G graphs with at most M nodes each is also a block-diagonal adjacency. Held
as G dense [M, M] blocks, the sum over incoming edges is one batched matmul,

    out[g] = A[g] @ h[g],   A[g][i, j] = number of real edges from local node j to local node i,

instead of a gather of E messages and a scatter back onto N nodes. On an accelerator the
matmul costs 2 G M^2 D flops and moves only the [N, D] node states, where the scatter moves
(and atomically adds) an [E, D] message array; for small, dense graphs (GraphGym's synthetic
tasks: M = 64, about 11 edges per node) that is the cheaper side. Nodes go to their blocks
and back by gathers (graph g's nodes are contiguous in a jraph batch), in both the forward
and the backward pass (each move's transpose is the other move).

Max and min (`block_max`, `block_min`) reduce the same blocks: out[g, i] = max over the j with
A[g][i, j] > 0 of h[g, j], a broadcast, select and reduction that XLA fuses into one kernel
reading the [G, M, D] states (G M^2 D compares, no [E, D] message array written or scattered).
Their backward pass is written by hand so that it also stays in fused reductions and splits
the cotangent as the scatter-max's does (below). On CUDA GPUs the same three reductions (max,
tie count, cotangent split) run as Pallas kernels (`gnnjax.nn.block_kernels`: one program per
graph and column tile, its running max in registers), 1.4-1.7x faster than XLA's fusions on an
H200; `kernel=` picks either explicitly.

The structure (`graph_blocks`) depends only on the batch, so under `jax.vmap` over a
population of models sharing the batch it is built once, and the matmul runs for every member
at once against the same blocks.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
from jax import ad_checkpoint
from jax import lax
import jax.numpy as jnp
import jraph

from gnnjax import graph as graph_lib
from gnnjax.nn import block_kernels

Array = jax.Array

# The name of block_max's forward result (`jax.ad_checkpoint.checkpoint_name`): a
# rematerialised layer that saves it runs one masked reduction fewer in its backward pass.
REMAT_NAME = "block_extreme"


class GraphBlocks(NamedTuple):
  """A padded batch of G graph slots viewed as dense [M, M] blocks (see `graph_blocks`).

  Attributes:
    adjacency: float32 [G, M, M]; adjacency[g, i, j] = real edges from graph g's local node j
      to its local node i (padding graph and padding edges excluded).
    node_index: int32 [G, M], flat index of graph g's local node j (0 where it has none).
    present: bool [G, M], graph g has a local node j (False for every slot of the padding
      graph).
    block_row: int32 [N], the row of node n in the flattened [G * M] blocks; G * M (one past
      the end, a zero row) for padding nodes.
  """

  adjacency: Array
  node_index: Array
  present: Array
  block_row: Array


def graph_blocks(graph: jraph.GraphsTuple, max_nodes: int) -> GraphBlocks:
  """The per-graph dense blocks of a padded batch (jittable).

  Args:
    graph: a padded batch (jraph layout: the last graph slot with nodes is padding).
    max_nodes: M, static; every real graph must have at most M nodes. The caller checks this
      against its data (a larger graph's extra nodes would be dropped silently: shapes inside
      jit cannot depend on the batch).

  Returns:
    GraphBlocks with G = the batch's graph slots.
  """
  n = graph_lib.num_nodes(graph)
  n_node = jnp.asarray(graph.n_node, jnp.int32)
  g = n_node.shape[0]
  m = int(max_nodes)
  node_graph = graph_lib.node_graph_index(graph)
  offsets = jnp.cumsum(n_node) - n_node
  local = jnp.arange(n, dtype=jnp.int32) - offsets[node_graph]
  real_node = graph_lib.node_mask(graph) & (local < m)
  block_row = jnp.where(real_node, node_graph * m + local, g * m)
  edge_real = graph_lib.edge_mask(graph)
  senders, receivers = jnp.asarray(graph.senders), jnp.asarray(graph.receivers)
  cell = block_row[receivers] * m + local[senders]
  edge_real = edge_real & real_node[receivers] & real_node[senders]
  adjacency = jnp.zeros(g * m * m, jnp.float32).at[jnp.where(edge_real, cell, g * m * m)].add(
      1.0, mode="drop")
  slot = jnp.arange(m, dtype=jnp.int32)[None, :]
  present = (slot < n_node[:, None]) & graph_lib.graph_mask(graph)[:, None]
  node_index = jnp.where(present, offsets[:, None] + slot, 0)
  return GraphBlocks(adjacency.reshape(g, m, m), node_index, present, block_row)


def to_blocks(blocks: GraphBlocks, values: Array) -> Array:
  """[N, ...] node values -> [G, M, ...] per-graph blocks (zeros where a graph has no node)."""
  return _to_blocks(blocks.node_index, blocks.present, blocks.block_row, values)


def from_blocks(blocks: GraphBlocks, values: Array) -> Array:
  """[G, M, ...] per-graph blocks -> [N, ...] node values (zeros for padding nodes)."""
  return _from_blocks(blocks.node_index, blocks.present, blocks.block_row, values)


# The two moves are transposes of each other: every present block slot holds exactly one
# real node and every real node (local index < M) one slot, so each direction's vector-Jacobian
# product is the other direction's gather. Autodiff of a gather would scatter-add instead
# (atomics, the largest kernel of a population step on the H200).


def _gather_to_blocks(node_index, present, block_row, values):
  del block_row
  gathered = values[node_index]
  return jnp.where(present.reshape(present.shape + (1,) * (values.ndim - 1)), gathered, 0)


def _gather_from_blocks(node_index, present, block_row, values):
  del node_index
  g, m = present.shape
  flat = values.reshape((g * m,) + values.shape[2:])
  flat = jnp.concatenate([flat, jnp.zeros((1,) + flat.shape[1:], flat.dtype)])
  return flat[block_row]


def _with_transpose(move, transpose):
  """`move`(node_index, present, block_row, values) whose VJP is `transpose` of the same
  index arrays (which get no cotangent)."""
  moved = jax.custom_vjp(move)
  moved.defvjp(lambda *args: (move(*args), args[:3]),
               lambda indices, cotangent: (None, None, None, transpose(*indices, cotangent)))
  return moved


_to_blocks = _with_transpose(_gather_to_blocks, _gather_from_blocks)
_from_blocks = _with_transpose(_gather_from_blocks, _gather_to_blocks)


def block_sum(blocks: GraphBlocks, values: Array) -> Array:
  """[N, D] -> [N, D]: per node, the sum of `values` over its incoming real edges (with
  multiplicity); what `aggregate.segment_sum(values[senders], receivers, N, edge_mask)` gives.

  The matmul runs at HIGHEST precision: on GPUs the default would round to TF32, and its
  flops are few next to the layer's own matmul."""
  summed = jnp.einsum("gij,gjd->gid", blocks.adjacency, to_blocks(blocks, values),
                      precision=jax.lax.Precision.HIGHEST)
  return from_blocks(blocks, summed)


def block_count(blocks: GraphBlocks) -> Array:
  """float32 [N]: incoming real edges per node (`aggregate.segment_count`)."""
  return from_blocks(blocks, blocks.adjacency.sum(axis=-1))


def _edge_counts(blocks: GraphBlocks, self_loops: bool) -> Array:
  """float32 [G, M, M] edge counts j -> i; with `self_loops`, each real node's self-loop edges
  replaced by exactly one loop (as PyG's GCNConv and GATConv do)."""
  if not self_loops:
    return blocks.adjacency
  diagonal = jnp.eye(blocks.adjacency.shape[-1], dtype=bool)[None]
  return jnp.where(diagonal, blocks.present[:, :, None].astype(blocks.adjacency.dtype),
                   blocks.adjacency)


def block_gcn(blocks: GraphBlocks, values: Array, self_loops: bool = True) -> Array:
  """GCN's symmetric normalised sum D^-1/2 (A + I) D^-1/2 values on the blocks
  (`conv.GCNConv` with unit edge weights; `graph.gcn_normalization`).

  Args:
    blocks: the batch's blocks.
    values: [N, D] node states (W x).
    self_loops: A + I with every real node's self-loop edges replaced by exactly one loop (as
      PyG's `add_remaining_self_loops` does for unit weights); False: self-loop edges count
      as ordinary edges and no loop is added.

  Returns:
    [N, D]: out_i = sum_j c_ij / sqrt(deg_i deg_j) values_j over the block's cells, c the
    (self-loop adjusted) edge counts and deg_i = sum_j c_ij; zeros for padding nodes and for
    nodes of degree 0. What the edge path (a gather of [E, D] messages and a segment sum)
    gives, as one batched matmul scaled on both sides.
  """
  counts = _edge_counts(blocks, self_loops)  # [G, M, M] edges j -> i
  degree = counts.sum(axis=-1, keepdims=True)  # [G, M, 1]
  inv_sqrt = jnp.where(degree > 0, lax.rsqrt(jnp.maximum(degree, 1e-30)), 0.0)
  summed = jnp.einsum("gij,gjd->gid", counts, inv_sqrt * to_blocks(blocks, values),
                      precision=jax.lax.Precision.HIGHEST)
  return from_blocks(blocks, inv_sqrt * summed)


def block_attention(blocks: GraphBlocks, values: Array, score_src: Array, score_dst: Array,
                    negative_slope: float = 0.2, self_loops: bool = True) -> Array:
  """GAT's attention-weighted sum on the blocks (`conv.GATConv`, v1 scoring).

  Args:
    blocks: the batch's blocks.
    values: [N, H, F] per-head node states (W x).
    score_src, score_dst: [N, H], a_src . W x and a_dst . W x.
    negative_slope: of the LeakyReLU on the scores.
    self_loops: every real node attends to itself once, in place of any self-loop edges (as
      PyG's GATConv and the edge path do).

  Returns:
    [N, H, F]: per node i and head h, sum over incoming real edges j -> i (with multiplicity)
    of alpha_ijh values[j, h], alpha = softmax over those edges of LeakyReLU(score_dst[i] +
    score_src[j]); zeros for padding nodes. What the edge path (one gather of [E, H, F]
    messages, three segment reductions) gives, as [G, M, M, H] logits and one batched matmul
    with no [E, H, F] message array (on the 2-core CPU as fast as the edge path, whose cost
    there is GAT's projection; on GPUs not measured yet).
  """
  counts = _edge_counts(blocks, self_loops)  # [G, M, M] edges j -> i
  src, dst = to_blocks(blocks, score_src), to_blocks(blocks, score_dst)  # [G, M, H]
  logits = dst[:, :, None, :] + src[:, None, :, :]  # [G, i, j, H]
  logits = jnp.where(logits >= 0, logits, negative_slope * logits)
  connected = (counts > 0)[..., None]
  # The max only shifts the softmax (it cancels), so no gradient flows through it.
  row_max = jnp.max(jnp.where(connected, logits, -jnp.inf), axis=2, keepdims=True)
  row_max = lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  weights = counts[..., None] * jnp.exp(jnp.where(connected, logits - row_max, -jnp.inf))
  total = weights.sum(axis=2, keepdims=True)
  alpha = weights / jnp.where(total > 0, total, 1.0)
  out = jnp.einsum("gijh,gjhf->gihf", alpha, to_blocks(blocks, values),
                   precision=jax.lax.Precision.HIGHEST)
  return from_blocks(blocks, out)


def block_max(blocks: GraphBlocks, values: Array, kernel: str = "auto") -> Array:
  """[N, D] -> [N, D]: per node and channel, the max of `values` over its incoming real edges,
  0 where it has none; what `aggregate.segment_max(values[senders], receivers, N, edge_mask)`
  gives, gradients included (ties share the cotangent in proportion to their edge counts, as
  the scatter-max's gradient splits it over the tied messages).

  `kernel`: 'auto' (Pallas kernels on CUDA GPUs, XLA's fused reduction elsewhere), 'xla',
  'pallas' (`block_kernels`; GPUs only) or 'interpret' (the Pallas kernels, interpreted: any
  backend, slow; for tests)."""
  return _block_extreme(blocks, values, negate=False, kernel=kernel)


def block_min(blocks: GraphBlocks, values: Array, kernel: str = "auto") -> Array:
  """[N, D] -> [N, D]: `block_max`'s minimum counterpart (`aggregate.segment_min`)."""
  return _block_extreme(blocks, values, negate=True, kernel=kernel)


def _block_extreme(blocks: GraphBlocks, values: Array, negate: bool, kernel: str) -> Array:
  if kernel not in KERNELS:
    raise ValueError(f"unknown block max kernel {kernel!r}; choose from {KERNELS}")
  h = to_blocks(blocks, -values if negate else values)
  extreme = _masked_block_max(kernel, blocks.adjacency, h)
  # Nodes without incoming edges get 0, as the scatter's (their max is -inf here).
  has_edges = (blocks.adjacency > 0).any(axis=-1)[..., None]
  extreme = jnp.where(has_edges, extreme, 0.0)
  return from_blocks(blocks, -extreme if negate else extreme)


def _xla_masked_max(adjacency: Array, h: Array) -> Array:
  """[G, M, M] edge counts, [G, M, D] states -> [G, M, D]: max over j with adjacency[g, i, j]
  > 0 of h[g, j] (-inf for a row without edges), one fused XLA reduction."""
  connected = (adjacency > 0)[..., None]
  return jnp.max(jnp.where(connected, h[:, None, :, :], -jnp.inf), axis=2)


def _xla_masked_max_grad(adjacency: Array, h: Array, out: Array, cotangent: Array) -> Array:
  """The scatter-max's VJP on blocks: every edge j -> i whose message equals i's max takes an
  equal share of i's cotangent (edge counts weigh repeated edges). Autodiff of the forward's
  reduction would save a [G, M, M, D] indicator; here each sum is a fused reduction. (One
  variadic reduction for the max and the tie count in the forward pass compiled for minutes
  on an H200 and ran slower.)"""
  # [G, i, j, D] edge counts where j's state is i's max: an expression, never an array; each
  # reduction below fuses its own copy of it.
  hits = lambda: adjacency[..., None] * (h[:, None, :, :] == out[:, :, None, :])
  ties = hits().sum(axis=2)
  share = cotangent / jnp.where(ties > 0, ties, 1.0)
  return (hits() * share[:, :, None, :]).sum(axis=1)


def _on_platform(pallas_fn, xla_fn):
  """Pallas on CUDA GPUs, XLA elsewhere: chosen when the program is lowered for its device."""
  return lambda *args: lax.platform_dependent(*args, cuda=pallas_fn, default=xla_fn)


# kernel name -> (forward, backward).
_IMPLEMENTATIONS = {
    "auto": ((_on_platform(block_kernels.masked_max, _xla_masked_max),
              _on_platform(block_kernels.masked_max_grad, _xla_masked_max_grad))
             if block_kernels.AVAILABLE else (_xla_masked_max, _xla_masked_max_grad)),
    "xla": (_xla_masked_max, _xla_masked_max_grad),
    "pallas": (block_kernels.masked_max, block_kernels.masked_max_grad),
    "interpret": (functools.partial(block_kernels.masked_max, interpret=True),
                  functools.partial(block_kernels.masked_max_grad, interpret=True)),
}
KERNELS = tuple(_IMPLEMENTATIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _masked_block_max(kernel: str, adjacency: Array, h: Array) -> Array:
  return _IMPLEMENTATIONS[kernel][0](adjacency, h)


def _masked_block_max_fwd(kernel, adjacency, h):
  # Named, so a remat policy can keep it (REMAT_NAME) rather than rerun the reduction.
  out = ad_checkpoint.checkpoint_name(_IMPLEMENTATIONS[kernel][0](adjacency, h), REMAT_NAME)
  return out, (adjacency, h, out)


def _masked_block_max_bwd(kernel, residuals, cotangent):
  adjacency, h, out = residuals
  return jnp.zeros_like(adjacency), _IMPLEMENTATIONS[kernel][1](adjacency, h, out, cotangent)


_masked_block_max.defvjp(_masked_block_max_fwd, _masked_block_max_bwd)
