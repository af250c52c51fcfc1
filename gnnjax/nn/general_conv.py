"""GraphGym's GeneralConv: a linear message W h_u aggregated over incoming edges.

Two variants:

* 'release' (default): the conv of GraphGym's release commit, which produced the published
  design-space results: out_v = AGG_{u -> v} (W h_u) (+ b). No self term, no added self-loops,
  no degree normalisation; a node's own state reaches it only through skip connections or
  2-hop paths.
* 'self': GraphGym HEAD with `self_msg='concat'`, as AutoTransfer uses it:
  out_v = AGG_{u -> v} (W h_u) + W_self h_v (+ b).

W (and W_self) are glorot-uniform (gain 1), the bias starts at 0. Padding edges are masked out
of the aggregation, and a node without incoming real edges aggregates to 0 under every AGG.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jraph

from gnnjax import graph as graph_lib
from gnnjax.nn import aggregate as agg_lib

Array = jax.Array

VARIANTS = ("release", "self")
AGGREGATIONS = ("add", "mean", "max")


class GeneralConv(nn.Module):
  """GraphGym GeneralConv on a padded graph: x [N, D_in] float -> [N, features] float.

  Attributes:
    features: output width D_out.
    aggregation: 'add', 'mean' or 'max' over incoming real edges.
    variant: 'release' (one weight matrix, parameter `lin/kernel` [D_in, D_out]) or 'self'
      (adds `lin_self/kernel` [D_in, D_out] applied to the receiving node itself).
    use_bias: add a bias [D_out] after aggregation (GraphGym: only when no batch norm follows).
  """

  features: int
  aggregation: str = "add"
  variant: str = "release"
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple) -> Array:
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown GeneralConv variant {self.variant!r}; choose from "
                       f"{list(VARIANTS)}")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"unknown GeneralConv aggregation {self.aggregation!r}; choose from "
                       f"{list(AGGREGATIONS)}")
    glorot = nn.initializers.glorot_uniform()
    # Transform before gathering: E is usually larger than N, so W is applied N times, not E.
    h = nn.Dense(self.features, use_bias=False, kernel_init=glorot, name="lin")(x)
    out = agg_lib.aggregate(self.aggregation, h[graph.senders], graph.receivers, x.shape[0],
                            graph_lib.edge_mask(graph))
    if self.variant == "self":
      out = out + nn.Dense(self.features, use_bias=False, kernel_init=glorot, name="lin_self")(x)
    if self.use_bias:
      out = out + self.param("bias", nn.initializers.zeros, (self.features,))
    return out
