"""Point-cloud style convolutions of DGCNN / DeepGCNs: EdgeConv and MRConv (max-relative).

Both apply a user-supplied MLP (called as `mlp(h, train=train, mask=mask)`, like
`gnnjax.nn.mlp.MLP`) either per edge (EdgeConv) or per node (MRConv). Messages flow sender ->
receiver; padding edges are masked out of the aggregation and nodes without real in-edges
aggregate to 0 (PyG's convention for an empty max).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from gnnjax import graph as graph_lib
from gnnjax.nn import aggregate as agg_lib

Array = jax.Array


class EdgeConv(nn.Module):
  """EdgeConv (Wang et al., DGCNN; PyG EdgeConv): out_i = AGG_j h([x_i, x_j - x_i]).

  Attributes:
    mlp: h, applied to every edge's [x_i, x_j - x_i] (float [E, 2 D]); it gets the edge mask, so
      a batch norm inside it takes statistics over real edges only.
    aggr: reduction over incoming edges ('max' as in DGCNN, or 'sum'/'add', 'mean', 'min', ...).
  """

  mlp: nn.Module
  aggr: str = "max"

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple, train: bool = False) -> Array:
    """x: float [N, D] node features -> float [N, D_out] (D_out = the MLP's output width)."""
    x_i, x_j = x[graph.receivers], x[graph.senders]
    mask = graph_lib.edge_mask(graph)
    messages = self.mlp(jnp.concatenate([x_i, x_j - x_i], axis=-1), train=train, mask=mask)
    return agg_lib.aggregate(self.aggr, messages, graph.receivers, x.shape[0], mask)


class MRConv(nn.Module):
  """Max-relative graph convolution (DeepGCNs): out_i = h([x_i, AGG_j (x_j - x_i)]).

  Attributes:
    mlp: h, applied per node to float [N, 2 D]; it gets the node mask for its batch norm.
    aggr: reduction of the relative features over incoming edges ('max' in DeepGCNs).
  """

  mlp: nn.Module
  aggr: str = "max"

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple, train: bool = False) -> Array:
    """x: float [N, D] node features -> float [N, D_out] (D_out = the MLP's output width)."""
    relative = x[graph.senders] - x[graph.receivers]
    neigh = agg_lib.aggregate(self.aggr, relative, graph.receivers, x.shape[0],
                              graph_lib.edge_mask(graph))
    return self.mlp(jnp.concatenate([x, neigh], axis=-1), train=train,
                    mask=graph_lib.node_mask(graph))
