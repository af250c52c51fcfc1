"""Neighbourhood aggregation: reduce per-edge messages [E, ...] onto receiving nodes [N, ...].

Every aggregator takes an edge mask and treats masked (padding) edges as absent. A node with no
incoming real edge gets 0 from every aggregator, never -inf or NaN. Semantics follow PyG's
aggregation modules, so weights transplanted from PyG give the same outputs.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _expand(mask: Array, like: Array) -> Array:
  return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def segment_count(segment_ids: Array, num_segments: int, mask: Array) -> Array:
  """float32 [N]: number of real entries per segment."""
  return jax.ops.segment_sum(mask.astype(jnp.float32), segment_ids, num_segments=num_segments)


def segment_sum(messages: Array, segment_ids: Array, num_segments: int, mask: Array) -> Array:
  masked = jnp.where(_expand(mask, messages), messages, 0)
  return jax.ops.segment_sum(masked, segment_ids, num_segments=num_segments)


def segment_mean(messages: Array, segment_ids: Array, num_segments: int, mask: Array) -> Array:
  total = segment_sum(messages, segment_ids, num_segments, mask)
  count = segment_count(segment_ids, num_segments, mask)
  return total / _expand(jnp.maximum(count, 1.0), total)


def _segment_extreme(reduce, fill, messages, segment_ids, num_segments, mask):
  masked = jnp.where(_expand(mask, messages), messages, fill)
  out = reduce(masked, segment_ids, num_segments=num_segments)
  empty = segment_count(segment_ids, num_segments, mask) == 0
  return jnp.where(_expand(empty, out), 0, out)


def segment_max(messages: Array, segment_ids: Array, num_segments: int, mask: Array) -> Array:
  return _segment_extreme(jax.ops.segment_max, -jnp.inf, messages, segment_ids, num_segments,
                          mask)


def segment_min(messages: Array, segment_ids: Array, num_segments: int, mask: Array) -> Array:
  return _segment_extreme(jax.ops.segment_min, jnp.inf, messages, segment_ids, num_segments, mask)


def segment_std(messages: Array, segment_ids: Array, num_segments: int, mask: Array,
                eps: float = 1e-5) -> Array:
  """Per-segment standard deviation, PyG's StdAggregation: sqrt(max(var, eps)), 0 if var <= eps."""
  mean = segment_mean(messages, segment_ids, num_segments, mask)
  mean_sq = segment_mean(messages * messages, segment_ids, num_segments, mask)
  var = mean_sq - mean * mean
  return jnp.where(var <= eps, 0.0, jnp.sqrt(jnp.maximum(var, eps)))


def segment_softmax(logits: Array, segment_ids: Array, num_segments: int, mask: Array) -> Array:
  """Softmax of `logits` [E, ...] within each segment; masked entries get weight 0."""
  expanded = _expand(mask, logits)
  masked = jnp.where(expanded, logits, -jnp.inf)
  seg_max = jax.ops.segment_max(masked, segment_ids, num_segments=num_segments)
  seg_max = jnp.where(jnp.isfinite(seg_max), seg_max, 0.0)
  # Stop the gradient through the max: it cancels mathematically and is unstable to differentiate.
  shifted = jnp.where(expanded, logits - jax.lax.stop_gradient(seg_max)[segment_ids], -jnp.inf)
  unnorm = jnp.exp(shifted)
  denom = jax.ops.segment_sum(unnorm, segment_ids, num_segments=num_segments)
  return unnorm / jnp.where(denom > 0, denom, 1.0)[segment_ids]


def softmax_aggregate(messages: Array, segment_ids: Array, num_segments: int, mask: Array,
                      beta: Array | float = 1.0) -> Array:
  """sum_j softmax_j(beta * m_j) * m_j per channel (DeeperGCN's SoftMax aggregation)."""
  weights = segment_softmax(messages * beta, segment_ids, num_segments, mask)
  return segment_sum(messages * weights, segment_ids, num_segments, mask)


def powermean_aggregate(messages: Array, segment_ids: Array, num_segments: int, mask: Array,
                        p: Array | float = 1.0) -> Array:
  """(mean_j m_j^p)^(1/p) per channel, PyG's PowerMeanAggregation (inputs clamped to [0, 100])."""
  powered = jnp.power(jnp.clip(messages, 0.0, 100.0), p)
  mean = segment_mean(powered, segment_ids, num_segments, mask)
  return jnp.power(jnp.clip(mean, 0.0, 100.0), 1.0 / p)


AGGREGATORS: dict[str, Callable[..., Array]] = {
    "sum": segment_sum,
    "add": segment_sum,  # GraphGym's name for sum
    "mean": segment_mean,
    "max": segment_max,
    "min": segment_min,
    "std": segment_std,
    "softmax": softmax_aggregate,
    "powermean": powermean_aggregate,
}


def aggregate(kind: str, messages: Array, segment_ids: Array, num_segments: int, mask: Array,
              **kwargs) -> Array:
  """Dispatches to an aggregator by name ('sum'/'add', 'mean', 'max', 'min', 'std', 'softmax',
  'powermean'); kwargs carry beta / p."""
  try:
    fn = AGGREGATORS[kind]
  except KeyError:
    raise ValueError(f"unknown aggregation {kind!r}; choose from {sorted(AGGREGATORS)}") from None
  return fn(messages, segment_ids, num_segments, mask, **kwargs)
