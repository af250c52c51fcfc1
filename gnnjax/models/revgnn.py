"""RevGNN (Li et al., "Training Graph Neural Networks with 1000 Layers", ICML 2021) and the
stored-activation ResGNN baseline (DeeperGCN res+), for node tasks.

    RevGNN:  x -> Linear(F, H) -> L grouped reversible GEN blocks (C groups of H/C channels)
               -> LayerNorm(H) -> ReLU -> dropout -> Linear(H, K)
    ResGNN:  x -> Linear(F, H) -> GENConv_0 -> L - 1 res+ layers h = h + GENBlock_l(h)
               -> LayerNorm(H) -> ReLU -> dropout -> Linear(H, K)

Edge features [E, edge_dim] are encoded once by Linear(edge_dim, H) into an edge embedding
shared by all layers; every block re-encodes it with its own Linear(H, block width) (the repo's
`--conv_encode_edge`). By default the two linear maps are folded into one per block
(`fuse_edge_encoders`, see `gnnjax.deep.blocks.LinearEdges`): the same function, but no [E, H]
embedding or cotangent is stored and each layer reads the raw [E, edge_dim] features. Weights
are PyTorch-initialised (U(+-1/sqrt(fan_in))).

Both models are frozen dataclasses with pure `init(key, graph)` and
`apply(params, graph, train=False, key=None)`; node features are read from `graph.nodes['x']`
and edge features from `graph.edges['x']`. Dropout: RevGNN draws one mask per forward pass
shared by every block (exactly recomputable), plus ordinary dropout before the head; ResGNN
draws an independent mask per layer, as DeeperGCN.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from gnnjax.deep import blocks as blocks_lib
from gnnjax.deep import reversible as rev_lib
from gnnjax.nn import deeper

Array = jax.Array


def _dense(features: int, fan_in: int) -> nn.Dense:
  return deeper.torch_dense(features, fan_in)


def _dropout(x: Array, rate: float, key: Array | None) -> Array:
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def _inputs(graph: jraph.GraphsTuple, edge_dim: int | None) -> tuple[Array, Array | None]:
  if not isinstance(graph.nodes, dict) or "x" not in graph.nodes:
    raise ValueError("the model reads node features from graph.nodes['x']")
  x = jnp.asarray(graph.nodes["x"], jnp.float32)
  if edge_dim is None:
    return x, None
  if not isinstance(graph.edges, dict) or "x" not in graph.edges:
    raise ValueError(f"edge_dim={edge_dim} but graph.edges['x'] is missing")
  edge_x = jnp.asarray(graph.edges["x"], jnp.float32)
  if edge_x.shape[-1] != edge_dim:
    raise ValueError(f"graph.edges['x'] has width {edge_x.shape[-1]}, expected edge_dim="
                     f"{edge_dim}")
  return x, edge_x


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _encoders_init(key, in_features, hidden, edge_dim, num_outputs):
  """Node/edge encoders, head norm and head (jitted: one compilation per set of widths)."""
  k_node, k_edge, k_norm, k_head = jax.random.split(key, 4)
  x0 = jnp.zeros((1, in_features), jnp.float32)
  h0 = jnp.zeros((1, hidden), jnp.float32)
  params = {"node_encoder": _dense(hidden, in_features).init(k_node, x0)["params"],
            "head_norm": blocks_lib.torch_layer_norm().init(k_norm, h0)["params"],
            "head": _dense(num_outputs, hidden).init(k_head, h0)["params"]}
  if edge_dim is not None:
    e0 = jnp.zeros((1, edge_dim), jnp.float32)
    params["edge_encoder"] = _dense(hidden, edge_dim).init(k_edge, e0)["params"]
  return params


def _encode(params, graph, edge_dim, hidden, fuse):
  """Encoded nodes [N, H]; the shared edge input; the graph with float32 edges['x'].

  The shared edge input is None (no edge features), the edge embedding [E, H], or with `fuse`
  the shared encoder's params, which blocks apply lazily (`blocks.LinearEdges`).
  """
  x, edge_x = _inputs(graph, edge_dim)
  h = _dense(hidden, x.shape[-1]).apply({"params": params["node_encoder"]}, x)
  if edge_x is None:
    return h, None, graph
  graph = graph._replace(edges={**graph.edges, "x": edge_x})
  if fuse:
    return h, params["edge_encoder"], graph
  e = _dense(hidden, edge_x.shape[-1]).apply({"params": params["edge_encoder"]}, edge_x)
  return h, e, graph


def _edges_for_block(shared, graph, fuse):
  if shared is None or not fuse:
    return shared
  return blocks_lib.LinearEdges(graph.edges["x"], shared["kernel"], shared["bias"])


def _head(params, h, rate, key, num_outputs):
  h = nn.relu(blocks_lib.torch_layer_norm().apply({"params": params["head_norm"]}, h))
  h = _dropout(h, rate, key)
  return _dense(num_outputs, h.shape[-1]).apply({"params": params["head"]}, h)


def _dropout_keys(train: bool, key: Array | None, rate: float) -> tuple[Array | None, ...]:
  if not train or rate == 0.0:
    return None, None
  if key is None:
    raise ValueError("train=True with dropout > 0 needs a PRNG key")
  return tuple(jax.random.split(key))


@dataclasses.dataclass(frozen=True)
class RevGNN:
  """Grouped reversible GNN for node tasks.

  Attributes:
    num_outputs: output width K.
    hidden: width H of the reversible state (divisible by `groups`).
    num_layers: number of reversible blocks L.
    groups: C >= 2 feature groups per block (each GEN block runs at width H / C).
    dropout: rate of the shared block mask and of the dropout before the head.
    weight_tied: one set of block weights (per group) for all L layers.
    aggregation: GENConv aggregation ('max' as RevGNN; 'softmax', 'mean', 'sum', ...).
    edge_dim: width of graph.edges['x'], or None for no edge features.
    fuse_edge_encoders: fold the shared edge encoder into every block's edge encoder (both are
      linear; see `blocks.LinearEdges`): the same function without any [E, H] embedding or
      cotangent. Pays off when edge_dim <= hidden.
    reversible: False computes the same function with plain autodiff (stored activations).
  """

  num_outputs: int
  hidden: int = 64
  num_layers: int = 4
  groups: int = 2
  dropout: float = 0.1
  weight_tied: bool = False
  aggregation: str = "max"
  edge_dim: int | None = None
  fuse_edge_encoders: bool = True
  reversible: bool = True

  def __post_init__(self):
    blocks_lib.check_aggregation(self.aggregation)
    if not isinstance(self.groups, int) or self.groups < 2:
      raise ValueError(f"RevGNN needs groups >= 2, got {self.groups!r}")
    if self.hidden % self.groups:
      raise ValueError(f"hidden={self.hidden} is not divisible by groups={self.groups}")
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")

  @property
  def block(self) -> blocks_lib.GENBlock:
    return blocks_lib.GENBlock(self.hidden // self.groups, aggregation=self.aggregation)

  def init(self, key: Array, graph: jraph.GraphsTuple) -> dict:
    """Parameters; block leaves are [L, C, ...] ([C, ...] when weight-tied)."""
    x, _ = _inputs(graph, self.edge_dim)
    k_enc, k_blocks = jax.random.split(key)
    params = _encoders_init(k_enc, x.shape[-1], self.hidden, self.edge_dim, self.num_outputs)
    lead = (self.groups,) if self.weight_tied else (self.num_layers, self.groups)
    edge_width = None if self.edge_dim is None else self.hidden
    params["blocks"] = blocks_lib.init_stacked(self.block, k_blocks, lead,
                                               self.hidden // self.groups, edge_width)
    return params

  def apply(self, params: dict, graph: jraph.GraphsTuple, train: bool = False,
            key: Array | None = None) -> Array:
    """Node outputs float [N, num_outputs]; `key` drives dropout when `train`."""
    fuse = self.fuse_edge_encoders and self.edge_dim is not None
    h, shared, graph = _encode(params, graph, self.edge_dim, self.hidden, fuse)
    stack_key, head_key = _dropout_keys(train, key, self.dropout)
    h = rev_lib.reversible_stack(
        blocks_lib.block_fn(self.block, fused_edges=fuse), params["blocks"], h, shared, graph,
        stack_key,
        num_groups=self.groups, num_layers=self.num_layers, dropout=self.dropout,
        weight_tied=self.weight_tied, reversible=self.reversible)
    return _head(params, h, self.dropout, head_key, self.num_outputs)


@dataclasses.dataclass(frozen=True)
class ResGNN:
  """DeeperGCN res+ with GEN blocks at full width: the stored-activation baseline.

  Layer 0 is a bare GENConv (no norm in front, no residual); layers 1..L-1 are
  h = h + GENBlock_l(h) with an independent dropout mask each. Plain autodiff stores every
  layer's activations (O(L * (N + E) * H) memory).

  Attributes:
    num_outputs, hidden, num_layers, dropout, aggregation, edge_dim, fuse_edge_encoders: as
      RevGNN.
    scan: run layers 1..L-1 as a `lax.scan` over stacked parameters (compile time flat in L)
      instead of an unrolled Python loop.
  """

  num_outputs: int
  hidden: int = 64
  num_layers: int = 4
  dropout: float = 0.1
  aggregation: str = "max"
  edge_dim: int | None = None
  fuse_edge_encoders: bool = True
  scan: bool = True

  def __post_init__(self):
    blocks_lib.check_aggregation(self.aggregation)
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")

  def _block(self, pre_activation: bool) -> blocks_lib.GENBlock:
    return blocks_lib.GENBlock(self.hidden, aggregation=self.aggregation,
                               pre_activation=pre_activation)

  def init(self, key: Array, graph: jraph.GraphsTuple) -> dict:
    """Parameters; 'blocks' leaves are [L - 1, ...] (layers 1..L-1), 'first' is layer 0."""
    x, _ = _inputs(graph, self.edge_dim)
    k_enc, k_first, k_blocks = jax.random.split(key, 3)
    params = _encoders_init(k_enc, x.shape[-1], self.hidden, self.edge_dim, self.num_outputs)
    edge_width = None if self.edge_dim is None else self.hidden
    params["first"] = blocks_lib.init_stacked(self._block(False), k_first, (1,), self.hidden,
                                              edge_width)
    params["first"] = jax.tree.map(lambda a: a[0], params["first"])
    if self.num_layers > 1:
      params["blocks"] = blocks_lib.init_stacked(self._block(True), k_blocks,
                                                 (self.num_layers - 1,), self.hidden, edge_width)
    return params

  def apply(self, params: dict, graph: jraph.GraphsTuple, train: bool = False,
            key: Array | None = None) -> Array:
    """Node outputs float [N, num_outputs]; `key` drives dropout when `train`."""
    fuse = self.fuse_edge_encoders and self.edge_dim is not None
    h, shared, graph = _encode(params, graph, self.edge_dim, self.hidden, fuse)
    e = _edges_for_block(shared, graph, fuse)
    stack_key, head_key = _dropout_keys(train, key, self.dropout)
    h = self._block(False).apply({"params": params["first"]}, h, graph, e)
    if self.num_layers > 1:
      h = self._residual_layers(params["blocks"], h, e, graph, stack_key)
    return _head(params, h, self.dropout, head_key, self.num_outputs)

  def _residual_layers(self, stacked, h, e, graph, key):
    block = self._block(True)
    depth = self.num_layers - 1

    def layer(h, p, layer_key):
      mask = rev_lib.dropout_mask(layer_key, self.dropout, h.shape, h.dtype)
      return h + block.apply({"params": p}, h, graph, e, mask)

    keys = None if key is None else jax.random.split(key, depth)
    if self.scan:
      def body(h, xs):
        p, k = xs
        return layer(h, p, k), None
      h, _ = jax.lax.scan(body, h, (stacked, keys))
      return h
    for l in range(depth):
      h = layer(h, jax.tree.map(lambda a, l=l: a[l], stacked),
                None if keys is None else keys[l])
    return h
