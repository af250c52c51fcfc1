"""Graph helpers and padded batching against independent references (dense matrices, jraph)."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from gnnjax import batching
from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds


def random_graph(rng, n, e, feat=3, with_edges=True, label=None):
  s = rng.integers(0, n, e)
  r = rng.integers(0, n, e)
  edges = {"x": rng.normal(size=(e, 2)).astype(np.float32)} if with_edges else None
  globals_ = {"y": np.array([label if label is not None else rng.integers(0, 3)], np.int32)}
  return ds.make_graph(s, r, n, {"x": rng.normal(size=(n, feat)).astype(np.float32)}, edges,
                       globals_)


@pytest.fixture
def graphs():
  rng = np.random.default_rng(0)
  return [random_graph(rng, int(rng.integers(1, 12)), int(rng.integers(0, 30))) for _ in range(25)]


def test_gather_matches_jraph_batch_and_pad(graphs):
  packed = batching.PackedGraphs.from_graphs(graphs)
  idx = [3, 0, 7, 7, 24, 11]
  budget = batching.Budget(n_node=80, n_edge=200, n_graph=9)
  ours = packed.gather(idx, budget)
  ref = jraph.pad_with_graphs(jraph.batch_np([graphs[i] for i in idx]), *budget)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gather_rejects_budget_too_small(graphs):
  packed = batching.PackedGraphs.from_graphs(graphs)
  n = int(packed.n_node[:4].sum())
  with pytest.raises(ValueError, match="does not fit"):
    packed.gather(range(4), batching.Budget(n, 10_000, 10))  # no spare padding node


def test_ladder_is_short_and_every_batch_fits(graphs):
  packed = batching.PackedGraphs.from_graphs(graphs)
  ladder = batching.budget_ladder(packed, batch_size=4)
  assert 1 <= len(ladder) <= 8
  shapes = set()
  for epoch in range(20):
    for batch in batching.iterate_batches(packed, 4, ladder, rng=np.random.default_rng(epoch)):
      shapes.add((batch.nodes["x"].shape[0], batch.senders.shape[0], batch.n_node.shape[0]))
      assert graph_lib.graph_mask(batch).sum() <= 4
  assert shapes <= {(b.n_node, b.n_edge, b.n_graph) for b in ladder}


def test_iterate_budgets_plans_the_batches_iterate_batches_builds(graphs):
  packed = batching.PackedGraphs.from_graphs(graphs)
  ladder = batching.budget_ladder(packed, batch_size=3)
  for epoch in range(5):
    for drop_last in (False, True):
      args = dict(rng=np.random.default_rng(epoch), indices=range(1, len(graphs)),
                  drop_last=drop_last)
      built = [(b.nodes["x"].shape[0], b.senders.shape[0], b.n_node.shape[0])
               for b in batching.iterate_batches(packed, 3, ladder, **args)]
      args["rng"] = np.random.default_rng(epoch)
      assert [tuple(b) for b in batching.iterate_budgets(packed, 3, ladder, **args)] == built


def test_iterate_batches_covers_each_graph_once(graphs):
  packed = batching.PackedGraphs.from_graphs(graphs)
  seen = []
  for batch in batching.iterate_batches(packed, 4, rng=np.random.default_rng(1)):
    labels = batch.globals["y"][np.asarray(graph_lib.graph_mask(batch))]
    seen.extend(labels.tolist())
  assert sorted(seen) == sorted(int(g.globals["y"][0]) for g in graphs)


def test_masks_and_node_graph_index(graphs):
  packed = batching.PackedGraphs.from_graphs(graphs)
  batch = packed.gather([1, 2], batching.Budget(40, 100, 4))
  n_real = int(packed.n_node[[1, 2]].sum())
  e_real = int(packed.n_edge[[1, 2]].sum())
  assert np.asarray(graph_lib.node_mask(batch)).sum() == n_real
  assert np.asarray(graph_lib.edge_mask(batch)).sum() == e_real
  np.testing.assert_array_equal(graph_lib.graph_mask(batch), [True, True, False, False])
  ids = np.asarray(graph_lib.node_graph_index(batch))
  np.testing.assert_array_equal(ids[:n_real], np.repeat([0, 1], packed.n_node[[1, 2]]))


def _dense_adjacency(graph, n):
  a = np.zeros((n, n))
  for s, r in zip(graph.senders, graph.receivers):
    a[r, s] += 1.0  # row = receiver
  return a


def test_degrees_and_gcn_normalization_against_dense():
  rng = np.random.default_rng(3)
  g = random_graph(rng, 9, 25)
  g = g._replace(senders=np.concatenate([g.senders, [4, 4]]).astype(np.int32),
                 receivers=np.concatenate([g.receivers, [4, 4]]).astype(np.int32),
                 edges={"x": np.zeros((27, 2), np.float32)}, n_edge=np.array([27], np.int32))
  packed = batching.PackedGraphs.from_graphs([g])
  batch = packed.gather([0], batching.Budget(16, 40, 2))
  n = 9
  a = _dense_adjacency(g, n)
  np.testing.assert_allclose(graph_lib.in_degree(batch)[:n], a.sum(1))
  np.testing.assert_allclose(graph_lib.out_degree(batch)[:n], a.sum(0))
  # PyG add_remaining_self_loops: each node ends with exactly one self-loop of weight 1 (node 4
  # had two loop edges here, plus whatever the random edges added).
  a_hat = a - np.diag(np.diag(a)) + np.eye(n)
  d = a_hat.sum(1)
  ref = a_hat / np.sqrt(np.outer(d, d))
  edge_coef, self_coef = graph_lib.gcn_normalization(batch)
  x = rng.normal(size=(16, 4)).astype(np.float32)
  out = jax.ops.segment_sum(x[batch.senders] * edge_coef[:, None], batch.receivers, 16)
  out = out + self_coef[:, None] * x
  np.testing.assert_allclose(np.asarray(out)[:n], ref @ x[:n], rtol=1e-5, atol=1e-5)


def test_zero_out_padding():
  rng = np.random.default_rng(4)
  packed = batching.PackedGraphs.from_graphs([random_graph(rng, 5, 7)])
  batch = packed.gather([0], batching.Budget(8, 16, 3))
  batch = batch._replace(nodes={"x": batch.nodes["x"] + 100.0},
                         edges={"x": batch.edges["x"] + 100.0})
  out = graph_lib.zero_out_padding(jax.tree.map(jnp.asarray, batch))
  assert np.all(np.asarray(out.nodes["x"])[5:] == 0)
  assert np.all(np.asarray(out.edges["x"])[7:] == 0)
  assert np.all(np.asarray(out.nodes["x"])[:5] != 0)


def test_structure_edits():
  g = ds.make_graph(np.array([0, 1, 2, 2, 1]), np.array([1, 0, 2, 0, 0]), 3,
                    {"x": np.zeros((3, 1), np.float32)}, {"w": np.arange(5, dtype=np.float32)})
  und = graph_lib.to_undirected(g)
  pairs = set(zip(und.senders.tolist(), und.receivers.tolist()))
  assert pairs == {(0, 1), (1, 0), (2, 2), (2, 0), (0, 2)}
  assert und.n_edge[0] == 5 and und.edges["w"].shape == (5,)
  assert list(und.receivers) == sorted(und.receivers)
  no_loops = graph_lib.remove_self_loops(g)
  assert not np.any(no_loops.senders == no_loops.receivers)
  with_loops = graph_lib.add_self_loops(g, edge_fill=-1)
  assert (with_loops.senders == with_loops.receivers).sum() == 3
  assert with_loops.edges["w"][-3:].tolist() == [-1, -1, -1]
  srt = graph_lib.sort_edges(g)
  keys = list(zip(srt.receivers.tolist(), srt.senders.tolist()))
  assert keys == sorted(keys)
