"""Graph readouts: node features [N, D] -> one vector per graph slot [G, D].

Padding nodes sit in the padding graph slot, so real graphs never see them; masked pooling
also zeroes them so that even the padding slot stays finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph

from gnnjax import graph as graph_lib
from gnnjax.nn import aggregate as agg_lib

Array = jax.Array

POOLINGS = ("sum", "add", "mean", "max")


def global_pool(kind: str, x: Array, graph: jraph.GraphsTuple) -> Array:
  """Pools x [N, D] per graph with 'sum'/'add', 'mean' or 'max'; returns [G, D]."""
  if kind not in POOLINGS:
    raise ValueError(f"unknown graph pooling {kind!r}; choose from {list(POOLINGS)}")
  num_graphs = graph.n_node.shape[0]
  graph_ids = jnp.repeat(jnp.arange(num_graphs), graph.n_node, total_repeat_length=x.shape[0])
  return agg_lib.aggregate(kind, x, graph_ids, num_graphs, graph_lib.node_mask(graph))
