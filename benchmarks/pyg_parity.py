r"""Numerical parity of gnnjax's convs with PyG's, with weights transplanted from gnnjax to PyG.

    python -m benchmarks.pyg_parity --out_dir=benchmarks --seed=0 --num_graphs=3

For every case below: build a batch of random graphs (multi-edges, self-loops including a
doubled one, isolated nodes, nodes without in-edges), pad it for gnnjax (padding rows get random
values, so a leak would show), initialise the gnnjax layer, perturb its constant-initialised
parameters and batch-norm statistics (so a transplant that forgets them cannot pass), copy every
parameter into the PyG layer, and run both in float32 on the same inputs. Reported per case:

    forward: max |ours - pyg| / max |pyg|            over real nodes
    grad:    the same for d sum(out) / d x           (input gradient, real nodes)

Both must be <= the case's tolerance (1e-5 unless stated). JAX runs its matmuls at full float32
precision ('highest'; GPUs would otherwise use TF32) and torch has TF32 switched off. For scale,
each row also gives PyG's own float32 error against the same PyG layer run in float64.

Where the libraries differ by design, the case says so in its note:
* GeneralConv: PyG's `GeneralConv(aggr=..., skip_linear=True, bias=False)` is our
  variant='self' exactly; our post-aggregation bias is PyG's `lin_self` bias with the per-edge
  message bias zeroed; our 'release' variant (no self term) has no PyG twin and is compared with
  PyG's `lin_self` zeroed.
* GENConv powermean: PyG >= 2.7 clamps to [1e-4, 100], gnnjax (like PyG <= 2.6) to [0, 100];
  one row aligns PyG's clamp with ours, one keeps PyG's default and shows the difference.
* PNAConv: the std aggregator's gradient is ill-conditioned in float32 (see PNA_NOTE), so its
  gradient tolerance is 1e-4.

Requires torch and torch_geometric; torch runs on CUDA when available.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
from absl import app, flags

from benchmarks import common
from gnnjax import batching
from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds
from gnnjax.nn import conv, deeper, general_conv, mlp, pna, point

NODE_DIM = 12  # input width; differs from OUT_DIM so the projections of GENConv etc. exist
OUT_DIM = 16
HIDDEN_DIM = 24
EDGE_DIM = 6
GAT_HEADS = 3
GAT_FEATURES = 5
TOLERANCE = 1e-5
# Extra padding rows beyond the real ones (jraph layout needs >= 1 node and 1 graph slot).
PAD_NODES, PAD_EDGES, PAD_GRAPHS = 5, 7, 2

Variables = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Graphs.


@dataclasses.dataclass(frozen=True)
class Batch:
  """One batch of graphs in both libraries' layouts.

  Attributes:
    padded: jraph-padded GraphsTuple for gnnjax; nodes {'x': float32 [N_pad, NODE_DIM]}, edges
      {'x': float32 [E_pad, EDGE_DIM], 'x_node': float32 [E_pad, NODE_DIM] (edge features of
      node width), 'weight': float32 [E_pad] in [0.5, 1.5]}; padding rows are random.
    real: the same graphs unpadded (real rows first, in the same order), for PyG.
    num_real_nodes: N, the number of real nodes (rows [0, N) of `padded`).
    degree_histogram: int64 [max in-degree + 1] over the real nodes, for PNA.
  """

  padded: jraph.GraphsTuple
  real: jraph.GraphsTuple
  num_real_nodes: int
  degree_histogram: np.ndarray


def random_graph(rng: np.random.Generator) -> jraph.GraphsTuple:
  """One directed graph with the awkward cases every aggregation must handle.

  Nodes [0, n - 2) take part in random edges; node n - 3 only sends (at least to node 0); nodes
  n - 2 and n - 1 are isolated. Three edges are doubled, two nodes get a self-loop, one of them
  twice (random edges may add more of each).
  """
  n = int(rng.integers(9, 16))
  active = n - 2
  m = 3 * active
  senders = rng.integers(0, active, m)
  receivers = rng.integers(0, active - 1, m)  # node active - 1 = n - 3 never receives
  doubled = rng.choice(m, 3, replace=False)
  loops = rng.choice(active - 1, 2, replace=False)
  senders = np.concatenate([senders, senders[doubled], loops, loops[:1], [active - 1]])
  receivers = np.concatenate([receivers, receivers[doubled], loops, loops[:1], [0]])
  order = rng.permutation(senders.size)
  senders, receivers = senders[order], receivers[order]
  e = senders.size
  weight = rng.uniform(0.5, 1.5, e).astype(np.float32)
  # PyG keeps one weight of a node's self-loop edges and which one is unspecified on CUDA
  # (index_put with repeated indices), so a node's self-loops share one weight.
  first_loop = {}
  for i in np.flatnonzero(senders == receivers):
    weight[i] = weight[first_loop.setdefault(senders[i], i)]
  return ds.make_graph(
      senders, receivers, n,
      {"x": rng.standard_normal((n, NODE_DIM)).astype(np.float32)},
      {"x": rng.standard_normal((e, EDGE_DIM)).astype(np.float32),
       "x_node": rng.standard_normal((e, NODE_DIM)).astype(np.float32),
       "weight": weight})


def _fill_padding(values: np.ndarray, num_real: int, rng: np.random.Generator) -> np.ndarray:
  out = np.array(values)
  out[num_real:] = rng.standard_normal(out[num_real:].shape).astype(out.dtype) * 3.0 + 1.0
  return out


def make_batch(seed: int, num_graphs: int) -> Batch:
  """`num_graphs` random graphs, batched and padded with PAD_* spare rows."""
  rng = np.random.default_rng(seed)
  packed = batching.PackedGraphs.from_graphs([random_graph(rng) for _ in range(num_graphs)])
  indices = np.arange(num_graphs)
  real = packed.gather(indices)
  n, e = int(packed.n_node.sum()), int(packed.n_edge.sum())
  padded = packed.gather(indices, batching.Budget(n + PAD_NODES, e + PAD_EDGES,
                                                  num_graphs + PAD_GRAPHS))
  padded = padded._replace(
      nodes={k: _fill_padding(v, n, rng) for k, v in padded.nodes.items()},
      edges={k: np.abs(_fill_padding(v, e, rng)) if k == "weight" else _fill_padding(v, e, rng)
             for k, v in padded.edges.items()})
  return Batch(padded, real, n, pna.degree_histogram(packed))


# ----------------------------------------------------------------------------------------------
# Transplanting flax parameters into torch modules.


def _tensor(value, like):
  import torch
  return torch.as_tensor(np.array(value), dtype=like.dtype, device=like.device).reshape(like.shape)


def copy_dense(linear, dense: Variables | None) -> None:
  """torch Linear <- flax Dense params {'kernel': [in, out], 'bias'?: [out]}; None zeros it."""
  import torch
  with torch.no_grad():
    if dense is None:
      linear.weight.zero_()
      if linear.bias is not None:
        linear.bias.zero_()
      return
    linear.weight.copy_(_tensor(np.asarray(dense["kernel"]).T, linear.weight))
    if linear.bias is not None:
      if "bias" in dense:
        linear.bias.copy_(_tensor(dense["bias"], linear.bias))
      else:
        linear.bias.zero_()


def copy_batch_norm(norm, params: Variables, stats: Variables) -> None:
  """torch BatchNorm1d <- MaskedBatchNorm params {'scale', 'bias'} and stats {'mean', 'var'}."""
  import torch
  with torch.no_grad():
    norm.weight.copy_(_tensor(params["scale"], norm.weight))
    norm.bias.copy_(_tensor(params["bias"], norm.bias))
    norm.running_mean.copy_(_tensor(stats["mean"], norm.running_mean))
    norm.running_var.copy_(_tensor(stats["var"], norm.running_var))


def copy_layer_norm(norm, params: Variables) -> None:
  import torch
  with torch.no_grad():
    norm.weight.copy_(_tensor(params["scale"], norm.weight))
    norm.bias.copy_(_tensor(params["bias"], norm.bias))


def copy_scalar(parameter, value) -> None:
  import torch
  with torch.no_grad():
    parameter.copy_(_tensor(value, parameter))


def copy_sequential(sequential, params: Variables, stats: Variables, linear_names: Sequence[str],
                    norm_names: Sequence[str] = ()) -> None:
  """Copies the i-th flax Dense / norm of `*_names` into the i-th Linear / norm of a torch
  Sequential, in order; activations and dropout are skipped."""
  import torch
  import torch_geometric.nn as pyg_nn
  linears = [m for m in sequential if isinstance(m, (torch.nn.Linear, pyg_nn.Linear))]
  norms = [m for m in sequential if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.LayerNorm))]
  if len(linears) != len(linear_names) or len(norms) != len(norm_names):
    raise ValueError(f"torch Sequential has {len(linears)} Linear and {len(norms)} norm layers; "
                     f"got names {list(linear_names)} and {list(norm_names)}")
  for linear, name in zip(linears, linear_names):
    copy_dense(linear, params[name])
  for norm, name in zip(norms, norm_names):
    if isinstance(norm, torch.nn.BatchNorm1d):
      copy_batch_norm(norm, params[name], stats[name])
    else:
      copy_layer_norm(norm, params[name])


def torch_mlp(widths: Sequence[int], in_dim: int, batch_norm: bool):
  """PyG-side twin of gnnjax.nn.mlp.MLP(widths, batch_norm=...): Linear [BN] ReLU ... Linear."""
  import torch
  layers, previous = [], in_dim
  for i, width in enumerate(widths):
    layers.append(torch.nn.Linear(previous, width))
    if i < len(widths) - 1:
      if batch_norm:
        layers.append(torch.nn.BatchNorm1d(width))
      layers.append(torch.nn.ReLU())
    previous = width
  return torch.nn.Sequential(*layers)


def copy_mlp(sequential, params: Variables, stats: Variables, depth: int, batch_norm: bool
             ) -> None:
  """torch_mlp twin <- gnnjax MLP params (Dense_i, MaskedBatchNorm_i)."""
  norms = [f"MaskedBatchNorm_{i}" for i in range(depth - 1)] if batch_norm else []
  copy_sequential(sequential, params, stats, [f"Dense_{i}" for i in range(depth)], norms)


# ----------------------------------------------------------------------------------------------
# Cases.


@dataclasses.dataclass(frozen=True)
class Case:
  """One gnnjax layer configuration and its PyG twin.

  Attributes:
    name: row label.
    ours: builds the flax module from the Batch (PNA needs its degree histogram).
    theirs: builds the PyG module (gets the Batch, e.g. for PNA's degree histogram).
    transplant: (params, batch_stats, pyg_module) -> None; copies our weights into PyG's.
    edge_input: which edge array both layers get ('x', 'x_node', 'weight') or None.
    edge_kwarg: our keyword for it ('edge_features' or 'edge_weight').
    takes_train: whether our layer has a `train` argument.
    train: run batch norm in training mode (batch statistics) in both libraries.
    tolerance: the bound on the forward relative error (and on running statistics).
    grad_tolerance: the bound on the input-gradient relative error (default: `tolerance`).
    note: what the row shows, or why a difference is expected.
  """

  name: str
  ours: Callable[[Batch], nn.Module]
  theirs: Callable[[Batch], Any]
  transplant: Callable[[Variables, Variables, Any], None]
  edge_input: str | None = None
  edge_kwarg: str = "edge_features"
  takes_train: bool = False
  train: bool = False
  tolerance: float = TOLERANCE
  grad_tolerance: float = TOLERANCE
  note: str = ""


def _pyg():
  import torch_geometric.nn as pyg_nn
  return pyg_nn


def _gcn_cases() -> list[Case]:
  def transplant(params, stats, layer):
    copy_dense(layer.lin, params["lin"])
    copy_scalar(layer.bias, params["bias"])
  make = lambda b: _pyg().GCNConv(NODE_DIM, OUT_DIM)
  plain = lambda b: _pyg().GCNConv(NODE_DIM, OUT_DIM, normalize=False)
  return [
      Case("GCNConv", lambda b: conv.GCNConv(OUT_DIM), make, transplant),
      Case("GCNConv edge_weight", lambda b: conv.GCNConv(OUT_DIM), make, transplant,
           edge_input="weight", edge_kwarg="edge_weight"),
      Case("GCNConv normalize=False", lambda b: conv.GCNConv(OUT_DIM, normalize=False), plain,
           transplant, edge_input="weight", edge_kwarg="edge_weight"),
      Case("GCNConv add_self_loops=False", lambda b: conv.GCNConv(OUT_DIM, add_self_loops=False),
           lambda b: _pyg().GCNConv(NODE_DIM, OUT_DIM, add_self_loops=False), transplant,
           edge_input="weight", edge_kwarg="edge_weight"),
  ]


def _sage_cases() -> list[Case]:
  def transplant(params, stats, layer):
    copy_dense(layer.lin_l, params["lin_l"])
    copy_dense(layer.lin_r, params["lin_r"])
    if "lin_proj" in params:
      copy_dense(layer.lin, params["lin_proj"])
  return [
      Case("SAGEConv mean", lambda b: conv.SAGEConv(OUT_DIM),
           lambda b: _pyg().SAGEConv(NODE_DIM, OUT_DIM, aggr="mean"), transplant),
      Case("SAGEConv max project", lambda b: conv.SAGEConv(OUT_DIM, aggr="max", project=True),
           lambda b: _pyg().SAGEConv(NODE_DIM, OUT_DIM, aggr="max", project=True), transplant),
  ]


def _gin_cases() -> list[Case]:
  widths = (HIDDEN_DIM, OUT_DIM)

  def transplant(batch_norm):
    def fn(params, stats, layer):
      copy_mlp(layer.nn, params["mlp"], stats.get("mlp", {}), len(widths), batch_norm)
      if "eps" in params:
        copy_scalar(layer.eps, params["eps"])
      if "lin_edge" in params:
        copy_dense(layer.lin, params["lin_edge"])
    return fn

  def ours(batch_norm=False, **kw):
    return lambda b: conv.GINConv(mlp.MLP(widths, batch_norm=batch_norm), **kw)

  pyg = lambda bn=False, **kw: lambda b: _pyg().GINConv(torch_mlp(widths, NODE_DIM, bn), **kw)
  gine = lambda **kw: lambda b: _pyg().GINEConv(torch_mlp(widths, NODE_DIM, False), **kw)
  return [
      Case("GINConv", ours(), pyg(), transplant(False), takes_train=True),
      Case("GINConv train_eps", ours(eps=0.1, train_eps=True), pyg(train_eps=True),
           transplant(False), takes_train=True),
      Case("GINConv BN eval", ours(batch_norm=True), pyg(bn=True), transplant(True),
           takes_train=True),
      Case("GINConv BN train", ours(batch_norm=True), pyg(bn=True), transplant(True),
           takes_train=True, train=True,
           note="batch statistics over real nodes only (padding masked)"),
      Case("GINEConv", ours(), gine(), transplant(False), edge_input="x_node",
           takes_train=True, note="edge width = node width: no edge projection"),
      Case("GINEConv edge_dim", ours(train_eps=True), gine(train_eps=True, edge_dim=EDGE_DIM),
           transplant(False), edge_input="x", takes_train=True),
  ]


def _gat_cases() -> list[Case]:
  def transplant(params, stats, layer):
    copy_dense(layer.lin, params["lin"])
    copy_scalar(layer.att_src, params["att_src"])
    copy_scalar(layer.att_dst, params["att_dst"])
    copy_scalar(layer.bias, params["bias"])
  return [
      Case("GATConv concat", lambda b: conv.GATConv(GAT_FEATURES, heads=GAT_HEADS),
           lambda b: _pyg().GATConv(NODE_DIM, GAT_FEATURES, heads=GAT_HEADS), transplant,
           takes_train=True),
      Case("GATConv mean heads",
           lambda b: conv.GATConv(GAT_FEATURES, heads=GAT_HEADS, concat=False),
           lambda b: _pyg().GATConv(NODE_DIM, GAT_FEATURES, heads=GAT_HEADS, concat=False),
           transplant, takes_train=True),
  ]


def _general_cases() -> list[Case]:
  """PyG GeneralConv computes AGG_j(W_msg x_j + b_msg) + (W_self x_i + b_self).

  With skip_linear=True, bias=False that is exactly our variant='self', use_bias=False. Our bias
  is added once after aggregation, PyG's message bias once per edge; with bias=True we zero
  b_msg and put ours in b_self. Our 'release' variant has no self term, which no PyG option
  gives; it is checked against PyG with W_self zeroed.
  """
  def transplant(params, stats, layer):
    copy_dense(layer.lin_msg, params["lin"])  # our bias is not per message: b_msg = 0
    copy_dense(layer.lin_self, params.get("lin_self"))  # release: W_self = 0
    if "bias" in params:
      copy_scalar(layer.lin_self.bias, params["bias"])

  def case(name, aggregation, variant, bias, note=""):
    return Case(
        name,
        lambda b: general_conv.GeneralConv(OUT_DIM, aggregation, variant, use_bias=bias),
        lambda b: _pyg().GeneralConv(NODE_DIM, OUT_DIM, aggr=aggregation, skip_linear=True,
                                     bias=bias),
        transplant, note=note)

  return [
      case("GeneralConv self add", "add", "self", False,
           "exact twin: skip_linear=True, bias=False"),
      case("GeneralConv self mean +bias", "mean", "self", True, "PyG b_msg := 0, b_self := ours"),
      case("GeneralConv self max", "max", "self", False),
      case("GeneralConv release add", "add", "release", False,
           "no PyG twin: PyG always has a self term; W_self := 0"),
  ]


def _gen_cases() -> list[Case]:
  def transplant(norm):
    def fn(params, stats, layer):
      for name in ("lin_src", "lin_dst", "lin_edge"):
        if name in params:
          copy_dense(getattr(layer, name), params[name])
      norms = [n for n in ("mlp_norm_0",) if norm is not None]
      copy_sequential(layer.mlp, params, stats, ["mlp_lin_0", "mlp_lin_1"], norms)
      if "t" in params:
        copy_scalar(layer.aggr_module.t, params["t"])
      if "p" in params:
        copy_scalar(layer.aggr_module.p, params["p"])
      if "msg_norm" in params:
        copy_scalar(layer.msg_norm.scale, params["msg_norm"]["scale"])
    return fn

  def case(name, kw, in_dim=NODE_DIM, out_dim=OUT_DIM, edge_input=None, clamp_min=0.0, note=""):
    kw = dict(kw)
    norm = kw.pop("norm", "batch")

    def theirs(b):
      layer = _pyg().GENConv(in_dim, out_dim, norm=norm, edge_dim=(
          None if edge_input is None else EDGE_DIM if edge_input == "x" else NODE_DIM), **kw)
      if clamp_min is not None and hasattr(layer.aggr_module, "min_value"):
        layer.aggr_module.min_value = clamp_min  # PyG <= 2.6's lower clamp, as gnnjax
      return layer

    return Case(name, lambda b: deeper.GENConv(out_dim, norm=norm, **kw), theirs, transplant(norm),
                edge_input=edge_input, takes_train=True, note=note)

  return [
      case("GENConv softmax learn_t", dict(aggr="softmax", learn_t=True)),
      case("GENConv softmax_sg", dict(aggr="softmax_sg", t=0.5)),
      case("GENConv powermean learn_p", dict(aggr="powermean", learn_p=True),
           note="PyG lower clamp set to 0 (PyG <= 2.6, gnnjax)"),
      case("GENConv powermean PyG default clamp", dict(aggr="powermean", learn_p=True),
           clamp_min=None,
           note="PyG >= 2.7 clamps messages to [1e-4, 100], gnnjax to [0, 100]: known difference"),
      case("GENConv msg_norm learn scale", dict(aggr="softmax", msg_norm=True,
                                                learn_msg_scale=True)),
      case("GENConv edge_dim", dict(aggr="softmax", learn_t=True), edge_input="x"),
      case("GENConv in=out, edge width", dict(aggr="softmax", msg_norm=True), in_dim=NODE_DIM,
           out_dim=NODE_DIM, edge_input="x_node", note="no lin_src/lin_dst/lin_edge"),
      case("GENConv layer norm", dict(aggr="mean", norm="layer")),
  ]


def _edge_conv_cases() -> list[Case]:
  widths = (HIDDEN_DIM, OUT_DIM)

  def transplant(params, stats, layer):
    copy_mlp(layer.nn, params["mlp"], stats.get("mlp", {}), len(widths), False)

  def case(aggr):
    return Case(f"EdgeConv {aggr}", lambda b: point.EdgeConv(mlp.MLP(widths), aggr=aggr),
                lambda b: _pyg().EdgeConv(torch_mlp(widths, 2 * NODE_DIM, False), aggr=aggr),
                transplant, takes_train=True)

  return [case("max"), case("mean")]


PNA_GRAD_TOLERANCE = 1e-4
PNA_NOTE = ("grad tolerance 1e-4: the std aggregator's gradient (x_j - mean) / (deg * std) "
            "amplifies the float32 rounding of var = E[x^2] - E[x]^2 where var is small; PyG's "
            "own float32 gradient is ~1e-5 from its float64 one (column 4)")


def _pna_cases() -> list[Case]:
  aggregators = ("mean", "min", "max", "std")
  scalers = pna.PNA_SCALERS

  def transplant(towers, pre_layers, post_layers):
    def fn(params, stats, layer):
      for t in range(towers):
        pre = [f"pre_nns_{t}_{i}" for i in range(pre_layers)]
        post = [f"post_nns_{t}_{i}" for i in range(post_layers)]
        copy_sequential(layer.pre_nns[t], params, stats, pre)
        copy_sequential(layer.post_nns[t], params, stats, post)
      copy_dense(layer.lin, params["lin"])
      if "edge_encoder" in params:
        copy_dense(layer.edge_encoder, params["edge_encoder"])
    return fn

  def case(name, edge_input=None, towers=1, pre_layers=1, post_layers=1, divide_input=False):
    kw = dict(towers=towers, pre_layers=pre_layers, post_layers=post_layers,
              divide_input=divide_input)

    def theirs(b):
      import torch
      return _pyg().PNAConv(NODE_DIM, OUT_DIM, list(aggregators), list(scalers),
                            torch.as_tensor(b.degree_histogram),
                            edge_dim=None if edge_input is None else EDGE_DIM, **kw)

    def ours(b):
      return pna.PNAConv(OUT_DIM, tuple(int(d) for d in b.degree_histogram),
                         aggregators=aggregators, scalers=scalers, **kw)

    return Case(name, ours, theirs, transplant(towers, pre_layers, post_layers),
                edge_input=edge_input, grad_tolerance=PNA_GRAD_TOLERANCE, note=PNA_NOTE)

  return [
      case("PNAConv"),
      case("PNAConv edge_dim", edge_input="x"),
      case("PNAConv 2 towers divide_input, 2+2 layers", towers=2, pre_layers=2, post_layers=2,
           divide_input=True),
  ]


def all_cases() -> list[Case]:
  return (_gcn_cases() + _sage_cases() + _gin_cases() + _gat_cases() + _general_cases()
          + _gen_cases() + _edge_conv_cases() + _pna_cases())


CASES = {case.name: case for case in all_cases()}


# ----------------------------------------------------------------------------------------------
# Running one case.


def as_plain_dicts(variables) -> Variables:
  """Flax variables (possibly a FrozenDict) as {collection: dict}."""
  return {k: dict(v) for k, v in dict(variables).items()}


def perturb_constants(variables: Variables, rng: np.random.Generator) -> Variables:
  """Randomises every parameter that init filled with one value (biases 0, scales 1, t, p, eps)
  and every batch-norm statistic, so that a transplant that skips them cannot pass."""
  def params_leaf(x):
    x = np.asarray(x)
    if x.size and np.all(x == x.flat[0]):
      return (x + rng.uniform(-0.4, 0.4, x.shape)).astype(x.dtype)
    return x

  def stats_leaf(path, x):
    x = np.asarray(x)
    if path[-1].key == "var":
      return rng.uniform(0.5, 2.0, x.shape).astype(x.dtype)
    return rng.normal(0.0, 0.5, x.shape).astype(x.dtype)

  out = dict(variables)
  out["params"] = jax.tree.map(params_leaf, variables["params"])
  if "batch_stats" in variables:
    out["batch_stats"] = jax.tree_util.tree_map_with_path(stats_leaf, variables["batch_stats"])
  return out


def max_relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
  """max |ours - theirs| / max |theirs| (the absolute difference when theirs is all zero)."""
  if not theirs.size:
    return 0.0
  diff = float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))
  scale = float(np.max(np.abs(theirs)))
  return diff / scale if scale > 0 else diff


@dataclasses.dataclass(frozen=True)
class Outputs:
  """One library's results on the real nodes: out [N, D_out], grad [N, NODE_DIM] (d sum(out)/dx)
  and, in training mode, the updated batch-norm running statistics (flat, in layer order)."""

  out: np.ndarray
  grad: np.ndarray
  running_stats: np.ndarray | None = None


def _our_outputs(module: nn.Module, variables: Variables, case: Case, batch: Batch) -> Outputs:
  graph = jax.device_put(batch.padded)
  kwargs = {}
  if case.edge_input is not None:
    kwargs[case.edge_kwarg] = graph.edges[case.edge_input]
  if case.takes_train:
    kwargs["train"] = case.train
  node_mask = graph_lib.node_mask(graph)

  def loss(x):
    if case.train:
      out, updates = module.apply(variables, x, graph, **kwargs, mutable=["batch_stats"])
      stats = updates["batch_stats"]
    else:
      out, stats = module.apply(variables, x, graph, **kwargs), {}
    # Outputs on padding nodes are unspecified, so they stay out of the loss.
    return jnp.sum(jnp.where(node_mask[:, None], out, 0.0)), (out, stats)

  with jax.default_matmul_precision("highest"):  # no TF32 on GPUs
    grad, (out, stats) = jax.jit(jax.grad(loss, has_aux=True))(graph.nodes["x"])
  n = batch.num_real_nodes
  running = None
  if case.train:
    # Layer order = sorted module names (MaskedBatchNorm_0 < MaskedBatchNorm_1 ...).
    flat = sorted(jax.tree_util.tree_flatten_with_path(stats)[0],
                  key=lambda kv: jax.tree_util.keystr(kv[0]))
    running = np.concatenate([np.ravel(v) for _, v in flat])
  return Outputs(np.asarray(out)[:n], np.asarray(grad)[:n], running)


def _pyg_outputs(layer, case: Case, batch: Batch, dtype) -> Outputs:
  import torch
  device = next(layer.parameters()).device
  real = batch.real
  x = torch.tensor(np.asarray(real.nodes["x"]), dtype=dtype, device=device, requires_grad=True)
  edge_index = torch.tensor(np.stack([real.senders, real.receivers]).astype(np.int64),
                            device=device)
  args = [x, edge_index]
  if case.edge_input is not None:
    args.append(torch.tensor(np.asarray(real.edges[case.edge_input]), dtype=dtype,
                             device=device))
  layer.train(case.train)
  out = layer(*args)
  out.sum().backward()
  running = None
  if case.train:
    norms = [m for m in layer.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    # Same order as ours: per layer, 'mean' then 'var' (keystr sorts mean < var).
    running = np.concatenate([np.concatenate([m.running_mean.detach().cpu().numpy(),
                                              m.running_var.detach().cpu().numpy()])
                              for m in norms])
  return Outputs(out.detach().cpu().numpy(), x.grad.detach().cpu().numpy(), running)


def torch_device():
  import torch
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_case(case: Case, seed: int = 0, num_graphs: int = 3) -> dict[str, float]:
  """Transplants gnnjax's weights into PyG's layer and compares the two on one batch.

  Returns:
    max relative errors: 'forward' and 'grad' (gnnjax float32 vs PyG float32), 'running_stats'
    (training mode only), and 'pyg_f32_forward' / 'pyg_f32_grad': PyG float32 against the same
    PyG layer in float64, i.e. how far float32 rounding alone moves an implementation.
  """
  import torch
  # TF32 is off by default in torch; keep it off whatever the caller set.
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  batch = make_batch(seed, num_graphs)
  module = case.ours(batch)
  graph = batch.padded
  kwargs = {}
  if case.edge_input is not None:
    kwargs[case.edge_kwarg] = graph.edges[case.edge_input]
  # An 'rbg' key: its random ops compile faster than threefry's, and compiling dominates here.
  key = jax.random.key(seed, impl="rbg")
  variables = module.init(key, graph.nodes["x"], graph, **kwargs)
  variables = perturb_constants(as_plain_dicts(variables), np.random.default_rng(seed + 1))
  torch.manual_seed(seed)
  layer = case.theirs(batch).to(torch_device())
  case.transplant(variables["params"], variables.get("batch_stats", {}), layer)
  layer64 = copy.deepcopy(layer).double()
  ours = _our_outputs(module, variables, case, batch)
  pyg = _pyg_outputs(layer, case, batch, torch.float32)
  pyg64 = _pyg_outputs(layer64, case, batch, torch.float64)
  if ours.out.shape != pyg.out.shape:
    raise ValueError(f"{case.name}: gnnjax output {ours.out.shape} vs PyG {pyg.out.shape}")
  errors = {"forward": max_relative_error(ours.out, pyg.out),
            "grad": max_relative_error(ours.grad, pyg.grad),
            "pyg_f32_forward": max_relative_error(pyg.out, pyg64.out),
            "pyg_f32_grad": max_relative_error(pyg.grad, pyg64.grad)}
  if case.train:
    errors["running_stats"] = max_relative_error(ours.running_stats, pyg.running_stats)
  return errors


def failures(case: Case, errors: dict[str, float]) -> list[str]:
  """The comparisons of gnnjax with PyG (float32) that exceed the case's tolerances."""
  bounds = {"forward": case.tolerance, "grad": case.grad_tolerance,
            "running_stats": case.tolerance}
  return [f"{key} {errors[key]:.2e} > {bound:.0e}" for key, bound in bounds.items()
          if key in errors and not errors[key] <= bound]


# ----------------------------------------------------------------------------------------------
# Entry point.

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "benchmarks", "Where results/pyg_parity.json and RESULTS.md go.")
flags.DEFINE_integer("seed", 0, "Seed of the random graphs and of the gnnjax initialisation.")
flags.DEFINE_integer("num_graphs", 3, "Graphs per batch.")


def _row(case: Case, errors: dict[str, float], met: bool) -> str:
  tolerance = (f"{case.tolerance:.0e}" if case.grad_tolerance == case.tolerance
               else f"{case.tolerance:.0e} / {case.grad_tolerance:.0e}")
  return (f"| {case.name} | {errors['forward']:.2e} | {errors['grad']:.2e} | "
          f"{errors['pyg_f32_forward']:.2e} / {errors['pyg_f32_grad']:.2e} | {tolerance} | "
          f"{'yes' if met else 'NO'} |")


def main(argv):
  del argv
  import torch
  import torch_geometric
  rows, metrics, targets, notes = [], {}, {}, []
  for case in all_cases():
    errors = run_case(case, FLAGS.seed, FLAGS.num_graphs)
    failed = failures(case, errors)
    rows.append(_row(case, errors, not failed))
    print(rows[-1], flush=True)
    metrics[case.name] = {**errors, "tolerance": case.tolerance,
                          "grad_tolerance": case.grad_tolerance, "note": case.note}
    targets[f"{case.name}: forward"] = common.target(errors["forward"], case.tolerance,
                                                     higher_is_better=False)
    targets[f"{case.name}: grad"] = common.target(errors["grad"], case.grad_tolerance,
                                                  higher_is_better=False)
    if "running_stats" in errors:
      notes.append(f"- {case.name}: running statistics after one step, max rel err "
                   f"{errors['running_stats']:.2e}")
      targets[f"{case.name}: running stats"] = common.target(
          errors["running_stats"], case.tolerance, higher_is_better=False)
    if case.note:
      notes.append(f"- {case.name}: {case.note}")
  metrics["setup"] = {"seed": FLAGS.seed, "num_graphs": FLAGS.num_graphs,
                      "torch": torch.__version__, "torch_geometric": torch_geometric.__version__,
                      "torch_device": str(torch_device())}
  table = ("| layer | max rel err forward | max rel err grad (d/dx) | PyG f32 vs f64 (fwd / grad) "
           "| target | met |\n|---|---|---|---|---|---|\n" + "\n".join(rows))
  header = (f"gnnjax float32 vs PyG {torch_geometric.__version__} float32 (torch "
            f"{torch.__version__}, {torch_device()}), weights transplanted from gnnjax; seed "
            f"{FLAGS.seed}, {FLAGS.num_graphs} graphs per batch. Errors are max |ours - PyG| / "
            f"max |PyG| over real nodes; the 'PyG f32 vs f64' column is PyG's own float32 "
            f"rounding error, for scale.")
  path = common.write_results("pyg_parity", metrics, targets, FLAGS.out_dir,
                              header + "\n\n" + table, "\n".join(notes))
  print(table)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
