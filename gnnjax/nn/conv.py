"""Message-passing convolutions on padded `jraph.GraphsTuple`s.

Every conv is a flax module called as `conv(x, graph, ...)` with node features x [N, D_in] and
a padded graph (only its senders, receivers, n_node, n_edge are read; x replaces graph.nodes),
and returns [N, D_out]. Messages flow sender -> receiver; an undirected graph stores both
directions. Padding edges are masked out of every aggregation; outputs on padding nodes are
unspecified (downstream losses and pools mask them). Parameterisation and initialisation follow
PyG's layer of the same name, so weights can be transplanted for parity checks.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from gnnjax import graph as graph_lib
from gnnjax.nn import aggregate as agg_lib
from gnnjax.nn import blocks as blocks_lib

Array = jax.Array
glorot = nn.initializers.glorot_uniform()


class GCNConv(nn.Module):
  """Kipf & Welling: out = D^-1/2 (A + I) D^-1/2 X W + b (PyG GCNConv).

  With normalize=False the layer is a plain (weighted) sum over incoming edges; as in PyG,
  add_self_loops defaults to `normalize` and cannot be set without normalisation.
  """

  features: int
  add_self_loops: bool | None = None
  normalize: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple, edge_weight: Array | None = None,
               blocks: blocks_lib.GraphBlocks | None = None) -> Array:
    """`blocks`: the batch's per-graph blocks (`blocks.graph_blocks`), to aggregate on them
    (`blocks.block_gcn` / `block_sum`: the same result without gathering and scattering
    [E, D] messages); used only without edge weights."""
    add_loops = self.normalize if self.add_self_loops is None else self.add_self_loops
    if add_loops and not self.normalize:
      raise ValueError("GCNConv: add_self_loops=True needs normalize=True (as in PyG)")
    h = nn.Dense(self.features, use_bias=False, kernel_init=glorot, name="lin")(x)
    if blocks is not None and edge_weight is None:
      out = (blocks_lib.block_gcn(blocks, h, add_loops) if self.normalize
             else blocks_lib.block_sum(blocks, h))
    else:
      out = self._edge_path(h, graph, add_loops, edge_weight)
    if self.use_bias:
      out = out + self.param("bias", nn.initializers.zeros, (self.features,))
    return out

  def _edge_path(self, h: Array, graph: jraph.GraphsTuple, add_loops: bool,
                 edge_weight: Array | None) -> Array:
    """[N, D] -> [N, D]: the (normalised) sum as a gather of [E, D] messages and a scatter."""
    n = h.shape[0]
    if self.normalize:
      edge_coef, self_coef = graph_lib.gcn_normalization(graph, add_loops, edge_weight)
    else:
      mask = graph_lib.edge_mask(graph)
      edge_coef = mask.astype(h.dtype) if edge_weight is None else jnp.where(mask, edge_weight, 0)
      self_coef = jnp.zeros((n,), h.dtype)
    messages = h[graph.senders] * edge_coef[:, None]
    return jax.ops.segment_sum(messages, graph.receivers, num_segments=n) + self_coef[:, None] * h


class SAGEConv(nn.Module):
  """GraphSAGE (PyG SAGEConv): out = W_l AGG_j(x_j) + W_r x_i (+ optional L2 normalisation).

  aggr 'mean' is GraphSAGE-mean; aggr 'max' with project=True is GraphSAGE max-pool
  (x_j <- ReLU(W_p x_j + b_p) before the max).
  """

  features: int
  aggr: str = "mean"
  project: bool = False
  root_weight: bool = True
  normalize: bool = False

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple) -> Array:
    n = x.shape[0]
    source = nn.relu(nn.Dense(x.shape[-1], name="lin_proj")(x)) if self.project else x
    neigh = agg_lib.aggregate(self.aggr, source[graph.senders], graph.receivers, n,
                              graph_lib.edge_mask(graph))
    out = nn.Dense(self.features, name="lin_l")(neigh)
    if self.root_weight:
      out = out + nn.Dense(self.features, use_bias=False, name="lin_r")(x)
    if self.normalize:
      out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


class GINConv(nn.Module):
  """GIN (Xu et al.; PyG GINConv): out = MLP((1 + eps) x_i + sum_j x_j).

  With `edge_features` given it is GINE (PyG GINEConv): messages ReLU(x_j + Lin(e_ij)), where
  the edge projection exists only if the edge width differs from the node width.
  """

  mlp: nn.Module
  eps: float = 0.0
  train_eps: bool = False

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple, edge_features: Array | None = None,
               train: bool = False) -> Array:
    n = x.shape[0]
    messages = x[graph.senders]
    if edge_features is not None:
      if edge_features.shape[-1] != x.shape[-1]:
        edge_features = nn.Dense(x.shape[-1], name="lin_edge")(edge_features)
      messages = nn.relu(messages + edge_features)
    neigh = agg_lib.segment_sum(messages, graph.receivers, n, graph_lib.edge_mask(graph))
    eps = self.param("eps", nn.initializers.constant(self.eps), ()) if self.train_eps else self.eps
    mask = graph_lib.node_mask(graph)
    return self.mlp((1.0 + eps) * x + neigh, train=train, mask=mask)


class GATConv(nn.Module):
  """Graph attention (Velickovic et al.; PyG GATConv, v1 scoring).

  alpha_ij = softmax_j(LeakyReLU(a_src . W x_j + a_dst . W x_i)) over j in N(i) (plus i itself
  when add_self_loops; existing self-loop edges are replaced by that one loop, as PyG does).
  Heads are concatenated ([N, heads * features]) or averaged ([N, features]).
  """

  features: int
  heads: int = 1
  concat: bool = True
  negative_slope: float = 0.2
  attention_dropout: float = 0.0
  add_self_loops: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple, train: bool = False,
               blocks: blocks_lib.GraphBlocks | None = None) -> Array:
    """`blocks`: the batch's per-graph blocks (`blocks.graph_blocks`), to attend on them
    (`blocks.block_attention`: the same result without gathering and scattering [E, H, F]
    messages) where no attention dropout applies."""
    n = x.shape[0]
    h = nn.Dense(self.heads * self.features, use_bias=False, kernel_init=glorot, name="lin")(x)
    h = h.reshape(n, self.heads, self.features)
    att_src = self.param("att_src", glorot, (1, self.heads, self.features))
    att_dst = self.param("att_dst", glorot, (1, self.heads, self.features))
    score_src = (h * att_src).sum(-1)  # [N, H]
    score_dst = (h * att_dst).sum(-1)
    if blocks is not None and (self.attention_dropout == 0.0 or not train):
      out = blocks_lib.block_attention(blocks, h, score_src, score_dst, self.negative_slope,
                                       self.add_self_loops)
      return self._finish(out)
    senders, receivers = graph.senders, graph.receivers
    mask = graph_lib.edge_mask(graph)
    if self.add_self_loops:
      loops = jnp.arange(n, dtype=senders.dtype)
      mask = jnp.concatenate([mask & (senders != receivers), jnp.ones((n,), bool)])
      senders = jnp.concatenate([senders, loops])
      receivers = jnp.concatenate([receivers, loops])
    logits = nn.leaky_relu(score_src[senders] + score_dst[receivers], self.negative_slope)
    alpha = agg_lib.segment_softmax(logits, receivers, n, mask)  # [E, H]
    alpha = nn.Dropout(self.attention_dropout, deterministic=not train)(alpha)
    return self._finish(agg_lib.segment_sum(h[senders] * alpha[..., None], receivers, n, mask))

  def _finish(self, out: Array) -> Array:
    """[N, H, F] per-head outputs -> concatenated or averaged heads, plus the bias."""
    n = out.shape[0]
    out = out.reshape(n, self.heads * self.features) if self.concat else out.mean(axis=1)
    if self.use_bias:
      out = out + self.param("bias", nn.initializers.zeros, (out.shape[-1],))
    return out

