"""Tests of the TU Dortmund loader on the shipped datasets and on small hand-written files."""

from __future__ import annotations

import io
import shutil
import time
import zipfile

import numpy as np
import pytest

from gnnjax.data import sources, tu
from gnnjax.data.dataset import GRAPH, MULTICLASS, DataFormatError

SHIPPED = ("BZR", "DHFR", "MUTAG", "NCI109", "PROTEINS")
# Published sizes: graphs, nodes, directed edges (lines of _A.txt), graph class sizes after
# remapping to 0..C-1, node feature width (attributes + one-hot labels), edge feature width.
FACTS = {
    "MUTAG": (188, 3371, 7442, [63, 125], 7, 4),
    "PROTEINS": (1113, 43471, 162088, [663, 450], 1 + 3, 0),
    "NCI109": (4127, 122494, 265208, [2048, 2079], 38, 0),
    "BZR": (405, 14479, 31070, [319, 86], 3 + 53, 0),
    "DHFR": (756, 32075, 67352, [295, 461], 3 + 53, 0),
}


@pytest.fixture(scope="module")
def loaded(request):
  root = request.getfixturevalue("data_dir")
  start = time.perf_counter()
  datasets = {name: tu.load_tu(name, root, use_node_attr=True) for name in SHIPPED}
  return datasets, time.perf_counter() - start


def _plain_lines(path):
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def _reference(folder, name):
  """The dataset read the slow obvious way: per-graph node lists, edges and labels."""
  indicator = [int(v) for v in _plain_lines(folder / f"{name}_graph_indicator.txt")]
  node_labels = [int(v) for v in _plain_lines(folder / f"{name}_node_labels.txt")]
  graph_labels = [int(v) for v in _plain_lines(folder / f"{name}_graph_labels.txt")]
  nodes_of = {}
  for node, graph in enumerate(indicator, start=1):
    nodes_of.setdefault(graph, []).append(node)
  edges_of = {}
  for line in _plain_lines(folder / f"{name}_A.txt"):
    i, j = (int(v) for v in line.split(","))
    edges_of.setdefault(indicator[i - 1], []).append((i, j))
  return indicator, node_labels, graph_labels, nodes_of, edges_of


@pytest.mark.parametrize("name", SHIPPED)
def test_published_counts(loaded, name):
  dataset = loaded[0][name]
  num_graphs, num_nodes, num_edges, class_counts, node_width, edge_width = FACTS[name]
  assert (dataset.task_level, dataset.task_type, dataset.num_outputs) == (GRAPH, MULTICLASS, 2)
  assert len(dataset) == num_graphs
  assert sum(int(g.n_node[0]) for g in dataset.graphs) == num_nodes
  assert sum(int(g.n_edge[0]) for g in dataset.graphs) == num_edges
  assert np.bincount(dataset.graph_labels).tolist() == class_counts
  assert dataset.num_node_features == node_width
  assert dataset.num_edge_features == edge_width
  graph = dataset.graphs[0]
  assert graph.nodes["x"].dtype == np.float32
  assert graph.globals["y"].dtype == np.int32 and graph.globals["y"].shape == (1,)
  assert graph.senders.dtype == np.int32


@pytest.mark.parametrize("name", SHIPPED)
def test_graphs_match_slow_reading(loaded, data_dir, name):
  dataset = loaded[0][name]
  folder = data_dir / "tu" / name
  _, node_labels, graph_labels, nodes_of, edges_of = _reference(folder, name)
  assert len(nodes_of) == len(dataset)
  raw_classes = sorted(set(graph_labels))
  assert dataset.report["label_map"] == {raw: i for i, raw in enumerate(raw_classes)}
  min_label = min(node_labels)
  attributes_path = folder / f"{name}_node_attributes.txt"
  num_attributes = 0
  if attributes_path.is_file():
    num_attributes = len(_plain_lines(attributes_path)[0].split(","))
  for g, graph in enumerate(dataset.graphs):
    nodes = nodes_of[g + 1]
    first = nodes[0]
    assert int(graph.n_node[0]) == len(nodes)
    assert int(graph.globals["y"][0]) == raw_classes.index(graph_labels[g])
    ours = sorted(zip((graph.senders + first).tolist(), (graph.receivers + first).tolist()))
    assert ours == sorted(edges_of.get(g + 1, []))
    one_hot = graph.nodes["x"][:, num_attributes:]
    assert (one_hot.sum(axis=1) == 1).all()
    assert one_hot.argmax(axis=1).tolist() == [node_labels[v - 1] - min_label for v in nodes]


def test_mutag_edge_labels_and_node_width(loaded, data_dir):
  dataset = loaded[0]["MUTAG"]
  folder = data_dir / "tu" / "MUTAG"
  edge_labels = [int(v) for v in _plain_lines(folder / "MUTAG_edge_labels.txt")]
  node_labels = [int(v) for v in _plain_lines(folder / "MUTAG_node_labels.txt")]
  assert (len(set(node_labels)), len(set(edge_labels))) == (7, 4)
  # Edges keep file order within each graph, so edge labels line up row by row.
  ours = np.concatenate([g.edges["x"].argmax(axis=1) for g in dataset.graphs])
  assert ours.tolist() == [v - min(edge_labels) for v in edge_labels]
  assert dataset.report["label_map"] == {-1: 0, 1: 1}


def test_proteins_attributes_come_first(loaded, data_dir):
  dataset = loaded[0]["PROTEINS"]
  path = data_dir / "tu" / "PROTEINS" / "PROTEINS_node_attributes.txt"
  attributes = [float(v) for v in _plain_lines(path)]
  ours = np.concatenate([g.nodes["x"][:, 0] for g in dataset.graphs])
  np.testing.assert_allclose(ours, attributes, rtol=1e-6)
  assert dataset.report["label_map"] == {1: 0, 2: 1}


def test_loading_all_five_is_fast(loaded):
  assert loaded[1] < 10.0, f"loading {SHIPPED} took {loaded[1]:.1f} s"


def test_names(data_dir):
  assert tu.load_tu("mutag", data_dir).name == "MUTAG"
  with pytest.raises(ValueError, match="MUTAG"):
    tu.load_tu("../planetoid", data_dir)


# ----------------------------------------------------------------------------- small datasets


def _write(root, name, **files):
  """Writes tu/<name>/<name>_<kind>.txt for each keyword kind=text."""
  folder = root / "tu" / name
  folder.mkdir(parents=True, exist_ok=True)
  for kind, text in files.items():
    (folder / f"{name}_{kind}.txt").write_text(text)
  return folder


# Two graphs: a triangle-less path 1-2-3 (graph 1) and an edge 4-5 (graph 2).
TOY = {
    "A": "1, 2\n2, 1\n2, 3\n3, 2\n4, 5\n5, 4\n",
    "graph_indicator": "1\n1\n1\n2\n2\n",
    "graph_labels": "-1\n1\n",
}


def test_toy_dataset_features_and_local_ids(tmp_path):
  _write(tmp_path, "TOY", **TOY, node_labels="3, 0\n5, 1\n3, 0\n4, 1\n5, 0\n",
         node_attributes="0.5, 1\n1.5, 2\n2.5, 3\n3.5, 4\n4.5, 5\n",
         edge_labels="1\n1\n2\n2\n1\n1\n", edge_attributes="0.1\n0.2\n0.3\n0.4\n0.5\n0.6\n")
  dataset = tu.load_tu("TOY", tmp_path, use_node_attr=True, use_edge_attr=True)
  first, second = dataset.graphs
  # Attributes (2), then label column 1 one-hot over 3..5 (3), then column 2 over 0..1 (2).
  np.testing.assert_array_equal(first.nodes["x"], np.array([
      [0.5, 1, 1, 0, 0, 1, 0],
      [1.5, 2, 0, 0, 1, 0, 1],
      [2.5, 3, 1, 0, 0, 1, 0]], np.float32))
  np.testing.assert_array_equal(second.nodes["x"][:, :2], [[3.5, 4], [4.5, 5]])
  np.testing.assert_array_equal(second.senders, [0, 1])
  np.testing.assert_array_equal(second.receivers, [1, 0])
  np.testing.assert_allclose(first.edges["x"], [[0.1, 1, 0], [0.2, 1, 0], [0.3, 0, 1],
                                                [0.4, 0, 1]], rtol=1e-6)
  assert [int(g.globals["y"][0]) for g in dataset.graphs] == [0, 1]
  assert dataset.report["edge_features"] == "attributes + one-hot labels"


def test_edges_listed_out_of_graph_order_keep_their_labels(tmp_path):
  _write(tmp_path, "MIX", A="4, 5\n1, 2\n5, 4\n2, 3\n2, 1\n3, 2\n",
         graph_indicator=TOY["graph_indicator"], graph_labels=TOY["graph_labels"],
         edge_labels="0\n1\n2\n3\n4\n5\n")
  first, second = tu.load_tu("MIX", tmp_path).graphs

  def label_of_edge(graph, first_node):
    labels = graph.edges["x"].argmax(axis=1)
    return {(int(s) + first_node, int(r) + first_node): int(label)
            for s, r, label in zip(graph.senders, graph.receivers, labels)}

  assert label_of_edge(first, 1) == {(1, 2): 1, (2, 3): 3, (2, 1): 4, (3, 2): 5}
  assert label_of_edge(second, 4) == {(4, 5): 0, (5, 4): 2}


@pytest.mark.parametrize("raw,expected,mapping", [
    ("-1\n1\n-1\n", [0, 1, 0], {-1: 0, 1: 1}),
    ("0\n1\n1\n", [0, 1, 1], {0: 0, 1: 1}),
    ("2\n1\n2\n", [1, 0, 1], {1: 0, 2: 1}),
    ("7\n3\n5\n", [2, 0, 1], {3: 0, 5: 1, 7: 2}),
])
def test_graph_label_remapping(tmp_path, raw, expected, mapping):
  _write(tmp_path, "LBL", A="1, 2\n2, 1\n", graph_indicator="1\n1\n2\n3\n", graph_labels=raw)
  dataset = tu.load_tu("LBL", tmp_path)
  assert dataset.graph_labels.tolist() == expected
  assert dataset.report["label_map"] == mapping
  assert dataset.num_outputs == len(mapping)
  # Graphs 2 and 3 have no edges; no node labels or attributes gives a constant feature.
  assert [int(g.n_edge[0]) for g in dataset.graphs] == [2, 0, 0]
  np.testing.assert_array_equal(dataset.graphs[0].nodes["x"], np.ones((2, 1), np.float32))
  assert dataset.num_edge_features == 0


def test_remote_only_dataset_from_archive(tmp_path, monkeypatch):
  """With no local copy, members come from the zip; absent optional members are tolerated."""
  monkeypatch.delenv(sources.ENV_DATA, raising=False)
  archive = io.BytesIO()
  with zipfile.ZipFile(archive, "w") as z:
    for kind, text in TOY.items():
      z.writestr(f"TOY/TOY_{kind}.txt", text)
    z.writestr("TOY/TOY_node_labels.txt", "0\n1\n0\n1\n2\n")
  requested = []

  def serve(url, timeout=60.0):
    requested.append(url)
    return archive.getvalue()

  monkeypatch.setattr(sources, "_download", serve)
  dataset = tu.load_tu("TOY", tmp_path / "empty")
  assert set(requested) == {"https://www.chrsmrrs.com/graphkerneldatasets/TOY.zip"}
  assert set(dataset.report["source"]) == {"A", "graph_indicator", "graph_labels", "node_labels"}
  assert dataset.num_node_features == 3
  assert (sources.cache_dir() / "tu" / "TOY" / "TOY_node_labels.txt").is_file()


@pytest.mark.parametrize("name", ["MUTAG", "PROTEINS"])
def test_embedded_checksums_match_shipped_files(data_dir, tmp_path, monkeypatch, name):
  """The shipped files, served as the canonical archive, pass the embedded SHA-256 checks."""
  monkeypatch.delenv(sources.ENV_DATA, raising=False)
  archive = io.BytesIO()
  with zipfile.ZipFile(archive, "w") as z:
    for path in sorted((data_dir / "tu" / name).iterdir()):
      z.writestr(f"{name}/{path.name}", path.read_bytes())
  monkeypatch.setattr(sources, "_download", lambda url, timeout=60.0: archive.getvalue())
  assert len(tu.load_tu(name, tmp_path / "empty")) == FACTS[name][0]

  shutil.rmtree(sources.cache_dir())
  tampered = io.BytesIO()
  with zipfile.ZipFile(tampered, "w") as z:
    z.writestr(f"{name}/{name}_A.txt", b"1, 2\n")
  monkeypatch.setattr(sources, "_download", lambda url, timeout=60.0: tampered.getvalue())
  with pytest.raises(sources.DatasetChecksumError):
    tu.load_tu(name, tmp_path / "other")


def test_embedded_checksums_cover_shipped_files(data_dir):
  listed = {}
  for line in (data_dir / "SHA256SUMS").read_text().splitlines():
    digest, path = line.split()
    if path.startswith("tu/") and not path.endswith("README.txt"):
      _, name, filename = path.split("/")
      listed[(name, filename[len(name) + 1:-len(".txt")])] = digest
  for (name, kind), digest in listed.items():
    assert tu._remote(name, kind).sha256 == digest  # pylint: disable=protected-access
  assert {name for name, _ in listed} == set(SHIPPED)


# ----------------------------------------------------------------------------- malformed files


def _load_bad(tmp_path, **changes):
  _write(tmp_path, "BAD", **{**TOY, **changes})
  return tu.load_tu("BAD", tmp_path, use_node_attr=True, use_edge_attr=True)


@pytest.mark.parametrize("changes,pattern", [
    (dict(A="1, 2\n2, 1\n2, 3.5\n"), r"BAD_A\.txt, line 3: '3\.5' is not an integer"),
    (dict(A="1, 2\n\n2, x\n"), r"BAD_A\.txt, line 3: 'x' is not an integer"),
    (dict(A="1, 2\n2, 1, 3\n"), r"BAD_A\.txt, line 2: .* 3 comma-separated values, expected 2"),
    (dict(A="1\n2\n"), r"BAD_A\.txt, line 1: 1 comma-separated values per line, expected 2"),
    (dict(A="1, 2\n2, 6\n"), r"BAD_A\.txt, line 2: edge \[2, 6\] names a node outside 1\.\.5"),
    (dict(A="1, 2\n\n0, 1\n"), r"BAD_A\.txt, line 3: edge \[0, 1\] names a node outside"),
    (dict(A="1, 2\n3, 4\n"), r"BAD_A\.txt, line 2: edge 3, 4 joins graph 1 to graph 2"),
    (dict(graph_indicator="1\n1\none\n2\n2\n"),
     r"BAD_graph_indicator\.txt, line 3: 'one' is not an integer"),
    (dict(graph_indicator="1\n1\n1\n3\n3\n"),
     r"BAD_graph_indicator\.txt, line 4: graph id 3 after graph id 1"),
    (dict(graph_indicator="2\n2\n2\n3\n3\n"),
     r"BAD_graph_indicator\.txt, line 1: graph id 2 after the start"),
    (dict(graph_indicator="1\n2\n1\n2\n2\n"),
     r"BAD_graph_indicator\.txt, line 3: graph id 1 after graph id 2"),
    (dict(graph_indicator=""), r"BAD_graph_indicator\.txt: no nodes"),
    (dict(graph_labels="1\n"), r"BAD_graph_labels\.txt: 1 rows, expected 2 \(one per graph"),
    (dict(graph_labels="1\n-1\n1\n"), r"BAD_graph_labels\.txt: 3 rows, expected 2"),
    (dict(graph_labels="1\nA\n"), r"BAD_graph_labels\.txt, line 2: 'A' is not an integer"),
    (dict(graph_labels="1\n1\n"), r"BAD_graph_labels\.txt: every graph has label \[1\]"),
    (dict(node_labels="0\n1\n0\n1\n"), r"BAD_node_labels\.txt: 4 rows, expected 5 \(one per node"),
    (dict(node_labels="0\n1\n0\n1\n2.0\n"), r"BAD_node_labels\.txt, line 5: '2\.0' is not an int"),
    (dict(node_attributes="0.1\n0.2\n0.3\n0.4\n0.5\n0.6\n"),
     r"BAD_node_attributes\.txt: 6 rows, expected 5"),
    (dict(node_attributes="0.1\n0.2\nabc\n0.4\n0.5\n"),
     r"BAD_node_attributes\.txt, line 3: 'abc' is not a number"),
    (dict(edge_labels="0\n1\n0\n1\n0\n"),
     r"BAD_edge_labels\.txt: 5 rows, expected 6 \(one per edge"),
    (dict(edge_attributes="1\n2\n3\n4\n5\n6\n7\n"),
     r"BAD_edge_attributes\.txt: 7 rows, expected 6"),
])
def test_malformed_files(tmp_path, changes, pattern):
  with pytest.raises(DataFormatError, match=pattern):
    _load_bad(tmp_path, **changes)


def test_node_attributes_are_off_by_default_as_in_pyg(data_dir):
  plain = tu.load_tu("PROTEINS", data_dir)
  with_attr = tu.load_tu("PROTEINS", data_dir, use_node_attr=True)
  assert plain.num_node_features == 3  # one-hot labels only (GIN / GraphGym inputs)
  assert with_attr.num_node_features == 4
  np.testing.assert_array_equal(with_attr.graphs[5].nodes["x"][:, 1:], plain.graphs[5].nodes["x"])
