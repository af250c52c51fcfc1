"""Grouped reversible stacks (gnnjax.deep.reversible), the GEN block and the RevGNN/ResGNN models.

The reference for every gradient is plain autodiff through an unrolled, independently written
version of the coupling formula (X'_0 = sum_{i>=2} X_i; X'_i = X_i + f_i(X'_{i-1})) with one
shared dropout mask drawn as documented.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gnnjax import batching
from gnnjax.data import dataset as ds
from gnnjax.deep import blocks
from gnnjax.deep import reversible as rv
from gnnjax.models import revgnn

N_REAL, E_REAL, EDGE_DIM = 37, 160, 3


@pytest.fixture(scope="module")
def graph():
  rng = np.random.default_rng(0)
  senders = rng.integers(0, N_REAL, E_REAL)
  receivers = rng.integers(0, N_REAL, E_REAL)
  receivers[:5] = 3  # a node with several in-edges; some nodes have none
  g = ds.make_graph(senders, receivers, N_REAL,
                    {"x": rng.standard_normal((N_REAL, 5)).astype(np.float32),
                     "y": rng.integers(0, 2, (N_REAL, 4)).astype(np.float32)},
                    {"x": rng.standard_normal((E_REAL, EDGE_DIM)).astype(np.float32)})
  return jax.tree.map(jnp.asarray, batching.pad_single_graph(g))


def _inputs(graph, width, edge_width, dtype, seed=1):
  rng = np.random.default_rng(seed)
  n, e = graph.nodes["x"].shape[0], graph.senders.shape[0]
  x = jnp.asarray(rng.standard_normal((n, width)), dtype)
  emb = jnp.asarray(rng.standard_normal((e, edge_width)), dtype)
  weights = jnp.asarray(rng.standard_normal((n, width)), dtype)
  return x, emb, weights


def _reference_stack(f, params, x, shared, graph, key, rate, groups, layers, tied):
  """Unrolled formula with stored activations: the independent reference."""
  mask = None
  if key is not None and rate > 0:
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    mask = jnp.where(keep, 1.0 / (1.0 - rate), 0.0).astype(x.dtype)
  for layer in range(layers):
    p = params if tied else jax.tree.map(lambda a: a[layer], params)
    xs = jnp.split(x, groups, axis=-1)
    ms = jnp.split(mask, groups, axis=-1) if mask is not None else [None] * groups
    prev = sum(xs[1:])
    outs = []
    for i in range(groups):
      prev = xs[i] + f(jax.tree.map(lambda a: a[i], p), prev, shared, graph, ms[i])
      outs.append(prev)
    x = jnp.concatenate(outs, axis=-1)
  return x


def _rel_err(a, b) -> float:
  errs = [float(jnp.max(jnp.abs(u - v)) / jnp.maximum(jnp.max(jnp.abs(v)), 1e-30))
          for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  return max(errs)


def _toy_block(params, x, shared, graph, mask):
  """A cheap message-passing f, fast to compile: tanh(sum_j tanh(x_j W + e_ij E) V) * mask."""
  messages = jnp.tanh(x[graph.senders] @ params["w"] + shared @ params["e"])
  agg = jax.ops.segment_sum(messages, graph.receivers, num_segments=x.shape[0])
  return jnp.tanh(agg @ params["v"]) * (1.0 if mask is None else mask)


def _toy_params(lead, d, hidden, scale=0.5, seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"w": (d, d), "e": (hidden, d), "v": (d, d)}
  return {k: jnp.asarray(scale * rng.standard_normal(lead + s), jnp.float32)
          for k, s in shapes.items()}


def _compare(graph, *, groups, layers, tied, rate, dtype, block="gen"):
  d, hidden = 4, 8
  width = d * groups
  lead = (groups,) if tied else (layers, groups)
  if block == "gen":
    module = blocks.GENBlock(d)
    params = blocks.init_stacked(module, jax.random.key(3), lead, d, hidden)
    f = blocks.block_fn(module)
  else:
    params, f = _toy_params(lead, d, hidden), _toy_block
  params = jax.tree.map(lambda a: a.astype(dtype), params)
  x, emb, weights = _inputs(graph, width, hidden, dtype)
  key = jax.random.key(7)

  def loss_rev(p, x, emb):
    y = rv.reversible_stack(f, p, x, emb, graph, key, num_groups=groups, num_layers=layers,
                            dropout=rate, weight_tied=tied)
    return jnp.sum(y * weights)

  def loss_ref(p, x, emb):
    y = _reference_stack(f, p, x, emb, graph, key, rate, groups, layers, tied)
    return jnp.sum(y * weights)

  rev = jax.jit(jax.value_and_grad(loss_rev, argnums=(0, 1, 2)))(params, x, emb)
  ref = jax.jit(jax.value_and_grad(loss_ref, argnums=(0, 1, 2)))(params, x, emb)
  assert rev[0].dtype == dtype
  # Every input receives a gradient (none is silently dropped by the custom VJP).
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(rev[1]))
  return _rel_err(rev[0], ref[0]), _rel_err(rev[1], ref[1])


# The toy block (cheap to compile) for most stack variants; GEN blocks in float64 below and, in
# float32, through the RevGNN model test.
@pytest.mark.parametrize("groups,tied", [(3, False), (2, True)])
def test_gradients_match_stored_activations_float32(graph, groups, tied):
  value_err, grad_err = _compare(graph, groups=groups, layers=3, tied=tied, rate=0.3,
                                 dtype=jnp.float32, block="toy")
  assert value_err < 1e-5
  assert grad_err < 1e-4


@pytest.mark.parametrize("groups,tied,block", [(2, False, "gen"), (3, True, "toy")])
def test_gradients_match_stored_activations_float64(graph, groups, tied, block):
  with jax.enable_x64(True):
    value_err, grad_err = _compare(graph, groups=groups, layers=2, tied=tied, rate=0.3,
                                   dtype=jnp.float64, block=block)
  assert value_err < 1e-12
  assert grad_err < 1e-10


def test_reconstruction_after_100_blocks_float32(graph):
  layers, groups, width, hidden = 100, 2, 8, 8
  block = blocks.GENBlock(width // groups)
  params = blocks.init_stacked(block, jax.random.key(0), (layers, groups), width // groups, hidden)
  x, emb, _ = _inputs(graph, width, hidden, jnp.float32)
  f = blocks.block_fn(block)
  kwargs = dict(num_groups=groups, dropout=0.1)
  key = jax.random.key(2)
  run = jax.jit(lambda p, x, e: rv.reversible_stack(f, p, x, e, graph, key, **kwargs))
  y = run(params, x, emb)
  recovered = jax.jit(lambda p, y, e: rv.invert_stack(f, p, y, e, graph, key, **kwargs))(
      params, y, emb)
  assert float(jnp.linalg.norm(y - x) / jnp.linalg.norm(x)) > 0.5  # the blocks did something
  rel = float(jnp.linalg.norm(recovered - x) / jnp.linalg.norm(x))
  assert rel < 1e-4
  assert float(jnp.max(jnp.abs(recovered - x))) < 1e-3


def test_one_block_inverse_float64(graph):
  with jax.enable_x64(True):
    block = blocks.GENBlock(4)
    params = blocks.init_stacked(block, jax.random.key(0), (4,), 4, 8)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x, emb, _ = _inputs(graph, 16, 8, jnp.float64)
    f = blocks.block_fn(block)

    @jax.jit
    def round_trip(params, x, emb):
      y = rv.coupling_forward(f, 4, params, x, emb, graph, None)
      return y, rv.coupling_inverse(f, 4, params, y, emb, graph, None)

    y, back = round_trip(params, x, emb)
    assert float(jnp.max(jnp.abs(y - x))) > 0.1
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-12)


def test_bad_groups_and_params_raise(graph):
  block = blocks.GENBlock(4)
  f = blocks.block_fn(block)
  params = blocks.init_stacked(block, jax.random.key(0), (2, 2), 4, 8)
  x, emb, _ = _inputs(graph, 8, 8, jnp.float32)
  with pytest.raises(ValueError, match="num_groups >= 2"):
    rv.reversible_stack(f, params, x, emb, graph, num_groups=1)
  with pytest.raises(ValueError, match="not divisible by num_groups=3"):
    rv.reversible_stack(f, params, x, emb, graph, num_groups=3)
  with pytest.raises(ValueError, match=r"leading axes \[L, C, ...\] with C=4"):
    rv.reversible_stack(f, params, x, emb, graph, num_groups=4)
  with pytest.raises(ValueError, match="weight_tied needs num_layers"):
    rv.reversible_stack(f, jax.tree.map(lambda a: a[0], params), x, emb, graph, num_groups=2,
                        weight_tied=True)
  with pytest.raises(ValueError, match="must be float32 or float64, got bfloat16"):
    rv.reversible_stack(f, params, x.astype(jnp.bfloat16), emb, graph, num_groups=2)
  with pytest.raises(ValueError, match="dropout must be in"):
    rv.reversible_stack(f, params, x, emb, graph, num_groups=2, dropout=1.0)
  with pytest.raises(ValueError, match="groups >= 2"):
    revgnn.RevGNN(2, hidden=8, groups=1)
  with pytest.raises(ValueError, match="not divisible by groups=3"):
    revgnn.RevGNN(2, hidden=8, groups=3)
  with pytest.raises(ValueError, match="unknown aggregation 'median'"):
    revgnn.RevGNN(2, hidden=8, aggregation="median")


def test_compiled_memory_is_flat_in_depth():
  rng = np.random.default_rng(0)
  n, e, width, hidden = 1000, 8000, 16, 8
  graph = ds.make_graph(rng.integers(0, n, e), rng.integers(0, n, e), n,
                        {"x": np.zeros((n, 1), np.float32)})
  graph = jax.tree.map(jnp.asarray, batching.pad_single_graph(graph))
  x, emb, _ = _inputs(graph, width, hidden, jnp.float32)
  temp = {}
  for layers in (4, 32):
    params = {"w": jnp.full((layers, 2, 8, 8), 0.1), "e": jnp.full((layers, 2, hidden, 8), 0.1),
              "v": jnp.full((layers, 2, 8, 8), 0.1)}
    for reversible in (True, False):
      def loss(p, x, emb):
        y = rv.reversible_stack(_toy_block, p, x, emb, graph, num_groups=2,
                                reversible=reversible)
        return jnp.sum(y * y)
      compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(params, x, emb).compile()
      stats = compiled.memory_analysis()
      if stats is None:
        pytest.skip("memory_analysis unavailable on this backend")
      temp[layers, reversible] = stats.temp_size_in_bytes
  assert temp[32, True] <= 1.3 * temp[4, True], temp
  # Stored activations grow with depth: > 4x of the 8x more layers, and far above reversible.
  assert temp[32, False] >= 4 * temp[4, False], temp
  assert temp[32, False] >= 4 * temp[32, True], temp


def _model_grads(model, params, graph, key):
  def loss(p):
    out = model.apply(p, graph, train=True, key=key)
    return jnp.sum(jnp.where(graph.nodes["y"] > 0, out, -out))
  return jax.jit(jax.value_and_grad(loss))(params)


def test_revgnn_matches_stored_activation_model(graph):
  kwargs = dict(num_outputs=4, hidden=8, num_layers=3, edge_dim=EDGE_DIM, dropout=0.2,
                aggregation="mean")
  model = revgnn.RevGNN(**kwargs)
  params = model.init(jax.random.key(0), graph)
  rev = _model_grads(model, params, graph, jax.random.key(1))
  # Reference: stored activations and the [E, H] edge embedding materialised (not fused).
  plain = revgnn.RevGNN(reversible=False, fuse_edge_encoders=False, **kwargs)
  ref = _model_grads(plain, params, graph, jax.random.key(1))
  assert _rel_err(rev, ref) < 1e-4
  # Every parameter, the shared edge encoder included, receives gradient.
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(rev[1]))
  # Evaluation is deterministic (no mask) and needs no key.
  evaluate = jax.jit(model.apply)
  np.testing.assert_array_equal(evaluate(params, graph),
                                evaluate(params, graph, key=jax.random.key(5)))


def test_revgnn_parameter_count(graph):
  """Per layer C((C+4)d^2 + 10d) with d = H/C (the RevGNN repo's GENBlock), + encoders/head."""
  h, c, layers, f_in, k = 12, 3, 5, 5, 4
  d = h // c
  params = revgnn.RevGNN(k, hidden=h, groups=c, num_layers=layers, edge_dim=EDGE_DIM).init(
      jax.random.key(0), graph)
  count = sum(a.size for a in jax.tree.leaves(params))
  encoders = (f_in * h + h) + (EDGE_DIM * h + h) + 2 * h + (h * k + k)
  assert count == layers * c * ((c + 4) * d * d + 10 * d) + encoders
  tied = revgnn.RevGNN(k, hidden=h, groups=c, num_layers=layers, edge_dim=EDGE_DIM,
                       weight_tied=True).init(jax.random.key(0), graph)
  assert sum(a.size for a in jax.tree.leaves(tied)) == c * ((c + 4) * d * d + 10 * d) + encoders


def test_resgnn_scan_matches_unrolled_and_res_plus_order(graph):
  kwargs = dict(num_outputs=4, hidden=8, num_layers=2, edge_dim=EDGE_DIM, dropout=0.2)
  scanned, unrolled = revgnn.ResGNN(**kwargs), revgnn.ResGNN(scan=False, **kwargs)
  params = scanned.init(jax.random.key(0), graph)
  key = jax.random.key(1)
  train = lambda m: jax.jit(lambda p, k: m.apply(p, graph, True, k))(params, key)
  np.testing.assert_allclose(train(scanned), train(unrolled), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(scanned.apply)(params, graph), _res_plus(params, graph),
                             rtol=1e-5, atol=1e-5)


@jax.jit
def _res_plus(params, graph):
  """res+ by hand (evaluation): h = conv_0(enc(x)); h += block_l(h); head."""
  x, ex = graph.nodes["x"], graph.edges["x"]
  dense = lambda p, v: v @ p["kernel"] + p["bias"]
  h, e = dense(params["node_encoder"], x), dense(params["edge_encoder"], ex)
  h = blocks.GENBlock(8, pre_activation=False).apply({"params": params["first"]}, h, graph, e)
  for l in range(params["blocks"]["norm"]["scale"].shape[0]):
    p = jax.tree.map(lambda a, l=l: a[l], params["blocks"])
    h = h + blocks.GENBlock(8).apply({"params": p}, h, graph, e)
  mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
  h = (h - mu) / jnp.sqrt(var + 1e-5) * params["head_norm"]["scale"] + params["head_norm"]["bias"]
  return dense(params["head"], jax.nn.relu(h))
