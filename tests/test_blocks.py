"""Per-graph dense blocks (`gnnjax.nn.blocks`) against the scatter aggregation they replace."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from jax.test_util import check_grads

from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds
from gnnjax.design import engine
from gnnjax.nn import aggregate as agg_lib
from gnnjax.nn import blocks as blocks_lib


def random_batch(sizes, seed=0, pad_nodes=5, pad_edges=7, pad_graphs=2):
  """A jraph-padded batch of random multigraphs (self-loops and repeated edges included),
  with large values in the padding so that leaks show."""
  rng = np.random.default_rng(seed)
  graphs = []
  for n in sizes:
    e = int(rng.integers(0, 3 * n + 1))
    senders, receivers = rng.integers(0, n, e), rng.integers(0, n, e)
    graphs.append(ds.make_graph(senders, receivers, n,
                                {"x": rng.normal(size=(n, 3)).astype(np.float32)}))
  batch = jraph.batch_np(graphs)
  padded = jraph.pad_with_graphs(batch, sum(sizes) + pad_nodes,
                                 int(batch.senders.shape[0]) + pad_edges,
                                 len(sizes) + pad_graphs)
  x = np.asarray(padded.nodes["x"]).copy()
  x[sum(sizes):] = 1e6
  return padded._replace(nodes={"x": x})


def scatter_sum(graph, values):
  return agg_lib.segment_sum(values[graph.senders], graph.receivers, values.shape[0],
                             graph_lib.edge_mask(graph))


@pytest.mark.parametrize("sizes", [[5, 1, 7, 3], [7], [2, 7, 7]])
def test_block_sum_and_count_equal_the_scatter(sizes):
  graph = random_batch(sizes)
  x = jnp.asarray(graph.nodes["x"])
  blocks = jax.jit(blocks_lib.graph_blocks, static_argnums=1)(graph, 7)
  assert blocks.adjacency.shape == (len(sizes) + 2, 7, 7)
  np.testing.assert_allclose(blocks_lib.block_sum(blocks, x), scatter_sum(graph, x),
                             rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(
      blocks_lib.block_count(blocks),
      agg_lib.segment_count(graph.receivers, x.shape[0], graph_lib.edge_mask(graph)))
  # The adjacency counts repeated edges; every real edge lands in exactly one cell.
  assert float(blocks.adjacency.sum()) == float(np.sum(graph_lib.edge_mask(graph)))
  # Padding nodes aggregate nothing and receive nothing, whatever their values.
  assert np.all(np.asarray(blocks_lib.block_sum(blocks, x))[sum(sizes):] == 0)


def test_larger_blocks_than_needed_change_nothing():
  graph = random_batch([4, 6])
  x = jnp.asarray(graph.nodes["x"])
  np.testing.assert_allclose(blocks_lib.block_sum(blocks_lib.graph_blocks(graph, 6), x),
                             blocks_lib.block_sum(blocks_lib.graph_blocks(graph, 16), x),
                             rtol=1e-6)


def test_block_sum_gradients():
  graph = random_batch([3, 5, 2], seed=3, pad_nodes=2)
  blocks = blocks_lib.graph_blocks(graph, 5)
  x = jnp.asarray(np.random.default_rng(1).normal(size=graph.nodes["x"].shape), jnp.float32)
  check_grads(lambda v: blocks_lib.block_sum(blocks, v), (x,), order=2, modes=("rev",),
              atol=1e-2, rtol=1e-2)
  weights = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
  want = jax.grad(lambda v: jnp.sum(scatter_sum(graph, v) * weights))(x)
  got = jax.grad(lambda v: jnp.sum(blocks_lib.block_sum(blocks, v) * weights))(x)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_block_moves_differentiate_as_plain_gathers():
  """to_blocks/from_blocks have hand-written VJPs (each the other's gather): the gradients of
  the plain gathers (autodiff: scatter-adds), also under vmap and with padding graphs and
  nodes, and blocks larger than the graphs."""
  graph = random_batch([4, 1, 6, 3], seed=5, pad_nodes=3, pad_graphs=3)
  blocks = blocks_lib.graph_blocks(graph, 7)
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(2,) + graph.nodes["x"].shape), jnp.float32)
  b = jnp.asarray(rng.normal(size=(2,) + blocks.present.shape + (3,)), jnp.float32)
  wx = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  wb = jnp.asarray(rng.normal(size=b.shape), jnp.float32)
  indices = (blocks.node_index, blocks.present, blocks.block_row)
  plain_to = lambda v: blocks_lib._gather_to_blocks(*indices, v)
  plain_from = lambda v: blocks_lib._gather_from_blocks(*indices, v)
  cases = [(lambda v: blocks_lib.to_blocks(blocks, v), plain_to, x, wb),
           (lambda v: blocks_lib.from_blocks(blocks, v), plain_from, b, wx)]
  for move, plain, values, weights in cases:
    loss = lambda f: lambda v: jnp.sum(jax.vmap(f)(v) * weights)
    np.testing.assert_array_equal(jax.vmap(move)(values), jax.vmap(plain)(values))
    np.testing.assert_allclose(jax.grad(loss(move))(values), jax.grad(loss(plain))(values),
                               rtol=1e-6, atol=1e-6)
    check_grads(move, (values[0],), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_blocks_are_shared_under_vmap():
  """A population of node states over one batch: one set of blocks, every member's sum."""
  graph = random_batch([4, 6, 3])
  blocks = blocks_lib.graph_blocks(graph, 6)
  xs = jnp.asarray(np.random.default_rng(4).normal(size=(5,) + graph.nodes["x"].shape),
                   jnp.float32)
  got = jax.vmap(lambda v: blocks_lib.block_sum(blocks, v))(xs)
  for member in range(5):
    np.testing.assert_allclose(got[member], scatter_sum(graph, xs[member]), rtol=1e-6,
                               atol=1e-6)


def test_engine_uses_blocks_only_where_they_pay():
  graph = lambda n: ds.make_graph(np.zeros(1, int), np.zeros(1, int), n,
                                  {"x": np.zeros((n, 1), np.float32)})
  small = ds.GraphDataset("small", [graph(6), graph(3)], ds.NODE, ds.MULTICLASS, 2)
  largest = 6
  assert engine.block_nodes_for(small, (40, 100, 5)) == largest
  assert engine.block_nodes_for(small, (40, 5, 5)) == 0  # 5 * 36 cells over 16 * 5 edges
  big = ds.GraphDataset("big", [graph(200)], ds.NODE, ds.MULTICLASS, 2)
  assert engine.block_nodes_for(big, (200, 10**6, 2)) == 0  # more than BLOCK_MAX_NODES
