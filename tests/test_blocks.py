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
from gnnjax.nn import block_kernels as block_kernels_lib
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


def scatter_extreme(kind, graph, values):
  return agg_lib.aggregate(kind, values[graph.senders], graph.receivers, values.shape[0],
                           graph_lib.edge_mask(graph))


BLOCK_EXTREMES = {"max": blocks_lib.block_max, "min": blocks_lib.block_min}


@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("sizes", [[5, 1, 7, 3], [7], [2, 7, 7]])
def test_block_max_and_min_equal_the_scatter(kind, sizes):
  """Values and gradients of the block reduction against the scatter's, on multigraphs with
  self-loops, nodes without incoming edges and padding holding 1e6."""
  graph = random_batch(sizes, seed=len(sizes))
  x = jnp.asarray(graph.nodes["x"])
  blocks = blocks_lib.graph_blocks(graph, 7)
  block_fn = BLOCK_EXTREMES[kind]
  want = scatter_extreme(kind, graph, x)
  got = jax.jit(block_fn)(blocks, x)
  np.testing.assert_array_equal(got, want)
  assert np.all(np.asarray(got)[sum(sizes):] == 0)  # padding nodes receive nothing
  weights = jnp.asarray(np.random.default_rng(7).normal(size=x.shape), jnp.float32)
  grad = lambda f: jax.grad(lambda v: jnp.sum(f(v) * weights))(x)
  np.testing.assert_allclose(grad(lambda v: block_fn(blocks, v)),
                             grad(lambda v: scatter_extreme(kind, graph, v)),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["max", "min"])
def test_block_extremes_split_ties_as_the_scatter(kind):
  """Tied messages (equal node states, e.g. constant or one-hot degree features) and repeated
  edges: the cotangent is shared over the tied edges, counted with multiplicity."""
  sizes = [6, 4, 5]
  graph = random_batch(sizes, seed=11)
  rng = np.random.default_rng(12)
  x = np.asarray(graph.nodes["x"]).copy()
  x[: sum(sizes)] = rng.integers(0, 2, size=(sum(sizes), 3))  # many exact ties
  x = jnp.asarray(x)
  blocks = blocks_lib.graph_blocks(graph, 6)
  weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  block_fn = BLOCK_EXTREMES[kind]
  loss = lambda f: lambda v: jnp.sum(f(v) * weights)
  np.testing.assert_array_equal(block_fn(blocks, x), scatter_extreme(kind, graph, x))
  np.testing.assert_allclose(jax.grad(loss(lambda v: block_fn(blocks, v)))(x),
                             jax.grad(loss(lambda v: scatter_extreme(kind, graph, v)))(x),
                             rtol=1e-6, atol=1e-6)


def test_block_max_under_vmap_and_numerical_gradients():
  graph = random_batch([4, 6, 3], seed=13)
  blocks = blocks_lib.graph_blocks(graph, 6)
  rng = np.random.default_rng(14)
  xs = jnp.asarray(rng.normal(size=(3,) + graph.nodes["x"].shape), jnp.float32)
  weights = jnp.asarray(rng.normal(size=xs.shape), jnp.float32)
  loss = lambda f: lambda v: jnp.sum(jax.vmap(f)(v) * weights)
  block_fn = lambda v: blocks_lib.block_max(blocks, v)
  np.testing.assert_array_equal(jax.vmap(block_fn)(xs),
                                jnp.stack([scatter_extreme("max", graph, v) for v in xs]))
  np.testing.assert_allclose(jax.grad(loss(block_fn))(xs),
                             jax.grad(loss(lambda v: scatter_extreme("max", graph, v)))(xs),
                             rtol=1e-6, atol=1e-6)
  # Distinct values (no ties): the max is differentiable and finite differences agree.
  check_grads(block_fn, (xs[0],), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def assert_conv_on_blocks_matches_edge_path(conv, params, graph, blocks, width):
  """`conv` applied with `blocks` against its edge path (no blocks): outputs on real nodes, and
  gradients with respect to every parameter and the node inputs of a loss that reads only
  real nodes (through tanh and fixed random weights, so every output channel matters)."""
  x = jnp.asarray(graph.nodes["x"])
  real = np.asarray(graph_lib.node_mask(graph))
  weights = jax.random.normal(jax.random.PRNGKey(7), (x.shape[0], width))

  def loss(params, x, on_blocks):
    out = conv.apply(params, x, graph, blocks=blocks if on_blocks else None)
    return jnp.sum(jnp.where(real[:, None], jnp.tanh(out) * weights, 0.0))

  edge = conv.apply(params, x, graph)
  block = conv.apply(params, x, graph, blocks=blocks)
  np.testing.assert_allclose(np.asarray(block)[real], np.asarray(edge)[real], rtol=1e-5,
                             atol=1e-5)
  gradient = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  want, got = gradient(params, x, False), gradient(params, x, True)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sizes,heads,concat,self_loops", [
    ([5, 1, 7, 3], 1, False, True), ([2, 7, 7], 3, False, True), ([5, 1, 7, 3], 2, True, True),
    ([2, 7, 7], 2, False, False)])
def test_block_attention_equals_the_gat_edge_path(sizes, heads, concat, self_loops):
  """GATConv on blocks (`blocks.block_attention`) against its edge path (gather, segment
  softmax, scatter): outputs on real nodes and gradients with respect to every parameter and
  the inputs, on multigraphs with self-loop edges (replaced by one loop each) and repeated
  edges (each its own softmax term), one-node graphs and padding full of 1e6."""
  from gnnjax.nn import conv as conv_lib
  graph = random_batch(sizes, seed=len(sizes) + heads)
  x = jnp.asarray(graph.nodes["x"])
  blocks = blocks_lib.graph_blocks(graph, 7)
  gat = conv_lib.GATConv(4, heads=heads, concat=concat, add_self_loops=self_loops)
  params = gat.init(jax.random.PRNGKey(heads), x, graph)
  assert_conv_on_blocks_matches_edge_path(gat, params, graph, blocks,
                                          4 * (heads if concat else 1))
  # Attention dropout while training draws per edge: the edge path, blocks or not.
  dropped = gat.clone(attention_dropout=0.5)
  rngs = {"dropout": jax.random.PRNGKey(3)}
  np.testing.assert_array_equal(
      dropped.apply(params, x, graph, train=True, blocks=blocks, rngs=rngs),
      dropped.apply(params, x, graph, train=True, rngs=rngs))


@pytest.mark.parametrize("sizes,normalize", [([5, 1, 7, 3], True), ([2, 7, 7], True),
                                            ([5, 1, 7, 3], False)])
def test_block_gcn_equals_the_gcn_edge_path(sizes, normalize):
  """GCNConv on blocks (`blocks.block_gcn`, or `block_sum` without normalisation) against its
  edge path (`graph.gcn_normalization`, gather, scatter): outputs on real nodes and gradients
  with respect to every parameter and the inputs, on multigraphs with self-loop edges
  (replaced by one loop each), repeated edges (counted in the degrees), one-node graphs and
  padding full of 1e6; with edge weights the blocks are not used."""
  from gnnjax.nn import conv as conv_lib
  graph = random_batch(sizes, seed=len(sizes) + 11)
  x = jnp.asarray(graph.nodes["x"])
  blocks = blocks_lib.graph_blocks(graph, 7)
  gcn = conv_lib.GCNConv(4, normalize=normalize)
  params = gcn.init(jax.random.PRNGKey(1), x, graph)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
  assert_conv_on_blocks_matches_edge_path(gcn, params, graph, blocks, 4)
  # Edge weights live on the edges: the edge path, blocks or not.
  edge_weight = jnp.linspace(0.5, 2.0, graph.senders.shape[0])
  np.testing.assert_array_equal(gcn.apply(params, x, graph, edge_weight, blocks=blocks),
                                gcn.apply(params, x, graph, edge_weight))


def test_engine_uses_blocks_only_where_they_pay():
  graph = lambda n: ds.make_graph(np.zeros(1, int), np.zeros(1, int), n,
                                  {"x": np.zeros((n, 1), np.float32)})
  small = ds.GraphDataset("small", [graph(6), graph(3)], ds.NODE, ds.MULTICLASS, 2)
  largest = 6
  assert engine.block_nodes_for(small, (40, 100, 5)) == largest
  assert engine.block_nodes_for(small, (40, 5, 5)) == 0  # 5 * 36 cells over 16 * 5 edges
  big = ds.GraphDataset("big", [graph(200)], ds.NODE, ds.MULTICLASS, 2)
  assert engine.block_nodes_for(big, (200, 10**6, 2)) == 0  # more than BLOCK_MAX_NODES


def test_rematerialised_block_max_reduces_once_per_pass():
  """Under the population layers' remat policy (superset._REMAT_POLICY), block_max's saved
  result spares the backward pass a rerun of the forward reduction: the gradient has one
  masked max reduction (plus the tie count and the transposed sum)."""
  from gnnjax.models import superset
  graph = random_batch([4, 6, 3], seed=15)
  blocks = blocks_lib.graph_blocks(graph, 6)
  weights = jnp.ones((3, 5))

  def count_reductions(policy):
    layer = jax.checkpoint(lambda v: jnp.tanh(blocks_lib.block_max(blocks, v @ weights)),
                           policy=policy)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: layer(v).sum()))(graph.nodes["x"]))
    return jaxpr.count("reduce_max")

  assert count_reductions(superset._REMAT_POLICY) == 1
  assert count_reductions(jax.checkpoint_policies.dots_saveable) == 2  # the rerun


@pytest.mark.parametrize("kind", ["max", "min"])
def test_pallas_block_extremes_equal_the_xla_ones(kind):
  """The Pallas kernels (`block_kernels`, interpreted here; run on CUDA GPUs by 'auto') give
  the XLA reduction's values and, with many exact ties and repeated edges, its gradients, for
  block sizes and widths that are not powers of two, under vmap over members."""
  sizes = [6, 1, 5]
  graph = random_batch(sizes, seed=21)
  blocks = blocks_lib.graph_blocks(graph, 6)
  rng = np.random.default_rng(22)
  n = graph.nodes["x"].shape[0]
  xs = rng.integers(-2, 3, size=(3, n, 20)).astype(np.float32)  # 20 channels, many ties
  xs[1] += rng.normal(size=xs[1].shape).astype(np.float32)  # one member without ties
  xs[:, sum(sizes):] = 1e6  # padding rows
  xs = jnp.asarray(xs)
  weights = jnp.asarray(rng.normal(size=xs.shape), jnp.float32)
  fn = lambda kernel: jax.vmap(lambda v: BLOCK_EXTREMES[kind](blocks, v, kernel=kernel))
  np.testing.assert_array_equal(fn("interpret")(xs), fn("xla")(xs))
  # A diverged member's NaNs reach every node they feed, as through the scatter. (Not checked
  # for 'xla' here: XLA's CPU reductions can drop NaNs, BUILD_NOTES' known limits.)
  nans = xs.at[2, ::4, ::3].set(jnp.nan)
  scattered = jax.vmap(lambda v: scatter_extreme(kind, graph, v))(nans)
  assert np.isnan(scattered[2]).any() and not np.isnan(scattered[:2]).any()
  np.testing.assert_array_equal(fn("interpret")(nans), scattered)
  loss = lambda kernel: lambda v: jnp.sum(fn(kernel)(v) * weights)
  np.testing.assert_allclose(jax.grad(loss("interpret"))(xs), jax.grad(loss("xla"))(xs),
                             rtol=1e-6, atol=1e-6)
  # The gradient is the scatter's, member by member (what the XLA version is tested against).
  scatter = jax.grad(lambda v: jnp.sum(scatter_extreme(kind, graph, v) * weights[0]))(xs[0])
  np.testing.assert_allclose(jax.grad(loss("interpret"))(xs)[0], scatter, rtol=1e-6,
                             atol=1e-6)


def test_block_max_kernel_choice(monkeypatch):
  graph = random_batch([4, 3], seed=23)
  blocks = blocks_lib.graph_blocks(graph, 4)
  x = jnp.asarray(graph.nodes["x"])
  with pytest.raises(ValueError, match="unknown block max kernel 'triton'"):
    blocks_lib.block_max(blocks, x, kernel="triton")
  # 'auto' lowers its Pallas branch only for CUDA devices: on this backend, XLA's reduction.
  hlo = jax.jit(lambda v: blocks_lib.block_max(blocks, v)).lower(x).as_text()
  if jax.default_backend() != "gpu":
    assert "triton" not in hlo.lower() and "reduce" in hlo
  with pytest.raises(ValueError, match="float32 arrays"):
    block_kernels_lib.masked_max(blocks.adjacency, blocks_lib.to_blocks(blocks, x).astype(
        jnp.bfloat16), interpret=True)
  # Without Pallas's Triton backend, asking for the kernels says so ('auto' then uses XLA).
  monkeypatch.setattr(block_kernels_lib, "AVAILABLE", False)
  with pytest.raises(RuntimeError, match="no Pallas Triton backend"):
    block_kernels_lib.masked_max(blocks.adjacency, blocks_lib.to_blocks(blocks, x))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the Pallas kernels compile for GPUs")
def test_pallas_block_max_compiled_on_the_gpu():
  graph = random_batch([40, 64, 17, 64], seed=24)
  blocks = blocks_lib.graph_blocks(graph, 64)
  rng = np.random.default_rng(25)
  xs = jnp.asarray(rng.integers(-2, 3, size=(2,) + graph.nodes["x"].shape[:1] + (130,)),
                   jnp.float32)
  weights = jnp.asarray(rng.normal(size=xs.shape), jnp.float32)
  # A diverged member: its NaN states reach every node they feed, as through the scatter.
  nans = xs.at[1, ::7, ::3].set(jnp.nan)
  scattered = jax.vmap(lambda v: scatter_extreme("max", graph, v))(nans)
  assert np.isnan(scattered[1]).any() and not np.isnan(scattered[0]).any()
  for kernel in ("pallas", "auto"):
    fn = jax.jit(jax.vmap(lambda v, k=kernel: blocks_lib.block_max(blocks, v, kernel=k)))
    np.testing.assert_array_equal(fn(xs), jax.vmap(
        lambda v: blocks_lib.block_max(blocks, v, kernel="xla"))(xs))
    np.testing.assert_array_equal(fn(nans), scattered)
    loss = lambda k: lambda v: jnp.sum(jax.vmap(
        lambda u: blocks_lib.block_max(blocks, u, kernel=k))(v) * weights)
    np.testing.assert_allclose(jax.jit(jax.grad(loss(kernel)))(xs), jax.grad(loss("xla"))(xs),
                               rtol=1e-5, atol=1e-5)

