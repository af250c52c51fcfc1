"""Dilated k-NN graphs, DeepGCN blocks/backbones and the generated point-cloud task."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gnnjax import batching
from gnnjax import data as data_lib
from gnnjax import graph as graph_lib
from gnnjax.data import pointcloud
from gnnjax.data.dataset import make_graph
from gnnjax.models import deepgcn
from gnnjax.nn import conv as conv_lib
from gnnjax.nn import knn as knn_lib
from gnnjax.training import loop, optim, pipeline


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _clouds(sizes, dim=3, seed=0, budget=None, edges=False):
  """A padded batch of random clouds of the given sizes (optionally with ring edges)."""
  rng = np.random.default_rng(seed)
  graphs = []
  for n in sizes:
    s = r = np.zeros(0, np.int32)
    if edges:
      s = np.concatenate([np.arange(n), (np.arange(n) + 1) % n])
      r = np.concatenate([(np.arange(n) + 1) % n, np.arange(n)])
    graphs.append(make_graph(s, r, n, {"x": rng.normal(size=(n, dim)),
                                       "y": rng.integers(0, 3, size=n).astype(np.int32)}))
  packed = batching.PackedGraphs.from_graphs(graphs)
  total, n_edge = int(sum(sizes)), int(packed.n_edge.sum())
  budget = budget or batching.Budget(total + 5, max(n_edge, 1) + 6, len(sizes) + 2)
  return packed.gather(np.arange(len(sizes)), budget)


def _reference_knn(x, sizes, k, d):
  """Brute force per graph: self first, then by distance (stable), ranks 0, d, ..., self-fill."""
  out, start = [], 0
  for n in sizes:
    pts = x[start:start + n]
    dist = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, -1.0)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k * d]
    picked = np.full((n, k), -1)
    ranks = np.arange(k) * d
    for i in range(n):
      for slot, rank in enumerate(ranks):
        picked[i, slot] = order[i, rank] + start if rank < n else start + i
    out.append(picked)
    start += n
  return np.concatenate(out)


# ----------------------------------------------------------------------------------------------
# k-NN graphs


@pytest.mark.parametrize("sizes,k,d,per_graph", [
    ((9, 12, 7), 3, 2, None),     # flat layout, clouds of different sizes
    ((9, 12, 7), 4, 3, None),     # the 7-node cloud cannot fill k*d = 12: self-fill
    ((10, 10, 10), 3, 3, 10),     # blocked layout
    ((10, 10, 10), 4, 1, 10),
])
def test_knn_matches_brute_force(x64, sizes, k, d, per_graph):
  batch = _clouds(sizes)
  x = jnp.asarray(batch.nodes["x"])
  g = jax.jit(lambda x, b: knn_lib.knn_graph(x, b, k, d, points_per_graph=per_graph))(x, batch)
  real = int(sum(sizes))
  n = x.shape[0]
  senders = np.asarray(g.senders).reshape(n, k)
  np.testing.assert_array_equal(np.asarray(g.receivers), np.repeat(np.arange(n), k))
  np.testing.assert_array_equal(senders[:real], _reference_knn(np.asarray(x), sizes, k, d))
  assert (senders[:real, 0] == np.arange(real)).all()  # self is the nearest
  # Padding: only self-loops on padding nodes, and exactly those edges are masked.
  np.testing.assert_array_equal(senders[real:], np.repeat(np.arange(real, n)[:, None], k, 1))
  np.testing.assert_array_equal(np.asarray(g.n_edge), np.asarray(batch.n_node) * k)
  emask = np.asarray(graph_lib.edge_mask(g))
  np.testing.assert_array_equal(emask, np.repeat(np.arange(n) < real, k))
  # No edge connects two graphs.
  ids = np.asarray(graph_lib.node_graph_index(batch))
  assert (ids[np.asarray(g.senders)] == ids[np.asarray(g.receivers)]).all()


def test_knn_ignores_padding_values_and_has_no_gradient():
  batch = _clouds((8, 8), budget=batching.Budget(20, 16, 3))
  x = jnp.asarray(batch.nodes["x"], jnp.float32)
  noisy = x.at[16:].set(1e30)
  build = jax.jit(lambda x: knn_lib.knn_graph(x, batch, 3, 2).senders)
  np.testing.assert_array_equal(build(x), build(noisy))
  grad = jax.grad(lambda x: knn_lib.knn_graph(x, batch, 3).senders.astype(jnp.float32).sum(),
                  allow_int=True)(x)
  assert not np.asarray(grad).any()


def test_stochastic_dilation_only_in_training():
  batch = _clouds((12, 12), budget=batching.Budget(24 + 8, 8, 3))
  x = jnp.asarray(batch.nodes["x"], jnp.float32)
  k, d = 3, 3
  def build(kk, dd, **kwargs):
    return jax.jit(lambda x, r: knn_lib.knn_graph(x, batch, kk, dd, points_per_graph=12, rng=r,
                                                  **kwargs).senders)(x, jax.random.PRNGKey(0))

  regular = build(k, d)
  # Eval mode, or epsilon 0: the regular dilated graph whatever the flag says.
  for kwargs in (dict(train=False, stochastic=True, epsilon=1.0),
                 dict(train=True, stochastic=True, epsilon=0.0)):
    np.testing.assert_array_equal(build(k, d, **kwargs), regular)
  # epsilon 1: k distinct picks among the k*d nearest, the same ranks for every point.
  full = np.asarray(build(k * d, 1))
  full = full.reshape(-1, k * d)[:24]
  draw = jax.jit(jax.vmap(lambda r: knn_lib.knn_graph(
      x, batch, k, d, points_per_graph=12, train=True, stochastic=True, epsilon=1.0,
      rng=r).senders))
  patterns = set()
  for got in np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 6))):
    got = got.reshape(-1, k)[:24]
    ranks = np.array([[list(full[i]).index(j) for j in row] for i, row in enumerate(got)])
    assert (ranks == ranks[0]).all() and len(set(ranks[0])) == k
    patterns.add(tuple(ranks[0]))
  assert len(patterns) > 1
  # A traced dilation (scanned blocks): k distinct ranks below k*d, drawn among k*max_dilation.
  traced = jax.jit(jax.vmap(lambda r, d: knn_lib.dilation_ranks(
      4, d, train=True, stochastic=True, epsilon=1.0, rng=r, max_dilation=5)))
  ranks = np.asarray(traced(jax.random.split(jax.random.PRNGKey(2), 50),
                            jnp.asarray([2] * 25 + [5] * 25)))
  assert all(len(set(r)) == 4 for r in ranks)
  assert ranks[:25].max() < 8 and ranks[25:].max() >= 8 and ranks[25:].max() < 20
  # The coin: about epsilon of the calls are stochastic.
  keys = jax.random.split(jax.random.PRNGKey(1), 4000)
  ranks = jax.vmap(lambda r: knn_lib.dilation_ranks(4, 3, train=True, stochastic=True,
                                                    epsilon=0.2, rng=r))(keys)
  frac = float(np.mean(np.any(np.asarray(ranks) != np.arange(4) * 3, axis=1)))
  assert 0.16 < frac < 0.24, frac


def test_knn_bad_input():
  batch = _clouds((5, 5))
  x = jnp.asarray(batch.nodes["x"])
  with pytest.raises(ValueError, match="k=6"):
    knn_lib.knn_graph(x, batch, 6, points_per_graph=5)
  with pytest.raises(ValueError, match="rng"):
    knn_lib.knn_graph(x, batch, 2, 2, train=True, stochastic=True)
  with pytest.raises(ValueError, match="block"):
    deepgcn.DeepGCN(3, block="highway").init(jax.random.PRNGKey(0), batch)


# ----------------------------------------------------------------------------------------------
# Blocks against hand-written formulas


def _layer_norm(h):
  mean = h.mean(-1, keepdims=True)
  return (h - mean) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)


def test_res_edgeconv_block_matches_numpy(x64):
  """ResGCN block with a dynamic dilated EdgeConv: y = ReLU(LN(max_j W[x_i, x_j - x_i] + b)) + x,
  neighbours from the brute-force k-NN, all in NumPy."""
  sizes, k, d, c = (9, 11), 3, 2, 4
  batch = _clouds(sizes, dim=c)
  x = jnp.asarray(batch.nodes["x"])
  block = deepgcn.DeepGCNBlock("res", "edge", c, norm="layer", knn=k, dilation=d)
  params = jax.jit(block.init)(jax.random.PRNGKey(0), x, batch)
  out = np.asarray(jax.jit(block.apply)(params, x, batch))
  p = params["params"]
  dense = p["conv"]["mlp"]["Dense_0"]
  w, b = np.asarray(dense["kernel"]), np.asarray(dense["bias"])
  scale, bias = np.asarray(p["norm"]["ln"]["scale"]), np.asarray(p["norm"]["ln"]["bias"])
  xs = np.asarray(x)
  nbr = _reference_knn(xs, sizes, k, d)
  real = sum(sizes)
  agg = np.stack([np.max(np.concatenate([np.repeat(xs[i][None], k, 0), xs[nbr[i]] - xs[i]], 1) @ w
                         + b, axis=0) for i in range(real)])
  want = np.maximum(_layer_norm(agg) * scale + bias, 0) + xs[:real]
  np.testing.assert_allclose(out[:real], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block", ["plain", "res", "res+", "dense"])
def test_block_orderings(block):
  """Each ordering against its formula, with the block's own GCN conv and batch norm (train)."""
  c = 6
  batch = _clouds((7, 9), dim=c, edges=True)
  x = jnp.asarray(batch.nodes["x"], jnp.float32)
  real = int(np.asarray(graph_lib.node_mask(batch)).sum())
  model = deepgcn.DeepGCNBlock(block, "gcn", 5 if block == "dense" else c)
  variables = model.init(jax.random.PRNGKey(1), x, batch)
  out, _ = model.apply(variables, x, batch, train=True, mutable=["batch_stats"])
  p = variables["params"]
  conv = lambda h: conv_lib.GCNConv(p["conv"]["lin"]["kernel"].shape[1]).apply(
      {"params": p["conv"]}, h, batch)

  def bn(h):  # batch statistics over real nodes, biased variance
    hr = np.asarray(h)[:real]
    z = (np.asarray(h) - hr.mean(0)) / np.sqrt(hr.var(0) + 1e-5)
    return z * np.asarray(p["norm"]["bn"]["scale"]) + np.asarray(p["norm"]["bn"]["bias"])

  relu = lambda h: np.maximum(h, 0)
  xs = np.asarray(x)
  if block == "plain":
    want = relu(bn(conv(x)))
  elif block == "res":
    want = relu(bn(conv(x))) + xs
  elif block == "res+":
    want = np.asarray(conv(jnp.asarray(relu(bn(x)), jnp.float32))) + xs
  else:
    assert out.shape == (x.shape[0], c + 5)
    np.testing.assert_array_equal(np.asarray(out[:, :c]), xs)  # the input passes unchanged
    want = np.concatenate([xs, relu(bn(conv(x)))], 1)
  np.testing.assert_allclose(np.asarray(out)[:real], np.asarray(want)[:real], rtol=2e-5,
                             atol=2e-5)


def test_dense_width_grows_and_resplus_has_bare_stem():
  batch = _clouds((6, 8), dim=3)
  dense = deepgcn.DeepGCN(2, block="dense", conv="mr", num_layers=4, hidden=8, growth=5, knn=3)
  p = jax.eval_shape(dense.init, jax.random.PRNGKey(0), batch)["params"]
  assert p["head"]["kernel"].shape[0] == 8 + 3 * 5
  for i in range(3):  # block i sees C + i * growth channels (MRConv's MLP gets twice that)
    assert p[f"block_{i}"]["conv"]["mlp"]["Dense_0"]["kernel"].shape == (2 * (8 + 5 * i), 5)
  resplus = deepgcn.DeepGCN(2, block="res+", conv="edge", num_layers=3, hidden=8, knn=3)
  p = jax.eval_shape(resplus.init, jax.random.PRNGKey(0), batch)["params"]
  assert "stem_norm" not in p and "final_norm" in p and "norm" in p["block_0"]


@pytest.mark.parametrize("block,kwargs", [
    ("plain", dict(conv="gcn")),                                  # static graph
    ("res+", dict(conv="edge", knn=3, points_per_graph=8)),       # dilations 1..3 (3 clipped to 2)
])
def test_scanned_blocks_equal_unrolled(block, kwargs):
  batch = _clouds((8, 8), dim=5, edges=True)
  batch = batch._replace(nodes={**batch.nodes, "x": np.asarray(batch.nodes["x"], np.float32)})
  kwargs = dict(block=block, num_layers=4, hidden=6, **kwargs)
  unrolled, scanned = deepgcn.DeepGCN(3, **kwargs), deepgcn.DeepGCN(3, scan=True, **kwargs)
  v1 = jax.jit(unrolled.init)(jax.random.PRNGKey(0), batch)
  stack = lambda tree: jax.tree.map(lambda *xs: jnp.stack(xs), *[tree[f"block_{i}"]
                                                                  for i in range(3)])
  v2 = {col: {**{k: v for k, v in tree.items() if not k.startswith("block_")},
              "blocks": {"block": stack(tree)}} for col, tree in v1.items()}
  assert jax.tree.map(jnp.shape, v2) == jax.tree.map(
      jnp.shape, jax.eval_shape(scanned.init, jax.random.PRNGKey(0), batch))
  apply = lambda m: jax.jit(lambda v, b: m.apply(v, b, train=True, mutable=["batch_stats"]))
  o1, s1 = apply(unrolled)(v1, batch)
  o2, s2 = apply(scanned)(v2, batch)
  np.testing.assert_allclose(o1[:16], o2[:16], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stack(s1["batch_stats"])["norm"]["bn"]["var"],
                             s2["batch_stats"]["blocks"]["block"]["norm"]["bn"]["var"], rtol=1e-5)
  with pytest.raises(ValueError, match="scan"):
    deepgcn.DeepGCN(3, block="dense", scan=True).init(jax.random.PRNGKey(0), batch)


# ----------------------------------------------------------------------------------------------
# Whole backbones: padding, gradients


def _loss(model, variables, batch, train):
  out, _ = model.apply(variables, batch, train=train, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.PRNGKey(3)})
  return out


@pytest.mark.parametrize("kwargs", [
    dict(block="res+", conv="edge", knn=3, stochastic=True, points_per_graph=8),
    dict(block="dense", conv="mr", knn=3, growth=4),
    dict(block="res", conv="gen", task_level="graph", pooling="max"),
    dict(block="plain", conv="gin", task_level="graph", pooling="mean", norm="layer"),
    dict(block="res+", conv="sage", task_level="graph", pooling="sum", dropout=0.3),
])
def test_padding_does_not_leak_and_gradients_finite(kwargs):
  batch = _clouds((8, 8, 8), edges=True, budget=batching.Budget(30, 64, 5))
  batch = batch._replace(nodes={**batch.nodes, "x": np.asarray(batch.nodes["x"], np.float32)})
  model = deepgcn.DeepGCN(3, num_layers=3, hidden=8, **kwargs)
  variables = jax.jit(model.init)({"params": jax.random.PRNGKey(0),
                                  "dropout": jax.random.PRNGKey(1)}, batch)
  noisy_x = batch.nodes["x"].copy()
  noisy_x[24:] = 1e6
  noisy = batch._replace(nodes={**batch.nodes, "x": noisy_x})
  level = kwargs.get("task_level", "node")
  rows = slice(0, 24) if level == "node" else slice(0, 3)

  def loss(params, b):
    out = _loss(model, {**variables, "params": params}, b, True)
    return jnp.sum(out[rows] ** 2), out[rows]

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (l1, o1), g1 = grad_fn(variables["params"], batch)
  (l2, o2), g2 = grad_fn(variables["params"], noisy)
  np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    assert np.isfinite(np.asarray(a)).all()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert np.isfinite(float(l1))
  assert any(np.abs(np.asarray(a)).sum() > 0 for a in jax.tree.leaves(g1))


# ----------------------------------------------------------------------------------------------
# The generated point-cloud task


def test_pointcloud_generator_deterministic_and_labelled():
  a = pointcloud.make_pointcloud_dataset(6, 64, seed=3)
  b = pointcloud.make_pointcloud_dataset(8, 64, seed=3)
  c = pointcloud.make_pointcloud_dataset(6, 64, seed=4)
  for ga, gb in zip(a.graphs, b.graphs):  # more clouds do not change the first ones
    np.testing.assert_array_equal(ga.nodes["x"], gb.nodes["x"])
    np.testing.assert_array_equal(ga.nodes["y"], gb.nodes["y"])
  assert not np.array_equal(a.graphs[0].nodes["x"], c.graphs[0].nodes["x"])
  for g in a.graphs:
    x, y = g.nodes["x"], g.nodes["y"]
    assert x.shape == (64, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert ((y >= 0) & (y < pointcloud.NUM_CLASSES)).all()
    assert 2 <= len(np.unique(y)) <= 4 or len(np.unique(y)) == 1  # parts may share a type
    np.testing.assert_allclose(np.linalg.norm(x, axis=1).max(), 1.0, rtol=1e-6)
  assert a.num_outputs == 4 and a.report["points_per_graph"] == 64
  # Primitive surfaces: sphere points lie on a sphere before composition.
  sphere = pointcloud._sample_part(np.random.default_rng(0), 0, np.array([0.7]), 50)
  np.testing.assert_allclose(np.linalg.norm(sphere, axis=1), 0.7)
  cone = pointcloud._sample_part(np.random.default_rng(0), 3, np.array([0.5, 1.0]), 200)
  lateral = cone[:, 2] > -0.5 + 1e-9
  np.testing.assert_allclose(np.linalg.norm(cone[lateral, :2], axis=1),
                             0.5 * (0.5 - cone[lateral, 2]), atol=1e-12)


def test_pointcloud_registry_splits_whole_clouds():
  dataset = data_lib.load_dataset("pointcloud/32", num_graphs=10, seed=1)
  assert dataset.report["points_per_graph"] == 32 and len(dataset) == 10
  split, graph_splits = data_lib.apply_split(dataset, "default", seed=0)
  assert graph_splits is None
  for g in split.graphs:
    owners = [g.nodes[f"{s}_mask"].all() for s in ("train", "val", "test")]
    assert sum(owners) == 1
    assert sum(g.nodes[f"{s}_mask"].any() for s in ("train", "val", "test")) == 1
  with pytest.raises(ValueError, match="pointcloud/<points>"):
    data_lib.load_dataset("pointcloud/many")


def test_resplus_trains_on_pointclouds():
  dataset = pointcloud.make_pointcloud_dataset(20, 48, seed=0)
  dataset = pointcloud.split_clouds(dataset, seed=0)
  pipe = pipeline.make_pipeline(dataset, None, batch_size=8)
  model = deepgcn.build_model(dataset, block="res+", num_layers=3, hidden=16, knn=6,
                              stochastic=True)
  result = loop.fit(model, pipe, dataset.task_type, optim.OptimConfig(learning_rate=0.01),
                    loop.FitConfig(epochs=12, eval_every=11))
  first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
  assert result.status == "ok"
  assert last < 0.85 * first, (first, last)


def _run_depth_study(*flags: str) -> subprocess.CompletedProcess:
  # A subprocess: experiment modules define absl flags at import (data_dir, out_dir, ...), so two
  # of them cannot share the test process.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.depth_study", *flags],
                        cwd=pathlib.Path(__file__).resolve().parents[1], env=env,
                        capture_output=True, text=True, timeout=600)


def test_depth_study_runs_and_reports(tmp_path):
  import json

  common = ["--datasets=pointcloud", "--depths=2", "--epochs=1", "--hidden=8", "--num_clouds=6",
            "--points=32", "--knn=4", "--batch_size=4", f"--out_dir={tmp_path}"]
  proc = _run_depth_study(*common, "--blocks=res+,plain", "--seeds=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "depth_study.json").read_text())
  assert set(results["summary"]["pointcloud"]) == {"plain", "res+"}
  assert results["summary"]["pointcloud"]["res+"]["2"]["seeds"] == 1
  assert (tmp_path / "depth_study_metric.png").stat().st_size > 0
  assert (tmp_path / "depth_study_loss.png").stat().st_size > 0
  bad = _run_depth_study(*common, "--blocks=no_such_block")
  assert bad.returncode != 0 and "no_such_block" in bad.stderr
