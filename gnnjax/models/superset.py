"""A superset GraphGym model: many different designs as one program, vmapped over designs.

Every design of a population is embedded in one parameter layout (`Layout`) padded to the
population's maxima, and a per-design `spec` (small integer / float arrays) tells the shared
program which parts are real:

* widths: hidden width d padded to D = max d, stage/head width h (d, or (l_mp + 1) d for
  skipconcat) padded to H = max h. Padded channels hold zero weights and stay exactly zero
  through every layer (zero weights and biases, batch norm with zero scale, act(0) = 0), so the
  real channels compute what the unpadded design computes, up to float reassociation.
* layer counts: the program has max l_pre / l_mp / l_post layers; a design's extra layers are
  the identity (`where(active, layer(x), x)`).
* skipconcat: the stage state is an [N, H] buffer and block i writes its d channels at offset
  (i + 1) d, which is exactly the design's own concatenation, padded at the end.
* choices (stage type, activation, aggregation, batch norm on/off, l2norm, pooling): the
  alternatives present in the population are all computed (they are elementwise or cheap) and
  one is selected per design with `jnp.where`, which is exact.
* randomness: JAX's partitionable threefry gives element k of a draw the counter k, so a
  design's draw of its own shape [a, b] is element i * b + j of a flat draw of the padded size.
  Initial parameters (`init_variables`) and dropout masks (`dropout`) are read out of flat draws
  with the keys flax derives for the design's own modules, so they are the values the design's
  own `GraphGymGNN.init` and `nn.Dropout` produce.

Parameter names mirror `gnnjax.models.graphgym.GraphGymGNN` (`pre_mp_{i}/lin`, `mp_{i}/conv`,
`*/bn`, `post_mp_{i}/lin`, `post_mp_out`, `prelu/slope`). Conv types other than GeneralConv are
called through their flax modules at the padded width (they are channel-separable, so zero
padding is exact); a layout holds one conv type (the engine groups populations by it).

Everything here works on ONE design (no leading population axis): the population engine
(`gnnjax.design.engine`) vmaps it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.extend.random as jax_random_ext
import jax.numpy as jnp
import jraph
import numpy as np

from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds
from gnnjax.design import budget as budget_lib
from gnnjax.design.design import Design
from gnnjax.models import graphgym
from gnnjax.nn import aggregate as agg_lib
from gnnjax.nn import blocks as blocks_lib
from gnnjax.nn import conv as conv_lib
from gnnjax.nn import mlp as mlp_lib
from gnnjax.nn import pool as pool_lib

Array = jax.Array
Params = dict[str, Any]

# ----------------------------------------------------------------------------------------------
# Static layout and per-design spec.


def conv_key(design: Design) -> tuple[str, int]:
  """The conv fields that must be equal within one layout (the engine groups by them).

  GeneralConv's two variants share a layout: 'release' designs keep a zero self weight."""
  return design.conv_type, design.heads if design.conv_type == "gat" else 1


def reads_aggregation(conv_type: str) -> bool:
  """Whether a conv type reads design.aggregation: only GeneralConv does (`graphgym.make_conv`);
  GCN, SAGE, GIN and GAT designs carry the choice and ignore it."""
  return conv_type == "generalconv"


# Conv types that run on per-graph blocks when a layout has them (`Layout.block_nodes`):
# GeneralConv's sum/mean (and max/min with block_extremes), GCN's normalised sum
# (`blocks.block_gcn`) and GAT's attention (`blocks.block_attention`).
BLOCK_CONVS = ("generalconv", "gcn", "gat")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static shape and choice set of a population's superset program (hashable: a jit key).

  Attributes:
    dim_in: input node feature width F.
    num_outputs: output width C.
    task_level: 'node' or 'graph'.
    conv: (conv_type, heads), shared by every design of the layout.
    self_weight: GeneralConv with a self weight (some design uses variant 'self').
    dim: D, the largest hidden width.
    head_dim: H, the largest stage-output / head width.
    layers_pre, layers_mp, layers_post: the largest layer counts.
    mp_in_dims: input width of each message-passing layer (largest over designs using it).
    stages, activations, aggregations, poolings: the choices present, in spec-code order.
    batch_norms, l2norms: the on/off values present.
    dropout: whether some design has dropout > 0.
    scan_mp: the message-passing layers run as one `lax.scan` (`scan_possible`).
    block_nodes: M > 0: GeneralConv's add and mean aggregations, GCN's and GAT's, run
      as dense per-graph matmuls (`gnnjax.nn.blocks`) over batches whose graphs have at most
      M nodes; 0: as a scatter over the edges.
    block_extremes: max and min also run on the blocks (a fused masked reduction,
      `blocks.block_max`; only with block_nodes).
    width_multiple: dim, head_dim and mp_in_dims are rounded up to a multiple of it (1: the
      designs' own maxima). Padded channels are exact zeros, so this changes no result; it
      aligns rows for the GPU's vectorised loads and tensor-core GEMM tiles (GraphGym's
      budget-matched widths are odd numbers such as 137 or 255).
  """

  dim_in: int
  num_outputs: int
  task_level: str
  conv: tuple[str, int]
  self_weight: bool
  dim: int
  head_dim: int
  layers_pre: int
  layers_mp: int
  layers_post: int
  mp_in_dims: tuple[int, ...]
  stages: tuple[str, ...]
  activations: tuple[str, ...]
  aggregations: tuple[str, ...]
  poolings: tuple[str, ...]
  batch_norms: tuple[bool, ...]
  l2norms: tuple[bool, ...]
  dropout: bool
  scan_mp: bool = False
  block_nodes: int = 0
  block_extremes: bool = False
  width_multiple: int = 1

  @classmethod
  def from_designs(cls, designs: Sequence[Design], dim_in: int, num_outputs: int,
                   task_level: str, scan_mp: bool = False, block_nodes: int = 0,
                   block_extremes: bool = False, width_multiple: int = 1) -> "Layout":
    """The smallest layout holding every design (dim_inner must be resolved).

    `scan_mp`: run the message-passing layers as one `lax.scan` where `scan_possible` (fewer
    compiled ops: XLA compiles the layer body once). `block_nodes`: the largest graph of the
    data, to aggregate add/mean by per-graph blocks (GeneralConv, GCN and GAT layouts, BLOCK_CONVS;
    0: by scatter).
    `block_extremes`: max/min too (with block_nodes; a fused reduction over G M^2 D cells
    instead of a scatter of E D messages, which pays on GPUs but not on CPUs).
    `width_multiple`: round the hidden, head and layer-input widths up to a multiple of it.

    Raises:
      ValueError: an unresolved dim_inner, designs with different conv settings, or a
        width_multiple below 1.
    """
    if width_multiple < 1:
      raise ValueError(f"width_multiple must be >= 1, got {width_multiple}")
    if not designs:
      raise ValueError("a layout needs at least one design")
    if task_level not in (ds.NODE, ds.GRAPH):
      raise ValueError(f"the population engine trains node and graph tasks, not {task_level!r}; "
                       "train link-prediction designs one at a time (reference.train_design)")
    for design in designs:
      if design.dim_inner is None:
        raise ValueError(f"design {design.summary()} has dim_inner None; resolve it with "
                         "gnnjax.models.graphgym.build_model first")
    convs = {conv_key(d) for d in designs}
    if len(convs) != 1:
      raise ValueError(f"one layout holds one conv setting; got {sorted(convs)}")
    conv = convs.pop()
    layers_mp = max(d.layers_mp for d in designs)
    align = lambda width: -(-int(width) // width_multiple) * width_multiple
    # Rounding is monotone, so a layer's input width stays within the (rounded) stage buffer.
    mp_in_dims = tuple(
        align(max((_mp_input_dim(d, i) for d in designs if d.layers_mp > i), default=1))
        for i in range(layers_mp))
    block_nodes = int(block_nodes) if conv[0] in BLOCK_CONVS else 0
    return cls(
        dim_in=int(dim_in), num_outputs=int(num_outputs), task_level=task_level,
        conv=conv,
        self_weight=any(d.conv_type == "generalconv" and d.conv_variant == "self"
                        for d in designs),
        dim=align(max(d.dim_inner for d in designs)),
        head_dim=align(max(budget_lib.head_input_dim(d, d.dim_inner) for d in designs)),
        layers_pre=max(d.layers_pre_mp for d in designs),
        layers_mp=layers_mp,
        layers_post=max(d.layers_post_mp for d in designs),
        mp_in_dims=mp_in_dims,
        stages=_present(d.stage_type for d in designs),
        activations=_present(d.activation for d in designs),
        aggregations=_present(d.aggregation for d in designs),
        poolings=_present(d.graph_pooling for d in designs),
        batch_norms=_present(d.batch_norm for d in designs),
        l2norms=_present(d.l2norm for d in designs),
        dropout=any(d.dropout > 0 for d in designs),
        scan_mp=scan_mp and scan_possible(layers_mp),
        block_nodes=block_nodes,
        block_extremes=bool(block_extremes) and block_nodes > 0,
        width_multiple=int(width_multiple))

  @property
  def conv_type(self) -> str:
    return self.conv[0]

  @property
  def blocks_only(self) -> bool:
    """Every aggregation runs on per-graph blocks (block_nodes > 0: add and mean; max and min
    with block_extremes): no [E, D] messages, so a step costs the same for any number of
    edge slots."""
    if not reads_aggregation(self.conv_type):  # GCN and GAT aggregate on the blocks as a whole
      return bool(self.block_nodes)
    on_blocks = {"add", "mean"} | ({"max", "min"} if self.block_extremes else set())
    return bool(self.block_nodes) and set(self.aggregations) <= on_blocks

  def conv_template(self) -> Design:
    """A design whose `make_conv` builds this layout's conv (always with a bias slot)."""
    conv_type, heads = self.conv
    return Design(conv_type=conv_type, conv_variant="self" if self.self_weight else "release",
                  heads=heads, batch_norm=False, dim_inner=self.dim)

  def dropout_layer_names(self) -> tuple[str, ...]:
    """Names of the GeneralLayers (each has one dropout site), as GraphGymGNN names them."""
    return (tuple(f"pre_mp_{i}" for i in range(self.layers_pre))
            + tuple(f"mp_{i}" for i in range(self.layers_mp))
            + tuple(f"post_mp_{i}" for i in range(self.layers_post - 1)))


def scan_possible(layers_mp: int) -> bool:
  """Whether a layout's message-passing layers can run as a scan: more than one layer. Every
  conv type qualifies: its layers' parameters differ only in the input rows of the kernels
  that read the layer input (GeneralConv's and GCN's kernel, SAGE's two, GIN's first MLP
  layer, GAT's projection; attention vectors, biases and GIN's eps have the same shape in
  every layer), and zero-padded rows against the stage buffer's zero columns add exact
  zeros."""
  return layers_mp > 1


def _present(values) -> tuple:
  return tuple(sorted(set(values), key=str))


def _mp_input_dim(design: Design, layer: int) -> int:
  return (layer + 1) * design.dim_inner if design.stage_type == "skipconcat" else design.dim_inner


def design_spec(layout: Layout, design: Design) -> dict[str, np.ndarray]:
  """The per-design arrays the superset program reads (0-d NumPy arrays).

  Keys: dim, head_dim, layers_pre, layers_mp, layers_post (int32); stage, activation,
  aggregation, pooling (int32 codes into the layout's choice tuples); batch_norm, l2norm
  (bool); dropout (float32 rate) and keep (float32 1 - rate, the divisor nn.Dropout uses).
  """
  return {
      "dim": np.int32(design.dim_inner),
      "head_dim": np.int32(budget_lib.head_input_dim(design, design.dim_inner)),
      "layers_pre": np.int32(design.layers_pre_mp),
      "layers_mp": np.int32(design.layers_mp),
      "layers_post": np.int32(design.layers_post_mp),
      "stage": np.int32(layout.stages.index(design.stage_type)),
      "activation": np.int32(layout.activations.index(design.activation)),
      "aggregation": np.int32(layout.aggregations.index(design.aggregation)),
      "pooling": np.int32(layout.poolings.index(design.graph_pooling)),
      "batch_norm": np.bool_(design.batch_norm),
      "l2norm": np.bool_(design.l2norm),
      "dropout": np.float32(design.dropout),
      "keep": np.float32(1.0 - design.dropout),
  }


# ----------------------------------------------------------------------------------------------
# Parameter layout.


class _ConvCore(nn.Module):
  """The conv part of a GeneralLayer, built by graphgym.make_conv in the same scope, so its
  parameters carry the names GraphGymGNN gives them ('conv', or 'gin_mlp' + 'conv')."""

  design: Design
  features: int

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple, train: bool,
               blocks: blocks_lib.GraphBlocks | None = None) -> Array:
    conv = graphgym.make_conv(self.design, self.features)
    if isinstance(conv, conv_lib.GATConv):
      return conv(x, graph, train=train, blocks=blocks)
    if isinstance(conv, conv_lib.GCNConv):
      return conv(x, graph, blocks=blocks)
    if isinstance(conv, conv_lib.GINConv):
      return conv(x, graph, train=train)
    return conv(x, graph)


def _conv_shapes(layout: Layout, dim_in: int) -> Params:
  core = _ConvCore(layout.conv_template(), layout.dim)
  graph = _dummy_graph(dim_in)
  shapes = jax.eval_shape(lambda: core.init(jax.random.PRNGKey(0), graph.nodes["x"], graph,
                                            False))
  return shapes["params"]


def _bn_shapes(width: int) -> tuple[Params, Params]:
  vec = jax.ShapeDtypeStruct((width,), jnp.float32)
  return {"scale": vec, "bias": vec}, {"mean": vec, "var": vec}


def _linear_shapes(d_in: int, d_out: int) -> Params:
  return {"kernel": jax.ShapeDtypeStruct((d_in, d_out), jnp.float32),
          "bias": jax.ShapeDtypeStruct((d_out,), jnp.float32)}


def variable_shapes(layout: Layout) -> tuple[Params, Params]:
  """(params, batch_stats) shape trees (ShapeDtypeStruct leaves) of one design's superset."""
  return jax.tree.map(lambda leaf: leaf, _variable_shapes(layout))


@functools.lru_cache(maxsize=64)
def _variable_shapes(layout: Layout) -> tuple[Params, Params]:
  """variable_shapes, traced once per layout (callers must not mutate the trees)."""
  params, stats = {}, {}

  def layer(name: str, core: Params, width: int) -> None:
    bn_params, bn_stats = _bn_shapes(width)
    params[name] = {**core, "bn": bn_params}
    stats[name] = {"bn": bn_stats}

  for i in range(layout.layers_pre):
    layer(f"pre_mp_{i}", {"lin": _linear_shapes(layout.dim_in if i == 0 else layout.dim,
                                                layout.dim)}, layout.dim)
  for i in range(layout.layers_mp):
    layer(f"mp_{i}", _conv_shapes(layout, layout.mp_in_dims[i]), layout.dim)
  for i in range(layout.layers_post - 1):
    layer(f"post_mp_{i}", {"lin": _linear_shapes(layout.head_dim, layout.head_dim)},
          layout.head_dim)
  params["post_mp_out"] = _linear_shapes(layout.head_dim, layout.num_outputs)
  params["prelu"] = {"slope": jax.ShapeDtypeStruct((), jnp.float32)}
  return params, stats


def _flatten(tree: Mapping) -> dict[tuple[str, ...], Any]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat[tuple(str(k.key) for k in path)] = leaf
  return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> Params:
  tree: Params = {}
  for path, leaf in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree


def param_count(layout: Layout) -> int:
  """Scalars per design in the padded parameter layout."""
  params, _ = _variable_shapes(layout)
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------------------------
# Initialisation inside the population program.
#
# A design's own GraphGymGNN.init draws each random parameter as initializer(key, shape), with
# flax deriving `key` from the parameter's module path and its rank among the scope's params.
# Partitionable threefry gives element k of a draw the counter k, so the design's draw of its
# real shape is read out of a flat draw of the padded size (index = real row-major offset).
# One jitted program then initialises every member of a chunk, whatever its widths, instead of
# one eager init per design (which compiles every new random shape: seconds per design on CPU).

# jax.nn.initializers.variance_scaling arguments of GraphGymGNN's random parameters.
_XAVIER_RELU = ("uniform", 2.0, "fan_avg")  # graphgym.XAVIER_RELU: GeneralLayer, head, GIN MLP
_GLOROT = ("uniform", 1.0, "fan_avg")  # conv weights (GeneralConv, GCN, GAT) and GAT attention
_LECUN_NORMAL = ("truncated_normal", 1.0, "fan_in")  # flax Dense default: SAGE's lin_l / lin_r
_TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of a standard normal truncated to (-2, 2)
# Constant initial values by leaf name (biases, batch norm, PReLU's slope).
_CONSTANTS = {"bias": 0.0, "scale": 1.0, "slope": 0.25, "mean": 0.0, "var": 1.0}


def _random_init(path: tuple[str, ...]) -> tuple[tuple[str, float, str], int] | None:
  """(variance_scaling arguments, rank of the make_rng call in its scope) of a random leaf."""
  scope, leaf = path[:-1], path[-1]
  if leaf == "kernel":
    if scope[-1] in ("lin_l", "lin_r"):
      return _LECUN_NORMAL, 1
    if len(scope) >= 2 and scope[-2] == "conv":
      return _GLOROT, 1
    return _XAVIER_RELU, 1
  if leaf in ("att_src", "att_dst"):
    return _GLOROT, 1 if leaf == "att_src" else 2
  return None


def _view_shape(layout: Layout, path: tuple[str, ...], shape: tuple[int, ...]
                ) -> tuple[int, ...]:
  """The shape whose row-major layout real and padded leaves share: GAT's kernel
  [d_in, heads * d] is viewed as [d_in, heads, d] so that every head's block pads on its own."""
  if layout.conv_type == "gat" and path[-3:] == ("conv", "lin", "kernel"):
    heads = layout.conv[1]
    return (shape[0], heads, shape[1] // heads)
  return tuple(shape)


def _fans(shape: Sequence[int]) -> tuple[float, float]:
  """jax.nn.initializers' fans for in_axis=-2, out_axis=-1 (Python floats, as it computes)."""
  receptive = math.prod(shape) / shape[-2] / shape[-1]
  return shape[-2] * receptive, shape[-1] * receptive


def _variance(init: tuple[str, float, str], shape: Sequence[int]) -> np.float32:
  fan_in, fan_out = _fans(shape)
  denominator = fan_in if init[2] == "fan_in" else (fan_in + fan_out) / 2
  return np.float32(init[1] / denominator)


def _dummy_graph(dim_in: int) -> jraph.GraphsTuple:
  return jraph.GraphsTuple(nodes={"x": np.zeros((3, dim_in), np.float32)}, edges={},
                           senders=np.zeros(1, np.int32), receivers=np.ones(1, np.int32),
                           globals={}, n_node=np.array([2, 1], np.int32),
                           n_edge=np.array([1, 0], np.int32))


def design_variable_shapes(model: graphgym.GraphGymGNN, dim_in: int) -> tuple[Params, Params]:
  """(params, batch_stats) shape trees of a design's own model (traced, not run)."""
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _dummy_graph(dim_in)))
  return variables["params"], variables.get("batch_stats", {})


def init_spec(layout: Layout, params: Params, batch_stats: Params) -> dict[str, Any]:
  """The per-design arrays `init_variables` reads, from the design's own variable shapes.

  Args:
    layout: the population layout.
    params, batch_stats: the design's own shape trees (`design_variable_shapes`).

  Returns:
    {'shapes': {leaf: int32 [rank]}, 'present': {leaf: bool}, 'variances': {leaf: float32}}
    keyed by '/'-joined paths: every layout leaf's real shape in its view (zeros where the
    design lacks it), whether the design has it, and, for random leaves, the initializer's
    variance (computed in Python floats, as jax does).

  Raises:
    ValueError: a real variable with no place in the layout (names out of sync with
      GraphGymGNN, or a design that is not in the layout).
  """
  shapes, present, variances = {}, {}, {}
  for real, padded in zip((params, batch_stats), _variable_shapes(layout)):
    real_flat, padded_flat = _flatten(real), _flatten(padded)
    unknown = sorted(set(real_flat) - set(padded_flat))
    if unknown:
      raise ValueError(f"variables {['/'.join(p) for p in unknown]} have no place in the "
                       "superset layout")
    for path, leaf in padded_flat.items():
      view = _view_shape(layout, path, leaf.shape)
      name = "/".join(path)
      present[name] = np.bool_(path in real_flat)
      if path not in real_flat:
        shapes[name] = np.zeros(len(view), np.int32)
      else:
        real_shape = tuple(real_flat[path].shape)
        real_view = _view_shape(layout, path, real_shape)
        if any(r > p for r, p in zip(real_view, view)):
          raise ValueError(f"{name} of shape {real_shape} does not fit the layout's "
                           f"{leaf.shape}")
        shapes[name] = np.asarray(real_view, np.int32)
      random = _random_init(path)
      if random is not None:
        variances[name] = (_variance(random[0], real_flat[path].shape) if path in real_flat
                           else np.float32(1.0))
  return {"shapes": shapes, "present": present, "variances": variances}


class _RngProbe(nn.Module):
  """Mirrors a module tree: calls make_rng('params') `draws` times in its own scope and
  recurses into `children` ((name, draws, children) triples) under their names."""

  draws: int
  children: tuple

  @nn.compact
  def __call__(self) -> dict[str, Any]:
    out: dict[str, Any] = {"": [self.make_rng("params") for _ in range(self.draws)]}
    for name, draws, children in self.children:
      out[name] = _RngProbe(draws, children, name=name)()
    return out


def _probe_tree(scopes: Mapping[tuple[str, ...], int], prefix: tuple[str, ...] = ()) -> tuple:
  names = sorted({scope[len(prefix)] for scope in scopes
                  if len(scope) > len(prefix) and scope[:len(prefix)] == prefix})
  return tuple((name, scopes.get(prefix + (name,), 0), _probe_tree(scopes, prefix + (name,)))
               for name in names)


def _random_leaves(layout: Layout) -> dict[tuple[str, ...], tuple]:
  params, _ = _variable_shapes(layout)
  return {path: init for path in _flatten(params)
          if (init := _random_init(path)) is not None}


def param_keys(layout: Layout, params_key: Array) -> dict[str, Array]:
  """'/'-joined path -> the key flax passes the initializer of that random parameter when
  GraphGymGNN.init gets rngs={'params': params_key}."""
  leaves = _random_leaves(layout)
  scopes: dict[tuple[str, ...], int] = {}
  for path, (_, rank) in leaves.items():
    scopes[path[:-1]] = max(scopes.get(path[:-1], 0), rank)
  keys = _RngProbe(0, _probe_tree(scopes)).apply({}, rngs={"params": params_key})
  out = {}
  for path, (_, rank) in leaves.items():
    node = keys
    for name in path[:-1]:
      node = node[name]
    out["/".join(path)] = node[""][rank - 1]
  return out


def _valid_and_offset(view: tuple[int, ...], real: Array) -> tuple[Array, Array]:
  """Over a padded view: bool, inside the real shape; int32, row-major offset in the real."""
  valid = jnp.ones(view, bool)
  offset = jnp.zeros(view, jnp.int32)
  for axis in range(len(view)):
    index = jax.lax.broadcasted_iota(jnp.int32, view, axis)
    valid = valid & (index < real[axis])
    offset = offset * real[axis] + index
  return valid, offset


def _draw(init: tuple[str, float, str], key: Array, size: int, variance: Array) -> Array:
  """A flat [size] draw of jax's variance_scaling initializer (same ops, same values)."""
  distribution = init[0]
  if distribution == "uniform":
    return jax.random.uniform(key, (size,), jnp.float32, -1) * jnp.sqrt(3 * variance)
  stddev = jnp.sqrt(variance) / jnp.array(_TRUNCATED_NORMAL_STD, jnp.float32)
  return jax.random.truncated_normal(key, -2, 2, (size,), jnp.float32) * stddev


def init_variables(layout: Layout, spec: Mapping[str, Any], params_key: Array
                   ) -> tuple[Params, Params, Params]:
  """A design's initial variables in the layout, equal to its own GraphGymGNN.init padded
  with zeros (jittable and vmappable over designs).

  Args:
    layout: the population layout (static).
    spec: the design's `init_spec`.
    params_key: the 'params' key of the design's init (loop.init_state: fold_in(key, 0)).

  Returns:
    (params, batch_stats, mask): float32 trees of `variable_shapes(layout)`, and a bool tree
    over params, True where the design has a real parameter (updates elsewhere are dropped).
  """
  keys = param_keys(layout, params_key)
  random = _random_leaves(layout)
  out = []
  for shapes in _variable_shapes(layout):
    values, masks = {}, {}
    for path, leaf in _flatten(shapes).items():
      name = "/".join(path)
      view = _view_shape(layout, path, leaf.shape)
      valid, offset = _valid_and_offset(view, spec["shapes"][name])
      valid = valid & spec["present"][name]  # a 0-d leaf has no axis to say it is absent
      if path in random:
        draw = _draw(random[path][0], keys[name], math.prod(view), spec["variances"][name])
        value = draw[jnp.where(valid, offset, 0).reshape(-1)].reshape(view)
      else:
        value = jnp.full(view, _CONSTANTS[path[-1]], jnp.float32)
      values[path] = jnp.where(valid, value, 0.0).reshape(leaf.shape)
      masks[path] = valid.reshape(leaf.shape)
    out.append((_unflatten(values), _unflatten(masks)))
  (params, mask), (batch_stats, _) = out
  return params, batch_stats, mask


# ----------------------------------------------------------------------------------------------
# Dropout keys: the keys flax hands each GeneralLayer's nn.Dropout inside GraphGymGNN.


class _DropoutKey(nn.Module):
  @nn.compact
  def __call__(self) -> Array:
    return self.make_rng("dropout")


class _LayerDropoutKey(nn.Module):
  """Stands in for a GeneralLayer: its nn.Dropout is the layer's first auto-named Dropout."""

  @nn.compact
  def __call__(self) -> Array:
    return _DropoutKey(name="Dropout_0")()


class _DropoutKeyProbe(nn.Module):
  names: tuple[str, ...]

  @nn.compact
  def __call__(self) -> dict[str, Array]:
    return {name: _LayerDropoutKey(name=name)() for name in self.names}


def dropout_keys(layout: Layout, dropout_key: Array) -> dict[str, Array]:
  """Layer name -> the key `nn.Dropout` draws from in GraphGymGNN when `model.apply` gets
  rngs={'dropout': dropout_key} (flax derives it from the module path)."""
  probe = _DropoutKeyProbe(layout.dropout_layer_names())
  return probe.apply({}, rngs={"dropout": dropout_key})


def dropout(x: Array, key: Array, keep: Array, width: Array) -> Array:
  """nn.Dropout(1 - keep) on the first `width` columns of x [R, W], with the mask a
  [R, width] draw from `key` would give (partitionable threefry: element k uses counter k)."""
  rows, cols = x.shape
  col = jnp.arange(cols, dtype=jnp.int32)
  index = jnp.arange(rows, dtype=jnp.int32)[:, None] * width + col[None, :]
  index = jnp.where(col[None, :] < width, index, 0)
  kept = _uniform_at(key, rows * cols, index) < keep
  return jax.lax.select(kept, x / keep, jnp.zeros_like(x))


def _uniform_at(key: Array, size: int, index: Array) -> Array:
  """jax.random.uniform(key, (size,), float32)[index] for int32 `index` in [0, size).

  With partitionable threefry (jax's default) element k of a draw depends on its counter k
  only, so the values are computed at `index` directly: one elementwise kernel that fuses with
  its use, instead of a [size] draw written to memory and gathered back. Other PRNG settings
  draw and gather."""
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  impl = str(jax.random.key_impl(key)) if typed else jax.config.jax_default_prng_impl
  if impl != "threefry2x32" or not jax.config.jax_threefry_partitionable:
    return jax.random.uniform(key, (size,), jnp.float32)[index]
  if typed:
    key = jax.random.key_data(key)
  counter = index.astype(jnp.uint32)
  bits1, bits2 = jax_random_ext.threefry2x32_p.bind(key[0], key[1], jnp.zeros_like(counter),
                                                    counter)
  # jax.random.uniform's float32 construction: 23 random mantissa bits under exponent 0.
  mantissa = jax.lax.shift_right_logical(bits1 ^ bits2, np.uint32(32 - 23))
  one = np.array(1.0, np.float32).view(np.uint32)
  return jax.lax.bitcast_convert_type(mantissa | one, jnp.float32) - np.float32(1.0)


# ----------------------------------------------------------------------------------------------
# Forward pass of one design.


def select(code: Array, options: Sequence[Any]) -> Any:
  """options[code] for a traced int code, by exact elementwise selection (pytrees allowed).

  Every option is computed; `jnp.where` passes the chosen one through bit for bit, and its
  gradient gives the others a zero cotangent."""
  result = options[-1]
  for index in range(len(options) - 2, -1, -1):
    result = jax.tree.map(lambda a, b, i=index: jnp.where(code == i, a, b), options[index],
                          result)
  return result


def _pad_channels(x: Array, width: int) -> Array:
  return jnp.pad(x, ((0, 0), (0, width - x.shape[-1])))


def _place(y: Array, offset: Array, width: Array, total: int) -> Array:
  """[R, total] holding y's first `width` columns at columns offset .. offset + width - 1."""
  src = jnp.arange(total, dtype=jnp.int32) - offset
  valid = (src >= 0) & (src < width)
  return jnp.where(valid[None, :], y[:, jnp.clip(src, 0, y.shape[-1] - 1)], 0.0)


_BLOCK_EXTREMES = {"max": blocks_lib.block_max, "min": blocks_lib.block_min}
_REMAT_POLICY = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_saveable,
    jax.checkpoint_policies.save_only_these_names(blocks_lib.REMAT_NAME))


def _aggregations(kinds: Sequence[str], h: Array, graph: jraph.GraphsTuple,
                  blocks: blocks_lib.GraphBlocks | None,
                  block_extremes: bool = False) -> list[Array]:
  """agg_lib.aggregate(kind, h[senders], ...) for each kind over the real edges of `graph`.

  'add' and 'mean' share one sum (mean = sum / count, agg_lib.segment_mean's ops): with
  `blocks`, a per-graph matmul; else one segment sum (one scatter forward and one gather
  backward for both). 'max'/'min': with `blocks` and `block_extremes`, a fused per-graph
  reduction (`blocks_lib.block_max`: Pallas kernels on CUDA GPUs, sharded or not, since the
  engine runs a sharded population device by device); else a scatter of the gathered
  messages."""
  n, edge_mask = h.shape[0], graph_lib.edge_mask(graph)
  messages = None
  total = count = None
  if "add" in kinds or "mean" in kinds:
    if blocks is not None:
      total = blocks_lib.block_sum(blocks, h)
    else:
      messages = h[graph.senders]
      total = agg_lib.segment_sum(messages, graph.receivers, n, edge_mask)
  out = []
  for kind in kinds:
    if kind == "add":
      out.append(total)
    elif kind == "mean":
      if count is None:
        count = (blocks_lib.block_count(blocks) if blocks is not None
                 else agg_lib.segment_count(graph.receivers, n, edge_mask))
      out.append(total / jnp.maximum(count, 1.0)[:, None])
    elif blocks is not None and block_extremes and kind in _BLOCK_EXTREMES:
      out.append(_BLOCK_EXTREMES[kind](blocks, h))
    else:
      if messages is None:
        messages = h[graph.senders]
      out.append(agg_lib.aggregate(kind, messages, graph.receivers, n, edge_mask))
  return out


def _stack_layer_params(layers: Sequence[Params], rows: int) -> Params:
  """Per-layer parameter trees of one structure stacked into one [L, ...] tree, each leaf
  zero-padded along its first axis to the largest (input rows: `rows` for the kernels that
  read the layer input, unchanged for leaves of one shape in every layer).

  Raises:
    ValueError: leaves that differ in more than their first axis (nothing to pad exactly).
  """
  def stack(*leaves):
    shapes = {np.shape(leaf)[1:] for leaf in leaves}
    if len(shapes) != 1:
      raise ValueError(f"cannot scan layers whose parameters differ beyond their input rows: "
                       f"{sorted({np.shape(leaf) for leaf in leaves})}")
    first = max(np.shape(leaf)[0] for leaf in leaves) if np.ndim(leaves[0]) else None
    if first is not None and first > rows:
      raise ValueError(f"a layer parameter has {first} input rows, more than the {rows} of "
                       "the widest layer input")
    pad = lambda a: (a if first is None or a.shape[0] == first
                     else jnp.pad(a, ((0, first - a.shape[0]),) + ((0, 0),) * (a.ndim - 1)))
    return jnp.stack([pad(leaf) for leaf in leaves])
  return jax.tree.map(stack, *layers)


def _dense(x: Array, p: Params) -> Array:
  return x @ p["kernel"] + p["bias"]


class _Member:
  """One design's forward pass over the layout (a closure over its spec and variables)."""

  def __init__(self, layout: Layout, params: Params, batch_stats: Params,
               spec: Mapping[str, Array], train: bool, keys: Mapping[str, Array] | None):
    self.layout, self.params, self.stats, self.spec = layout, params, batch_stats, spec
    self.train, self.keys = train, keys
    self.new_stats: Params = {}
    self.blocks: blocks_lib.GraphBlocks | None = None  # set by apply when the layout says so

  def activate(self, x: Array) -> Array:
    options = []
    for name in self.layout.activations:
      if name == "prelu":
        options.append(mlp_lib.PReLU().apply({"params": self.params["prelu"]}, x))
      else:
        options.append(mlp_lib.get_activation(name)(x))
    return select(self.spec["activation"], options)

  def finish_layer(self, name: str, h: Array, mask: Array, width: Array) -> Array:
    """GeneralLayer after its core: [BatchNorm] -> [Dropout] (the model applies the act)."""
    key = self.keys[name] if self.layout.dropout and self.train else None
    h, stats = self._finish(h, self.params[name]["bn"], self.stats[name]["bn"], key, mask,
                            width)
    self.new_stats[name] = {"bn": stats}
    return h

  def _finish(self, h: Array, bn_params: Params, bn_stats: Params, key: Array | None,
              mask: Array, width: Array) -> tuple[Array, Params]:
    """finish_layer on explicit variables: (output, updated running statistics)."""
    stats = bn_stats
    if True in self.layout.batch_norms:
      bn_vars = {"params": bn_params, "batch_stats": bn_stats}
      if self.train:
        normed, updated = mlp_lib.MaskedBatchNorm().apply(bn_vars, h, mask, True,
                                                          mutable=["batch_stats"])
        stats = select(self.spec["batch_norm"].astype(jnp.int32),
                        [stats, updated["batch_stats"]])
      else:
        normed = mlp_lib.MaskedBatchNorm().apply(bn_vars, h, mask, False)
      h = jnp.where(self.spec["batch_norm"], normed, h)
    if key is not None:
      dropped = dropout(h, key, self.spec["keep"], width)
      h = jnp.where(self.spec["dropout"] > 0, dropped, h)
    return h, stats

  def conv(self, name: str, x: Array, graph: jraph.GraphsTuple) -> Array:
    return self._conv_params(self._conv_part(name), x, graph)

  def _conv_part(self, name: str) -> Params:
    """A message-passing layer's parameters without its batch norm."""
    return {k: v for k, v in self.params[name].items() if k != "bn"}

  def _conv_params(self, layer: Params, x: Array, graph: jraph.GraphsTuple) -> Array:
    """A message-passing layer's conv (without its batch norm) from its parameters."""
    if self.layout.conv_type != "generalconv":
      core = _ConvCore(self.layout.conv_template(), self.layout.dim)
      return core.apply({"params": layer}, x, graph, self.train, self.blocks)
    p = layer["conv"]
    return self._general_conv(x, p["lin"]["kernel"], p["lin_self"]["kernel"]
                              if "lin_self" in p else None, p["bias"], graph)

  def _general_conv(self, x: Array, kernel: Array, self_kernel: Array | None, bias: Array,
                    graph: jraph.GraphsTuple) -> Array:
    """GraphGym's GeneralConv: aggregate(W x_j) [+ W_self x_i] + b, the design's aggregation."""
    h = x @ kernel
    out = select(self.spec["aggregation"], _aggregations(self.layout.aggregations, h, graph,
                                                         self.blocks,
                                                         self.layout.block_extremes))
    if self_kernel is not None:
      out = out + x @ self_kernel
    return out + bias

  def pre_mp(self, x: Array, mask: Array) -> Array:
    for i in range(self.layout.layers_pre):
      name = f"pre_mp_{i}"
      h = self.finish_layer(name, _dense(x, self.params[name]["lin"]), mask, self.spec["dim"])
      y = self.activate(h)
      x = y if i == 0 else jnp.where(i < self.spec["layers_pre"], y, x)
    return x

  def _combine(self, i: Array | int, buffer: Array, h: Array) -> Array:
    """Stage update after layer i: the design's stage type, activation, and identity for
    layers past its own count."""
    spec, width = self.spec, self.layout.head_dim
    options = []
    for stage in self.layout.stages:
      if stage == "stack":
        options.append(_pad_channels(h, width))
      elif stage == "skipsum":
        options.append(buffer + _pad_channels(h, width))
      else:  # skipconcat: the buffer is zero from (i + 1) d on, so + is the concatenation
        options.append(buffer + _place(h, (i + 1) * spec["dim"], spec["dim"], width))
    y = self.activate(select(spec["stage"], options))
    return jnp.where(i < spec["layers_mp"], y, buffer)

  def stage(self, x: Array, graph: jraph.GraphsTuple, mask: Array) -> Array:
    layout, spec = self.layout, self.spec
    buffer = _pad_channels(x, layout.head_dim)
    if layout.scan_mp:
      return self._scanned_stage(buffer, graph, mask)
    for i in range(layout.layers_mp):
      name = f"mp_{i}"
      h = self.conv(name, buffer[:, :layout.mp_in_dims[i]], graph)
      h = self.finish_layer(name, h, mask, spec["dim"])
      buffer = self._combine(i, buffer, h)
    return buffer

  def _scanned_stage(self, buffer: Array, graph: jraph.GraphsTuple, mask: Array) -> Array:
    """The message-passing layers as one `lax.scan`: XLA compiles the layer once instead of
    layers_mp times. Each layer's conv parameters (everything but its batch norm) are
    zero-padded from mp_in_dims[i] to max(mp_in_dims) input rows and stacked
    (`_stack_layer_params`); the buffer's columns past a layer's real input width are zero,
    so the padded rows add exact zeros."""
    layout = self.layout
    names = [f"mp_{i}" for i in range(layout.layers_mp)]
    rows = max(layout.mp_in_dims)
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
    layers = {"conv": _stack_layer_params([self._conv_part(name) for name in names], rows),
              "bn": stack([self.params[name]["bn"] for name in names]),
              "stats": stack([self.stats[name]["bn"] for name in names])}
    if layout.dropout and self.train:
      layers["key"] = jnp.stack([self.keys[name] for name in names])

    def layer(carry, xs):
      i, p = xs
      h = self._conv_params(p["conv"], carry[:, :rows], graph)
      h, stats = self._finish(h, p["bn"], p["stats"], p.get("key"), mask, self.spec["dim"])
      return self._combine(i, carry, h), stats

    # Rematerialised but for its matmuls: the backward pass recomputes a layer's elementwise
    # work from the saved dot outputs instead of stacking ~7 [N, D] residuals per layer in
    # memory. Measured (2026-12-03, smallworld, GraphGym round-1 groups; population_profile):
    # one H200, 73 members 27.9 -> 27.2 ms per step, 71 skipconcat members 137.8 -> 128.0 ms;
    # the 2-core CPU, 12 members 2,275 -> 2,014 ms. (`nothing_saveable`: 28.4 and 133.5 ms.)
    # Block max/min's [N, D] results are saved too: recomputing them is a masked reduction
    # over G M^2 D cells, not elementwise work.
    layer = jax.checkpoint(layer, policy=_REMAT_POLICY)
    buffer, stats = jax.lax.scan(layer, buffer, (jnp.arange(layout.layers_mp), layers))
    for i, name in enumerate(names):
      self.new_stats[name] = {"bn": jax.tree.map(lambda a, i=i: a[i], stats)}
    return buffer

  def readout(self, x: Array, graph: jraph.GraphsTuple) -> tuple[Array, Array]:
    if True in self.layout.l2norms:
      x = jnp.where(self.spec["l2norm"], graphgym.l2_normalize(x), x)
    if self.layout.task_level == ds.GRAPH:
      pooled = select(self.spec["pooling"], [pool_lib.global_pool(kind, x, graph)
                                              for kind in self.layout.poolings])
      return pooled, graph_lib.graph_mask(graph)
    return x, graph_lib.node_mask(graph)

  def head(self, x: Array, mask: Array) -> Array:
    for i in range(self.layout.layers_post - 1):
      name = f"post_mp_{i}"
      h = self.finish_layer(name, _dense(x, self.params[name]["lin"]), mask,
                            self.spec["head_dim"])
      x = jnp.where(i < self.spec["layers_post"] - 1, self.activate(h), x)
    return _dense(x, self.params["post_mp_out"])


def apply(layout: Layout, params: Params, batch_stats: Params, spec: Mapping[str, Array],
          graph: jraph.GraphsTuple, train: bool = False,
          dropout_keys_by_layer: Mapping[str, Array] | None = None) -> tuple[Array, Params]:
  """One design's forward pass on a padded batch.

  Args:
    layout: the population layout (static).
    params, batch_stats: the design's variables in the layout (see `init_variables`).
    spec: the design's arrays (see `design_spec`).
    graph: a padded batch whose nodes['x'] is float [N, F].
    train: batch statistics and dropout on (True) or running statistics (False).
    dropout_keys_by_layer: `dropout_keys(layout, key)`; needed when train and layout.dropout.

  Returns:
    (outputs, batch_stats): outputs float32 [N, C] (node tasks) or [G, C] (graph tasks), and
    the updated running statistics (the input ones when not training).
  """
  if train and layout.dropout and dropout_keys_by_layer is None:
    raise ValueError("training a layout with dropout needs dropout_keys_by_layer")
  member = _Member(layout, params, batch_stats, spec, train, dropout_keys_by_layer)
  if layout.block_nodes:
    # Depends on the batch only: under the engine's vmap over members it is built once.
    member.blocks = blocks_lib.graph_blocks(graph, layout.block_nodes)
  node_mask = graph_lib.node_mask(graph)
  x = jnp.asarray(graph.nodes["x"]).astype(jnp.float32)
  x = member.pre_mp(x, node_mask)
  x = member.stage(x, graph, node_mask)
  x, mask = member.readout(x, graph)
  return member.head(x, mask), member.new_stats
