"""Tests for gnnjax.nn layers against independent float64 NumPy references.

Every reference is written from the layer's formula (PyG semantics) with explicit loops over a
graph's edges or dense adjacency matrices, and reads the layer's parameters by name; none calls
the code under test. Each layer runs on a padded batch of small random graphs that contain an
isolated node, a node without in-edges, a self-loop and a doubled edge. Three checks per layer:

* outputs on real nodes match the reference (float32 vs float64, to ~1e-5) and are finite;
* padding never leaks: huge values in padding node/edge features leave real outputs bit-identical;
* gradients (float64) match finite differences (`jax.test_util.check_grads`, reverse mode).

The references were cross-checked once against PyG 2.8.1 with transplanted weights (float64,
differences < 1e-13), except PowerMean: PyG 2.7 moved its lower clamp from 0 to 1e-4, and
gnnjax (like these references) keeps PyG 2.6's 0.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from jax.test_util import check_grads

from gnnjax import batching
from gnnjax.data.dataset import make_graph
from gnnjax.nn import aggregate as agg_lib
from gnnjax.nn import conv
from gnnjax.nn import deeper
from gnnjax.nn import mlp as mlp_lib
from gnnjax.nn import pna
from gnnjax.nn import point
from gnnjax.nn import pool
from gnnjax.nn import readout

NODE_DIM = 3
EDGE_DIM = 2
BIG = 1e6  # padding perturbation: large, yet finite after squaring in float32
RTOL = ATOL = 2e-5

# ------------------------------------------------------------------------------------------------
# Graphs and batches.
# ------------------------------------------------------------------------------------------------


def _random_graph(rng: np.random.Generator, n: int, n_random_edges: int) -> jraph.GraphsTuple:
  """A graph with features where node n-1 is isolated and node n-2 has no in-edges.

  Random edges avoid self-loops; then the first edge is doubled and its receiver gets a
  self-loop, so exactly one node has a self-loop, and it has other in-edges as well.
  """
  senders = rng.integers(0, n - 1, n_random_edges)
  receivers = rng.integers(0, n - 2, n_random_edges)
  keep = senders != receivers
  senders, receivers = senders[keep], receivers[keep]
  senders = np.concatenate([senders, [senders[0], receivers[0]]])
  receivers = np.concatenate([receivers, [receivers[0], receivers[0]]])
  nodes = {"x": rng.normal(size=(n, NODE_DIM)).astype(np.float32)}
  edges = {"x": rng.normal(size=(len(senders), EDGE_DIM)).astype(np.float32)}
  return make_graph(senders, receivers, n, nodes, edges)


@dataclasses.dataclass(frozen=True)
class Batch:
  """A padded batch and the real part of it, float64, for the references."""

  graph: jraph.GraphsTuple
  num_graphs: int  # real graphs

  @property
  def device_graph(self) -> jraph.GraphsTuple:
    """The padded graph as JAX arrays (jraph's masks index n_edge with a traced value, so a
    graph closed over by a jitted function must not hold NumPy arrays)."""
    return jax.tree.map(jnp.asarray, self.graph)

  @property
  def n_real(self) -> int:
    return int(self.graph.n_node[:self.num_graphs].sum())

  @property
  def e_real(self) -> int:
    return int(self.graph.n_edge[:self.num_graphs].sum())

  @property
  def x(self) -> np.ndarray:  # float32 [N, NODE_DIM], padding included
    return self.graph.nodes["x"]

  @property
  def e(self) -> np.ndarray:  # float32 [E, EDGE_DIM], padding included
    return self.graph.edges["x"]

  @property
  def x64(self) -> np.ndarray:  # float64 [n_real, NODE_DIM]
    return self.x[:self.n_real].astype(np.float64)

  @property
  def e64(self) -> np.ndarray:  # float64 [e_real, EDGE_DIM]
    return self.e[:self.e_real].astype(np.float64)

  @property
  def senders(self) -> np.ndarray:
    return self.graph.senders[:self.e_real].astype(np.int64)

  @property
  def receivers(self) -> np.ndarray:
    return self.graph.receivers[:self.e_real].astype(np.int64)

  @property
  def node_graph(self) -> np.ndarray:
    return np.repeat(np.arange(self.num_graphs), self.graph.n_node[:self.num_graphs])

  def incoming(self, node: int) -> np.ndarray:
    """Ids of the real edges arriving at `node`."""
    return np.nonzero(self.receivers == node)[0]


@functools.lru_cache(maxsize=None)
def _batch(seed: int = 0, num_graphs: int = 3) -> Batch:
  rng = np.random.default_rng(seed)
  graphs = [_random_graph(rng, int(rng.integers(5, 8)), int(rng.integers(6, 12)))
            for _ in range(num_graphs + 1)]
  packed = batching.PackedGraphs.from_graphs(graphs)
  chosen = list(rng.permutation(num_graphs + 1)[:num_graphs])
  n = int(packed.n_node[chosen].sum())
  e = int(packed.n_edge[chosen].sum())
  # Room for 4 padding nodes, 7 padding edges, the padding graph and 2 empty graph slots.
  graph = packed.gather(chosen, batching.Budget(n + 4, e + 7, num_graphs + 3))
  return Batch(graph, num_graphs)


def _perturbed_padding(batch: Batch, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Node and edge features whose padding rows hold huge random values."""
  rng = np.random.default_rng(seed)
  x, e = batch.x.copy(), batch.e.copy()
  x[batch.n_real:] = BIG * rng.normal(size=x[batch.n_real:].shape)
  e[batch.e_real:] = BIG * rng.normal(size=e[batch.e_real:].shape)
  return x, e


def test_batch_has_the_structure_the_tests_rely_on():
  b = _batch()
  assert b.graph.nodes["x"].shape[0] > b.n_real and b.graph.senders.shape[0] > b.e_real
  loops = b.senders == b.receivers
  assert loops.sum() == b.num_graphs  # exactly one self-loop per graph
  for node in b.senders[loops]:  # ... on a node that has other in-edges too
    assert len(b.incoming(node)) >= 3
  pairs = list(zip(b.senders.tolist(), b.receivers.tolist()))
  assert len(set(pairs)) < len(pairs)  # multi-edges
  touched = set(b.senders.tolist()) | set(b.receivers.tolist())
  assert len(touched) < b.n_real  # isolated nodes
  assert len(set(b.receivers.tolist())) < b.n_real - b.num_graphs  # nodes without in-edges


# ------------------------------------------------------------------------------------------------
# NumPy building blocks of the references (float64).
# ------------------------------------------------------------------------------------------------


def _relu(h: np.ndarray) -> np.ndarray:
  return np.maximum(h, 0.0)


def _lin(h: np.ndarray, p: dict) -> np.ndarray:
  """A flax Dense: h @ kernel (+ bias)."""
  out = h @ p["kernel"]
  return out + p["bias"] if "bias" in p else out


def _batch_norm(h: np.ndarray, p: dict, stats: dict, train: bool) -> np.ndarray:
  """BatchNorm over the given (real) rows; biased batch variance, eps 1e-5."""
  mean, var = (h.mean(0), h.var(0)) if train else (stats["mean"], stats["var"])
  return (h - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _layer_norm(h: np.ndarray, p: dict) -> np.ndarray:
  mean = h.mean(-1, keepdims=True)
  var = ((h - mean) ** 2).mean(-1, keepdims=True)
  return (h - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _mlp(h: np.ndarray, p: dict, stats: dict | None, train: bool,
         activate_final: bool = False) -> np.ndarray:
  """gnnjax.nn.mlp.MLP with ReLU: Dense_i [-> MaskedBatchNorm_i] -> ReLU, last Dense bare."""
  depth = sum(1 for name in p if name.startswith("Dense_"))
  for i in range(depth):
    h = _lin(h, p[f"Dense_{i}"])
    if i == depth - 1 and not activate_final:
      break
    if f"MaskedBatchNorm_{i}" in p:
      h = _batch_norm(h, p[f"MaskedBatchNorm_{i}"], (stats or {}).get(f"MaskedBatchNorm_{i}"),
                      train)
    h = _relu(h)
  return h


def _reduce(kind: str, rows: np.ndarray, width: int) -> np.ndarray:
  """PyG's reduction of a (possibly empty) set of rows [k, ...]; empty sets give 0."""
  if rows.shape[0] == 0:
    return np.zeros(rows.shape[1:] if rows.ndim > 1 else (width,))
  if kind in ("sum", "add"):
    return rows.sum(0)
  if kind == "mean":
    return rows.mean(0)
  if kind == "max":
    return rows.max(0)
  if kind == "min":
    return rows.min(0)
  if kind == "std":
    var = (rows ** 2).mean(0) - rows.mean(0) ** 2
    out = np.sqrt(np.maximum(var, 1e-5))
    return np.where(out <= np.sqrt(1e-5), 0.0, out)
  raise ValueError(kind)


def _softmax_reduce(rows: np.ndarray, beta: float) -> np.ndarray:
  """sum_k softmax_k(beta * rows_k) * rows_k per channel."""
  if rows.shape[0] == 0:
    return np.zeros(rows.shape[1:])
  logits = beta * rows
  weights = np.exp(logits - logits.max(0))
  return (weights / weights.sum(0) * rows).sum(0)


def _powermean_reduce(rows: np.ndarray, p: float) -> np.ndarray:
  """PyG PowerMeanAggregation: clamp to [0, 100], power, mean, clamp, root."""
  if rows.shape[0] == 0:
    return np.zeros(rows.shape[1:])
  mean = (np.clip(rows, 0.0, 100.0) ** p).mean(0)
  return np.clip(mean, 0.0, 100.0) ** (1.0 / p)


def _per_node(b: Batch, messages: np.ndarray, reduce: Callable[[np.ndarray], np.ndarray]
              ) -> np.ndarray:
  """Applies `reduce` to each real node's incoming messages (messages: [E_real, ...])."""
  return np.stack([reduce(messages[b.incoming(i)]) for i in range(b.n_real)])


# ------------------------------------------------------------------------------------------------
# References of the lead's convolutions.
# ------------------------------------------------------------------------------------------------


def _edge_counts(b: Batch, weights: np.ndarray | None = None) -> np.ndarray:
  """Dense A [n, n] with A[i, j] = (weighted) number of real edges j -> i."""
  a = np.zeros((b.n_real, b.n_real))
  w = np.ones(b.e_real) if weights is None else weights
  np.add.at(a, (b.receivers, b.senders), w)
  return a


def _gcn_ref(v, b, e=None, normalize=True, add_self_loops=True):
  """PyG GCNConv: gcn_norm with add_remaining_self_loops (one loop per node; an existing loop
  keeps its weight, others get 1), then D^-1/2 A D^-1/2 X W + b."""
  p = v["params"]
  h = b.x64 @ p["lin"]["kernel"]
  weights = None if e is None else e
  a = _edge_counts(b, weights)
  if normalize:
    if add_self_loops:
      loop_weight = np.ones(b.n_real)
      is_loop = b.senders == b.receivers
      loop_weight[b.senders[is_loop]] = (np.ones(b.e_real) if e is None else e)[is_loop]
      np.fill_diagonal(a, loop_weight)
    deg = a.sum(1)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    a = inv_sqrt[:, None] * a * inv_sqrt[None, :]
  return a @ h + p["bias"]


def _sage_ref(v, b, aggr="mean", project=False):
  p = v["params"]
  source = _relu(_lin(b.x64, p["lin_proj"])) if project else b.x64
  neigh = _per_node(b, source[b.senders], lambda rows: _reduce(aggr, rows, source.shape[1]))
  return _lin(neigh, p["lin_l"]) + b.x64 @ p["lin_r"]["kernel"]


def _gin_ref(v, b, e=None, eps=0.0, train=False):
  """PyG GINConv / GINEConv: MLP((1 + eps) x_i + sum_j m_ij); a learned eps is read from p."""
  p = v["params"]
  eps = p.get("eps", eps)
  messages = b.x64[b.senders]
  if e is not None:
    edge = _lin(e, p["lin_edge"]) if "lin_edge" in p else e
    messages = _relu(messages + edge)
  neigh = _per_node(b, messages, lambda rows: _reduce("sum", rows, NODE_DIM))
  return _mlp((1.0 + eps) * b.x64 + neigh, p["mlp"], v.get("batch_stats", {}).get("mlp"), train)


def _gat_ref(v, b, heads, features, concat):
  """PyG GATConv (v1): existing self-loops removed, one loop per node added."""
  p = v["params"]
  h = (b.x64 @ p["lin"]["kernel"]).reshape(b.n_real, heads, features)
  score_src = (h * p["att_src"][0]).sum(-1)
  score_dst = (h * p["att_dst"][0]).sum(-1)
  out = np.zeros((b.n_real, heads, features))
  for i in range(b.n_real):
    sources = [j for j, r in zip(b.senders, b.receivers) if r == i and j != i] + [i]
    logits = score_src[sources] + score_dst[i]
    logits = np.where(logits > 0, logits, 0.2 * logits)
    alpha = np.exp(logits - logits.max(0))
    alpha /= alpha.sum(0)
    out[i] = (alpha[..., None] * h[sources]).sum(0)
  out = out.reshape(b.n_real, heads * features) if concat else out.mean(1)
  return out + p["bias"]


# ------------------------------------------------------------------------------------------------
# References of the new layers.
# ------------------------------------------------------------------------------------------------


def _gen_ref(v, b, e=None, aggr="softmax", t=1.0, p_value=1.0, msg_norm=False, norm="batch",
             train=False):
  """PyG GENConv, from its formula; learned t, p and MsgNorm scale are read from the params."""
  p = v["params"]
  stats = v.get("batch_stats", {})
  x = b.x64
  source = _lin(x, p["lin_src"]) if "lin_src" in p else x
  messages = source[b.senders]
  if e is not None:
    messages = messages + (_lin(e, p["lin_edge"]) if "lin_edge" in p else e)
  messages = _relu(messages) + 1e-7
  t = p.get("t", t)
  p_value = p.get("p", p_value)
  width = messages.shape[1]
  if aggr in ("softmax", "softmax_sg"):
    agg = _per_node(b, messages, lambda rows: _softmax_reduce(rows, t))
  elif aggr == "powermean":
    agg = _per_node(b, messages, lambda rows: _powermean_reduce(rows, p_value))
  else:
    agg = _per_node(b, messages, lambda rows: _reduce(aggr, rows, width))
  if msg_norm:
    scale = p["msg_norm"]["scale"] if "msg_norm" in p else 1.0
    agg = (agg / np.maximum(np.linalg.norm(agg, axis=1, keepdims=True), 1e-12)
           * np.linalg.norm(x, axis=1, keepdims=True) * scale)
  h = agg + (_lin(x, p["lin_dst"]) if "lin_dst" in p else x)
  depth = sum(1 for name in p if name.startswith("mlp_lin_"))
  for i in range(depth):
    h = _lin(h, p[f"mlp_lin_{i}"])
    if i == depth - 1:
      break
    if norm == "batch":
      h = _batch_norm(h, p[f"mlp_norm_{i}"], stats.get(f"mlp_norm_{i}"), train)
    elif norm == "layer":
      h = _layer_norm(h, p[f"mlp_norm_{i}"])
    h = _relu(h)
  return h


def _edgeconv_ref(v, b, aggr="max", train=False):
  x = b.x64
  x_i, x_j = x[b.receivers], x[b.senders]
  messages = _mlp(np.concatenate([x_i, x_j - x_i], 1), v["params"]["mlp"],
                  v.get("batch_stats", {}).get("mlp"), train)
  return _per_node(b, messages, lambda rows: _reduce(aggr, rows, messages.shape[1]))


def _mrconv_ref(v, b, aggr="max", train=False):
  x = b.x64
  relative = x[b.senders] - x[b.receivers]
  neigh = _per_node(b, relative, lambda rows: _reduce(aggr, rows, NODE_DIM))
  return _mlp(np.concatenate([x, neigh], 1), v["params"]["mlp"],
              v.get("batch_stats", {}).get("mlp"), train)


def _pna_ref(v, b, e=None, deg=None, aggregators=(), scalers=(), towers=1, divide_input=False):
  """PyG PNAConv with DegreeScalerAggregation, tower by tower and node by node."""
  p = v["params"]
  hist = np.asarray(deg, np.float64)
  bins = np.arange(hist.size)
  avg_lin = (bins * hist).sum() / hist.sum()
  avg_log = (np.log(bins + 1) * hist).sum() / hist.sum()
  x = b.x64
  f_in = NODE_DIM // towers if divide_input else NODE_DIM
  outs = []
  for t in range(towers):
    xt = x[:, t * f_in:(t + 1) * f_in] if divide_input else x
    parts = [xt[b.receivers], xt[b.senders]]
    if e is not None:
      parts.append(_lin(e, p["edge_encoder"]))
    h = np.concatenate(parts, 1)
    layers = sum(1 for name in p if name.startswith(f"pre_nns_{t}_"))
    for i in range(layers):
      h = _lin(h if i == 0 else _relu(h), p[f"pre_nns_{t}_{i}"])
    node_rows = []
    for node in range(b.n_real):
      rows = h[b.incoming(node)]
      d = float(rows.shape[0])
      aggregated = np.concatenate([_reduce(kind, rows, f_in) for kind in aggregators])
      factor = {"identity": 1.0,
                "amplification": np.log(d + 1) / avg_log,
                "attenuation": avg_log / np.log(max(d, 1.0) + 1),
                "linear": d / avg_lin,
                "inverse_linear": avg_lin / max(d, 1.0)}
      node_rows.append(np.concatenate([xt[node]] + [aggregated * factor[s] for s in scalers]))
    h = np.stack(node_rows)
    layers = sum(1 for name in p if name.startswith(f"post_nns_{t}_"))
    for i in range(layers):
      h = _lin(h if i == 0 else _relu(h), p[f"post_nns_{t}_{i}"])
    outs.append(h)
  return _lin(np.concatenate(outs, 1), p["lin"])


# ------------------------------------------------------------------------------------------------
# The cases: a module, how to call it, and its reference.
# ------------------------------------------------------------------------------------------------


def _node_mlp(*widths: int, batch_norm: bool = False) -> mlp_lib.MLP:
  return mlp_lib.MLP(widths, batch_norm=batch_norm)


@dataclasses.dataclass(frozen=True)
class Case:
  """A layer under test.

  Attributes:
    module: the flax module.
    reference: (variables float64, batch, edge input float64 or None) -> [n_real, F] float64.
    edge_input: maps edge features [E, EDGE_DIM] to the layer's edge argument (same code for
      NumPy and JAX arrays), or None for layers called without edge input.
    edge_kwarg: the keyword the edge argument is passed under.
    train: None for layers without a `train` argument; otherwise its value (batch statistics).
    check_gradient: compare gradients with finite differences. Off where another case covers
      the same code path (each check compiles twice in float64, the bulk of this file's run
      time), and for softmax_sg, whose gradient is deliberately partial (tested on its own).
  """

  module: nn.Module
  reference: Callable[..., np.ndarray]
  edge_input: Callable[[Any], Any] | None = None
  edge_kwarg: str = "edge_features"
  train: bool | None = None
  check_gradient: bool = True


_POSITIVE_WEIGHT = lambda e: abs(e[:, 0]) + 0.5  # edge weights from features  # noqa: E731
_NODE_WIDTH = lambda e: e[:, [0, 1, 0]]  # edge features as wide as the node features  # noqa: E731
_DEG = (3, 5, 6, 2, 1)  # a degree histogram, as `degree_histogram` returns

# check_gradient=False marks configurations whose code paths another case's gradient check
# already covers.
CASES: dict[str, Case] = {
    # Lead's convolutions.
    "gcn": Case(conv.GCNConv(4), _gcn_ref, check_gradient=False),
    "gcn_weighted": Case(conv.GCNConv(4), lambda v, b, e: _gcn_ref(v, b, e),
                         edge_input=_POSITIVE_WEIGHT, edge_kwarg="edge_weight"),
    "gcn_plain": Case(conv.GCNConv(4, normalize=False, add_self_loops=False),
                      functools.partial(_gcn_ref, normalize=False, add_self_loops=False),
                      check_gradient=False),
    "sage_mean": Case(conv.SAGEConv(4), _sage_ref),
    "sage_max_project": Case(conv.SAGEConv(4, aggr="max", project=True),
                             functools.partial(_sage_ref, aggr="max", project=True)),
    "gin": Case(conv.GINConv(_node_mlp(5, 4), eps=0.5), functools.partial(_gin_ref, eps=0.5),
                train=False, check_gradient=False),
    "gin_learn_eps_bn": Case(conv.GINConv(_node_mlp(5, 4, batch_norm=True), train_eps=True),
                             functools.partial(_gin_ref, train=True), train=True),
    "gine_same_width": Case(conv.GINConv(_node_mlp(5, 4), eps=0.5),
                            lambda v, b, e: _gin_ref(v, b, e, eps=0.5), edge_input=_NODE_WIDTH,
                            train=False, check_gradient=False),
    "gine_projected_learn_eps": Case(conv.GINConv(_node_mlp(5, 4), train_eps=True),
                                     lambda v, b, e: _gin_ref(v, b, e), edge_input=lambda e: e,
                                     train=False),
    "gat_concat": Case(conv.GATConv(3, heads=2),
                       functools.partial(_gat_ref, heads=2, features=3, concat=True), train=False),
    "gat_mean": Case(conv.GATConv(3, heads=2, concat=False),
                     functools.partial(_gat_ref, heads=2, features=3, concat=False), train=False,
                     check_gradient=False),
    # GENConv.
    "gen_softmax_edges_projected": Case(
        deeper.GENConv(4, norm="batch"), lambda v, b, e: _gen_ref(v, b, e, t=1.0),
        edge_input=lambda e: e, train=False),
    "gen_softmax_learn_t_msgnorm_bn_train": Case(
        deeper.GENConv(NODE_DIM, learn_t=True, msg_norm=True, learn_msg_scale=True),
        lambda v, b, e: _gen_ref(v, b, e, msg_norm=True, train=True), edge_input=_NODE_WIDTH,
        train=True),
    "gen_softmax_sg": Case(deeper.GENConv(4, aggr="softmax_sg", t=0.3),
                           functools.partial(_gen_ref, aggr="softmax_sg", t=0.3), train=False,
                           check_gradient=False),
    "gen_powermean_learn_p_layernorm": Case(
        deeper.GENConv(4, aggr="powermean", learn_p=True, norm="layer"),
        functools.partial(_gen_ref, aggr="powermean", norm="layer"), train=False),
    "gen_powermean_fixed_p_edges": Case(
        deeper.GENConv(NODE_DIM, aggr="power", p=2.5, norm=None, num_layers=3),
        lambda v, b, e: _gen_ref(v, b, e, aggr="powermean", p_value=2.5, norm=None),
        edge_input=lambda e: e, train=False, check_gradient=False),
    "gen_powermean_p1_is_mean": Case(
        deeper.GENConv(4, aggr="powermean", norm=None),
        functools.partial(_gen_ref, aggr="mean", norm=None), train=False, check_gradient=False),
    "gen_sum_msgnorm_fixed_scale": Case(
        deeper.GENConv(4, aggr="sum", msg_norm=True, norm=None, use_bias=True),
        functools.partial(_gen_ref, aggr="sum", msg_norm=True, norm=None), train=False),
    "gen_mean": Case(deeper.GENConv(4, aggr="mean", norm="layer", expansion=3),
                     functools.partial(_gen_ref, aggr="mean", norm="layer"), train=False,
                     check_gradient=False),
    "gen_max_one_layer": Case(deeper.GENConv(4, aggr="max", num_layers=1),
                              functools.partial(_gen_ref, aggr="max"), train=False),
    # Point convolutions.
    "edgeconv_max_bn_train": Case(point.EdgeConv(_node_mlp(5, 4, batch_norm=True)),
                                  functools.partial(_edgeconv_ref, train=True), train=True),
    "edgeconv_mean": Case(point.EdgeConv(_node_mlp(4), aggr="mean"),
                          functools.partial(_edgeconv_ref, aggr="mean"), train=False,
                          check_gradient=False),
    "mrconv_max_bn_eval": Case(point.MRConv(_node_mlp(5, 4, batch_norm=True)), _mrconv_ref,
                               train=False),
    "mrconv_sum": Case(point.MRConv(_node_mlp(4), aggr="sum"),
                       functools.partial(_mrconv_ref, aggr="sum"), train=False,
                       check_gradient=False),
    # PNA.
    "pna_default": Case(
        pna.PNAConv(4, deg=_DEG),
        functools.partial(_pna_ref, deg=_DEG, aggregators=("mean", "min", "max", "std"),
                          scalers=("identity", "amplification", "attenuation"))),
    "pna_towers_edges_deep": Case(
        pna.PNAConv(4, deg=_DEG, aggregators=("max", "std", "sum"),
                    scalers=("identity", "linear", "inverse_linear"), towers=2, pre_layers=2,
                    post_layers=2),
        lambda v, b, e: _pna_ref(v, b, e, deg=_DEG, aggregators=("max", "std", "sum"),
                                 scalers=("identity", "linear", "inverse_linear"), towers=2),
        edge_input=lambda e: e),
    "pna_divide_input": Case(
        pna.PNAConv(6, deg=_DEG, aggregators=("mean", "min"), scalers=("amplification",),
                    towers=3, divide_input=True),
        functools.partial(_pna_ref, deg=_DEG, aggregators=("mean", "min"),
                          scalers=("amplification",), towers=3, divide_input=True),
        check_gradient=False),
}


def _call_kwargs(case: Case, e) -> dict:
  kwargs = {}
  if case.edge_input is not None:
    kwargs[case.edge_kwarg] = case.edge_input(e)
  if case.train is not None:
    kwargs["train"] = case.train
  return kwargs


def _apply(case: Case, variables, x, graph, e):
  kwargs = _call_kwargs(case, e)
  if case.train:
    out, _ = case.module.apply(variables, x, graph, mutable=["batch_stats"], **kwargs)
    return out
  return case.module.apply(variables, x, graph, **kwargs)


def _random_variables(module: nn.Module, seed: int, *args, **kwargs):
  """Variables of `module.init(key, *args, **kwargs)`'s shapes with random values.

  Every parameter is random (scalars in [0.5, 2]: eps, t, p, scales) and so are the running
  statistics, so no initial zero or one hides a bug. Shapes come from `eval_shape`, which traces
  but does not compile or run the layer.
  """
  shapes = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.PRNGKey(0), *args)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [getattr(k, "key", "") for k in path]
    if leaf.ndim == 0:
      return np.float32(rng.uniform(0.5, 2.0))
    if names[0] == "batch_stats" and names[-1] == "var":
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    return (0.6 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def _variables(name: str):
  case, b = CASES[name], _batch()
  return _random_variables(case.module, sum(map(ord, name)), b.x, b.device_graph,
                           **_call_kwargs(case, b.e))


def _float64_tree(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _reference(name: str) -> np.ndarray:
  case, b = CASES[name], _batch()
  args = (_float64_tree(_variables(name)), b)
  if case.edge_input is not None:
    args += (case.edge_input(b.e64),)
  return case.reference(*args)


@functools.lru_cache(maxsize=None)
def _jitted(name: str):
  case, b = CASES[name], _batch()
  graph = b.device_graph
  return jax.jit(lambda variables, x, e: _apply(case, variables, x, graph, e))


@pytest.mark.parametrize("name", list(CASES))
def test_layer_matches_reference(name):
  b = _batch()
  out = np.asarray(_jitted(name)(_variables(name), b.x, b.e))
  assert np.all(np.isfinite(out[:b.n_real]))
  np.testing.assert_allclose(out[:b.n_real], _reference(name), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(CASES))
def test_padding_never_leaks(name):
  b = _batch()
  forward = _jitted(name)
  clean = np.asarray(forward(_variables(name), b.x, b.e))[:b.n_real]
  x, e = _perturbed_padding(b)
  perturbed = np.asarray(forward(_variables(name), x, e))[:b.n_real]
  assert np.all(np.isfinite(perturbed))
  np.testing.assert_array_equal(clean, perturbed)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.check_gradient])
def test_gradients_match_finite_differences(name):
  case, b = CASES[name], _batch()
  graph = b.device_graph
  with jax.enable_x64(True):
    variables = _float64_tree(_variables(name))
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def real_outputs(params, x, e):
      return _apply(case, {"params": params, **rest}, x, graph, e)[:b.n_real]

    args = (params, b.x.astype(np.float64))
    if case.edge_input is not None:
      f, args = real_outputs, args + (b.e.astype(np.float64),)
    else:
      f = lambda params, x: real_outputs(params, x, None)  # noqa: E731
    check_grads(jax.jit(f), args, order=1, modes=["rev"], eps=1e-6)


@pytest.mark.parametrize("name", ["edgeconv_max_bn_train", "edgeconv_mean", "sage_max_project"])
def test_nodes_without_in_edges_aggregate_to_zero(name):
  b = _batch()
  out = np.asarray(_jitted(name)(_variables(name), b.x, b.e))[:b.n_real]
  lonely = np.array([len(b.incoming(i)) == 0 for i in range(b.n_real)])
  assert lonely.sum() >= b.num_graphs
  if name.startswith("edgeconv"):
    np.testing.assert_array_equal(out[lonely], 0.0)
  else:  # SAGE: W_l * 0 + b_l + W_r x_i
    p = _variables(name)["params"]
    np.testing.assert_allclose(out[lonely], p["lin_l"]["bias"] + b.x[:b.n_real][lonely]
                               @ p["lin_r"]["kernel"], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# GCNConv self-loop and normalisation semantics (PyG's).
# ------------------------------------------------------------------------------------------------


def test_gcn_with_a_doubled_self_loop_matches_pyg():
  graph = make_graph([0, 0, 1], [0, 0, 0], 2, {"x": np.array([[1.0], [2.0]], np.float32)})
  padded = batching.pad_single_graph(graph)
  module = conv.GCNConv(1, use_bias=False)
  variables = {"params": {"lin": {"kernel": np.ones((1, 1), np.float32)}}}
  out = np.asarray(module.apply(variables, padded.nodes["x"], padded))
  # PyG: A + I = [[1, 1], [0, 1]] after collapsing node 0's loops; deg = [2, 1].
  expected_node0 = 1.0 / 2 * 1.0 + 1.0 / np.sqrt(2 * 1) * 2.0
  np.testing.assert_allclose(out[0, 0], expected_node0, rtol=1e-6)


def test_gcn_without_normalization_is_a_plain_sum_and_rejects_self_loops():
  graph = make_graph([0, 1, 1], [1, 0, 1], 2, {"x": np.array([[1.0], [2.0]], np.float32)})
  padded = batching.pad_single_graph(graph)
  variables = {"params": {"lin": {"kernel": np.ones((1, 1), np.float32)}}}
  out = conv.GCNConv(1, normalize=False, use_bias=False).apply(variables, padded.nodes["x"],
                                                               padded)
  np.testing.assert_allclose(np.asarray(out)[:2, 0], [2.0, 3.0])  # PyG gives the same
  with pytest.raises(ValueError, match="add_self_loops"):
    conv.GCNConv(1, normalize=False, add_self_loops=True).apply(variables, padded.nodes["x"],
                                                                padded)


# ------------------------------------------------------------------------------------------------
# GENConv details.
# ------------------------------------------------------------------------------------------------


def test_softmax_sg_has_the_forward_of_softmax_but_a_semi_gradient():
  b = _batch()
  sg, full = deeper.GENConv(4, aggr="softmax_sg", norm=None), deeper.GENConv(4, norm=None)
  variables = _random_variables(full, 3, b.x, b.device_graph)

  def total(module, x):
    return jnp.sum(module.apply(variables, x, b.device_graph)[:b.n_real])

  value_and_grad = jax.jit(jax.value_and_grad(total, 1), static_argnums=0)
  (value_sg, grad_sg), (value_full, grad_full) = value_and_grad(sg, b.x), value_and_grad(full, b.x)
  np.testing.assert_array_equal(value_sg, value_full)
  assert np.all(np.isfinite(grad_sg))
  assert not np.allclose(grad_sg, grad_full, rtol=1e-3, atol=1e-5)


def test_gen_conv_parameters_mirror_pyg():
  b = _batch()
  module = deeper.GENConv(4, learn_t=True, msg_norm=True, learn_msg_scale=True)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), b.x, b.device_graph, b.e)["params"]
  assert set(params) == {"lin_src", "lin_dst", "lin_edge", "mlp_lin_0", "mlp_norm_0",
                         "mlp_lin_1", "msg_norm", "t"}
  assert all("bias" not in params[k] for k in ("lin_src", "lin_dst", "mlp_lin_0", "mlp_lin_1"))
  assert params["mlp_lin_0"]["kernel"].shape == (4, 8)
  assert float(params["t"]) == 1.0 and float(params["msg_norm"]["scale"]) == 1.0
  same = jax.eval_shape(deeper.GENConv(NODE_DIM, aggr="mean").init, jax.random.PRNGKey(0), b.x,
                        b.device_graph)
  assert "lin_src" not in same["params"] and "lin_dst" not in same["params"]


def test_torch_dense_draws_from_pytorch_linear_range():
  layer = deeper.torch_dense(300, fan_in=16)
  params = layer.init(jax.random.PRNGKey(0), jnp.zeros((1, 16)))["params"]
  for leaf in (params["kernel"], params["bias"]):
    assert np.abs(leaf).max() <= 0.25 and np.abs(leaf).max() > 0.24  # U(-1/4, 1/4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(aggr="median"), "unknown GENConv aggregation"),
    (dict(aggr="softmax_sg", learn_t=True), "cannot be learned"),
    (dict(norm="instance"), "unknown GENConv norm"),
    (dict(num_layers=0), "num_layers"),
])
def test_gen_conv_rejects_bad_configs(kwargs, match):
  b = _batch()
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(deeper.GENConv(4, **kwargs).init, jax.random.PRNGKey(0), b.x, b.device_graph)


def test_message_norm_formula_and_zero_messages():
  x = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
  m = np.array([[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]], np.float32)
  out = deeper.MessageNorm().apply({}, x, m)
  np.testing.assert_allclose(out, [[5 / np.sqrt(2), 5 / np.sqrt(2)], [0, 0], [0, 0]], rtol=1e-6)
  grad = jax.jit(jax.grad(lambda x, m: deeper.MessageNorm().apply({}, x, m).sum(), (0, 1)))(x, m)
  assert all(np.all(np.isfinite(g)) for g in grad)


# ------------------------------------------------------------------------------------------------
# PNA details.
# ------------------------------------------------------------------------------------------------


def test_degree_histogram_counts_in_degrees():
  rng = np.random.default_rng(5)
  graphs = [_random_graph(rng, int(rng.integers(4, 9)), int(rng.integers(3, 15)))
            for _ in range(6)]
  expected = {}
  for g in graphs:
    for node in range(int(g.n_node[0])):
      d = int(np.sum(g.receivers == node))
      expected[d] = expected.get(d, 0) + 1
  want = np.array([expected.get(k, 0) for k in range(max(expected) + 1)])
  np.testing.assert_array_equal(pna.degree_histogram(graphs), want)
  np.testing.assert_array_equal(pna.degree_histogram(batching.PackedGraphs.from_graphs(graphs)),
                                want)
  unpadded_batch = batching.PackedGraphs.from_graphs(graphs).gather(range(6))
  np.testing.assert_array_equal(pna.degree_histogram([unpadded_batch]), want)


def test_average_degrees():
  lin, log = pna.average_degrees([1, 2, 1])
  assert lin == pytest.approx(1.0)
  assert log == pytest.approx((2 * np.log(2) + np.log(3)) / 4)
  with pytest.raises(ValueError, match="histogram"):
    pna.average_degrees([0, 0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(scalers=("identity", "cubic")), "unknown PNA scaler"),
    (dict(aggregators=("mean", "median")), "unknown aggregation"),
    (dict(towers=3), "divisible by towers"),
])
def test_pna_rejects_bad_configs(kwargs, match):
  b = _batch()
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(pna.PNAConv(4, deg=_DEG, **kwargs).init, jax.random.PRNGKey(0), b.x,
                   b.device_graph)


# ------------------------------------------------------------------------------------------------
# Aggregators and pooling (functions of the lead's aggregate.py / pool.py).
# ------------------------------------------------------------------------------------------------

_NUM_SEGMENTS = 8


@functools.lru_cache(maxsize=None)
def _segments():
  """Messages [30, 3] onto 8 segments: segment 5 gets none, segment 6 only masked entries
  (holding huge values), other masked entries are scattered around."""
  rng = np.random.default_rng(11)
  ids = rng.choice([0, 1, 2, 3, 4, 7], 30)
  ids[:3] = 6
  mask = rng.random(30) < 0.75
  mask[:3] = False
  messages = rng.normal(size=(30, 3)).astype(np.float32) * 2.0 + 1.0
  messages[~mask] = BIG
  return messages, ids.astype(np.int32), mask


_AGGREGATOR_CASES = {
    "sum": ({}, lambda rows: _reduce("sum", rows, 3)),
    "mean": ({}, lambda rows: _reduce("mean", rows, 3)),
    "max": ({}, lambda rows: _reduce("max", rows, 3)),
    "min": ({}, lambda rows: _reduce("min", rows, 3)),
    "std": ({}, lambda rows: _reduce("std", rows, 3)),
    "softmax": ({"beta": 1.7}, lambda rows: _softmax_reduce(rows, 1.7)),
    "powermean": ({"p": 2.3}, lambda rows: _powermean_reduce(rows, 2.3)),
}


@pytest.mark.parametrize("kind", list(_AGGREGATOR_CASES))
def test_aggregator_matches_reference(kind):
  messages, ids, mask = _segments()
  kwargs, reduce = _AGGREGATOR_CASES[kind]
  out = np.asarray(agg_lib.aggregate(kind, messages, ids, _NUM_SEGMENTS, mask, **kwargs))
  real = messages.astype(np.float64)
  expected = np.stack([reduce(real[(ids == s) & mask]) for s in range(_NUM_SEGMENTS)])
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(out[[5, 6]], 0.0)  # no real entries -> exactly 0


@pytest.mark.parametrize("kind", list(_AGGREGATOR_CASES))
def test_aggregator_gradients(kind):
  messages, ids, mask = _segments()
  kwargs, _ = _AGGREGATOR_CASES[kind]
  with jax.enable_x64(True):
    real_messages = np.where(mask[:, None], messages, 0.0).astype(np.float64)
    scalar = {k: np.float64(v) for k, v in kwargs.items()}

    def f(m, *scalars):
      return agg_lib.aggregate(kind, m, ids, _NUM_SEGMENTS, mask,
                               **dict(zip(scalar, scalars)))

    check_grads(jax.jit(f), (real_messages, *scalar.values()), order=1, modes=["rev"], eps=1e-6)
    grads = jax.jit(jax.grad(lambda m: f(m, *scalar.values()).sum()))(real_messages)
    assert np.all(np.isfinite(grads)) and np.all(grads[~mask] == 0)


def test_unknown_aggregator_is_rejected():
  messages, ids, mask = _segments()
  with pytest.raises(ValueError, match="unknown aggregation"):
    agg_lib.aggregate("median", messages, ids, _NUM_SEGMENTS, mask)


@pytest.mark.parametrize("kind", ["sum", "add", "mean", "max"])
def test_global_pool_matches_reference(kind):
  rng = np.random.default_rng(4)
  graphs = [_random_graph(rng, n, 6) for n in (5, 6, 7)]
  empty = make_graph([], [], 0, {"x": np.zeros((0, NODE_DIM), np.float32)},
                     {"x": np.zeros((0, EDGE_DIM), np.float32)})
  packed = batching.PackedGraphs.from_graphs(graphs + [empty])
  batch = packed.gather([2, 3, 0, 1], batching.Budget(24, 40, 7))
  x = batch.nodes["x"].copy()
  x[18:] = BIG
  out = np.asarray(pool.global_pool(kind, x, batch))
  sizes = np.asarray(batch.n_node)[:4]
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  reduce_kind = "sum" if kind == "add" else kind
  expected = [_reduce(reduce_kind, x[s:s + k].astype(np.float64), NODE_DIM)
              for s, k in zip(starts, sizes)]
  np.testing.assert_allclose(out[:4], np.stack(expected), rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(out[1], 0.0)  # the empty graph
  assert np.all(np.isfinite(out))
  with jax.enable_x64(True):
    graph = jax.tree.map(jnp.asarray, batch)
    check_grads(jax.jit(lambda x: pool.global_pool(kind, x, graph)[:4]), (x.astype(np.float64),),
                order=1, modes=["rev"], eps=1e-6)


def test_global_pool_rejects_unknown_kind():
  b = _batch()
  with pytest.raises(ValueError, match="unknown graph pooling"):
    pool.global_pool("median", b.x, b.graph)


# ------------------------------------------------------------------------------------------------
# Virtual node and jumping knowledge.
# ------------------------------------------------------------------------------------------------


def _virtual_node_ref(v, b, x, state, train, residual):
  """OGB's virtual node step: x' = x + v[g]; v' = MLP(sum_g x' + v) (+ v if residual)."""
  p = v["params"]
  if state is None:
    state = np.broadcast_to(p["embedding"], (b.num_graphs, x.shape[1]))
  x_new = x + state[b.node_graph]
  pooled = np.stack([x_new[b.node_graph == g].sum(0) for g in range(b.num_graphs)])
  update = _mlp(pooled + state, p["mlp"], v.get("batch_stats", {}).get("mlp"), train,
                activate_final=True)
  return x_new, (state + update if residual else update)


@pytest.mark.parametrize("given_state, train, residual", [
    (False, False, False), (True, True, False), (True, False, True)])
def test_virtual_node_matches_ogb(given_state, train, residual):
  b = _batch()
  graph = b.device_graph
  module = readout.VirtualNode(residual=residual)
  num_slots = b.graph.n_node.shape[0]
  rng = np.random.default_rng(8)
  state = rng.normal(size=(num_slots, NODE_DIM)).astype(np.float32) if given_state else None
  variables = _random_variables(module, 9, b.x, graph, state)

  def run(x, state):
    out, _ = module.apply(variables, x, graph, state, train=train, mutable=["batch_stats"])
    return out

  x_out, v_out = jax.jit(run)(b.x, state)
  x_ref, v_ref = _virtual_node_ref(
      _float64_tree(variables), b, b.x[:b.n_real].astype(np.float64),
      None if state is None else state[:b.num_graphs].astype(np.float64), train, residual)
  np.testing.assert_allclose(x_out[:b.n_real], x_ref, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(v_out[:b.num_graphs], v_ref, rtol=RTOL, atol=ATOL)
  # Padding nodes and padding/empty graph slots never reach real outputs.
  x_pad, _ = _perturbed_padding(b)
  state_pad = None
  if state is not None:
    state_pad = state.copy()
    state_pad[b.num_graphs:] = BIG
  x_out2, v_out2 = jax.jit(run)(x_pad, state_pad)
  np.testing.assert_array_equal(x_out2[:b.n_real], x_out[:b.n_real])
  np.testing.assert_array_equal(v_out2[:b.num_graphs], v_out[:b.num_graphs])
  with jax.enable_x64(True):
    params = _float64_tree(variables["params"])
    stats = _float64_tree(variables.get("batch_stats", {}))

    def real(params, x):
      out, _ = module.apply({"params": params, "batch_stats": stats}, x, graph,
                            None if state is None else state.astype(np.float64), train=train,
                            mutable=["batch_stats"])
      return out[0][:b.n_real], out[1][:b.num_graphs]

    check_grads(jax.jit(real), (params, b.x.astype(np.float64)), order=1, modes=["rev"],
                eps=1e-6)


def test_virtual_node_without_update_only_broadcasts():
  b = _batch()
  module = readout.VirtualNode(update=False)
  state = np.arange(b.graph.n_node.shape[0] * NODE_DIM, dtype=np.float32).reshape(-1, NODE_DIM)
  variables = module.init(jax.random.PRNGKey(0), b.x, b.graph, state)
  assert not variables  # no parameters when the state is given and not updated
  x_out, v_out = module.apply(variables, b.x, b.graph, state)
  np.testing.assert_array_equal(v_out, state)
  np.testing.assert_array_equal(x_out[:b.n_real], b.x[:b.n_real] + state[b.node_graph])


def test_jumping_knowledge_modes():
  rng = np.random.default_rng(2)
  xs = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3)]
  jk = lambda mode, xs: np.asarray(readout.JumpingKnowledge(mode).apply({}, xs))  # noqa: E731
  np.testing.assert_array_equal(jk("concat", xs), np.concatenate(xs, 1))
  np.testing.assert_array_equal(jk("cat", xs), np.concatenate(xs, 1))
  np.testing.assert_array_equal(jk("max", xs), np.maximum(np.maximum(xs[0], xs[1]), xs[2]))
  np.testing.assert_allclose(jk("sum", xs), xs[0] + xs[1] + xs[2], rtol=1e-6)
  np.testing.assert_array_equal(jk("last", xs), xs[2])
  np.testing.assert_array_equal(jk("concat", xs[:1] + [xs[1][:, :1]]),
                                np.concatenate([xs[0], xs[1][:, :1]], 1))
  with pytest.raises(ValueError, match="unknown jumping-knowledge mode"):
    jk("lstm", xs)
  with pytest.raises(ValueError, match="at least one"):
    jk("max", [])
  with jax.enable_x64(True):
    xs64 = [x.astype(np.float64) for x in xs]
    for mode in ("concat", "max", "sum"):
      check_grads(lambda *xs: readout.JumpingKnowledge(mode).apply({}, list(xs)), xs64, order=1,
                  modes=["rev"], eps=1e-6)
