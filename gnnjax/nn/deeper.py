"""DeeperGCN's generalised graph convolution (GENConv) and message normalisation (MsgNorm).

Li et al., "DeeperGCN: All You Need to Train Deeper GCNs" (arXiv 2006.07739). Semantics,
parameter names and initialisation follow PyG's `GENConv` and `MessageNorm`, so weights can be
transplanted: every linear layer is PyTorch's `Linear` (weight and bias ~ U(+-1/sqrt(fan_in)),
kernel stored transposed as flax does), and biases are off by default as in PyG.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from gnnjax import graph as graph_lib
from gnnjax.nn import aggregate as agg_lib
from gnnjax.nn import mlp as mlp_lib

Array = jax.Array

# PyTorch's Linear default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

GEN_AGGREGATIONS = ("softmax", "softmax_sg", "powermean", "power", "sum", "add", "mean", "max")
GEN_NORMS = ("batch", "layer", None)


def _uniform_bias_init(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def torch_dense(features: int, fan_in: int, use_bias: bool = True, name: str | None = None
                ) -> nn.Dense:
  """A flax Dense initialised like PyTorch's `nn.Linear(fan_in, features, bias=use_bias)`.

  Must be called inside a compact method. The kernel is [fan_in, features] (PyTorch's weight
  transposed); kernel and bias are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  """
  bound = 1.0 / math.sqrt(max(fan_in, 1))
  return nn.Dense(features, use_bias=use_bias, kernel_init=_TORCH_KERNEL_INIT,
                  bias_init=_uniform_bias_init(bound), name=name)


def _safe_norm(x: Array) -> Array:
  """L2 norm over the last axis, [..., 1], with a finite (zero) gradient at the zero vector."""
  squared = jnp.sum(x * x, axis=-1, keepdims=True)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


class MessageNorm(nn.Module):
  """MsgNorm (DeeperGCN; PyG MessageNorm): m' = s * ||x||_2 * m / max(||m||_2, 1e-12).

  Norms are taken per node over the feature axis. s is a scalar initialised to 1; it is a
  parameter named 'scale' only when `learn_scale` (PyG keeps a frozen 1 otherwise).
  """

  learn_scale: bool = False

  @nn.compact
  def __call__(self, x: Array, messages: Array) -> Array:
    """x: float [N, D_x] node features; messages: float [N, D] aggregated messages -> [N, D]."""
    scale = self.param("scale", nn.initializers.ones, ()) if self.learn_scale else 1.0
    unit = messages / jnp.maximum(_safe_norm(messages), 1e-12)
    return unit * _safe_norm(x) * scale


class GENConv(nn.Module):
  """Generalised graph convolution of DeeperGCN (PyG GENConv).

      m_ij = ReLU(x_j + e_ij) + eps              (per edge j -> i)
      a_i  = AGG_j m_ij                          (per channel)
      a_i <- MsgNorm(x_i, a_i)                   (optional)
      out_i = MLP(a_i + x_i)

  When the input width differs from `features`, x is projected by bias-free linear maps: `lin_src`
  for the messages and `lin_dst` for the self term (MsgNorm still uses the unprojected x_i, as PyG
  does). Edge features of another width are projected by `lin_edge`; without edge features the
  message is ReLU(x_j) + eps. The MLP is PyG's: channels [F, expansion * F x (num_layers - 1), F],
  Linear -> norm -> ReLU between layers, last Linear bare.

  Attributes:
    features: output width F.
    aggr: 'softmax' (sum_j softmax_j(t * m_ij) * m_ij), 'softmax_sg' (same, softmax weights under
      stop-gradient; t fixed), 'powermean' or its alias 'power' ((mean_j m_ij^p)^(1/p) with
      messages and mean clamped to [0, 100] as PyG <= 2.6; PyG >= 2.7 clamps to [1e-4, 100];
      a fixed p of 1 is a plain mean), 'sum'/'add', 'mean', 'max'.
    t: inverse temperature of the softmax; a scalar parameter 't' when `learn_t`.
    learn_t: learn t.
    p: power of the power mean; a scalar parameter 'p' when `learn_p`.
    learn_p: learn p.
    msg_norm: apply MsgNorm to the aggregated messages.
    learn_msg_scale: learn MsgNorm's scale.
    norm: normalisation inside the MLP: 'batch' (padding-aware batch norm), 'layer' or None.
    num_layers: MLP depth (1 = one Linear).
    expansion: hidden-width factor of the MLP.
    eps: added to every message (keeps messages positive for the power mean).
    use_bias: biases in every linear layer (PyG's `bias`, default False).
  """

  features: int
  aggr: str = "softmax"
  t: float = 1.0
  learn_t: bool = False
  p: float = 1.0
  learn_p: bool = False
  msg_norm: bool = False
  learn_msg_scale: bool = False
  norm: str | None = "batch"
  num_layers: int = 2
  expansion: int = 2
  eps: float = 1e-7
  use_bias: bool = False

  def _check_config(self) -> None:
    if self.aggr not in GEN_AGGREGATIONS:
      raise ValueError(f"unknown GENConv aggregation {self.aggr!r}; choose from "
                       f"{list(GEN_AGGREGATIONS)}")
    if self.aggr == "softmax_sg" and self.learn_t:
      raise ValueError("aggr='softmax_sg' stops the gradient through the softmax, so t cannot be "
                       "learned; use aggr='softmax' with learn_t=True")
    if self.norm not in GEN_NORMS:
      raise ValueError(f"unknown GENConv norm {self.norm!r}; choose from {list(GEN_NORMS)}")
    if self.num_layers < 1:
      raise ValueError(f"GENConv needs num_layers >= 1, got {self.num_layers}")

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple, edge_features: Array | None = None,
               train: bool = False) -> Array:
    """Applies the layer.

    Args:
      x: float [N, D_in] node features.
      graph: padded graph with E edges (only its structure is read).
      edge_features: optional float [E, D_e] edge features.
      train: batch norm uses batch statistics (over real nodes) and updates its running ones.

    Returns:
      float [N, features].
    """
    self._check_config()
    source = x
    if x.shape[-1] != self.features:
      source = torch_dense(self.features, x.shape[-1], self.use_bias, name="lin_src")(x)
    messages = source[graph.senders]
    if edge_features is not None:
      if edge_features.shape[-1] != self.features:
        edge_features = torch_dense(self.features, edge_features.shape[-1], self.use_bias,
                                    name="lin_edge")(edge_features)
      messages = messages + edge_features
    messages = nn.relu(messages) + self.eps
    out = self._aggregate(messages, graph, x.shape[0])
    if self.msg_norm:
      out = MessageNorm(self.learn_msg_scale, name="msg_norm")(x, out)
    target = x
    if x.shape[-1] != self.features:
      target = torch_dense(self.features, x.shape[-1], self.use_bias, name="lin_dst")(x)
    return self._mlp(out + target, graph_lib.node_mask(graph), train)

  def _aggregate(self, messages: Array, graph: jraph.GraphsTuple, n: int) -> Array:
    """Reduces messages [E, F] onto receivers -> [N, F]; nodes without real in-edges get 0."""
    mask = graph_lib.edge_mask(graph)
    receivers = graph.receivers
    if self.aggr in ("softmax", "softmax_sg"):
      t = self.param("t", nn.initializers.constant(self.t), ()) if self.learn_t else self.t
      weights = agg_lib.segment_softmax(messages * t, receivers, n, mask)
      if self.aggr == "softmax_sg":
        weights = jax.lax.stop_gradient(weights)
      return agg_lib.segment_sum(messages * weights, receivers, n, mask)
    if self.aggr in ("powermean", "power"):
      if not self.learn_p and self.p == 1:
        # PyG skips the clamp and the powers for a fixed p of 1: a plain mean.
        return agg_lib.segment_mean(messages, receivers, n, mask)
      p = self.param("p", nn.initializers.constant(self.p), ()) if self.learn_p else self.p
      return agg_lib.powermean_aggregate(messages, receivers, n, mask, p=p)
    return agg_lib.aggregate(self.aggr, messages, receivers, n, mask)

  def _mlp(self, h: Array, node_mask: Array, train: bool) -> Array:
    widths = [self.features * self.expansion] * (self.num_layers - 1) + [self.features]
    for i, width in enumerate(widths):
      h = torch_dense(width, h.shape[-1], self.use_bias, name=f"mlp_lin_{i}")(h)
      if i == len(widths) - 1:
        break
      if self.norm == "batch":
        h = mlp_lib.MaskedBatchNorm(name=f"mlp_norm_{i}")(h, node_mask, train)
      elif self.norm == "layer":
        # PyTorch's LayerNorm: eps 1e-5, two-pass variance.
        h = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=f"mlp_norm_{i}")(h)
      h = nn.relu(h)
    return h
