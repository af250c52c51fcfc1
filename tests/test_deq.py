"""Tests for the fixed-point solvers, the implicit DEQ layer and the DEQ-GNN.

References: dense NumPy solves of linear contractions, (I - J)^-1 gradients of the implicit
function theorem written out densely in float64, autodiff through long unrolled iterations of
the same map, and finite differences (`check_grads`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from gnnjax import batching
from gnnjax import graph as graph_lib
from gnnjax.data.dataset import make_graph
from gnnjax.deep import deq
from gnnjax.deep import solvers
from gnnjax.models import deqgnn

SOLVER_OPTIONS = {"fixed_point": {}, "anderson": {"memory": 5}, "broyden": {"memory": 10}}


def _linear_problem(n: int, rho: float, seed: int = 0, symmetric: bool = True):
  """A, b with spectral radius rho; the fixed point of z = A z + b is (I - A)^-1 b."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, n))
  if symmetric:
    a = (a + a.T) / 2
  a = a / np.abs(np.linalg.eigvals(a)).max() * rho
  return a, rng.normal(size=n)


def _graph(seed: int = 0, n: int = 9, e: int = 20, undirected: bool = True,
           node_dim: int = 3, edge_dim: int = 2, tasks: int = 2) -> jraph.GraphsTuple:
  """A padded random graph (self-loops and multi-edges allowed) with node/edge features."""
  rng = np.random.default_rng(seed)
  s, r = rng.integers(0, n - 1, e), rng.integers(0, n - 1, e)  # node n-1 isolated
  nodes = {"x": rng.normal(size=(n, node_dim)).astype(np.float32),
           "y": (rng.random((n, tasks)) < 0.4).astype(np.float32)}
  g = make_graph(s, r, n, nodes, {"x": rng.normal(size=(e, edge_dim)).astype(np.float32)})
  if undirected:
    g = graph_lib.to_undirected(g)
  return jax.tree.map(jnp.asarray, batching.pad_single_graph(g, edge_multiple=16))


def _to64(tree, dtype=jnp.float64):
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                      else a, tree)


# ------------------------------------------------------------------------------------------------
# Solvers.


@pytest.mark.parametrize("name", solvers.SOLVERS)
def test_solvers_find_the_fixed_point_of_a_linear_contraction(name):
  with jax.enable_x64(True):
    a, b = _linear_problem(30, 0.8, symmetric=False)
    expected = np.linalg.solve(np.eye(30) - a, b)
    # A pytree state: the vector split into a dict of two leaves.
    def f(z):
      v = jnp.concatenate([z["p"], z["q"].ravel()])
      out = jnp.asarray(a) @ v + b
      return {"p": out[:10], "q": out[10:].reshape(4, 5)}
    z0 = {"p": jnp.zeros(10), "q": jnp.zeros((4, 5))}
    z, stats = jax.jit(lambda z0: solvers.solve(f, z0, name, max_iter=500, tol=1e-11, rtol=0.0,
                                                **SOLVER_OPTIONS[name]))(z0)
    got = np.concatenate([z["p"], np.ravel(z["q"])])
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert bool(stats.converged) and 0 < int(stats.n_steps) < 500
    # The reported residual is the true one at the returned state (independent recomputation).
    np.testing.assert_allclose(stats.residual, np.linalg.norm(a @ got + b - got), rtol=1e-3)
    assert float(stats.residual) <= 1e-11


def test_acceleration_beats_plain_iteration_on_a_slow_contraction():
  with jax.enable_x64(True):
    a, b = _linear_problem(40, 0.97, seed=1)
    f = lambda z: jnp.asarray(a) @ z + b  # noqa: E731
    steps = {}
    for name in solvers.SOLVERS:
      _, stats = solvers.solve(f, jnp.zeros(40), name, max_iter=2000, rtol=1e-8,
                               **SOLVER_OPTIONS[name])
      assert bool(stats.converged)
      steps[name] = int(stats.n_steps)
    # Plain iteration needs ~log(1e-8)/log(0.97) ~ 600 steps.
    assert steps["fixed_point"] > 400
    assert steps["anderson"] < steps["fixed_point"] / 3
    assert steps["broyden"] < steps["fixed_point"] / 3


@pytest.mark.parametrize("name", solvers.SOLVERS)
def test_stats_report_non_convergence_and_the_trace(name):
  with jax.enable_x64(True):
    a, b = _linear_problem(20, 0.95, seed=2)
    f = lambda z: jnp.asarray(a) @ z + b  # noqa: E731
    z, stats = solvers.solve(f, jnp.zeros(20), name, max_iter=3, rtol=1e-10, trace_len=6,
                             **SOLVER_OPTIONS[name])
    assert int(stats.n_steps) == 3 and not bool(stats.converged)
    trace = np.asarray(stats.trace)
    np.testing.assert_allclose(trace[0], np.linalg.norm(b))  # z0 = 0: residual ||b||
    assert np.all(np.isfinite(trace[:4])) and np.all(np.isnan(trace[4:]))
    # The returned state is the lowest-residual iterate, and its residual is reported.
    np.testing.assert_allclose(stats.residual, trace[:4].min())
    np.testing.assert_allclose(stats.residual, np.linalg.norm(a @ z + b - z), rtol=1e-10)
    # Converged starting point: no update at all.
    zs = np.linalg.solve(np.eye(20) - a, b)
    _, stats = solvers.solve(f, jnp.asarray(zs), name, max_iter=50, tol=1e-8, rtol=0.0,
                             **SOLVER_OPTIONS[name])
    assert int(stats.n_steps) == 0 and bool(stats.converged)


def test_stopping_rule_is_absolute_plus_relative():
  with jax.enable_x64(True):
    f = lambda z: 0.5 * z + 1.0  # noqa: E731  fixed point 2; residual halves each step
    for tol, rtol in [(1e-3, 0.0), (0.0, 1e-3), (1e-4, 1e-4)]:
      z, stats = solvers.fixed_point_iteration(f, jnp.zeros(4), max_iter=100, tol=tol, rtol=rtol,
                                               trace_len=101)
      trace = np.asarray(stats.trace)
      k = int(stats.n_steps)
      fz = 0.5 * np.asarray(z) + 1.0
      assert trace[k] <= tol + rtol * np.linalg.norm(fz)
      # One step earlier it was not converged: the rule stopped at the first converged iterate.
      z_prev = 2.0 - (2.0 - np.asarray(z)) * 2.0
      assert trace[k - 1] > tol + rtol * np.linalg.norm(0.5 * z_prev + 1.0)


def test_solvers_vmap_keep_per_example_statistics():
  with jax.enable_x64(True):
    a, _ = _linear_problem(15, 0.9, seed=3)
    bs = np.stack([np.zeros(15), np.ones(15), 10 * np.ones(15)])
    for name in solvers.SOLVERS:
      run = lambda b, name=name: solvers.solve(  # noqa: E731
          lambda z: jnp.tanh(jnp.asarray(a) @ z + b), jnp.zeros(15), name, max_iter=200,
          tol=1e-9, rtol=0.0, **SOLVER_OPTIONS[name])
      zb, sb = jax.jit(jax.vmap(run))(jnp.asarray(bs))
      single = jax.jit(run)
      for i, b in enumerate(bs):
        z, s = single(jnp.asarray(b))
        np.testing.assert_allclose(zb[i], z, atol=1e-12)
        assert int(sb.n_steps[i]) == int(s.n_steps) and bool(sb.converged[i])
      assert int(sb.n_steps[0]) == 0  # b = 0: z0 = 0 is the fixed point


def test_broyden_safe_step_rescues_a_bad_secant_step():
  # Scalar map with several fixed points where the raw Broyden steps wander off.
  with jax.enable_x64(True):
    a, w, c, d = 2.18433359, 1.29504347, 1.26527918, -0.07136041
    f = lambda z: c + a * jnp.sin(w * z) + d * z  # noqa: E731
    z, safe = solvers.broyden(f, jnp.zeros(1), max_iter=60, rtol=1e-10, safe_growth=2.0)
    assert bool(safe.converged) and int(safe.n_steps) < 30
    np.testing.assert_allclose(f(z), z, atol=1e-9)
    _, raw = solvers.broyden(f, jnp.zeros(1), max_iter=60, rtol=1e-10, safe_growth=1e300)
    assert not bool(raw.converged)


def test_solver_arguments_are_checked():
  f = lambda z: 0.5 * z  # noqa: E731
  with pytest.raises(ValueError, match="unknown fixed-point solver 'newton'"):
    solvers.solve(f, jnp.zeros(2), "newton")
  with pytest.raises(ValueError, match="max_iter"):
    solvers.anderson(f, jnp.zeros(2), max_iter=-1)
  with pytest.raises(ValueError, match="memory"):
    solvers.broyden(f, jnp.zeros(2), memory=0)
  with pytest.raises(ValueError, match="floating point"):
    solvers.fixed_point_iteration(f, jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match="structure of z"):
    solvers.fixed_point_iteration(lambda z: (z, z), jnp.zeros(2))
  with pytest.raises(ValueError, match="unknown DEQ gradient mode"):
    deq.deq_fixed_point(lambda p, z, i, a: z, None, jnp.zeros(2), None,
                        config=deq.DEQConfig(grad="unrolled"))


# ------------------------------------------------------------------------------------------------
# The implicit DEQ layer.


def _tanh_problem(seed: int = 0, n: int = 5, d: int = 3, din: int = 2):
  """f(z) = tanh(A z[perm] W + X U + b): a small GNN-like map with an int aux leaf."""
  rng = np.random.default_rng(seed)
  adj = rng.random((n, n)) * (rng.random((n, n)) < 0.5)
  adj = adj / np.linalg.norm(adj, 2)
  w = rng.normal(size=(d, d))
  params = {"w": 0.8 * w / np.linalg.norm(w, 2), "b": rng.normal(size=d)}
  inputs = {"x": rng.normal(size=(n, din)), "u": rng.normal(size=(din, d))}
  aux = {"adj": adj, "perm": rng.permutation(n).astype(np.int32)}
  cot = rng.normal(size=(n, d))

  def f(params, z, inputs, aux):
    return jnp.tanh(aux["adj"] @ z[aux["perm"]] @ params["w"] + inputs["x"] @ inputs["u"]
                    + params["b"])

  return f, params, inputs, aux, cot


def _dense_ift_gradients(params, inputs, aux, cot):
  """float64 NumPy: z* by iteration, then u = c (I - J)^-1 with J written out densely."""
  a = aux["adj"] @ np.eye(len(aux["perm"]))[aux["perm"]]  # A P, (P z)_k = z[perm[k]]
  w, b, x, u_mat = params["w"], params["b"], inputs["x"], inputs["u"]
  n, d = x.shape[0], w.shape[0]
  z = np.zeros((n, d))
  for _ in range(2000):
    z = np.tanh(a @ z @ w + x @ u_mat + b)
  s = 1.0 - np.tanh(a @ z @ w + x @ u_mat + b) ** 2
  # vec_row(A Z W) = (A kron W^T) vec_row(Z); J = diag(vec s) (A kron W^T).
  jac = s.reshape(-1)[:, None] * np.kron(a, w.T)
  u = np.linalg.solve((np.eye(n * d) - jac).T, cot.reshape(-1)).reshape(n, d)
  ga = u * s  # cotangent of the pre-activation
  return z, {"w": (a @ z).T @ ga, "b": ga.sum(0)}, {"x": ga @ u_mat.T, "u": x.T @ ga}


TIGHT = deq.DEQConfig(max_iter=200, tol=1e-13, rtol=0.0, backward_max_iter=200,
                      backward_tol=1e-13, backward_rtol=0.0)


@pytest.mark.parametrize("name", solvers.SOLVERS)
def test_implicit_gradient_matches_the_dense_implicit_function_theorem(name):
  with jax.enable_x64(True):
    f, params, inputs, aux, cot = _tanh_problem()
    z_ref, gp_ref, gi_ref = _dense_ift_gradients(params, inputs, aux, cot)
    config = deq.DEQConfig(**{**TIGHT.__dict__, "solver": name, "backward_solver": name})

    def loss(params, inputs):
      z, _ = deq.deq_fixed_point(f, params, jnp.zeros_like(z_ref), inputs, aux, config)
      return jnp.sum(z * cot), z

    (_, z), (gp, gi) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        _to64(params), _to64(inputs))
    np.testing.assert_allclose(z, z_ref, atol=1e-11)
    for got, want in [(gp, gp_ref), (gi, gi_ref)]:
      for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-8, atol=1e-10)


def test_implicit_gradient_passes_finite_differences():
  with jax.enable_x64(True):
    f, params, inputs, aux, cot = _tanh_problem(seed=1)

    def loss(params, inputs):
      z, _ = deq.deq_fixed_point(f, params, jnp.zeros((5, 3)), inputs, aux, TIGHT)
      return jnp.sum(z * cot) + jnp.sum(z ** 2)

    check_grads(jax.jit(loss), (_to64(params), _to64(inputs)), order=1, modes=["rev"], eps=1e-6)


def test_phantom_gradient_approximates_and_converges_to_the_implicit_one():
  with jax.enable_x64(True):
    f, params, inputs, aux, cot = _tanh_problem(seed=2)
    _, gp_ref, _ = _dense_ift_gradients(params, inputs, aux, cot)
    ref = np.concatenate([np.ravel(gp_ref["b"]), np.ravel(gp_ref["w"])])

    def grad_w_b(config):
      loss = lambda p: jnp.sum(  # noqa: E731
          deq.deq_fixed_point(f, p, jnp.zeros((5, 3)), _to64(inputs), aux, config)[0] * cot)
      g = jax.grad(loss)(_to64(params))
      return np.concatenate([np.ravel(g["b"]), np.ravel(g["w"])])

    rel = lambda g: np.linalg.norm(g - ref) / np.linalg.norm(ref)  # noqa: E731
    base = {**TIGHT.__dict__, "grad": "phantom"}
    few = grad_w_b(deq.DEQConfig(**{**base, "phantom_steps": 5, "phantom_damping": 0.5}))
    assert rel(few) < 0.3 and np.dot(few, ref) / np.linalg.norm(few) / np.linalg.norm(ref) > 0.95
    many = grad_w_b(deq.DEQConfig(**{**base, "phantom_steps": 200, "phantom_damping": 0.5}))
    assert rel(many) < 1e-9


def test_backward_probe_reports_the_adjoint_solve():
  with jax.enable_x64(True):
    f, params, inputs, aux, cot = _tanh_problem(seed=3)
    capped = deq.DEQConfig(**{**TIGHT.__dict__, "backward_max_iter": 2})
    for config, converged in [(TIGHT, True), (capped, False)]:
      def loss(params, probe, config=config):
        z, _ = deq.deq_fixed_point(f, params, jnp.zeros((5, 3)), _to64(inputs), aux, config,
                                   backward_probe=probe)
        return jnp.sum(z * cot)
      probe = jax.grad(loss, argnums=1)(_to64(params), jnp.zeros(3))
      assert bool(probe[2]) == converged
      assert 1 <= probe[0] <= config.backward_max_iter
      assert (probe[1] <= 1e-13) == converged


def test_implicit_gradient_under_vmap_with_batched_int_aux():
  with jax.enable_x64(True):
    f, params, inputs, _, cot = _tanh_problem(seed=4)
    problems = [_tanh_problem(seed=s) for s in (5, 6)]
    auxes = [p[3] for p in problems]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *auxes)

    def grad_params(params, aux):
      loss = lambda p: jnp.sum(  # noqa: E731
          deq.deq_fixed_point(f, p, jnp.zeros((5, 3)), _to64(inputs), aux, TIGHT)[0] * cot)
      return jax.grad(loss)(params)

    batched = jax.jit(jax.vmap(grad_params, in_axes=(None, 0)))(_to64(params), stacked)
    for i, aux in enumerate(auxes):
      _, want, _ = _dense_ift_gradients(params, inputs, aux, cot)
      for k in want:
        np.testing.assert_allclose(batched[k][i], want[k], rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# DEQ maps for GNNs and the model.


def _map_setup(kind: str, graph, seed: int = 0, d: int = 4, dropout: float = 0.0,
               dtype=jnp.float64):
  module = (deqgnn.GCNDEQMap(d) if kind == "gcn"
            else deqgnn.GENDEQMap(d, aggregation="softmax", learn_t=True))
  rng = np.random.default_rng(seed)
  n, e = graph.nodes["x"].shape[0], graph.senders.shape[0]
  inputs = {"x": jnp.asarray(rng.normal(size=(n, d)))}
  if kind == "gen":
    inputs["edges"] = jnp.asarray(rng.normal(size=(e, d)))
  mask = None
  if dropout:
    mask = jnp.asarray((rng.random((n, d)) > dropout) / (1 - dropout))
  aux = deqgnn.map_aux(graph, kind, mask)
  params = _to64(module.init(jax.random.key(seed), jnp.zeros((n, d)), inputs, aux)["params"],
                 dtype)
  if kind == "gcn":
    params = {"kernel": deqgnn.spectral_contraction(params["kernel"], 0.8)}
  else:  # contractive-ish, as the model's init_scale
    params["conv"]["mlp_lin_1"]["kernel"] = 0.3 * params["conv"]["mlp_lin_1"]["kernel"]
  f = functools.partial(deqgnn._apply_map, module)
  return (f, params, _to64(inputs, dtype), _to64(aux, dtype),
          jnp.asarray(rng.normal(size=(n, d)), dtype))


@pytest.mark.parametrize("kind,dropout", [("gcn", 0.0), ("gen", 0.3)])
def test_gnn_map_gradients_match_autodiff_through_unrolled_iteration(kind, dropout):
  with jax.enable_x64(True):
    graph = _graph(seed=1)
    f, params, inputs, aux, cot = _map_setup(kind, graph, dropout=dropout)
    n_real = int(graph.n_node[0])
    z0 = jnp.zeros_like(cot)
    cot = cot.at[n_real:].set(0.0)

    def loss_deq(params, inputs):
      z, stats = deq.deq_fixed_point(f, params, z0, inputs, aux, TIGHT)
      return jnp.sum(z * cot), stats

    def loss_unrolled(params, inputs):
      z = jax.lax.fori_loop(0, 300, lambda _, z: f(params, z, inputs, aux), z0)
      return jnp.sum(z * cot)

    (_, stats), got = jax.jit(jax.value_and_grad(loss_deq, argnums=(0, 1), has_aux=True))(
        params, inputs)
    want = jax.jit(jax.grad(loss_unrolled, argnums=(0, 1)))(params, inputs)
    assert bool(stats.converged)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-10)


def test_gcn_map_is_a_kappa_contraction_on_an_undirected_graph():
  with jax.enable_x64(True):
    graph = _graph(seed=2)
    f, params, inputs, aux, _ = _map_setup("gcn", graph)
    assert np.linalg.norm(np.asarray(params["kernel"]), 2) <= 0.8 + 1e-12
    rng = np.random.default_rng(0)
    for _ in range(5):
      a, b = (jnp.asarray(rng.normal(size=inputs["x"].shape)) for _ in range(2))
      fa, fb = f(params, a, inputs, aux), f(params, b, inputs, aux)
      assert np.linalg.norm(fa - fb) <= 0.8 * np.linalg.norm(a - b) + 1e-12
      # Padding rows are exactly zero (an exact fixed point there).
      assert np.all(np.asarray(fa)[int(graph.n_node[0]):] == 0)


@pytest.mark.parametrize("kind", ["gcn", "gen"])
def test_model_forward_jits_and_ignores_padding(kind):
  graph = _graph(seed=3)
  config = deq.DEQConfig(max_iter=40, trace_len=8)
  # Through the benchmark's functional interface: init(key, graph), apply(params, graph, ...).
  model = deqgnn.FunctionalDEQGNN(deqgnn.DEQGNN(num_outputs=2, hidden=8, deq_map=kind,
                                                config=config))
  params = model.init(jax.random.key(0), graph)
  apply = jax.jit(model.apply_with_stats)
  logits, stats = apply(params, graph)
  assert logits.shape == (graph.nodes["x"].shape[0], 2) and bool(stats.converged)
  assert stats.trace.shape == (8,) and 0 < int(stats.n_steps) <= 40
  # Huge padding features leave the real logits unchanged.
  n_real, e_real = int(graph.n_node[0]), int(graph.n_edge[0])
  noisy = graph._replace(nodes={**graph.nodes, "x": graph.nodes["x"].at[n_real:].set(1e6)},
                         edges={"x": graph.edges["x"].at[e_real:].set(1e6)})
  logits2, _ = apply(params, noisy)
  np.testing.assert_allclose(logits2[:n_real], logits[:n_real], rtol=1e-5, atol=1e-6)


def test_model_trains_with_variational_dropout():
  graph = _graph(seed=3)
  model = deqgnn.DEQGNN(num_outputs=2, hidden=8, deq_map="gen",
                        config=deq.DEQConfig(max_iter=40), dropout=0.2, head_dropout=0.1)
  params = deqgnn.init(model, jax.random.key(0), graph)
  tx = optax.adam(1e-2)
  step = deqgnn.make_train_step(model, tx)
  new, opt_state = params, tx.init(params)
  losses = []
  for i in range(12):
    new, opt_state, loss, stats = step(new, opt_state, graph, jax.random.key(i % 2))
    # One dropout mask for every iteration: the solver still converges to its tolerance.
    assert bool(stats.converged) and int(stats.n_steps) <= 40
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  # Every parameter moved, the edge encoder included (its gradient flows through the implicit
  # backward as the cotangent of the DEQ's edge input).
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, new)
  assert all(jax.tree.leaves(moved)), moved


def test_model_phantom_gradient_with_many_steps_equals_the_implicit_one():
  graph = _graph(seed=4)
  with jax.enable_x64(True):
    def grads(**changes):
      config = deq.DEQConfig(**{**TIGHT.__dict__, **changes})
      model = deqgnn.DEQGNN(num_outputs=2, hidden=4, deq_map="gcn", config=config, dropout=0.2)
      params = _to64(deqgnn.init(model, jax.random.key(1), graph))

      def loss(params):
        logits, _ = model.apply({"params": params}, _to64(graph), train=True,
                                rngs={"dropout": jax.random.key(3)})
        return jnp.sum(jnp.where(graph.nodes["y"] > 0, logits, 0.0))
      return jax.jit(jax.grad(loss))(params)

    implicit = grads()
    phantom = grads(grad="phantom", phantom_steps=150, phantom_damping=1.0)
    for a, b in zip(jax.tree.leaves(implicit), jax.tree.leaves(phantom)):
      np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


def test_model_vmaps_over_graphs_of_one_padded_shape():
  graphs = [_graph(seed=s, undirected=False) for s in (5, 6)]
  assert graphs[0].senders.shape == graphs[1].senders.shape
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *graphs)
  model = deqgnn.DEQGNN(num_outputs=2, hidden=4, deq_map="gcn",
                        config=deq.DEQConfig(rtol=1e-5, backward_rtol=1e-6, max_iter=60))
  params = deqgnn.init(model, jax.random.key(0), graphs[0])

  def loss(params, graph):
    logits, stats = model.apply({"params": params}, graph)
    return jnp.sum(logits[:5] ** 2), stats

  batched, _ = jax.jit(jax.vmap(jax.grad(loss, has_aux=True), in_axes=(None, 0)))(params, stacked)
  grad_single = jax.jit(jax.grad(loss, has_aux=True))
  for i, g in enumerate(graphs):
    single, stats = grad_single(params, g)
    assert bool(stats.converged)
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
      np.testing.assert_allclose(a[i], b, rtol=2e-4, atol=1e-6)


def _temp_bytes(fn, *args) -> int | None:
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  return None if analysis is None else int(analysis.temp_size_in_bytes)


def test_backward_memory_does_not_grow_with_max_iter():
  graph = _graph(seed=7, n=60, e=300)
  f, params, inputs, aux, cot = _map_setup("gcn", graph, d=16, dtype=jnp.float32)

  def temp_bytes(**changes):
    config = deq.DEQConfig(**{"tol": 0.0, "rtol": 0.0, **changes})
    loss = lambda p, i: jnp.sum(  # noqa: E731
        deq.deq_fixed_point(f, p, jnp.zeros_like(cot), i, aux, config)[0] * cot)
    return _temp_bytes(jax.grad(loss, argnums=(0, 1)), params, inputs)

  small, large = temp_bytes(max_iter=10), temp_bytes(max_iter=100)
  if small is None:
    pytest.skip("memory_analysis is not available on this backend")
  assert abs(large - small) <= 0.05 * small
  # The check can fail: unrolled gradients (100 phantom steps) store every step.
  assert temp_bytes(grad="phantom", phantom_steps=100) > 3 * large


def test_model_arguments_are_checked():
  graph = _graph()
  with pytest.raises(ValueError, match="unknown DEQ map 'gat'"):
    deqgnn.init(deqgnn.DEQGNN(2, deq_map="gat"), jax.random.key(0), graph)
  with pytest.raises(ValueError, match="unknown fixed-point solver"):
    deqgnn.init(deqgnn.DEQGNN(2, config=deq.DEQConfig(backward_solver="lbfgs")),
                jax.random.key(0), graph)
