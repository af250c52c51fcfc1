"""Tests for GraphGym's synthetic tasks (gnnjax.data.synthetic)."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from gnnjax.data import synthetic
from gnnjax.data.dataset import GRAPH, MULTICLASS, NODE, DataFormatError
from gnnjax.data.sources import DatasetUnavailableError

NODES_PER_GRAPH = 64


@pytest.fixture(scope="module")
def published(request) -> dict[str, list]:
  """Both published families, read once per module."""
  data_dir = request.getfixturevalue("data_dir")
  return {family: synthetic.load_graphgym_graphs(family, data_dir)
          for family in synthetic.GENERATED_FAMILIES}


def _to_networkx(graph) -> nx.Graph:
  nx_graph = nx.Graph()
  nx_graph.add_nodes_from(range(int(graph.n_node[0])))
  nx_graph.add_edges_from(zip(graph.senders.tolist(), graph.receivers.tolist()))
  return nx_graph


# --- published graphs --------------------------------------------------------------------------


def test_published_graphs_store_both_directions_sorted(data_dir, published):
  raw = np.load(data_dir / "graphgym_synthetic" / "smallworld.npz")
  graphs = published["smallworld"]
  assert len(graphs) == 256
  starts = np.concatenate([[0], np.cumsum(raw["n_edge"])])
  for index in (0, 17, 255):
    graph = graphs[index]
    assert graph.n_node.tolist() == [NODES_PER_GRAPH]
    assert graph.senders.dtype == np.int32 and graph.receivers.dtype == np.int32
    assert int(graph.n_edge[0]) == 2 * int(raw["n_edge"][index]) == graph.senders.size
    pairs = list(zip(graph.receivers.tolist(), graph.senders.tolist()))
    assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs)
    file_edges = list(zip(raw["senders"][starts[index]:starts[index + 1]].tolist(),
                     raw["receivers"][starts[index]:starts[index + 1]].tolist()))
    expected = {(s, r) for s, r in file_edges} | {(r, s) for s, r in file_edges}
    assert set(zip(graph.senders.tolist(), graph.receivers.tolist())) == expected


@pytest.mark.parametrize("family, label, counts", [
    ("scalefree", "clustering", [3259, 2538, 3992, 2189, 4406]),
    ("smallworld", "clustering", [3273, 3060, 2869, 3374, 3808]),
    ("scalefree", "path_len", [51, 51, 51, 51, 52]),
    ("smallworld", "path_len", [51, 51, 50, 52, 52]),
])
def test_published_class_counts(data_dir, family, label, counts):
  dataset = synthetic.load_synthetic_task(family, label, "const", data_dir)
  assert dataset.report["class_counts"] == counts
  assert dataset.num_outputs == 5 and dataset.task_type == MULTICLASS
  if label == "path_len":
    assert dataset.task_level == GRAPH
    labels = dataset.graph_labels
  else:
    assert dataset.task_level == NODE
    labels = np.concatenate([graph.nodes["y"] for graph in dataset.graphs])
  assert labels.dtype == np.int32
  assert np.bincount(labels).tolist() == counts


@pytest.mark.parametrize("family, num_classes", [("ba", 3), ("ws", 4)])
def test_ties_collapse_classes_on_id_gnn_graphs(data_dir, family, num_classes):
  dataset = synthetic.load_synthetic_task(family, "clustering", "const", data_dir)
  assert len(dataset) == 100 and dataset.num_outputs == num_classes
  labels = np.concatenate([graph.nodes["y"] for graph in dataset.graphs])
  assert labels.max() == num_classes - 1 and np.bincount(labels).min() > 0


def test_published_bin_edges(data_dir):
  clustering = synthetic.load_synthetic_task("smallworld", "clustering", "const", data_dir)
  np.testing.assert_allclose(clustering.report["label_bin_edges"], [0, 0.292, 0.4, 0.5, 0.6],
                             atol=1e-3)
  path_len = synthetic.load_synthetic_task("scalefree", "path_len", "const", data_dir)
  np.testing.assert_allclose(path_len.report["label_bin_edges"],
                             [1.714, 1.893, 2.228, 2.514, 2.850], atol=1e-3)


def test_published_pagerank_task(data_dir):
  dataset = synthetic.load_synthetic_task("scalefree", "pagerank", "clustering", data_dir)
  counts = np.array(dataset.report["class_counts"])
  # Quantile classes of 16,384 distinct-ish values are within a node or two of N / 5.
  assert counts.sum() == 256 * NODES_PER_GRAPH
  assert np.abs(counts - 256 * NODES_PER_GRAPH / 5).max() <= 2
  assert dataset.report["feature_max"] == 1.0  # some node has clustering 1
  assert dataset.name == "scalefree/pagerank/clustering"


def test_pagerank_feature_scale_matches_brief(data_dir):
  dataset = synthetic.load_synthetic_task("smallworld", "path_len", "pagerank", data_dir)
  assert dataset.report["feature_max"] == pytest.approx(0.0361, abs=1e-4)
  graph = dataset.graphs[0]
  assert graph.nodes["x"].shape == (NODES_PER_GRAPH, 11) and graph.nodes["x"].dtype == np.float32
  assert graph.globals["y"].shape == (1,) and graph.globals["y"].dtype == np.int32
  assert "y" not in graph.nodes


# --- structural quantities against networkx ----------------------------------------------------


def test_structural_quantities_match_networkx(published):
  for family, graphs in published.items():
    for graph in graphs[::37]:
      nx_graph = _to_networkx(graph)
      adjacency = synthetic.adjacency_matrix(graph.senders, graph.receivers, NODES_PER_GRAPH)
      clustering = nx.clustering(nx_graph)
      assert synthetic.node_clustering(adjacency).tolist() == [
          clustering[node] for node in range(NODES_PER_GRAPH)], family
      assert synthetic.average_clustering(adjacency) == nx.average_clustering(nx_graph)
      assert (synthetic.average_shortest_path_length(adjacency)
              == nx.average_shortest_path_length(nx_graph))
      pagerank = nx.pagerank(nx_graph)
      np.testing.assert_allclose(synthetic.node_pagerank(graph),
                                 [pagerank[node] for node in range(NODES_PER_GRAPH)], rtol=1e-12)


def test_path_length_of_disconnected_graph_is_none():
  adjacency = synthetic.adjacency_matrix(np.array([0, 2]), np.array([1, 3]), 4)
  assert synthetic.average_shortest_path_length(adjacency) is None
  path = synthetic.adjacency_matrix(np.array([0, 1, 2]), np.array([1, 2, 3]), 4)
  assert synthetic.average_shortest_path_length(path) == nx.average_shortest_path_length(
      nx.path_graph(4))


# --- label binning and feature encoding --------------------------------------------------------


def _slow_balanced_bins(values, num_bins=5):
  ordered = sorted(values)
  edges = []
  for i in range(num_bins):
    edge = ordered[int(len(values) * i / num_bins)]
    if edge not in edges:
      edges.append(edge)
  classes = []
  for value in values:
    last = 0
    for index, edge in enumerate(edges):
      if edge <= value:
        last = index
    classes.append(last)
  return classes, edges


@pytest.mark.parametrize("values", [
    np.random.default_rng(0).normal(size=203),
    np.random.default_rng(1).integers(0, 4, size=97).astype(float),  # ties collapse classes
    np.array([0.0] * 50 + [1.0] * 10),
    np.arange(10.0),
])
def test_balanced_bins_match_slow_reference(values):
  classes, edges = synthetic.balanced_bins(values)
  expected_classes, expected_edges = _slow_balanced_bins(values.tolist())
  assert classes.dtype == np.int32
  assert classes.tolist() == expected_classes
  assert edges.tolist() == expected_edges


def test_position_encoding_matches_formula():
  values = np.array([0.0, 0.3, 1.7, 4.0])
  encoding = synthetic.position_encoding(values, max_value=4.0)
  assert encoding.shape == (4, 10)
  for row, value in enumerate(values):
    position = value * 5 / 4.0
    expected = ([math.cos(position * 10000 ** (-k / 5)) for k in range(5)]
                + [math.sin(position * 10000 ** (-k / 5)) for k in range(5)])
    np.testing.assert_allclose(encoding[row], expected, rtol=0, atol=1e-12)


def test_const_feature_is_one_vector_plus_bias(published):
  inputs, max_value = synthetic.node_inputs(published["scalefree"][:3], "const")
  assert max_value == 1.0
  expected = [math.cos(5 * 10000 ** (-k / 5)) for k in range(5)] + [
      math.sin(5 * 10000 ** (-k / 5)) for k in range(5)] + [1.0]
  for x in inputs:
    assert x.dtype == np.float32 and x.shape == (NODES_PER_GRAPH, 11)
    np.testing.assert_allclose(x, np.tile(expected, (NODES_PER_GRAPH, 1)), atol=1e-6)


def _decode_onehot(x: np.ndarray) -> np.ndarray:
  # The slowest sine is nearly linear: sin(p w_4) ~ p w_4 with p = v * 5 / 63.
  slowest = 10000 ** (-4 / 5)
  return np.rint(np.arcsin(x[:, 9].astype(np.float64)) / slowest * 63 / 5).astype(int)


def test_onehot_feature_is_seeded_node_permutation(published):
  graphs = published["smallworld"][:4]
  first, max_value = synthetic.node_inputs(graphs, "onehot", seed=0)
  again, _ = synthetic.node_inputs(graphs, "onehot", seed=0)
  other, _ = synthetic.node_inputs(graphs, "onehot", seed=1)
  assert max_value == NODES_PER_GRAPH - 1
  for x, y, z in zip(first, again, other):
    np.testing.assert_array_equal(x, y)
    assert not np.array_equal(x, z)
    ids = _decode_onehot(x)
    assert sorted(ids.tolist()) == list(range(NODES_PER_GRAPH))
    assert ids.tolist() != list(range(NODES_PER_GRAPH))


# --- task list and names -----------------------------------------------------------------------


def test_synthetic_task_list():
  tasks = synthetic.SYNTHETIC_TASKS
  assert len(tasks) == len(set(tasks)) == 20
  by_label = {label: sum(task[1] == label for task in tasks) for label in synthetic.LABELS}
  assert by_label == {"clustering": 6, "pagerank": 6, "path_len": 8}
  assert all(feature != label for _, label, feature in tasks)
  assert {family for family, _, _ in tasks} == {"smallworld", "scalefree"}


def test_unknown_names_list_valid_ones(data_dir):
  with pytest.raises(ValueError, match="valid: .*path_len"):
    synthetic.load_synthetic_task("smallworld", "degree", "const", data_dir)
  with pytest.raises(ValueError, match="valid: .*onehot"):
    synthetic.load_synthetic_task("smallworld", "clustering", "random", data_dir)
  with pytest.raises(ValueError, match="valid: .*smallworld"):
    synthetic.load_graphgym_graphs("erdos", data_dir)
  with pytest.raises(ValueError, match="valid: .*scalefree"):
    synthetic.generate_graphs("ba", num_graphs=2)
  with pytest.raises(ValueError, match="need num_nodes > 22, got 20"):
    synthetic.generate_graphs("smallworld", num_graphs=2, num_nodes=20)
  with pytest.raises(ValueError, match="num_graphs must be positive"):
    synthetic.generate_graphs("scalefree", num_graphs=0)


# --- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", synthetic.GENERATED_FAMILIES)
def test_generation_is_reproducible(family):
  first = synthetic.generate_graphs(family, num_graphs=6, seed=0)
  again = synthetic.generate_graphs(family, num_graphs=6, seed=0)
  other = synthetic.generate_graphs(family, num_graphs=6, seed=1)
  assert len(first) == 6
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a.senders, b.senders)
    np.testing.assert_array_equal(a.receivers, b.receivers)
  assert any(a.senders.size != c.senders.size or not np.array_equal(a.senders, c.senders)
             or not np.array_equal(a.receivers, c.receivers) for a, c in zip(first, other))


@pytest.mark.parametrize("family", synthetic.GENERATED_FAMILIES)
def test_generated_graphs_follow_generator_parameters(family):
  # Watts-Strogatz keeps n k / 2 edges; Holme-Kim adds up to m edges per node after the first m
  # (a triad-formation step can find no new neighbour).
  n = NODES_PER_GRAPH
  if family == "scalefree":
    allowed = range(2 * (n - 2), 11 * (n - 11) + 1)
  else:
    allowed = {n * k // 2 for k in range(4, 23, 2)}
  for graph in synthetic.generate_graphs(family, num_graphs=10, seed=3):
    nx_graph = _to_networkx(graph)
    assert nx.is_connected(nx_graph) and nx.number_of_selfloops(nx_graph) == 0
    assert nx_graph.number_of_edges() in allowed
    assert graph.senders.size == 2 * nx_graph.number_of_edges()
    pairs = list(zip(graph.receivers.tolist(), graph.senders.tolist()))
    assert pairs == sorted(pairs)


def test_stratified_generation_caps_cells():
  # 70 graphs -> at most ceil(70 / 64) = 2 per (clustering, path length) cell.
  graphs = synthetic.generate_graphs("scalefree", num_graphs=70, seed=0)
  assert len(graphs) == 70
  cells = np.zeros((8, 8), int)
  for graph in graphs:
    nx_graph = _to_networkx(graph)
    cells[np.digitize(nx.average_clustering(nx_graph), np.linspace(0.3, 0.6, 7)),
          np.digitize(nx.average_shortest_path_length(nx_graph), np.linspace(1.8, 3.0, 7))] += 1
  assert cells.max() == 2 and cells.sum() == 70


def test_generation_gives_up_after_max_attempts():
  with pytest.raises(RuntimeError, match=r"accepted only \d+ graphs in 30 draws.*cells"):
    synthetic.generate_graphs("smallworld", num_graphs=64, seed=0, max_attempts=30)


def test_generated_task(tmp_path):
  dataset = synthetic.load_synthetic_task("smallworld", "clustering", "pagerank",
                                          data_dir=tmp_path, generate=True, num_graphs=10, seed=2)
  assert len(dataset) == 10 and dataset.task_level == NODE
  assert sum(dataset.report["class_counts"]) == 10 * NODES_PER_GRAPH
  assert "generate_graphs" in dataset.report["source"]


# --- missing and malformed files ---------------------------------------------------------------


def test_missing_file_says_where_and_how_to_generate(tmp_path, monkeypatch):
  monkeypatch.delenv("GNNJAX_DATA", raising=False)
  with pytest.raises(DatasetUnavailableError, match=r"graphgym_synthetic/ws\.npz.*generate_graphs"):
    synthetic.load_graphgym_graphs("ws", tmp_path)


def _write_npz(tmp_path, **arrays):
  folder = tmp_path / "graphgym_synthetic"
  folder.mkdir(exist_ok=True)
  np.savez(folder / "ba.npz", **arrays)
  return tmp_path


def _good_arrays():
  # Two graphs: a triangle (3 nodes) and a single edge (2 nodes), local ids.
  return dict(senders=np.array([0, 1, 0, 0], np.int32), receivers=np.array([1, 2, 2, 1], np.int32),
              n_node=np.array([3, 2], np.int32), n_edge=np.array([3, 1], np.int32))


def test_small_hand_written_file_loads(tmp_path, monkeypatch):
  monkeypatch.delenv("GNNJAX_DATA", raising=False)
  graphs = synthetic.load_graphgym_graphs("ba", _write_npz(tmp_path, **_good_arrays()))
  assert [g.n_node.tolist() for g in graphs] == [[3], [2]]
  assert graphs[0].receivers.tolist() == [0, 0, 1, 1, 2, 2]
  assert graphs[0].senders.tolist() == [1, 2, 0, 2, 0, 1]
  assert graphs[1].senders.tolist() == [1, 0] and graphs[1].receivers.tolist() == [0, 1]


@pytest.mark.parametrize("change, message", [
    (dict(n_edge=np.array([3, 2], np.int32)), r"n_edge sums to 5 but there are 4 edges"),
    (dict(receivers=np.array([1, 2, 2, 2], np.int32)),
     r"receivers\[3\] = 2 \(edge of graph 1\) is out of range.*\[0, 2\)"),
    (dict(senders=np.array([0, -1, 0, 0], np.int32)),
     r"senders\[1\] = -1 \(edge of graph 0\) is out of range"),
    (dict(receivers=np.array([1, 2, 2], np.int32)), r"senders has 4 entries but receivers has 3"),
    (dict(n_node=np.array([3, 2, 1], np.int32)), r"n_node has 3 entries but n_edge has 2"),
    (dict(n_node=np.array([3, -2], np.int32)), r"n_node\[1\] = -2"),
    (dict(senders=np.array([0.0, 1.0, 0.0, 0.0])), r"array 'senders' must be a 1-D integer vector"),
    (dict(n_edge=None), r"missing array\(s\) \['n_edge'\]"),
])
def test_malformed_npz_raises(tmp_path, monkeypatch, change, message):
  monkeypatch.delenv("GNNJAX_DATA", raising=False)
  arrays = _good_arrays()
  arrays.update(change)
  arrays = {name: value for name, value in arrays.items() if value is not None}
  data_dir = _write_npz(tmp_path, **arrays)
  with pytest.raises(DataFormatError, match=r"ba\.npz: " + message):
    synthetic.load_graphgym_graphs("ba", data_dir)


def test_not_an_npz_file_raises(tmp_path, monkeypatch):
  monkeypatch.delenv("GNNJAX_DATA", raising=False)
  (tmp_path / "graphgym_synthetic").mkdir()
  (tmp_path / "graphgym_synthetic" / "ba.npz").write_text("senders,receivers\n0,1\n")
  with pytest.raises(DataFormatError, match=r"ba\.npz: not a readable \.npz archive"):
    synthetic.load_graphgym_graphs("ba", tmp_path)


def test_single_npy_array_raises(tmp_path, monkeypatch):
  monkeypatch.delenv("GNNJAX_DATA", raising=False)
  (tmp_path / "graphgym_synthetic").mkdir()
  with open(tmp_path / "graphgym_synthetic" / "ba.npz", "wb") as f:
    np.save(f, np.arange(4))
  with pytest.raises(DataFormatError, match=r"ba\.npz: holds a single \.npy array"):
    synthetic.load_graphgym_graphs("ba", tmp_path)
