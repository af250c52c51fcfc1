"""Jittable fixed-point solvers for z = f(z): plain iteration, Anderson acceleration, Broyden.

Every solver runs one `lax.while_loop` (no Python loop over iterations, so it compiles once for
any `max_iter`), works on a pytree state (flattened internally with `ravel_pytree`), and
returns `(z, SolverStats)`. They vmap: under `jax.vmap` each example keeps its own iterate,
step count and convergence flag (a batched while loop runs until the last example stops, and
examples that stopped are frozen). They are not reverse-differentiable (a while loop is not);
`gnnjax.deep.deq` differentiates the fixed point implicitly instead.

Stopping rule (all solvers). With the residual r(z) = ||f(z) - z||_2 over the whole flattened
state, a state is *converged* when

    r(z) <= tol + rtol * ||f(z)||_2,

so `tol` is an absolute and `rtol` a relative tolerance (set either to 0 to disable it). The
loop stops at the first converged iterate, after `max_iter` updates, or on a non-finite
residual. Each update costs exactly one evaluation of f (plus one for z0), and the returned z is
the iterate with the smallest residual seen (Anderson and Broyden are not monotone).

Solvers:

* `fixed_point_iteration`: z <- (1 - damping) z + damping f(z). Converges linearly for a
  contraction, at its Lipschitz rate (damped: rate 1 - damping (1 - L) for a linear map with
  real spectrum).
* `anderson`: Anderson acceleration (type II, Walker & Ni 2011) with memory m: from the last
  m pairs (z_i, f(z_i)), alpha = argmin ||sum_i alpha_i g_i||^2 s.t. sum_i alpha_i = 1
  (g_i = f(z_i) - z_i, Tikhonov regularised by `lam` times the mean squared residual, so the
  regularisation is scale-free), then z <- beta sum_i alpha_i f(z_i) + (1 - beta) sum_i alpha_i z_i.
  Memory O(m n).
* `broyden`: limited-memory "good" Broyden on the root problem g(z) = f(z) - z, with inverse
  Jacobian estimate H = -I + sum_i u_i v_i^T (Sherman-Morrison updates, so H starts as the
  plain fixed-point step), a circular buffer of `memory` rank-one terms, and a safe step: a step
  whose residual is non-finite or grows by more than `safe_growth` is rejected, the estimate is
  reset to -I, and the next step is a plain fixed-point step (always accepted). Memory
  O(memory n).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

Array = jax.Array
PyTree = Any

SOLVERS = ("fixed_point", "anderson", "broyden")


class SolverStats(NamedTuple):
  """What a solve did. Scalars per solve (a leading batch axis under vmap).

  Attributes:
    n_steps: int32 []: updates taken, 0 <= n_steps <= max_iter (0: z0 was already converged).
    residual: float []: ||f(z) - z||_2 at the returned z.
    converged: bool []: residual <= tol + rtol * ||f(z)||_2 at the returned z.
    trace: float [trace_len]: trace[k] = residual after k updates (trace[0] at z0); NaN for
      updates never taken (or beyond the trace length). Empty when trace_len = 0.
  """

  n_steps: Array
  residual: Array
  converged: Array
  trace: Array


# A step maps (memory, k, z, f(z), g = f(z) - z, ||g||) -> (z', f(z'), memory') with exactly one
# evaluation of f.
_Step = Callable[[Any, Array, Array, Array, Array, Array], tuple[Array, Array, Any]]


def _check_common(max_iter: int, tol: float, rtol: float, trace_len: int) -> None:
  if int(max_iter) != max_iter or max_iter < 0:
    raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
  if tol < 0 or rtol < 0:
    raise ValueError(f"tol and rtol must be >= 0, got tol={tol!r}, rtol={rtol!r}")
  if int(trace_len) != trace_len or trace_len < 0:
    raise ValueError(f"trace_len must be a non-negative integer, got {trace_len!r}")


def _flatten(f: Callable[[PyTree], PyTree], z0: PyTree):
  """Flat versions of f and z0, and the map back to z0's structure."""
  flat0, unravel = ravel_pytree(z0)
  if not jnp.issubdtype(flat0.dtype, jnp.inexact):
    raise ValueError(f"the fixed-point state must be floating point, got dtype {flat0.dtype}")
  tree0 = jax.tree.structure(z0)

  def f_flat(v: Array) -> Array:
    out = f(unravel(v))
    if jax.tree.structure(out) != tree0:
      raise ValueError(f"f must return the structure of z: got {jax.tree.structure(out)}, "
                       f"expected {tree0}")
    flat, _ = ravel_pytree(out)
    if flat.shape != v.shape:
      raise ValueError(f"f must return arrays of the shapes of z: got {flat.shape[0]} values, "
                       f"expected {v.shape[0]}")
    return flat.astype(v.dtype)

  return f_flat, flat0, unravel


def _iterate(f: Callable[[Array], Array], z0: Array, step: _Step, memory0: Any, max_iter: int,
             tol: float, rtol: float, trace_len: int) -> tuple[Array, SolverStats]:
  """The loop shared by all solvers: stopping rule, best iterate, statistics."""
  dtype = z0.dtype

  def measure(z, fz):
    g = fz - z
    res = jnp.linalg.norm(g)
    return g, res, tol + rtol * jnp.linalg.norm(fz)

  fz0 = f(z0)
  _, res0, thr0 = measure(z0, fz0)
  trace = jnp.full((trace_len,), jnp.nan, dtype)
  if trace_len:
    trace = trace.at[0].set(res0)
  # carry: k, z, f(z), ||g||, threshold, memory, best z, best ||g||, its threshold, trace
  init = (jnp.zeros((), jnp.int32), z0, fz0, res0, thr0, memory0, z0, res0, thr0, trace)

  def cond(carry):
    k, _, _, res, thr = carry[:5]
    return (k < max_iter) & (res > thr) & jnp.isfinite(res)

  def body(carry):
    k, z, fz, res, _, memory, best_z, best_res, best_thr, trace = carry
    z_new, fz_new, memory = step(memory, k, z, fz, fz - z, res)
    _, res_new, thr_new = measure(z_new, fz_new)
    better = res_new < best_res
    best_z = jnp.where(better, z_new, best_z)
    best_res = jnp.where(better, res_new, best_res)
    best_thr = jnp.where(better, thr_new, best_thr)
    if trace_len:
      trace = trace.at[k + 1].set(res_new, mode="drop")
    return (k + 1, z_new, fz_new, res_new, thr_new, memory, best_z, best_res, best_thr, trace)

  k, *_, best_z, best_res, best_thr, trace = lax.while_loop(cond, body, init)
  return best_z, SolverStats(n_steps=k, residual=best_res, converged=best_res <= best_thr,
                             trace=trace)


def _run(f: Callable[[PyTree], PyTree], z0: PyTree, make_step, max_iter: int, tol: float,
         rtol: float, trace_len: int) -> tuple[PyTree, SolverStats]:
  _check_common(max_iter, tol, rtol, trace_len)
  f_flat, flat0, unravel = _flatten(f, z0)
  step, memory0 = make_step(f_flat, flat0)
  z, stats = _iterate(f_flat, flat0, step, memory0, int(max_iter), tol, rtol, int(trace_len))
  return unravel(z), stats


def fixed_point_iteration(f: Callable[[PyTree], PyTree], z0: PyTree, *, max_iter: int = 50,
                          tol: float = 0.0, rtol: float = 1e-4, damping: float = 1.0,
                          trace_len: int = 0) -> tuple[PyTree, SolverStats]:
  """Damped fixed-point iteration z <- (1 - damping) z + damping f(z).

  Args:
    f: maps a state to a state of the same structure, shapes and dtypes.
    z0: initial state (pytree of float arrays).
    max_iter: most updates.
    tol, rtol: absolute and relative tolerance of the stopping rule (module docstring).
    damping: in (0, 1]; 1 is plain iteration.
    trace_len: length of the residual trace in the statistics.

  Returns:
    (z, stats): the lowest-residual iterate and the `SolverStats`.
  """
  if not 0.0 < damping <= 1.0:
    raise ValueError(f"damping must be in (0, 1], got {damping!r}")

  def make_step(f_flat, _):
    def step(memory, k, z, fz, g, res):
      z_new = z + damping * g
      return z_new, f_flat(z_new), memory
    return step, ()

  return _run(f, z0, make_step, max_iter, tol, rtol, trace_len)


def anderson(f: Callable[[PyTree], PyTree], z0: PyTree, *, max_iter: int = 50, tol: float = 0.0,
             rtol: float = 1e-4, memory: int = 5, beta: float = 1.0, lam: float = 1e-4,
             trace_len: int = 0) -> tuple[PyTree, SolverStats]:
  """Anderson acceleration (type II) with memory m, mixing beta and regularisation lam.

  Args:
    f, z0, max_iter, tol, rtol, trace_len: as `fixed_point_iteration`.
    memory: m, the number of past (z, f(z)) pairs mixed (>= 1; 1 is damped iteration).
    beta: mixing (damping) parameter in (0, 1]: z' = beta sum alpha f(z) + (1 - beta) sum alpha z.
    lam: Tikhonov regularisation of the least-squares problem, relative to the mean squared
      residual of the stored pairs (scale-free; larger is more stable, slower).

  Returns:
    (z, stats) as `fixed_point_iteration`. The first update is a damped plain step.
  """
  if int(memory) != memory or memory < 1:
    raise ValueError(f"Anderson memory must be a positive integer, got {memory!r}")
  if not 0.0 < beta <= 1.0:
    raise ValueError(f"Anderson beta must be in (0, 1], got {beta!r}")
  if lam < 0:
    raise ValueError(f"Anderson lam must be >= 0, got {lam!r}")
  m = int(memory)

  def make_step(f_flat, flat0):
    n, dtype = flat0.shape[0], flat0.dtype
    tiny = jnp.finfo(dtype).tiny ** 0.5  # keeps the system regular once every residual is 0

    def step(mem, k, z, fz, g, res):
      xs, fs = mem
      slot = k % m
      xs = xs.at[slot].set(z)
      fs = fs.at[slot].set(fz)
      valid = (jnp.arange(m) <= k).astype(dtype)  # slots written so far
      gs = fs - xs
      gram = (gs @ gs.T) * valid[:, None] * valid[None, :]
      scale = jnp.trace(gram) / jnp.maximum(jnp.sum(valid), 1.0)
      # KKT system of min a^T G a s.t. sum(a) = 1 over the valid slots; unwritten slots get a
      # unit diagonal and no constraint entry, so their weight is exactly 0.
      reg = (lam * scale + tiny) * jnp.eye(m, dtype=dtype) + jnp.diag(1.0 - valid)
      top = jnp.concatenate([jnp.zeros((1,), dtype), valid])[None, :]
      side = jnp.concatenate([valid[:, None], gram + reg], axis=1)
      kkt = jnp.concatenate([top, side], axis=0)
      rhs = jnp.zeros((m + 1,), dtype).at[0].set(1.0)
      alpha = jnp.linalg.solve(kkt, rhs)[1:]
      # A failed solve (non-finite weights) falls back to a plain step from the newest pair.
      alpha = jnp.where(jnp.all(jnp.isfinite(alpha)), alpha,
                        jax.nn.one_hot(slot, m, dtype=dtype))
      z_new = beta * (alpha @ fs) + (1.0 - beta) * (alpha @ xs)
      return z_new, f_flat(z_new), (xs, fs)

    mem0 = (jnp.zeros((m, n), dtype), jnp.zeros((m, n), dtype))
    return step, mem0

  return _run(f, z0, make_step, max_iter, tol, rtol, trace_len)


def broyden(f: Callable[[PyTree], PyTree], z0: PyTree, *, max_iter: int = 50, tol: float = 0.0,
            rtol: float = 1e-4, memory: int = 20, safe_growth: float = 4.0,
            trace_len: int = 0) -> tuple[PyTree, SolverStats]:
  """Limited-memory good Broyden on g(z) = f(z) - z with a safe step.

  The inverse Jacobian of g is estimated as H = -I + sum_i u_i v_i^T (so the first step,
  z - H g = z + g = f(z), is a plain fixed-point step); after an accepted step s with residual
  change y, the good-Broyden (Sherman-Morrison) update adds u = (s - H y) / (s^T H y),
  v = H^T s, overwriting the oldest term once `memory` terms are stored. A step whose residual
  is non-finite or exceeds `safe_growth` times the current one is rejected: the state stays, the
  estimate is reset to -I, and the next (plain) step is accepted unconditionally.

  Args:
    f, z0, max_iter, tol, rtol, trace_len: as `fixed_point_iteration`.
    memory: rank-one terms kept (>= 1).
    safe_growth: largest accepted residual growth factor of one step (> 1).

  Returns:
    (z, stats) as `fixed_point_iteration`; a rejected step counts as an update.
  """
  if int(memory) != memory or memory < 1:
    raise ValueError(f"Broyden memory must be a positive integer, got {memory!r}")
  if not safe_growth > 1.0:
    raise ValueError(f"safe_growth must be > 1, got {safe_growth!r}")
  m = int(memory)

  def make_step(f_flat, flat0):
    n, dtype = flat0.shape[0], flat0.dtype

    def apply_h(us, vs, x):  # H x = -x + sum_i u_i (v_i . x)
      return -x + (vs @ x) @ us

    def apply_ht(us, vs, x):  # H^T x = -x + sum_i v_i (u_i . x)
      return -x + (us @ x) @ vs

    def step(mem, k, z, fz, g, res):
      us, vs, count = mem
      s = -apply_h(us, vs, g)
      z_try = z + s
      fz_try = f_flat(z_try)
      g_try = fz_try - z_try
      res_try = jnp.linalg.norm(g_try)
      accept = (count == 0) | (jnp.isfinite(res_try) & (res_try <= safe_growth * res))
      # Good Broyden update of H with the secant pair (s, y).
      y = g_try - g
      hy = apply_h(us, vs, y)
      v = apply_ht(us, vs, s)
      denom = jnp.dot(s, hy)  # = v . y
      u = (s - hy) / jnp.where(denom == 0, 1.0, denom)
      usable = accept & (denom != 0) & jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(v))
      slot = count % m
      us_new = jnp.where(usable, us.at[slot].set(u), us)
      vs_new = jnp.where(usable, vs.at[slot].set(v), vs)
      count_new = count + usable.astype(count.dtype)
      # Rejected: stay, reset the estimate to -I.
      us_new = jnp.where(accept, us_new, jnp.zeros_like(us))
      vs_new = jnp.where(accept, vs_new, jnp.zeros_like(vs))
      count_new = jnp.where(accept, count_new, 0)
      z_new = jnp.where(accept, z_try, z)
      fz_new = jnp.where(accept, fz_try, fz)
      return z_new, fz_new, (us_new, vs_new, count_new)

    mem0 = (jnp.zeros((m, n), dtype), jnp.zeros((m, n), dtype), jnp.zeros((), jnp.int32))
    return step, mem0

  return _run(f, z0, make_step, max_iter, tol, rtol, trace_len)


_SOLVER_FNS = {"fixed_point": fixed_point_iteration, "anderson": anderson, "broyden": broyden}


def get_solver(name: str) -> Callable[..., tuple[PyTree, SolverStats]]:
  """The solver function called `name` ('fixed_point', 'anderson' or 'broyden')."""
  try:
    return _SOLVER_FNS[name]
  except KeyError:
    raise ValueError(f"unknown fixed-point solver {name!r}; choose from {list(SOLVERS)}") from None


def solve(f: Callable[[PyTree], PyTree], z0: PyTree, solver: str = "anderson",
          **options) -> tuple[PyTree, SolverStats]:
  """Runs the named solver: `solve(f, z0, 'broyden', max_iter=30, rtol=1e-4, memory=10)`."""
  return get_solver(solver)(f, z0, **options)
