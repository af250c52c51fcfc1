"""The flax adapter around RevGNN (gnnjax.models.rev_adapter): the same function and gradients
as calling RevGNN.init/apply directly, mean pooling for graph tasks, and training with the shared
loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from gnnjax import batching
from gnnjax.data import dataset as ds
from gnnjax.models import rev_adapter, revgnn
from gnnjax.training import loop, optim, pipeline

N, E = 29, 120


@pytest.fixture(scope="module")
def graph():
  rng = np.random.default_rng(0)
  g = ds.make_graph(rng.integers(0, N, E), rng.integers(0, N, E), N,
                    {"x": rng.standard_normal((N, 5)).astype(np.float32)})
  return jax.tree.map(jnp.asarray, batching.pad_single_graph(g))


def test_adapter_matches_direct_calls(graph):
  config = revgnn.RevGNN(num_outputs=3, hidden=8, num_layers=3, dropout=0.3,
                         aggregation="mean")
  module = rev_adapter.RevGNNModule(config)
  variables = module.init({"params": jax.random.key(0)}, graph)
  # The adapter's only parameter is RevGNN's own tree, drawn from the 'params' stream.
  direct_params = config.init(jax.random.key(0), graph)
  assert set(variables) == {"params"} and set(variables["params"]) == {"revgnn"}
  params = variables["params"]["revgnn"]
  assert jax.tree.structure(params) == jax.tree.structure(direct_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(direct_params)):
    np.testing.assert_array_equal(a, b)

  weights = jnp.asarray(np.random.default_rng(1).standard_normal((graph.nodes["x"].shape[0], 3)),
                        jnp.float32)
  key = jax.random.key(7)

  def adapter_loss(p):
    out = module.apply({"params": {"revgnn": p}}, graph, train=True, rngs={"dropout": key})
    return jnp.sum(out * weights)

  def direct_loss(p):
    return jnp.sum(config.apply(p, graph, train=True, key=key) * weights)

  la, ga = jax.jit(jax.value_and_grad(adapter_loss))(params)
  ld, gd = jax.jit(jax.value_and_grad(direct_loss))(params)
  np.testing.assert_allclose(la, ld, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gd)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(ga))
  # Dropout is on in training (outputs differ from evaluation); evaluation needs no RNG.
  evaluated = module.apply(variables, graph)
  np.testing.assert_array_equal(evaluated, config.apply(params, graph))
  assert not np.allclose(evaluated, module.apply(variables, graph, train=True,
                                                 rngs={"dropout": key}))


def test_graph_task_mean_pools_node_outputs():
  rng = np.random.default_rng(2)
  graphs = [ds.make_graph(rng.integers(0, n, 3 * n), rng.integers(0, n, 3 * n), n,
                          {"x": rng.standard_normal((n, 4)).astype(np.float32)})
            for n in (5, 9)]
  batch = jax.tree.map(jnp.asarray, jraph.pad_with_graphs(jraph.batch_np(graphs), 16, 64, 3))
  config = revgnn.RevGNN(num_outputs=2, hidden=6, num_layers=2, dropout=0.0)
  module = rev_adapter.RevGNNModule(config, task_level=ds.GRAPH)
  variables = module.init(jax.random.key(0), batch)
  pooled = module.apply(variables, batch)
  nodes = config.apply(variables["params"]["revgnn"], batch)
  assert pooled.shape == (batch.n_node.shape[0], 2)
  np.testing.assert_allclose(pooled[0], nodes[:5].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pooled[1], nodes[5:14].mean(0), rtol=1e-5, atol=1e-6)


def test_bad_settings_raise(graph):
  config = revgnn.RevGNN(num_outputs=2, hidden=4, num_layers=1)
  with pytest.raises(ValueError, match="task_level"):
    rev_adapter.RevGNNModule(config, task_level="edge")
  with pytest.raises(ValueError, match="edge_dim=None"):
    rev_adapter.RevGNNModule(revgnn.RevGNN(2, hidden=4, edge_dim=3), knn=4)
  module = rev_adapter.RevGNNModule(revgnn.RevGNN(2, hidden=4, dropout=0.5))
  variables = module.init(jax.random.key(0), graph)
  with pytest.raises(ValueError, match="dropout"):
    module.apply(variables, graph, train=True)


def test_fit_trains_on_a_tiny_node_task():
  rng = np.random.default_rng(3)
  n = 40
  labels = rng.integers(0, 2, n)
  x = np.eye(2, dtype=np.float32)[labels] + 0.5 * rng.standard_normal((n, 2)).astype(np.float32)
  senders, receivers = rng.integers(0, n, 160), rng.integers(0, n, 160)
  masks = {s: np.zeros(n, bool) for s in ("train", "val", "test")}
  masks["train"][:24], masks["val"][24:32], masks["test"][32:] = True, True, True
  g = ds.make_graph(senders, receivers, n, {"x": x, "y": labels.astype(np.int32),
                                            **{f"{s}_mask": m for s, m in masks.items()}})
  dataset = ds.GraphDataset(name="tiny", graphs=[g], task_level=ds.NODE,
                            task_type="multiclass", num_outputs=2)
  model = rev_adapter.build_model(dataset, hidden=8, num_layers=4, dropout=0.1)
  pipe = pipeline.make_pipeline(dataset, None, 1, 0)
  result = loop.fit(model, pipe, dataset.task_type, optim.OptimConfig(learning_rate=0.02),
                    loop.FitConfig(epochs=15, eval_every=14))
  first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
  assert result.status == "ok"
  assert last < 0.8 * first, (first, last)


def test_knn_relative_edges_reach_revgnn():
  """With knn + relative_edges RevGNN sees the k-NN graph of x with edges x_j - x_i: equal to
  calling RevGNN directly on that graph built by hand (flat search, dense NumPy distances)."""
  rng = np.random.default_rng(4)
  n, k = 12, 3
  x = rng.standard_normal((n, 3)).astype(np.float32)
  g = ds.make_graph(np.zeros(0, np.int32), np.zeros(0, np.int32), n, {"x": x})
  graph = jax.tree.map(jnp.asarray, batching.pad_single_graph(g))
  config = revgnn.RevGNN(num_outputs=2, hidden=4, num_layers=2, dropout=0.0, edge_dim=3,
                         aggregation="max")
  module = rev_adapter.RevGNNModule(config, knn=k, relative_edges=True)
  variables = module.init(jax.random.key(0), graph)
  out = module.apply(variables, graph)[:n]
  # Reference graph: the k nearest points (self included) of every point, as senders.
  dist = ((x[:, None] - x[None]) ** 2).sum(-1)
  senders = np.argsort(dist, axis=1, kind="stable")[:, :k].reshape(-1)
  receivers = np.repeat(np.arange(n), k)
  ref_graph = ds.make_graph(senders, receivers, n, {"x": x},
                            {"x": x[senders] - x[receivers]})
  # Padded the same way (the models treat the last graph of a batch as padding).
  ref_graph = jax.tree.map(jnp.asarray, batching.pad_single_graph(ref_graph))
  ref = config.apply(variables["params"]["revgnn"], ref_graph)[:n]
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="relative_edges needs knn"):
    rev_adapter.RevGNNModule(config, relative_edges=True)
