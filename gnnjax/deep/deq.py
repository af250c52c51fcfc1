"""Deep equilibrium (DEQ) layers: z* = f(params, z*, inputs, aux), differentiated implicitly.

Bai et al., "Deep Equilibrium Models" (NeurIPS 2019); the DEQ-GNN of Li et al. (RevGNN paper,
ICML 2021). The forward pass finds the fixed point with a solver from `gnnjax.deep.solvers`
without recording its iterations, so memory does not grow with the number of iterations. The
backward pass, a `jax.custom_vjp`, uses the implicit function theorem: with J = df/dz at z*
and the incoming cotangent gbar, it solves the adjoint fixed point

    u = gbar + u J        (i.e. u = gbar (I - J)^-1, one `jax.vjp` of f at z* per iteration)

with a solver of the same family, then returns u df/dparams and u df/dinputs (the vjp of f at
z* applied to u). Memory: z*, the inputs, and one linearisation of f: O(N D + E D) for a GNN.

The map f is called as `f(params, z, inputs, aux)`:

* params, inputs: pytrees of float arrays that receive cotangents (weights; the injected node
  encoding, edge features, ...);
* z: the state (pytree of float arrays), the same structure, shapes and dtypes in and out;
* aux: anything non-differentiable (the `jraph.GraphsTuple` with its int arrays, a dropout
  mask, ...). It gets a None (zero) cotangent, so int leaves need no float0 handling.

`f` itself is a static Python callable: it must not close over traced values (pass those
through params, inputs or aux).

Gradient modes (`DEQConfig.grad`):

* 'implicit': exact gradient at the solved fixed point, up to the backward solver's tolerance.
* 'phantom': Geng et al. (NeurIPS 2021): z <- stop_gradient(z*) then k unrolled damped steps
  z <- (1 - lambda) z + lambda f(z) with autodiff. Cheaper and approximate; memory O(k N D);
  exact as k -> infinity (a Neumann series of the implicit gradient).

The solver statistics come out as a second, non-differentiable output. The backward solve's
statistics can be read through `backward_probe` (a float [3] array whose cotangent is set to
(n_steps, residual, converged) of the adjoint solve); see `deq_fixed_point`.

Not supported: forward-mode differentiation (custom_vjp) and higher-order derivatives.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from gnnjax.deep import solvers as solvers_lib

Array = jax.Array
PyTree = Any
DEQMap = Callable[[PyTree, PyTree, PyTree, Any], PyTree]

GRAD_MODES = ("implicit", "phantom")
BACKWARD_PROBE_FIELDS = ("n_steps", "residual", "converged")


@dataclasses.dataclass(frozen=True)
class DEQConfig:
  """Solver and gradient settings of a DEQ layer (hashable, so usable as a static argument).

  Tolerances follow `gnnjax.deep.solvers`: stop when ||f(z) - z|| <= tol + rtol ||f(z)||
  (L2 over the whole state). Relative tolerances are the default because the state's norm
  grows with the number of nodes.

  Attributes:
    solver: forward solver, one of `solvers.SOLVERS`.
    max_iter: forward iteration cap.
    tol, rtol: forward absolute / relative tolerance.
    backward_solver, backward_max_iter, backward_tol, backward_rtol: the same for the adjoint
      fixed point u = gbar + u J (a linear problem; Anderson is a good default).
    memory: Anderson memory m / Broyden rank-one terms (both directions).
    damping: fixed-point damping / Anderson beta (both directions).
    lam: Anderson regularisation (relative).
    safe_growth: Broyden's largest accepted residual growth per step.
    grad: 'implicit' or 'phantom'.
    phantom_steps: k, unrolled steps of the phantom gradient.
    phantom_damping: lambda in (0, 1] of the phantom steps.
    trace_len: length of the forward residual trace in the statistics (0: none).
  """

  solver: str = "anderson"
  max_iter: int = 30
  tol: float = 0.0
  rtol: float = 1e-3
  backward_solver: str = "anderson"
  backward_max_iter: int = 30
  backward_tol: float = 0.0
  backward_rtol: float = 1e-4
  memory: int = 5
  damping: float = 1.0
  lam: float = 1e-4
  safe_growth: float = 4.0
  grad: str = "implicit"
  phantom_steps: int = 5
  phantom_damping: float = 0.5
  trace_len: int = 0

  def validate(self) -> None:
    for name in (self.solver, self.backward_solver):
      solvers_lib.get_solver(name)
    if self.grad not in GRAD_MODES:
      raise ValueError(f"unknown DEQ gradient mode {self.grad!r}; choose from {list(GRAD_MODES)}")
    if self.grad == "phantom":
      if int(self.phantom_steps) != self.phantom_steps or self.phantom_steps < 1:
        raise ValueError(f"phantom_steps must be a positive integer, got {self.phantom_steps!r}")
      if not 0.0 < self.phantom_damping <= 1.0:
        raise ValueError(f"phantom_damping must be in (0, 1], got {self.phantom_damping!r}")

  def solver_options(self, backward: bool = False) -> dict[str, Any]:
    """Keyword arguments of the forward (or backward) solver call."""
    name = self.backward_solver if backward else self.solver
    options: dict[str, Any] = dict(
        max_iter=self.backward_max_iter if backward else self.max_iter,
        tol=self.backward_tol if backward else self.tol,
        rtol=self.backward_rtol if backward else self.rtol)
    if not backward:
      options["trace_len"] = self.trace_len
    if name == "fixed_point":
      options["damping"] = self.damping
    elif name == "anderson":
      options.update(memory=self.memory, beta=self.damping, lam=self.lam)
    else:
      options.update(memory=self.memory, safe_growth=self.safe_growth)
    return options


def _forward_solve(f: DEQMap, config: DEQConfig, params, z0, inputs, aux):
  return solvers_lib.solve(lambda z: f(params, z, inputs, aux), z0, config.solver,
                           **config.solver_options())


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _deq_implicit(f: DEQMap, config: DEQConfig, params, z0, inputs, aux, probe):
  del probe  # only its cotangent matters
  return _forward_solve(f, config, params, z0, inputs, aux)


def _deq_implicit_fwd(f, config, params, z0, inputs, aux, probe):
  z, stats = _forward_solve(f, config, params, z0, inputs, aux)
  # Residuals: the fixed point and what f needs; nothing from the solver's iterations.
  return (z, stats), (z, params, inputs, aux, probe)


def _deq_implicit_bwd(f, config, residuals, cotangents):
  z, params, inputs, aux, probe = residuals
  gbar, _ = cotangents  # the statistics are not differentiable
  gbar = jax.tree.map(lambda g, like: jnp.zeros_like(like) if g is None else g, gbar, z,
                      is_leaf=lambda x: x is None)
  _, vjp_z = jax.vjp(lambda z_: f(params, z_, inputs, aux), z)

  def adjoint_map(u):  # u -> gbar + u J
    (u_j,) = vjp_z(u)
    return jax.tree.map(jnp.add, gbar, u_j)

  u, bstats = solvers_lib.solve(adjoint_map, gbar, config.backward_solver,
                                **config.solver_options(backward=True))
  _, vjp_all = jax.vjp(lambda p_, i_: f(p_, z, i_, aux), params, inputs)
  g_params, g_inputs = vjp_all(u)
  probe_ct = None
  if probe is not None:
    probe_ct = jnp.stack([bstats.n_steps.astype(probe.dtype), bstats.residual.astype(probe.dtype),
                          bstats.converged.astype(probe.dtype)])
  # z* does not depend on the initial guess (z0 has z's structure and dtypes).
  return g_params, jax.tree.map(jnp.zeros_like, z), g_inputs, None, probe_ct


_deq_implicit.defvjp(_deq_implicit_fwd, _deq_implicit_bwd)


def _deq_phantom(f: DEQMap, config: DEQConfig, params, z0, inputs, aux):
  stop = lax.stop_gradient
  z, stats = _forward_solve(f, config, stop(params), stop(z0), stop(inputs), aux)
  lam = config.phantom_damping

  def body(_, z):
    fz = f(params, z, inputs, aux)
    return jax.tree.map(lambda a, b: (1.0 - lam) * a + lam * b, z, fz)

  z = lax.fori_loop(0, int(config.phantom_steps), body, stop(z))
  return z, stats


def _same_dtype_map(f: DEQMap, params, z, inputs, aux):
  # The state keeps its dtype: a map that promotes (float32 state, float64 constants) would
  # otherwise change the solver's carry type and the adjoint's cotangent type.
  return jax.tree.map(lambda out, like: out.astype(like.dtype), f(params, z, inputs, aux), z)


def deq_fixed_point(f: DEQMap, params: PyTree, z0: PyTree, inputs: PyTree, aux: Any = None,
                    config: DEQConfig = DEQConfig(), backward_probe: Array | None = None
                    ) -> tuple[PyTree, solvers_lib.SolverStats]:
  """Solves z* = f(params, z*, inputs, aux), differentiable in params and inputs.

  Args:
    f: the DEQ map (module docstring); a static callable.
    params: pytree of float arrays (weights).
    z0: initial state (the gradient with respect to it is zero).
    inputs: pytree of float arrays that enter f and receive cotangents (may be None).
    aux: non-differentiable pytree (graph, dropout mask, ...); may hold int arrays.
    config: solver and gradient settings.
    backward_probe: optional float [3] array (e.g. `jnp.zeros(3)`); in 'implicit' mode its
      cotangent is the adjoint solve's (n_steps, residual, converged), so
      `jax.grad(loss, argnums=...)` with respect to it reads the backward statistics. Under
      vmap with an unbatched probe the cotangent is summed over the batch.

  Returns:
    (z*, stats): the fixed point (structure of z0) and the forward `SolverStats`.
  """
  config.validate()
  f = functools.partial(_same_dtype_map, f)
  if config.grad == "implicit":
    return _deq_implicit(f, config, params, z0, inputs, aux, backward_probe)
  return _deq_phantom(f, config, params, z0, inputs, aux)
