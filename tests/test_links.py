"""Link prediction: edge splits with negatives, pair labels in padded batches, the GraphGym edge
head, and training end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from gnnjax import batching
from gnnjax import data as data_lib
from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds
from gnnjax.data import links
from gnnjax.design.design import Design
from gnnjax.models import graphgym
from gnnjax.training import loop, losses, optim
from gnnjax.training import pipeline as pipeline_lib


def community_graph(num_nodes: int = 80, seed: int = 0, p_in: float = 0.3,
                    p_out: float = 0.005, communities: int = 4) -> jraph.GraphsTuple:
  """Communities of a stochastic block model; features say the community, plus noise."""
  rng = np.random.default_rng(seed)
  block = np.arange(num_nodes) % communities
  prob = np.where(block[:, None] == block[None, :], p_in, p_out)
  upper = np.triu(rng.random((num_nodes, num_nodes)) < prob, k=1)
  u, v = np.nonzero(upper)
  x = np.eye(communities, dtype=np.float32)[block] + 0.1 * rng.standard_normal(
      (num_nodes, communities)).astype(np.float32)
  return ds.make_graph(np.concatenate([u, v]), np.concatenate([v, u]), num_nodes, {"x": x})


def link_dataset(num_graphs: int = 1, seed: int = 0) -> ds.GraphDataset:
  base = ds.GraphDataset("communities", [community_graph(seed=seed + i) for i in range(num_graphs)],
                         ds.NODE, ds.MULTICLASS, 4)
  return links.as_link_task(base)


def test_link_split_partitions_edges_and_draws_true_negatives():
  graph = community_graph(seed=3)
  edges = links.undirected_edges(graph)
  edge_set = {tuple(e) for e in edges.tolist()}
  split = links.link_split(graph, seed=7)
  pairs, labels = split.globals["pairs"][0], split.globals["pair_y"][0]
  masks = {s: split.globals[f"pair_{s}_mask"][0] for s in ("train", "val", "test")}
  # Every pair belongs to exactly one split.
  np.testing.assert_array_equal(sum(m.astype(int) for m in masks.values()), 1)
  positives = {s: {tuple(p) for p in pairs[masks[s] & (labels == 1)].tolist()} for s in masks}
  assert set().union(*positives.values()) == edge_set
  assert sum(len(p) for p in positives.values()) == len(edges)
  sizes = [len(positives[s]) for s in ("train", "val", "test")]
  assert sizes[1] == int(0.1 * len(edges)) and sizes[0] == int(0.8 * len(edges))
  negatives = pairs[labels == 0]
  assert len(negatives) == len(edges)  # ratio 1 in every split
  assert all(tuple(p) not in edge_set and p[0] < p[1] for p in negatives.tolist())
  assert len({tuple(p) for p in negatives.tolist()}) == len(negatives)
  for s in masks:  # one negative per positive, per split
    assert (masks[s] & (labels == 0)).sum() == len(positives[s])
  # Message passing sees the train edges in both directions and nothing else.
  mp = set(zip(split.senders.tolist(), split.receivers.tolist()))
  expected = positives["train"] | {(b, a) for a, b in positives["train"]}
  assert mp == expected and split.n_edge[0] == len(expected)
  np.testing.assert_array_equal(split.nodes["x"], graph.nodes["x"])


def test_link_split_is_a_function_of_the_seed():
  graph = community_graph(seed=1)
  a, b, c = (links.link_split(graph, seed=s) for s in (4, 4, 5))
  np.testing.assert_array_equal(a.globals["pairs"], b.globals["pairs"])
  assert not np.array_equal(a.globals["pairs"], c.globals["pairs"])


def test_link_split_errors():
  graph = community_graph(num_nodes=6, p_in=1.0, p_out=1.0)  # complete graph: no non-edges
  with pytest.raises(ValueError, match="negative pairs"):
    links.link_split(graph)
  with pytest.raises(ValueError, match="negative_ratio"):
    links.link_split(community_graph(), negative_ratio=-1)
  with pytest.raises(ValueError, match="not a link task"):
    links.split_links(ds.GraphDataset("g", [community_graph()], ds.NODE, ds.MULTICLASS, 2))
  with pytest.raises(ValueError, match="edges"):
    data_lib.apply_split(link_dataset(), "scaffold")


def _batch(dataset: ds.GraphDataset) -> jraph.GraphsTuple:
  packed = batching.PackedGraphs.from_graphs(dataset.graphs)
  return packed.gather(np.arange(len(dataset)), batching.budget_ladder(packed, len(dataset))[-1])


def test_targets_and_mask_flattens_pairs_and_masks_padding():
  dataset = links.split_links(link_dataset(num_graphs=2), seed=0)
  batch = _batch(dataset)
  labels, mask = losses.targets_and_mask(batch, ds.EDGE, ds.BINARY, "val")
  num_slots, num_pairs = batch.globals["pairs"].shape[:2]
  assert labels.shape == mask.shape == (num_slots * num_pairs,)
  real = np.asarray(graph_lib.graph_mask(batch))
  expected = (np.asarray(batch.globals["pair_val_mask"]) & real[:, None]).reshape(-1)
  np.testing.assert_array_equal(mask, expected)
  everything = losses.targets_and_mask(batch, ds.EDGE, ds.BINARY, None)[1]
  real_pairs = sum(int(g.globals[f"pair_{s}_mask"].sum()) for g in dataset.graphs
                   for s in ("train", "val", "test"))
  assert everything.sum() == real_pairs
  assert dataset.graphs[0].globals["pairs"].shape == dataset.graphs[1].globals["pairs"].shape


def _model(decoding: str, **design):
  design = Design(**{"dim_inner": 8, "layers_pre_mp": 1, "layers_mp": 2, "layers_post_mp": 2,
                     **design})
  return graphgym.GraphGymGNN(design, 1, ds.EDGE, edge_decoding=decoding)


@pytest.mark.parametrize("decoding", ["dot", "cosine_similarity", "concat"])
def test_edge_head_scores_each_graph_with_its_own_nodes(decoding):
  """A pair's logit in a batch of graphs equals its logit with the graph alone (node offsets),
  and padding never changes a real logit."""
  dataset = links.split_links(link_dataset(num_graphs=3), seed=1)
  model = _model(decoding, batch_norm=False)
  batch = _batch(dataset)
  params = model.init(jax.random.PRNGKey(0), batch)
  together = np.asarray(model.apply(params, batch)).reshape(batch.globals["pairs"].shape[:2])
  for i in range(len(dataset)):
    alone = np.asarray(model.apply(params, _batch(dataset.subset([i]))))
    num_pairs = int(sum(dataset.graphs[i].globals[f"pair_{s}_mask"].sum()
                        for s in ("train", "val", "test")))
    np.testing.assert_allclose(together[i, :num_pairs], alone[:num_pairs], rtol=1e-5, atol=1e-6)
  noisy = batch._replace(nodes={"x": jnp.where(graph_lib.node_mask(batch)[:, None],
                                               batch.nodes["x"], 1e3)})
  np.testing.assert_allclose(
      np.asarray(model.apply(params, noisy)).reshape(together.shape)[:len(dataset)],
      together[:len(dataset)], rtol=1e-5, atol=1e-6)
  if decoding == "cosine_similarity":
    assert np.all(np.abs(together) <= 1 + 1e-5)


def test_dot_decoding_is_the_inner_product_of_head_embeddings():
  """With one post-MP layer, the head is a Linear h -> h: logits = <W h_u + b, W h_v + b>."""
  dataset = links.split_links(link_dataset(), seed=2)
  model = _model("dot", layers_post_mp=1, stage_type="skipsum", batch_norm=False)
  batch = _batch(dataset)
  variables = model.init(jax.random.PRNGKey(1), batch)
  logits = np.asarray(model.apply(variables, batch))
  # The node-task model with 8 outputs and the same parameters computes W h + b per node [N, 8]
  # (stage width 8 = dim_inner, so its post_mp_out has the edge head's shape).
  node_model = graphgym.GraphGymGNN(model.design, 8, ds.NODE)
  embeddings = np.asarray(node_model.apply(variables, batch), np.float64)
  pairs = np.asarray(batch.globals["pairs"][0], np.int64)
  expected = np.sum(embeddings[pairs[:, 0]] * embeddings[pairs[:, 1]], axis=-1)
  np.testing.assert_allclose(logits[:len(pairs)], expected, rtol=1e-5, atol=1e-5)


def test_edge_head_rejects_bad_settings():
  batch = _batch(links.split_links(link_dataset(), seed=0))
  with pytest.raises(ValueError, match="edge_decoding"):
    _model("hadamard").init(jax.random.PRNGKey(0), batch)
  model = graphgym.GraphGymGNN(Design(dim_inner=8), 3, ds.EDGE)
  with pytest.raises(ValueError, match="one logit per pair"):
    model.init(jax.random.PRNGKey(0), batch)


def test_link_prediction_trains_on_communities():
  """A GraphGym design learns to tell intra-community pairs from random pairs. Chance is AUC 0.5;
  features alone reach ~0.94 (7 in 8 random pairs cross communities, 1 in 8 is a tie)."""
  base = ds.GraphDataset("communities", [community_graph(160, communities=8)], ds.NODE,
                         ds.MULTICLASS, 8)
  dataset, graph_splits = data_lib.apply_split(links.as_link_task(base), "default", seed=0)
  assert graph_splits is None
  design = Design(dim_inner=16, layers_mp=2, epochs=60)
  model, design = graphgym.build_model(design, dataset)
  pipe = pipeline_lib.make_pipeline(dataset, None, batch_size=1)
  assert isinstance(pipe, pipeline_lib.EdgeTaskPipeline)
  assert pipe.split_names == ["train", "val", "test"]
  result = loop.fit(model, pipe, dataset.task_type,
                    optim.OptimConfig(learning_rate=0.01, epochs=60),
                    loop.FitConfig(epochs=60, eval_every=20))
  assert result.status == "ok"
  assert result.best["val"]["roc_auc"] > 0.85, result.best
  assert result.best["test"]["roc_auc"] > 0.85, result.best
  assert result.best["train"]["roc_auc"] > 0.9, result.best


def test_registry_builds_link_tasks(data_dir):
  dataset = data_lib.load_dataset("cora/link", data_dir)
  assert (dataset.task_level, dataset.task_type, dataset.num_outputs) == (ds.EDGE, ds.BINARY, 1)
  split, _ = data_lib.apply_split(dataset, "default", seed=0)
  graph = split.graphs[0]
  num_undirected = len(links.undirected_edges(dataset.graphs[0]))
  assert graph.globals["pair_y"].sum() == num_undirected
  assert graph.n_edge[0] == 2 * int(0.8 * num_undirected)
