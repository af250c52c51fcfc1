"""Cross-layer readouts: a virtual node per graph, and jumping-knowledge combination of layers."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from gnnjax import graph as graph_lib
from gnnjax.nn import mlp as mlp_lib
from gnnjax.nn import pool as pool_lib

Array = jax.Array

JK_MODES = ("concat", "cat", "max", "sum", "last")


class VirtualNode(nn.Module):
  """A virtual node per graph, linked to all its nodes (Gilmer et al.; OGB / DeeperGCN style).

  One call does one layer's exchange, given node states x [N, D] and the virtual states v [G, D]:

      x'  = x + v[graph(i)]                                   (broadcast to every node)
      v'  = Dropout(MLP(POOL_{i in graph} x'_i + v))          (if `update`)
      v'  = v + Dropout(MLP(...))                             (if also `residual`)

  exactly OGB's `GNN_node_Virtualnode`: the caller feeds x' to its conv and carries v' to the
  next layer; OGB's last layer broadcasts without updating (`update=False`). The default MLP is
  OGB's: Linear(D, 2D) -> BatchNorm -> ReLU -> Linear(2D, D) -> BatchNorm -> ReLU, its batch norm
  taking statistics over real graphs only.

  Attributes:
    mlp: update network (called as `mlp(h, train=train, mask=graph_mask)`); None = OGB's.
    pooling: 'sum' (OGB), 'mean' or 'max' readout of the node states.
    residual: add the update to v instead of replacing it.
    dropout: dropout rate on the update.
    update: compute v' (otherwise v is returned unchanged).
  """

  mlp: nn.Module | None = None
  pooling: str = "sum"
  residual: bool = False
  dropout: float = 0.0
  update: bool = True

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple, state: Array | None = None,
               train: bool = False) -> tuple[Array, Array]:
    """Applies one exchange.

    Args:
      x: float [N, D] node states.
      graph: padded graph with G graph slots.
      state: float [G, D] virtual-node states; None starts from a learned embedding 'embedding'
        [D] initialised to 0 (OGB's Embedding(1, D) with zero init), shared by all graphs.
      train: enables dropout and batch statistics.

    Returns:
      (x' [N, D], v' [G, D]).
    """
    num_graphs = graph.n_node.shape[0]
    if state is None:
      embedding = self.param("embedding", nn.initializers.zeros, (x.shape[-1],))
      state = jnp.broadcast_to(embedding.astype(x.dtype), (num_graphs, x.shape[-1]))
    state = jnp.asarray(state)  # a NumPy state cannot be indexed by traced ids
    x = x + state[graph_lib.node_graph_index(graph)]
    if not self.update:
      return x, state
    mlp = self.mlp
    if mlp is None:
      mlp = mlp_lib.MLP((2 * x.shape[-1], x.shape[-1]), batch_norm=True, activate_final=True,
                        name="mlp")
    update = mlp(pool_lib.global_pool(self.pooling, x, graph) + state, train=train,
                 mask=graph_lib.graph_mask(graph))
    update = nn.Dropout(self.dropout, deterministic=not train)(update)
    return x, (state + update if self.residual else update)


class JumpingKnowledge(nn.Module):
  """Combines the node states of several layers (Xu et al., 2018; PyG JumpingKnowledge).

  Attributes:
    mode: 'concat' (alias 'cat'; [N, sum D_l]), 'max' (element-wise over layers; equal widths),
      'sum' (OGB's; equal widths) or 'last' (the final layer only).
  """

  mode: str = "concat"

  def __call__(self, xs: Sequence[Array]) -> Array:
    """xs: a non-empty list of float [N, D_l] layer outputs -> the combined [N, D']."""
    if self.mode not in JK_MODES:
      raise ValueError(f"unknown jumping-knowledge mode {self.mode!r}; choose from "
                       f"{list(JK_MODES)}")
    if not xs:
      raise ValueError("JumpingKnowledge needs at least one layer output")
    if self.mode in ("concat", "cat"):
      return jnp.concatenate(list(xs), axis=-1)
    if self.mode == "last":
      return xs[-1]
    stacked = jnp.stack(list(xs), axis=0)
    return stacked.max(axis=0) if self.mode == "max" else stacked.sum(axis=0)
