"""Tests of the Planetoid loader (Cora, CiteSeer) against published facts and the raw files."""

from __future__ import annotations

import collections
import os
import pickle
import shutil
import urllib.error
import warnings

import networkx as nx
import numpy as np
import pytest

from gnnjax.data import planetoid, sources
from gnnjax.data.dataset import MULTICLASS, NODE, DataFormatError

EXTENSIONS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
# Published facts: nodes, directed edges (both directions, no duplicates or self-loops),
# features, classes, public train / val / test sizes.
FACTS = {
    "cora": (2708, 10556, 1433, 7, 140, 500, 1000),
    "citeseer": (3327, 9104, 3703, 6, 120, 500, 1000),
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  """No test may reach the network."""
  def refuse(url, timeout=60.0):
    raise urllib.error.URLError(f"offline test, refused {url}")
  monkeypatch.setattr(sources, "_download", refuse)


def _raw(data_dir, name, ext):
  path = data_dir / "planetoid" / f"ind.{name}.{ext}"
  if ext == "test.index":
    return [int(line) for line in path.read_text().split()]
  with open(path, "rb") as f, warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # The files name scipy.sparse.csr.
    return pickle.load(f, encoding="latin1")


@pytest.fixture(scope="module")
def loaded(request):
  """Both datasets loaded once per module (public split)."""
  root = request.getfixturevalue("data_dir")
  return {name: planetoid.load_planetoid(name, root) for name in FACTS}


@pytest.mark.parametrize("name", list(FACTS))
def test_published_counts(loaded, name):
  num_nodes, num_edges, num_features, num_classes, n_train, n_val, n_test = FACTS[name]
  dataset = loaded[name]
  graph = dataset.graphs[0]
  assert len(dataset) == 1
  assert (dataset.task_level, dataset.task_type, dataset.num_outputs) == (NODE, MULTICLASS,
                                                                          num_classes)
  assert int(graph.n_node[0]) == num_nodes and int(graph.n_edge[0]) == num_edges
  assert graph.nodes["x"].shape == (num_nodes, num_features)
  assert graph.nodes["x"].dtype == np.float32
  assert graph.nodes["y"].dtype == np.int32 and graph.nodes["y"].shape == (num_nodes,)
  assert graph.senders.dtype == np.int32 and graph.receivers.dtype == np.int32
  masks = [graph.nodes[f"{k}_mask"] for k in ("train", "val", "test")]
  assert [int(m.sum()) for m in masks] == [n_train, n_val, n_test]
  assert ((masks[0].astype(int) + masks[1] + masks[2]) <= 1).all()


@pytest.mark.parametrize("name", list(FACTS))
def test_public_split_is_planetoid_split(loaded, data_dir, name):
  graph = loaded[name].graphs[0]
  num_classes = FACTS[name][3]
  train = np.flatnonzero(graph.nodes["train_mask"])
  np.testing.assert_array_equal(train, np.arange(num_classes * 20))
  assert np.bincount(graph.nodes["y"][train], minlength=num_classes).tolist() == [20] * num_classes
  np.testing.assert_array_equal(np.flatnonzero(graph.nodes["val_mask"]),
                                np.arange(num_classes * 20, num_classes * 20 + 500))
  np.testing.assert_array_equal(np.flatnonzero(graph.nodes["test_mask"]),
                                np.sort(_raw(data_dir, name, "test.index")))


@pytest.mark.parametrize("name", list(FACTS))
def test_features_and_labels_match_raw_rows(loaded, data_dir, name):
  """Node i carries allx/ally row i, or tx/ty row j where test.index[j] == i (slow loop)."""
  graph = loaded[name].graphs[0]
  allx, ally = _raw(data_dir, name, "allx").toarray(), _raw(data_dir, name, "ally")
  tx, ty = _raw(data_dir, name, "tx").toarray(), _raw(data_dir, name, "ty")
  test_index = _raw(data_dir, name, "test.index")
  num_nodes = graph.nodes["x"].shape[0]
  expected_x = np.zeros_like(graph.nodes["x"])
  expected_y = np.full(num_nodes, -1)
  for node in range(allx.shape[0]):
    expected_x[node] = allx[node]
    expected_y[node] = int(np.argmax(ally[node]))
  for row, node in enumerate(test_index):
    expected_x[node] = tx[row]
    expected_y[node] = int(np.argmax(ty[row]))
  np.testing.assert_array_equal(graph.nodes["x"], expected_x)
  labelled = expected_y >= 0
  np.testing.assert_array_equal(graph.nodes["label_mask"], labelled)
  np.testing.assert_array_equal(graph.nodes["y"][labelled], expected_y[labelled])


@pytest.mark.parametrize("name", list(FACTS))
def test_edges_match_networkx(loaded, data_dir, name):
  graph = loaded[name].graphs[0]
  reference = nx.Graph()
  reference.add_nodes_from(range(FACTS[name][0]))
  for node, neighbours in _raw(data_dir, name, "graph").items():
    reference.add_edges_from((node, v) for v in neighbours if v != node)
  assert 2 * reference.number_of_edges() == FACTS[name][1]
  expected = set(reference.edges()) | {(v, u) for u, v in reference.edges()}
  ours = list(zip(graph.senders.tolist(), graph.receivers.tolist()))
  assert len(ours) == len(set(ours)) and set(ours) == expected
  assert ours == sorted(ours, key=lambda e: (e[1], e[0]))


def test_citeseer_missing_test_nodes(loaded, data_dir):
  graph = loaded["citeseer"].graphs[0]
  test_index = _raw(data_dir, "citeseer", "test.index")
  missing = sorted(set(range(min(test_index), max(test_index) + 1)) - set(test_index))
  assert min(test_index) == 2312 and max(test_index) == 3326 and len(missing) == 15
  np.testing.assert_array_equal(np.flatnonzero(~graph.nodes["label_mask"]), missing)
  assert not graph.nodes["x"][missing].any()
  # Despite the usual description ("isolated"), each has edges in ind.citeseer.graph; they are
  # missing only from the feature and label files.
  assert np.isin(missing, graph.receivers).all()
  for key in ("train", "val", "test"):
    assert not graph.nodes[f"{key}_mask"][missing].any()
  assert loaded["citeseer"].report["unlabelled_nodes"] == 15
  assert loaded["cora"].graphs[0].nodes["label_mask"].all()


@pytest.mark.parametrize("name", list(FACTS))
def test_random_split(data_dir, name):
  num_classes = FACTS[name][3]
  a = planetoid.load_planetoid(name, data_dir, split="random", seed=3).graphs[0]
  b = planetoid.load_planetoid(name, data_dir, split="random", seed=3).graphs[0]
  c = planetoid.load_planetoid(name, data_dir, split="random", seed=4).graphs[0]
  train, val, test = (a.nodes[f"{k}_mask"] for k in ("train", "val", "test"))
  assert np.bincount(a.nodes["y"][train], minlength=num_classes).tolist() == [20] * num_classes
  assert (int(val.sum()), int(test.sum())) == (500, 1000)
  assert ((train.astype(int) + val + test) <= 1).all()
  assert not ((train | val | test) & ~a.nodes["label_mask"]).any()
  for key in ("train", "val", "test"):
    np.testing.assert_array_equal(a.nodes[f"{key}_mask"], b.nodes[f"{key}_mask"])
    assert not np.array_equal(a.nodes[f"{key}_mask"], c.nodes[f"{key}_mask"])
  public = planetoid.load_planetoid(name, data_dir).graphs[0]
  assert not np.array_equal(train, public.nodes["train_mask"])


def test_normalize_features(data_dir):
  raw = planetoid.load_planetoid("CiteSeer", data_dir).graphs[0].nodes["x"]
  normalized = planetoid.load_planetoid("CiteSeer", data_dir, normalize_features=True)
  x = normalized.graphs[0].nodes["x"]
  assert x.dtype == np.float32
  sums = raw.sum(axis=1)
  np.testing.assert_allclose(x.sum(axis=1), (sums > 0).astype(np.float32), rtol=1e-5)
  nonzero = sums > 0
  np.testing.assert_allclose(x[nonzero], raw[nonzero] / sums[nonzero, None], rtol=1e-6)
  assert normalized.report["normalize_features"] is True


def test_names_and_splits_are_checked(data_dir):
  assert planetoid.load_planetoid("CORA", data_dir).name == "cora"
  with pytest.raises(ValueError, match="cora, citeseer"):
    planetoid.load_planetoid("pubmed", data_dir)
  with pytest.raises(ValueError, match="public, random"):
    planetoid.load_planetoid("cora", data_dir, split="full")


def test_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
  monkeypatch.delenv(sources.ENV_DATA, raising=False)
  with pytest.raises(sources.DatasetUnavailableError, match=r"planetoid/ind\.cora\.x"):
    planetoid.load_planetoid("cora", tmp_path / "empty")


@pytest.mark.parametrize("name", list(FACTS))
def test_download_urls_and_checksums(data_dir, tmp_path, monkeypatch, name):
  """Served from the canonical URLs, the files pass the embedded SHA-256 checks."""
  monkeypatch.delenv(sources.ENV_DATA, raising=False)
  requested = []

  def serve(url, timeout=60.0):
    requested.append(url)
    prefix = "https://github.com/kimiyoung/planetoid/raw/master/data/"
    assert url.startswith(prefix)
    return (data_dir / "planetoid" / url[len(prefix):]).read_bytes()

  monkeypatch.setattr(sources, "_download", serve)
  dataset = planetoid.load_planetoid(name, tmp_path / "empty")
  assert int(dataset.graphs[0].n_node[0]) == FACTS[name][0]
  assert len(requested) == len(EXTENSIONS)
  assert (sources.cache_dir() / "planetoid" / f"ind.{name}.graph").is_file()

  shutil.rmtree(sources.cache_dir())
  monkeypatch.setattr(sources, "_download", lambda url, timeout=60.0: serve(url) + b"\0")
  with pytest.raises(sources.DatasetChecksumError, match="checksum mismatch"):
    planetoid.load_planetoid(name, tmp_path / "empty")


# ----------------------------------------------------------------------------- malformed files


@pytest.fixture
def cora_root(tmp_path, data_dir):
  """A writable copy of the Cora files under tmp_path/planetoid."""
  folder = tmp_path / "planetoid"
  folder.mkdir()
  for ext in EXTENSIONS:
    shutil.copy(data_dir / "planetoid" / f"ind.cora.{ext}", folder)
    os.chmod(folder / f"ind.cora.{ext}", 0o644)
  return tmp_path


def _replace(root, ext, obj):
  with open(root / "planetoid" / f"ind.cora.{ext}", "wb") as f:
    pickle.dump(obj, f, protocol=2)


def test_graph_pointing_past_last_node(cora_root, data_dir):
  adjacency = _raw(data_dir, "cora", "graph")
  adjacency[5] = list(adjacency[5]) + [2708]
  _replace(cora_root, "graph", adjacency)
  with pytest.raises(DataFormatError, match=r"ind\.cora\.graph.*node 2708.*\[0, 2708\)"):
    planetoid.load_planetoid("cora", cora_root)


def test_graph_with_negative_id(cora_root, data_dir):
  adjacency = _raw(data_dir, "cora", "graph")
  adjacency[-1] = [0]
  _replace(cora_root, "graph", adjacency)
  with pytest.raises(DataFormatError, match=r"ind\.cora\.graph.*node -1"):
    planetoid.load_planetoid("cora", cora_root)


def test_graph_not_a_dict(cora_root):
  _replace(cora_root, "graph", [[1, 2], [0]])
  with pytest.raises(DataFormatError, match=r"ind\.cora\.graph.*dict of adjacency lists"):
    planetoid.load_planetoid("cora", cora_root)


def test_graph_with_non_integer_ids(cora_root):
  _replace(cora_root, "graph", collections.defaultdict(list, {0: ["a"]}))
  with pytest.raises(DataFormatError, match=r"ind\.cora\.graph.*integer node ids"):
    planetoid.load_planetoid("cora", cora_root)


def test_x_y_row_mismatch(cora_root, data_dir):
  _replace(cora_root, "y", _raw(data_dir, "cora", "y")[:139])
  with pytest.raises(DataFormatError, match=r"ind\.cora\.y: y has 139 rows but x has 140"):
    planetoid.load_planetoid("cora", cora_root)


def test_x_not_the_head_of_allx(cora_root, data_dir):
  x = _raw(data_dir, "cora", "x").tolil()
  x[7, 0] = 5.0
  _replace(cora_root, "x", x.tocsr())
  with pytest.raises(DataFormatError, match=r"ind\.cora\.x: expected the first 140 rows of allx"):
    planetoid.load_planetoid("cora", cora_root)


def test_allx_ally_row_mismatch(cora_root, data_dir):
  _replace(cora_root, "ally", _raw(data_dir, "cora", "ally")[:-1])
  with pytest.raises(DataFormatError, match=r"ind\.cora\.ally: ally has 1707 rows"):
    planetoid.load_planetoid("cora", cora_root)


def test_tx_feature_width_mismatch(cora_root, data_dir):
  _replace(cora_root, "tx", _raw(data_dir, "cora", "tx")[:, :100])
  with pytest.raises(DataFormatError, match=r"ind\.cora\.tx: 100 feature columns"):
    planetoid.load_planetoid("cora", cora_root)


def test_labels_not_one_hot(cora_root, data_dir):
  ty = _raw(data_dir, "cora", "ty").copy()
  ty[3, :2] = 1
  _replace(cora_root, "ty", ty)
  with pytest.raises(DataFormatError, match=r"ind\.cora\.ty: row 3 .*one-hot"):
    planetoid.load_planetoid("cora", cora_root)


def test_truncated_pickle(cora_root):
  path = cora_root / "planetoid" / "ind.cora.allx"
  path.write_bytes(path.read_bytes()[:1000])
  with pytest.raises(DataFormatError, match=r"ind\.cora\.allx: not a readable Planetoid pickle"):
    planetoid.load_planetoid("cora", cora_root)


def test_garbage_file(cora_root):
  (cora_root / "planetoid" / "ind.cora.tx").write_bytes(b"<html>404 Not Found</html>")
  with pytest.raises(DataFormatError, match=r"ind\.cora\.tx: not a readable Planetoid pickle"):
    planetoid.load_planetoid("cora", cora_root)


def test_pickle_naming_other_callables_is_refused(cora_root):
  _replace(cora_root, "graph", os.getcwd)
  with pytest.raises(DataFormatError, match=r"ind\.cora\.graph.*getcwd.*not an array"):
    planetoid.load_planetoid("cora", cora_root)


def test_bad_test_index(cora_root):
  path = cora_root / "planetoid" / "ind.cora.test.index"
  lines = path.read_text().splitlines()
  lines[6] = "27o1"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(DataFormatError, match=r"ind\.cora\.test\.index, line 7: '27o1'"):
    planetoid.load_planetoid("cora", cora_root)


def test_test_index_inside_allx_rows(cora_root):
  path = cora_root / "planetoid" / "ind.cora.test.index"
  lines = path.read_text().splitlines()
  lines[0] = "12"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(DataFormatError, match=r"ind\.cora\.test\.index: id 12 < 1708"):
    planetoid.load_planetoid("cora", cora_root)


def test_test_index_length_mismatch(cora_root):
  path = cora_root / "planetoid" / "ind.cora.test.index"
  path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
  with pytest.raises(DataFormatError, match=r"ind\.cora\.tx: tx has 1000 rows but test\.index"):
    planetoid.load_planetoid("cora", cora_root)
