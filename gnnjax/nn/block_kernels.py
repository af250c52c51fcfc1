"""Pallas GPU kernels for the per-graph block max (`blocks.block_max`) and its gradient.

XLA fuses block max into one reduction over a [G, i, j, D] broadcast, but it runs that
reduction far below the GPU's arithmetic rate (about 3 ms per layer for 39 members of a batch of
64 graphs of 64 nodes at D = 255 on an H200, 25x off the compare-and-select count). These
kernels give every (graph, column tile) pair one program that keeps its [M, tile] running max
in registers and walks the graph's M source nodes one at a time:

    out[i, :] = max over j with adjacency[i, j] > 0 of h[j, :]          (masked_max)

and, for the backward pass, first the tie counts and then the scatter-max's cotangent split,

    ties[i, :] = sum_j adjacency[i, j] * (h[j, :] == out[i, :])
    dh[j, :]   = sum_i adjacency[i, j] * (h[j, :] == out[i, :]) * cotangent[i, :] / ties[i, :]

(masked_max_grad), the formulas of the XLA version (`blocks._xla_masked_max*`), so the two agree
up to the order of the float additions. Under `jax.vmap` over a population's members Pallas
adds the member axis to the grid and every member reads the same adjacency blocks.

Shapes are padded to what the Triton lowering needs (M to a power of two, D to a multiple of
the column tile) and sliced back. `interpret=True` runs the same kernels on any backend (the
tests run them on CPU). They use Pallas's Triton backend, which JAX 0.11 deprecates in favour
of Mosaic GPU; where it is gone (`AVAILABLE` false) block max runs on XLA's reductions.
"""

from __future__ import annotations

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

try:  # Pallas's Triton backend: deprecated since JAX 0.11 in favour of Mosaic GPU
  from jax.experimental.pallas import triton as pl_triton
except ImportError:  # a JAX without it: `blocks.block_max(kernel='auto')` stays on XLA
  pl_triton = None

Array = jax.Array

# Whether these kernels can run here (`interpret=True` needs only Pallas itself).
AVAILABLE = pl_triton is not None

COLUMN_TILE = 64  # columns of D per program: a [64, 64] float32 accumulator over 4 warps


def masked_max(adjacency: Array, h: Array, *, interpret: bool = False) -> Array:
  """[G, M, M] edge counts, [G, M, D] states -> [G, M, D]: max over j with adjacency[g, i, j]
  > 0 of h[g, j] (-inf for a row without edges)."""
  _, m, d = h.shape
  pad_adjacency, pad_state, tile = _padding(m, d)
  out = _call(_max_kernel, [pad_adjacency(adjacency)], [pad_state(h)], 1, tile, interpret)[0]
  return out[:, :m, :d]


def masked_max_grad(adjacency: Array, h: Array, out: Array, cotangent: Array, *,
                    interpret: bool = False) -> Array:
  """The cotangent of h for `masked_max`'s output `out` and its cotangent (both [G, M, D]):
  every edge j -> i whose h[j] equals out[i] takes an equal share of cotangent[i], edges
  counted with multiplicity, as the scatter-max's VJP splits it."""
  _, m, d = h.shape
  pad_adjacency, pad_state, tile = _padding(m, d)
  adjacency = pad_adjacency(adjacency)
  adjacency_t = jnp.swapaxes(adjacency, -1, -2)  # adjacency_t[g, j, i] = adjacency[g, i, j]
  dh, _ = _call(_grad_kernel, [adjacency, adjacency_t],
                [pad_state(h), pad_state(out), pad_state(cotangent)], 2, tile, interpret)
  return dh[:, :m, :d]


def _padding(m: int, d: int):
  """Functions padding [G, M, M] and [G, M, D] arrays to the shapes the Triton lowering
  needs (M to a power of two, D to a whole number of column tiles, both at least 16), and the
  column tile."""
  m_p = max(pl.next_power_of_2(m), 16)
  tile = min(COLUMN_TILE, max(pl.next_power_of_2(d), 16))
  d_p = -(-d // tile) * tile
  pad_adjacency = lambda a: jnp.pad(a, ((0, 0), (0, m_p - m), (0, m_p - m)))
  pad_state = lambda x: jnp.pad(x, ((0, 0), (0, m_p - m), (0, d_p - d)))
  return pad_adjacency, pad_state, tile


def _call(kernel, adjacencies: list[Array], states: list[Array], num_outputs: int, tile: int,
          interpret: bool) -> list[Array]:
  """One program per (graph, column tile): `adjacencies` ([G, M, M]) come whole to each,
  `states` ([G, M, D]) and the `num_outputs` outputs (the same shape) as [M, tile] tiles."""
  if not interpret and not AVAILABLE:
    raise RuntimeError("this JAX has no Pallas Triton backend for the block max kernels; use "
                       "blocks.block_max(kernel='auto') or kernel='xla'")
  if any(x.dtype != jnp.float32 for x in adjacencies + states):
    raise ValueError("the block max kernels take float32 arrays (the engine's); got "
                     f"{sorted({str(x.dtype) for x in adjacencies + states})}: use kernel='xla'")
  g, m, d = states[0].shape
  whole = pl.BlockSpec((None, m, m), lambda gi, di: (gi, 0, 0))
  column = pl.BlockSpec((None, m, tile), lambda gi, di: (gi, 0, di))
  state = jax.ShapeDtypeStruct((g, m, d), jnp.float32)
  outputs = pl.pallas_call(
      functools.partial(kernel, m=m, interpret=interpret), out_shape=[state] * num_outputs,
      grid=(g, d // tile), in_specs=[whole] * len(adjacencies) + [column] * len(states),
      out_specs=[column] * num_outputs, interpret=interpret,
      compiler_params=(None if interpret else
                       pl_triton.CompilerParams(num_warps=4, num_stages=1)),
  )(*adjacencies, *states)
  return list(outputs)


def _max_kernel(adjacency_ref, h_ref, out_ref, *, m: int, interpret: bool):
  del interpret
  def visit(j, running):  # source node j: its row of h, to every i with an edge from j
    edge = adjacency_ref[:, pl.ds(j, 1)] > 0  # [M, 1]
    candidate = jnp.where(edge, h_ref[pl.ds(j, 1), :], -jnp.inf)
    # A NaN wins and then stays, as in XLA's max and the scatter (a diverged member's states
    # must reach its loss); Triton lowers jnp.maximum to maxnumf, which drops NaNs.
    return jnp.where((candidate > running) | (candidate != candidate), candidate, running)
  out_ref[...] = lax.fori_loop(0, m, visit, jnp.full(out_ref.shape, -jnp.inf, jnp.float32))


def _grad_kernel(adjacency_ref, adjacency_t_ref, h_ref, out_ref, cotangent_ref, dh_ref,
                 share_ref, *, m: int, interpret: bool):
  out = out_ref[...]

  def count(j, ties):  # edges j -> i whose state is i's max
    hit = h_ref[pl.ds(j, 1), :] == out
    return ties + jnp.where(hit, adjacency_ref[:, pl.ds(j, 1)], 0.0)
  ties = lax.fori_loop(0, m, count, jnp.zeros(out.shape, jnp.float32))
  # The per-row shares go through this program's own output tile: rows of an in-register
  # value cannot be indexed, rows of a ref can (the barrier makes the stores visible).
  share_ref[...] = cotangent_ref[...] / jnp.where(ties > 0, ties, 1.0)
  if not interpret:  # the interpreter runs a program's steps in order
    pl_triton.debug_barrier()
  h = h_ref[...]

  def spread(i, dh):  # target node i: its share to every j whose state is i's max
    hit = h == out_ref[pl.ds(i, 1), :]
    return dh + jnp.where(hit, adjacency_t_ref[:, pl.ds(i, 1)] * share_ref[pl.ds(i, 1), :],
                          0.0)
  dh_ref[...] = lax.fori_loop(0, m, spread, jnp.zeros(out.shape, jnp.float32))
