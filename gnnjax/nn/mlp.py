"""Activations, padding-aware batch norm, and the MLP used inside convs and heads."""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "swish": nn.swish,
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.01),
    "elu": nn.elu,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "identity": lambda x: x,
}
# 'prelu' has a learnable slope, so it is a module (PReLU below), not a plain function.
ACTIVATION_NAMES = tuple(sorted(ACTIVATIONS)) + ("prelu",)


def get_activation(name: str) -> Callable[[Array], Array]:
  """A parameter-free activation by name; for 'prelu' use `PReLU`."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; choose from {list(ACTIVATION_NAMES)}") from None


class PReLU(nn.Module):
  """PReLU with one scalar slope (PyTorch's default `num_parameters=1`, init 0.25)."""

  init_slope: float = 0.25

  @nn.compact
  def __call__(self, x: Array) -> Array:
    slope = self.param("slope", nn.initializers.constant(self.init_slope), ())
    return jnp.where(x >= 0, x, slope * x)


class MaskedBatchNorm(nn.Module):
  """BatchNorm over rows [N, D] whose statistics ignore padding rows (`mask` bool [N]).

  Momentum/epsilon default to PyTorch's BatchNorm1d (momentum 0.1 = flax 0.9, eps 1e-5).
  Running variance is updated with the unbiased batch variance, as PyTorch does, so models
  transplanted from PyTorch keep the same running statistics.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  use_scale: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, train: bool) -> Array:
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    if train:
      keep = jnp.ones(x.shape[:1], bool) if mask is None else mask
      keep = keep[:, None]
      # jnp.where, not a multiplication: 0 * (overflowing padding) would be NaN.
      count = jnp.maximum(keep.sum(), 1).astype(x.dtype)
      mean = jnp.where(keep, x, 0).sum(0) / count
      var = jnp.where(keep, (x - mean) ** 2, 0).sum(0) / count
      if not self.is_initializing():
        unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      y = y * self.param("scale", nn.initializers.ones, (features,))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (features,))
    return y


class MLP(nn.Module):
  """Linear layers with optional batch norm, dropout and activation between them.

  Layer i: Dense(features[i]) -> [BatchNorm] -> activation -> [Dropout]; the last layer is a
  plain Dense unless `activate_final`. Input [N, D_in] -> output [N, features[-1]].
  """

  features: Sequence[int]
  activation: str = "relu"
  batch_norm: bool = False
  dropout: float = 0.0
  activate_final: bool = False
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
    for i, width in enumerate(self.features):
      last = i == len(self.features) - 1
      x = nn.Dense(width, kernel_init=self.kernel_init)(x)
      if last and not self.activate_final:
        break
      if self.batch_norm:
        x = MaskedBatchNorm()(x, mask, train)
      x = PReLU()(x) if self.activation == "prelu" else get_activation(self.activation)(x)
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x
