"""Tests of GeneralConv and the GraphGym model against slow NumPy references."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gnnjax import batching
from gnnjax.data import dataset as ds
from gnnjax.design import budget as budget_lib
from gnnjax.design.design import Design, fit_config, optim_config
from gnnjax.design.spaces import AUTOTRANSFER, GRAPHGYM_ROUND1
from gnnjax.models import graphgym
from gnnjax.nn.general_conv import GeneralConv
from gnnjax.training import loop
from gnnjax.training import pipeline as pipeline_lib

# ----------------------------------------------------------------------------------------------
# Small graphs. Graph A has a one-way edge 3 -> 0 and an isolated node 4 (no incoming edges).

EDGES_A = [(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0), (3, 0)]
EDGES_B = [(0, 1), (1, 0), (1, 2), (2, 1)]


def _graph(edges, n, width, seed, label=0):
  rng = np.random.default_rng(seed)
  s, r = (np.array(e, np.int32) for e in zip(*edges))
  return ds.make_graph(s, r, n, {"x": rng.normal(size=(n, width)).astype(np.float32),
                                 "y": np.zeros(n, np.int32)},
                       graph_features={"y": np.array([label], np.int32)})


def _batch(width=3, budget=batching.Budget(16, 32, 4)):
  """A padded batch of graph A (5 nodes) and graph B (3 nodes), and the unpadded arrays."""
  graphs = [_graph(EDGES_A, 5, width, 0), _graph(EDGES_B, 3, width, 1)]
  packed = batching.PackedGraphs.from_graphs(graphs)
  return packed.gather([0, 1], budget), packed.gather([0, 1])


def _init(model, batch, seed=0):
  return jax.jit(model.init)(jax.random.PRNGKey(seed), batch)


@functools.lru_cache(maxsize=None)
def _jitted_forward(model, train):
  """Jitted apply in train mode (batch statistics, fixed dropout key) or eval mode; cached per
  model so that batches of one shape compile once."""
  if train:
    return jax.jit(lambda v, b: model.apply(v, b, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.PRNGKey(3)})[0])
  return jax.jit(lambda v, b: model.apply(v, b, train=False))


def _apply(model, variables, batch, train):
  return np.asarray(_jitted_forward(model, train)(variables, batch))


def _num_params(params) -> int:
  return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))


# ----------------------------------------------------------------------------------------------
# NumPy reference of GraphGym's forward pass (float64, real nodes only, explicit loops).

ACT = {
    "relu": lambda x, a: np.maximum(x, 0.0),
    "prelu": lambda x, a: np.where(x >= 0, x, a * x),
    "swish": lambda x, a: x / (1.0 + np.exp(-x)),
    "leaky_relu": lambda x, a: np.where(x >= 0, x, 0.01 * x),
    "elu": lambda x, a: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
}


def _np(tree):
  return jax.tree.map(lambda v: np.asarray(v, np.float64), tree)


def _ref_batch_norm(h, p):
  """Train-mode batch norm: biased variance over the given (real) rows."""
  return (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5) * p["scale"] + p["bias"]


def _ref_linear_layer(h, p, design):
  h = h @ p["lin"]["kernel"]
  return _ref_batch_norm(h, p["bn"]) if design.batch_norm else h + p["lin"]["bias"]


def _ref_general_conv(h, p, senders, receivers, aggregation, variant, use_bias):
  """out_v = AGG_{u -> v} W h_u (+ W_self h_v) (+ b), by looping over nodes and edges."""
  out = np.zeros((h.shape[0], p["lin"]["kernel"].shape[1]))
  for v in range(h.shape[0]):
    msgs = [h[u] @ p["lin"]["kernel"] for u, w in zip(senders, receivers) if w == v]
    if msgs:
      out[v] = {"add": np.sum, "mean": np.mean, "max": np.max}[aggregation](msgs, axis=0)
  if variant == "self":
    out = out + h @ p["lin_self"]["kernel"]
  return out + p["bias"] if use_bias else out


def _ref_conv_layer(h, p, design, senders, receivers):
  h = _ref_general_conv(h, p["conv"], senders, receivers, design.aggregation,
                        design.conv_variant, not design.batch_norm)
  return _ref_batch_norm(h, p["bn"]) if design.batch_norm else h


def reference_forward(params, design, x, senders, receivers, graph_ids, level):
  """GraphGym's model, section 2 of the brief, for a generalconv design with no dropout."""
  params = _np(params)
  act = lambda h: ACT[design.activation](h, params.get("prelu", {}).get("slope"))
  h = np.asarray(x, np.float64)
  for i in range(design.layers_pre_mp):
    h = act(_ref_linear_layer(h, params[f"pre_mp_{i}"], design))
  for i in range(design.layers_mp):
    y = _ref_conv_layer(h, params[f"mp_{i}"], design, senders, receivers)
    if design.stage_type == "stack":
      h = act(y)
    elif design.stage_type == "skipsum":
      h = act(h + y)
    else:
      h = act(np.concatenate([h, y], axis=1))
  if design.l2norm:
    h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
  if level == ds.GRAPH:
    pool = {"add": np.sum, "mean": np.mean, "max": np.max}[design.graph_pooling]
    h = np.stack([pool(h[graph_ids == g], axis=0) for g in range(graph_ids.max() + 1)])
  for i in range(design.layers_post_mp - 1):
    h = act(_ref_linear_layer(h, params[f"post_mp_{i}"], design))
  return h @ params["post_mp_out"]["kernel"] + params["post_mp_out"]["bias"]


# ----------------------------------------------------------------------------------------------
# GeneralConv


@pytest.mark.parametrize("aggregation", ["add", "mean", "max"])
@pytest.mark.parametrize("variant,use_bias", [("release", False), ("self", True)])
def test_general_conv_matches_loop_reference(aggregation, variant, use_bias):
  batch, plain = _batch(width=3)
  conv = GeneralConv(4, aggregation=aggregation, variant=variant, use_bias=use_bias)
  variables = conv.init(jax.random.PRNGKey(0), jnp.asarray(batch.nodes["x"]), batch)
  params = _np(variables["params"])
  if use_bias:
    params["bias"] = np.arange(4.0)  # a non-zero bias, so that adding it is tested
    variables = {"params": params}
  out = np.asarray(conv.apply(variables, jnp.asarray(batch.nodes["x"]), batch))
  expected = _ref_general_conv(plain.nodes["x"], params, plain.senders, plain.receivers,
                               aggregation, variant, use_bias)
  np.testing.assert_allclose(out[:8], expected, rtol=1e-5, atol=1e-6)


def test_general_conv_release_has_one_weight_and_no_self_term():
  batch, _ = _batch(width=3)
  conv = GeneralConv(4)
  variables = conv.init(jax.random.PRNGKey(0), jnp.asarray(batch.nodes["x"]), batch)
  assert jax.tree.map(np.shape, variables["params"]) == {"lin": {"kernel": (3, 4)}}
  out = np.asarray(conv.apply(variables, jnp.asarray(batch.nodes["x"]), batch))
  # Node 4 of graph A and node 3 (nothing points at it) aggregate nothing: exactly 0.
  np.testing.assert_array_equal(out[3], 0.0)
  np.testing.assert_array_equal(out[4], 0.0)


def test_general_conv_rejects_unknown_variant():
  batch, _ = _batch()
  with pytest.raises(ValueError, match="variant 'both'"):
    GeneralConv(4, variant="both").init(jax.random.PRNGKey(0), jnp.asarray(batch.nodes["x"]),
                                        batch)


# ----------------------------------------------------------------------------------------------
# The model against the NumPy reference.

REFERENCE_CASES = [
    (Design(dim_inner=6), ds.NODE),
    (Design(dim_inner=5, stage_type="skipsum", aggregation="mean", activation="prelu",
            layers_post_mp=2), ds.GRAPH),
    (Design(dim_inner=4, stage_type="skipconcat", aggregation="max", activation="swish",
            conv_variant="self", batch_norm=False, layers_pre_mp=2, layers_post_mp=3,
            graph_pooling="mean"), ds.GRAPH),
    (Design(dim_inner=4, stage_type="skipconcat", activation="prelu", layers_mp=3,
            layers_post_mp=2), ds.NODE),
    (Design(dim_inner=5, stage_type="stack", aggregation="mean", activation="elu",
            conv_variant="self", batch_norm=False, l2norm=False, graph_pooling="max",
            layers_post_mp=2), ds.GRAPH),
]


@pytest.mark.parametrize("design,level", REFERENCE_CASES,
                         ids=[f"{d.summary()}-{level}" for d, level in REFERENCE_CASES])
def test_model_matches_numpy_reference(design, level):
  batch, plain = _batch(width=3)
  model = graphgym.GraphGymGNN(design, 3, level)
  variables = _init(model, batch, seed=1)
  params = variables["params"]
  if "prelu" in params:  # a slope far from the default, so that PReLU is not ReLU-like
    params = {**params, "prelu": {"slope": jnp.asarray(-0.7, jnp.float32)}}
    variables = {**variables, "params": params}
  out = _apply(model, variables, batch, train=True)
  graph_ids = np.repeat(np.arange(2), plain.n_node)
  expected = reference_forward(params, design, plain.nodes["x"], plain.senders,
                               plain.receivers, graph_ids, level)
  rows = 8 if level == ds.NODE else 2
  np.testing.assert_allclose(out[:rows], expected, rtol=2e-4, atol=2e-5)


def test_prelu_is_one_scalar_shared_by_all_layers():
  batch, _ = _batch()
  design = Design(dim_inner=4, activation="prelu", layers_pre_mp=3, layers_mp=4,
                  layers_post_mp=3, stage_type="skipconcat")
  variables = jax.eval_shape(graphgym.GraphGymGNN(design, 2, ds.GRAPH).init,
                             jax.random.PRNGKey(0), batch)
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_leaves_with_path(variables["params"])]
  slopes = [p for p in paths if "slope" in p]
  assert slopes == ["['prelu']['slope']"]
  assert variables["params"]["prelu"]["slope"].shape == ()


def test_initialisation_gains():
  """Linear: xavier-uniform gain sqrt(2); conv: glorot gain 1; BN scale 1, shift 0."""
  batch, _ = _batch(width=3)
  design = Design(dim_inner=256, layers_pre_mp=2, layers_post_mp=2)
  params = _init(graphgym.GraphGymGNN(design, 2, ds.NODE), batch)["params"]
  linear = np.asarray(params["pre_mp_1"]["lin"]["kernel"])
  conv = np.asarray(params["mp_0"]["conv"]["lin"]["kernel"])
  linear_bound = math.sqrt(2.0) * math.sqrt(6.0 / 512)
  conv_bound = math.sqrt(6.0 / 512)
  assert np.abs(linear).max() <= linear_bound
  assert np.abs(linear).max() > 0.99 * linear_bound
  assert np.abs(conv).max() <= conv_bound
  assert np.abs(conv).max() > 0.99 * conv_bound
  np.testing.assert_array_equal(params["mp_0"]["bn"]["scale"], 1.0)
  np.testing.assert_array_equal(params["mp_0"]["bn"]["bias"], 0.0)
  np.testing.assert_array_equal(params["post_mp_out"]["bias"], 0.0)


# ----------------------------------------------------------------------------------------------
# Closed-form parameter count == the built model, so budget matching sizes the real thing.


def _count_cases():
  rng = np.random.default_rng(7)
  cases = [design.replace(dim_inner=int(rng.integers(2, 9)))
           for design in GRAPHGYM_ROUND1.sample(rng, 4) + AUTOTRANSFER.sample(rng, 6)]
  for conv in ("generalconv", "gcn", "sage", "gin", "gat"):
    for stage in ("stack", "skipsum", "skipconcat"):
      cases.append(Design(dim_inner=3, conv_type=conv, stage_type=stage, layers_mp=3,
                          layers_pre_mp=2, layers_post_mp=3, batch_norm=stage != "skipsum",
                          heads=3 if conv == "gat" else 1, activation="prelu",
                          conv_variant="self" if stage == "stack" else "release"))
  return cases


def test_param_count_formula_equals_built_model():
  proxy_batch, _ = _batch(width=1)
  wide_batch, _ = _batch(width=7)
  checked = 0
  for i, design in enumerate(_count_cases()):
    level = ds.NODE if i % 2 else ds.GRAPH
    for batch, dim_in, dim_out in ((proxy_batch, 1, 1), (wide_batch, 7, 4)):
      model = graphgym.GraphGymGNN(design, dim_out, level)
      params = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)["params"]
      assert _num_params(params) == budget_lib.param_count(design, dim_in, dim_out), (
          design.summary(), dim_in, dim_out)
      checked += 1
  assert checked == 2 * (10 + 15)


# ----------------------------------------------------------------------------------------------
# Every stage / conv / activation runs, is finite, and ignores padding.

# Each stage type, conv type and activation at least once.
FORWARD_CASES = [
    Design(dim_inner=6, stage_type="stack", activation="prelu"),
    Design(dim_inner=6, stage_type="skipsum", conv_type="gcn", activation="swish"),
    Design(dim_inner=6, stage_type="skipconcat", conv_type="sage", activation="leaky_relu"),
    Design(dim_inner=6, stage_type="skipsum", conv_type="gin", activation="elu"),
    Design(dim_inner=6, stage_type="stack", conv_type="gat", heads=2, layers_post_mp=2),
    Design(dim_inner=6, stage_type="skipconcat", conv_variant="self", batch_norm=False,
           dropout=0.3, aggregation="max", layers_post_mp=2),
]


def _perturb_padding(batch, n_real_nodes, n_real_edges, seed):
  """The same batch with random features on padding nodes and padding edges rewired among
  padding nodes (still never touching a real node)."""
  rng = np.random.default_rng(seed)
  x = np.array(batch.nodes["x"])
  x[n_real_nodes:] = rng.normal(scale=10.0, size=x[n_real_nodes:].shape)
  senders, receivers = np.array(batch.senders), np.array(batch.receivers)
  n_pad_edges = len(senders) - n_real_edges
  senders[n_real_edges:] = rng.integers(n_real_nodes, len(x), n_pad_edges)
  receivers[n_real_edges:] = rng.integers(n_real_nodes, len(x), n_pad_edges)
  return batch._replace(nodes={**batch.nodes, "x": x}, senders=senders, receivers=receivers)


@pytest.mark.parametrize("design", FORWARD_CASES, ids=lambda d: d.summary())
def test_forward_shapes_finite_and_padding_does_not_leak(design):
  batch, _ = _batch(width=3)
  perturbed = _perturb_padding(batch, 8, len(EDGES_A) + len(EDGES_B), seed=5)
  # Node and graph models have the same parameters (pooling has none): initialise once.
  variables = _init(graphgym.GraphGymGNN(design, 3, ds.NODE), batch)
  for level, shape, rows in ((ds.NODE, (16, 3), 8), (ds.GRAPH, (4, 3), 2)):
    model = graphgym.GraphGymGNN(design, 3, level)
    for train in (False, True):
      out = _apply(model, variables, batch, train)
      assert out.shape == shape
      assert np.isfinite(out[:rows]).all()
      np.testing.assert_array_equal(_apply(model, variables, perturbed, train)[:rows],
                                    out[:rows])


def test_padding_budget_does_not_change_real_outputs():
  small, _ = _batch(width=3, budget=batching.Budget(9, 11, 3))
  large, _ = _batch(width=3, budget=batching.Budget(40, 100, 8))
  design = Design(dim_inner=6, stage_type="skipconcat", activation="prelu", layers_post_mp=2)
  variables = _init(graphgym.GraphGymGNN(design, 2, ds.NODE), small)
  for level, rows in ((ds.NODE, 8), (ds.GRAPH, 2)):
    model = graphgym.GraphGymGNN(design, 2, level)
    np.testing.assert_allclose(_apply(model, variables, small, True)[:rows],
                               _apply(model, variables, large, True)[:rows],
                               rtol=1e-5, atol=1e-6)


def test_model_requires_dim_inner():
  batch, _ = _batch()
  with pytest.raises(ValueError, match="dim_inner is None"):
    graphgym.GraphGymGNN(Design(), 2, ds.NODE).init(jax.random.PRNGKey(0), batch)


# ----------------------------------------------------------------------------------------------
# build_model


def _dataset(name, task_level=ds.NODE, categorical=False):
  graph = _graph(EDGES_B, 3, 2, 0)
  if categorical:
    graph = graph._replace(nodes={**graph.nodes, "x": np.zeros((3, 2), np.int32)})
  return ds.GraphDataset(name, [graph], task_level, ds.MULTICLASS, num_outputs=5)


def test_build_model_matches_budget_by_dataset_kind():
  model, design = graphgym.build_model(Design(), _dataset("cora"))
  assert design.dim_inner == 256 and model.design == design and model.num_outputs == 5
  _, design = graphgym.build_model(Design(), _dataset("smallworld/clustering"))
  assert design.dim_inner == 254  # F = 11 for the synthetic tasks (brief, section 3)
  _, design = graphgym.build_model(Design(batch_norm=False), _dataset("ScaleFree/pagerank"))
  assert design.dim_inner == 255
  _, design = graphgym.build_model(Design(), _dataset("cora"), synthetic=True)
  assert design.dim_inner == 254
  _, design = graphgym.build_model(Design(dim_inner=17), _dataset("cora"))
  assert design.dim_inner == 17
  _, design = graphgym.build_model(Design(stage_type="skipconcat", layers_mp=8,
                                          layers_post_mp=3), _dataset("cora", ds.GRAPH))
  assert design.dim_inner == 26


def test_build_model_rejects_categorical_features():
  with pytest.raises(ValueError, match="categorical"):
    graphgym.build_model(Design(), _dataset("mols", categorical=True))


# ----------------------------------------------------------------------------------------------
# End to end: one design trained with the shared loop on a tiny synthetic graph task.


def _cycles_and_stars(n_graphs=32):
  """Binary task: 8-node cycles (label 0) vs stars (label 1), constant features. One graph
  size keeps the batches to one padded shape: one compilation."""
  graphs = []
  n = 8
  for i in range(n_graphs):
    if i % 2 == 0:
      pairs = [(j, (j + 1) % n) for j in range(n)]
    else:
      pairs = [(0, j) for j in range(1, n)]
    s = np.array([a for a, b in pairs] + [b for a, b in pairs], np.int32)
    r = np.array([b for a, b in pairs] + [a for a, b in pairs], np.int32)
    graphs.append(ds.make_graph(s, r, n, {"x": np.ones((n, 1), np.float32)},
                                graph_features={"y": np.array([i % 2], np.int32)}))
  return ds.GraphDataset("toy/cycles_vs_stars", graphs, ds.GRAPH, ds.BINARY, num_outputs=1)


def test_end_to_end_training_reduces_loss():
  dataset = _cycles_and_stars()
  design = Design(layers_mp=2, stage_type="skipsum", activation="prelu", dim_inner=16,
                  batch_size=8, epochs=25, learning_rate=0.01)
  model, design = graphgym.build_model(design, dataset)
  splits = {"train": np.arange(24), "val": np.arange(24, 32)}
  pipeline = pipeline_lib.GraphTaskPipeline(dataset, splits, design.batch_size, seed=0)
  result = loop.fit(model, pipeline, dataset.task_type, optim_config(design),
                    fit_config(design, seed=0, eval_every=5))
  assert result.status == "ok"
  losses = [record["epoch_loss"] for record in result.history]
  assert losses[-1] < 0.5 * losses[0], losses
  assert result.last["train"]["accuracy"] >= 0.9


def test_l2_normalize_has_finite_gradient_on_zero_rows():
  x = jnp.zeros((2, 3)).at[1].set(jnp.array([3.0, 4.0, 0.0]))
  grad = jax.grad(lambda v: graphgym.l2_normalize(v).sum())(x)
  assert np.all(np.isfinite(np.asarray(grad)))
  np.testing.assert_allclose(graphgym.l2_normalize(x)[1], [0.6, 0.8, 0.0], rtol=1e-6)
