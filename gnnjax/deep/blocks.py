"""The GEN block f of RevGNN (repo `rev_layer.GENBlock`) and the DeeperGCN res+ layer.

    f(x) = GENConv(SharedDropout(ReLU(LayerNorm(x))), edge_encoder(e))

on one group's features x [N, d]. GENConv (gnnjax.nn.deeper) runs at width d with aggregation
'max' by default, a 2-layer MLP d -> 2d -> d with LayerNorm inside, and biases in every linear
layer; the block owns its edge encoder Linear(H -> d) applied to the shared edge embedding
[E, H] (or folded with the shared encoder: `LinearEdges`). Every statistic is per node
(LayerNorm), so f is exactly recomputable, as a reversible block needs. Per block:
(C + 4) d^2 + 10 d parameters with H = C d, as the RevGNN repo.

`GENBlock(pre_activation=False)` is the bare GENConv with its edge encoder (res+'s first layer).

`block_fn(module)` turns the flax module into the functional f(params, x, shared, graph, mask)
that `gnnjax.deep.reversible.reversible_stack` scans over stacked parameters.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from gnnjax.nn import deeper

Array = jax.Array


class LinearEdges(NamedTuple):
  """The edge embedding x @ kernel + bias [E, H], passed unevaluated.

  A block's own edge encoder is linear too, so it folds the two maps into one:
  x @ (kernel @ W) + (bias @ W + b). Same function, but each layer reads the raw edge features
  [E, F_e] instead of an [E, H] embedding, and no [E, H] array or cotangent is ever stored: the
  gradient of the shared encoder accumulates in parameter space. Worth it when F_e <= H (ogbn-
  proteins: 8 vs 64).
  """
  x: Array       # [E, F_e] raw edge features
  kernel: Array  # [F_e, H]
  bias: Array    # [H]


class EdgeEncoder(nn.Module):
  """PyTorch-initialised Linear(H -> features) on an edge embedding [E, H] or `LinearEdges`."""

  features: int

  @nn.compact
  def __call__(self, edges: Array | LinearEdges) -> Array:
    fan_in = (edges.kernel if isinstance(edges, LinearEdges) else edges).shape[-1]
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    kernel = self.param("kernel", nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                        (fan_in, self.features))
    bias = self.param("bias", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound),
                      (self.features,))
    if isinstance(edges, LinearEdges):
      return edges.x @ (edges.kernel @ kernel) + (edges.bias @ kernel + bias)
    return edges @ kernel + bias


def torch_layer_norm(name: str | None = None) -> nn.LayerNorm:
  """PyTorch's LayerNorm numerics: eps 1e-5, two-pass variance, affine."""
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


class GENBlock(nn.Module):
  """LayerNorm -> ReLU -> dropout (given mask) -> GENConv, at width `features`.

  With `pre_activation=False` the block is the bare GENConv (plus its edge encoder): DeeperGCN
  res+'s first layer.

  Attributes:
    features: width d of the block's input and output.
    aggregation: GENConv aggregation ('max', 'softmax', 'softmax_sg', 'mean', 'sum', ...).
    t: softmax inverse temperature (learned when `learn_t`).
    learn_t: learn t (aggregation 'softmax' only).
    mlp_layers: GENConv MLP depth (RevGNN: 2).
    pre_activation: apply LayerNorm -> ReLU -> dropout before the conv.
  """

  features: int
  aggregation: str = "max"
  t: float = 1.0
  learn_t: bool = False
  mlp_layers: int = 2
  pre_activation: bool = True

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple,
               edge_embedding: Array | LinearEdges | None = None,
               mask: Array | None = None) -> Array:
    """Applies f.

    Args:
      x: float [N, d].
      graph: padded graph with E edges (structure only).
      edge_embedding: optional float [E, H] shared edge embedding (or its unevaluated
        `LinearEdges` form); the block encodes it with its own Linear(H -> d).
      mask: optional float [N, d] dropout mask (0 or 1 / (1 - p)); None = no dropout.

    Returns:
      float [N, d].
    """
    h = x
    if self.pre_activation:
      h = nn.relu(torch_layer_norm(name="norm")(h))
      if mask is not None:
        h = h * mask
    edges = None
    if edge_embedding is not None:
      edges = EdgeEncoder(self.features, name="edge_encoder")(edge_embedding)
    conv = deeper.GENConv(self.features, aggr=self.aggregation, t=self.t, learn_t=self.learn_t,
                          norm="layer", num_layers=self.mlp_layers, use_bias=True, name="conv")
    return conv(h, graph, edges)


def block_fn(module: nn.Module, fused_edges: bool = False
             ) -> Callable[[Any, Array, Any, Any, Array | None], Array]:
  """The functional f(params, x, shared, graph, mask) of a GENBlock-like module.

  shared is the edge embedding [E, H] (or None), or with `fused_edges` the shared encoder's
  params {'kernel': [F_e, H], 'bias': [H]} applied to graph.edges['x'] as `LinearEdges`.
  """
  def f(params, x, shared, graph, mask):
    if fused_edges:
      shared = LinearEdges(graph.edges["x"], shared["kernel"], shared["bias"])
    return module.apply({"params": params}, x, graph, shared, mask)
  return f


def _dummy_graph(width: int, edge_width: int | None):
  """A 2-node, 1-edge padded graph: parameter shapes depend only on the widths."""
  nodes = jnp.zeros((2, width), jnp.float32)
  edges = None if edge_width is None else jnp.zeros((1, edge_width), jnp.float32)
  graph = jraph.GraphsTuple(nodes={"x": nodes}, edges={}, senders=jnp.zeros((1,), jnp.int32),
                            receivers=jnp.zeros((1,), jnp.int32), globals={},
                            n_node=jnp.array([1, 1], jnp.int32),
                            n_edge=jnp.array([1, 0], jnp.int32))
  return nodes, graph, edges


_INIT_CHUNK = 64


@functools.lru_cache(maxsize=64)
def _chunk_init(module: nn.Module, width: int, edge_width: int | None):
  """jit(keys [_INIT_CHUNK] -> stacked params), compiled once per (module, widths)."""
  x, graph, edges = _dummy_graph(width, edge_width)
  init = lambda key: module.init(key, x, graph, edges)["params"]
  return jax.jit(lambda keys: jax.lax.map(init, keys))


def init_stacked(module: nn.Module, key: Array, lead: tuple[int, ...], width: int,
                 edge_width: int | None) -> Any:
  """Independent initialisations of `module`, stacked with leading axes `lead` (e.g. (L, C)).

  Parameter shapes depend only on the input width and the edge-embedding width (None = no edge
  input), so initialisation runs on a tiny dummy graph. Every copy is drawn from its own key
  (PyG `GroupAddRev` re-initialises each group; the RevGNN repo deep-copies one initialisation).
  Copies are drawn in fixed-size chunks by one jitted program per (module, widths), so no depth
  triggers a new compilation (compiling random-number generation is slow on CPU).
  """
  count = 1
  for size in lead:
    count *= size
  chunks = -(-count // _INIT_CHUNK)
  keys = jax.random.split(key, chunks * _INIT_CHUNK).reshape(chunks, _INIT_CHUNK)
  init = _chunk_init(module, width, edge_width)
  parts = [init(k) for k in keys]
  return jax.tree.map(lambda *a: jnp.concatenate(a)[:count].reshape(lead + a[0].shape[1:]),
                      *parts)


def check_aggregation(aggregation: str) -> None:
  if aggregation not in deeper.GEN_AGGREGATIONS:
    raise ValueError(f"unknown aggregation {aggregation!r}; choose from "
                     f"{list(deeper.GEN_AGGREGATIONS)}")

