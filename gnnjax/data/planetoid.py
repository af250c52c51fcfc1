"""The Planetoid citation graphs Cora and CiteSeer (Yang et al., 2016), one graph each.

The official files `ind.<name>.<ext>` are Python-2 pickles:
  x, tx, allx: scipy sparse `[rows, F]` bag-of-words features of the labelled training nodes,
    the test nodes and all non-test nodes (allx starts with x).
  y, ty, ally: int one-hot `[rows, C]` labels matching x, tx, allx.
  graph: dict node id -> list of neighbour ids.
  test.index: text, one node id per line; row i of tx/ty belongs to node test.index[i].
Nodes 0..len(allx)-1 take the allx rows and the test nodes follow. In CiteSeer 15 ids between the
smallest and largest test id have no tx/ty row (they do have edges in the graph file): they are
kept with zero features and no label, as Kipf & Welling's and PyG's loaders do.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import os
import pathlib
import pickle
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse

from gnnjax.data import splits
from gnnjax.data.dataset import MULTICLASS, NODE, DataFormatError, GraphDataset, make_graph
from gnnjax.data.sources import RemoteFile, fetch

NAMES = ("cora", "citeseer")
_EXTENSIONS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
_URL = "https://github.com/kimiyoung/planetoid/raw/master/data/ind.{name}.{ext}"
_SHA256 = {
    "citeseer": {
        "allx": "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
        "ally": "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
        "graph": "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
        "test.index": "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
        "tx": "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
        "ty": "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
        "x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
        "y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
    },
    "cora": {
        "allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
        "ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
        "graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
        "test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
        "tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
        "ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
        "x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
        "y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
    },
}
SPLITS = ("public", "random")
# The public split's validation size, and the random split's sizes (Kipf & Welling; PyG).
NUM_VAL = 500
NUM_TEST = 1000
TRAIN_PER_CLASS = 20


def _numpy_reconstruct():
  try:
    from numpy._core.multiarray import _reconstruct  # pylint: disable=import-outside-toplevel
  except ImportError:  # NumPy < 2.
    from numpy.core.multiarray import _reconstruct  # pylint: disable=import-outside-toplevel
  return _reconstruct


# Unpickling runs whatever callables a file names, so only the few a Planetoid file needs are
# allowed (the Python-2 module names as they appear in the files).
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("scipy.sparse.csr", "csr_matrix"): scipy.sparse.csr_matrix,
    ("scipy.sparse._csr", "csr_matrix"): scipy.sparse.csr_matrix,
    ("collections", "defaultdict"): collections.defaultdict,
    ("_codecs", "encode"): codecs.encode,  # How Python 3 writes bytes into protocol-2 pickles.
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
    ("__builtin__", "dict"): dict,
    ("builtins", "dict"): dict,
}


class _PlanetoidUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refers to {module}.{name}, which is not an array, sparse matrix or dict") from None


def _remote(name: str, ext: str) -> RemoteFile:
  return RemoteFile(relpath=f"planetoid/ind.{name}.{ext}", url=_URL.format(name=name, ext=ext),
                    sha256=_SHA256[name][ext])


def _read_pickle(path: pathlib.Path) -> Any:
  try:
    with open(path, "rb") as f:
      return _PlanetoidUnpickler(f, encoding="latin1").load()
  except Exception as e:  # A damaged pickle can fail in many ways; all mean the same here.
    raise DataFormatError(f"{path}: not a readable Planetoid pickle ({type(e).__name__}: {e})"
                          ) from e


def _read_features(path: pathlib.Path) -> scipy.sparse.csr_matrix:
  """A feature file as a float32 CSR matrix `[rows, F]`."""
  value = _read_pickle(path)
  if not (scipy.sparse.issparse(value) or isinstance(value, np.ndarray)) or value.ndim != 2:
    raise DataFormatError(f"{path}: expected a 2-D feature matrix, got {type(value).__name__}")
  return scipy.sparse.csr_matrix(value, dtype=np.float32)


def _read_labels(path: pathlib.Path) -> np.ndarray:
  """A one-hot label file as a 2-D int array `[rows, C]` (all-zero rows mean 'no label')."""
  value = _read_pickle(path)
  value = value.toarray() if scipy.sparse.issparse(value) else value
  if not isinstance(value, np.ndarray) or value.ndim != 2:
    raise DataFormatError(f"{path}: expected a 2-D one-hot label array, got "
                          f"{type(value).__name__} {getattr(value, 'shape', '')}")
  bad_rows = np.flatnonzero(~np.isin(value, (0, 1)).all(axis=1) | (value.sum(axis=1) > 1))
  if bad_rows.size:
    raise DataFormatError(f"{path}: row {bad_rows[0]} is {value[bad_rows[0]].tolist()}, expected "
                          f"a one-hot row (0/1 entries, at most one 1)")
  return value.astype(np.int64)


def _read_test_index(path: pathlib.Path) -> np.ndarray:
  """The test node ids, int64 `[T]`, in the order of the tx/ty rows."""
  ids = []
  with open(path, "r", encoding="utf-8", errors="replace") as f:
    for line_number, line in enumerate(f, start=1):
      token = line.strip()
      if not token:
        continue
      try:
        ids.append(int(token))
      except ValueError:
        raise DataFormatError(f"{path}, line {line_number}: {token!r} is not a node id "
                              "(expected one integer per line)") from None
  return np.asarray(ids, dtype=np.int64)


def _adjacency_to_edges(path: pathlib.Path, adjacency: Any, num_nodes: int
                        ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
  """Directed edge list of the adjacency dict, symmetrised, without duplicates or self-loops.

  Returns:
    senders, receivers: int32 `[E]`, both directions of every undirected edge, sorted by
      (receiver, sender).
    counts: how many adjacency entries the file held, and how many of them were self-loops.
  """
  if not isinstance(adjacency, dict):
    raise DataFormatError(f"{path}: expected a dict of adjacency lists, got "
                          f"{type(adjacency).__name__}")
  try:
    sources = np.fromiter(adjacency.keys(), dtype=np.int64, count=len(adjacency))
    degrees = np.fromiter((len(v) for v in adjacency.values()), dtype=np.int64,
                          count=len(adjacency))
    targets = np.fromiter((t for v in adjacency.values() for t in v), dtype=np.int64,
                          count=int(degrees.sum()))
  except (TypeError, ValueError) as e:
    raise DataFormatError(f"{path}: adjacency keys and lists must hold integer node ids ({e})"
                          ) from e
  sources = np.repeat(sources, degrees)
  for ids in (sources, targets):
    bad = np.flatnonzero((ids < 0) | (ids >= num_nodes))
    if bad.size:
      raise DataFormatError(f"{path}: edge {int(sources[bad[0]])} -> {int(targets[bad[0]])} "
                            f"names node {int(ids[bad[0]])}, expected ids in [0, {num_nodes})")
  not_loop = sources != targets
  both = np.stack([np.concatenate([sources[not_loop], targets[not_loop]]),
                   np.concatenate([targets[not_loop], sources[not_loop]])])
  # Sorting on (receiver, sender) keys gives the canonical order and exposes duplicates.
  unique_keys = np.unique(both[1] * num_nodes + both[0])
  senders, receivers = unique_keys % num_nodes, unique_keys // num_nodes
  counts = {"raw_entries": int(sources.size), "self_loops_removed": int((~not_loop).sum())}
  return senders.astype(np.int32), receivers.astype(np.int32), counts


def _check_rows(name_a: str, rows_a: int, name_b: str, rows_b: int, path: pathlib.Path):
  if rows_a != rows_b:
    raise DataFormatError(f"{path}: {name_b} has {rows_b} rows but {name_a} has {rows_a}; "
                          "expected equal row counts")


def _row_normalize(features: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
  """Divides each row by its sum; rows summing to zero stay zero."""
  row_sums = np.asarray(features.sum(axis=1)).reshape(-1)
  scale = np.divide(1.0, row_sums, out=np.zeros_like(row_sums), where=row_sums != 0)
  return scipy.sparse.diags(scale.astype(np.float32)) @ features


class _Nodes(NamedTuple):
  """Per-node data of a Planetoid graph with n nodes, F features and C classes."""
  features: scipy.sparse.csr_matrix  # float32 [n, F]
  labels: np.ndarray  # int32 [n], 0 where unlabelled
  label_mask: np.ndarray  # bool [n]
  test_ids: np.ndarray  # int64 [T], in test.index order
  num_classes: int


def _assemble_nodes(paths: dict[str, pathlib.Path]) -> _Nodes:
  """Places the allx/tx rows and labels at their node ids."""
  allx, ally = _read_features(paths["allx"]), _read_labels(paths["ally"])
  tx, ty = _read_features(paths["tx"]), _read_labels(paths["ty"])
  test_ids = _read_test_index(paths["test.index"])
  _check_rows("allx", allx.shape[0], "ally", ally.shape[0], paths["ally"])
  _check_rows("tx", tx.shape[0], "ty", ty.shape[0], paths["ty"])
  _check_rows("test.index", test_ids.size, "tx", tx.shape[0], paths["tx"])
  if tx.shape[1] != allx.shape[1]:
    raise DataFormatError(f"{paths['tx']}: {tx.shape[1]} feature columns, but allx has "
                          f"{allx.shape[1]}")
  if ty.shape[1] != ally.shape[1]:
    raise DataFormatError(f"{paths['ty']}: {ty.shape[1]} label columns, but ally has "
                          f"{ally.shape[1]}")
  num_train_nodes = allx.shape[0]
  bad = np.flatnonzero(test_ids < num_train_nodes)
  if bad.size or np.unique(test_ids).size != test_ids.size:
    where = f"id {test_ids[bad[0]]} < {num_train_nodes}" if bad.size else "a repeated id"
    raise DataFormatError(f"{paths['test.index']}: {where}; expected distinct test ids after the "
                          f"{num_train_nodes} allx nodes")
  num_nodes = int(test_ids.max()) + 1 if test_ids.size else num_train_nodes

  # Row r of the stacked matrix goes to node placement[r]; ids never listed keep zero rows.
  placement = np.concatenate([np.arange(num_train_nodes), test_ids])
  stacked = scipy.sparse.vstack([allx, tx]).tocoo()
  features = scipy.sparse.csr_matrix(
      (stacked.data, (placement[stacked.row], stacked.col)),
      shape=(num_nodes, allx.shape[1]), dtype=np.float32)
  one_hot = np.zeros((num_nodes, ally.shape[1]), dtype=np.int64)
  one_hot[placement] = np.concatenate([ally, ty])
  label_mask = one_hot.sum(axis=1) == 1
  labels = np.where(label_mask, one_hot.argmax(axis=1), 0).astype(np.int32)
  return _Nodes(features, labels, label_mask, test_ids, int(ally.shape[1]))


def _count_public_train_nodes(paths: dict[str, pathlib.Path], nodes: _Nodes) -> int:
  """Number of x/y rows: the public split trains on nodes 0..that-1, whose rows they repeat."""
  x, y = _read_features(paths["x"]), _read_labels(paths["y"])
  _check_rows("x", x.shape[0], "y", y.shape[0], paths["y"])
  head = slice(0, x.shape[0])
  if x.shape != nodes.features[head].shape or (x != nodes.features[head]).nnz:
    raise DataFormatError(f"{paths['x']}: expected the first {x.shape[0]} rows of allx, "
                          f"got a different {x.shape} matrix")
  if (y.shape[1] != nodes.num_classes or
      not np.array_equal(y.argmax(axis=1), nodes.labels[head])):
    raise DataFormatError(f"{paths['y']}: expected the first {y.shape[0]} rows of ally")
  return x.shape[0]


def _public_split(num_nodes: int, num_train: int, test_ids: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Planetoid's split: the x rows train, the next 500 nodes validate, test.index tests."""
  masks = [np.zeros(num_nodes, dtype=bool) for _ in splits.SPLIT_KEYS]
  masks[0][:num_train] = True
  masks[1][num_train:num_train + NUM_VAL] = True
  masks[2][test_ids] = True
  return tuple(masks)


def _random_split(labels: np.ndarray, label_mask: np.ndarray, num_classes: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """20 random labelled nodes per class train; 500 val and 1000 test from the other labelled."""
  rng = np.random.default_rng(seed)
  labelled = np.flatnonzero(label_mask)
  train_ids = []
  for label in range(num_classes):
    members = labelled[labels[labelled] == label]
    if members.size < TRAIN_PER_CLASS:
      raise ValueError(f"class {label} has {members.size} labelled nodes, fewer than the "
                       f"{TRAIN_PER_CLASS} a random split trains on")
    train_ids.append(rng.permutation(members)[:TRAIN_PER_CLASS])
  train_ids = np.concatenate(train_ids)
  rest = rng.permutation(np.setdiff1d(labelled, train_ids))
  if rest.size < NUM_VAL + NUM_TEST:
    raise ValueError(f"only {rest.size} labelled nodes remain after training nodes; a random "
                     f"split needs {NUM_VAL + NUM_TEST}")
  num_nodes = labels.shape[0]
  masks = [np.zeros(num_nodes, dtype=bool) for _ in splits.SPLIT_KEYS]
  masks[0][train_ids] = True
  masks[1][rest[:NUM_VAL]] = True
  masks[2][rest[NUM_VAL:NUM_VAL + NUM_TEST]] = True
  return tuple(masks)


def load_planetoid(name: str, data_dir: str | os.PathLike | None = None, split: str = "public",
                   seed: int = 0, normalize_features: bool = False) -> GraphDataset:
  """Loads Cora or CiteSeer as one graph with a transductive node split.

  Args:
    name: 'cora' or 'citeseer' (any case).
    data_dir: data root holding planetoid/ind.<name>.*; see `gnnjax.data.sources`.
    split: 'public' (Planetoid's 20 per class / 500 / 1000) or 'random' (20 random labelled
      nodes per class train, then 500 val and 1000 test drawn from the other labelled nodes).
    seed: seed of the 'random' split (unused for 'public').
    normalize_features: divide each feature row by its sum (Kipf & Welling); zero rows stay zero.

  Returns:
    A node-level multiclass dataset with one graph: nodes['x'] float32 `[n, F]`, nodes['y']
    int32 `[n]` (0 where unlabelled), nodes['label_mask'] bool `[n]`, bool nodes['train_mask'],
    ['val_mask'], ['test_mask']; edges both directions, sorted by (receiver, sender), no
    duplicates or self-loops; edges = {}.

  Raises:
    ValueError: unknown name or split.
    DataFormatError: a malformed file (the message names it).
  """
  key = name.lower()
  if key not in NAMES:
    raise ValueError(f"unknown Planetoid dataset {name!r}; valid names: {', '.join(NAMES)}")
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
  paths = {ext: fetch(_remote(key, ext), data_dir) for ext in _EXTENSIONS}

  nodes = _assemble_nodes(paths)
  features, labels, label_mask, test_ids, num_classes = nodes
  num_nodes = features.shape[0]
  num_train = _count_public_train_nodes(paths, nodes)
  senders, receivers, edge_counts = _adjacency_to_edges(
      paths["graph"], _read_pickle(paths["graph"]), num_nodes)
  if normalize_features:
    features = _row_normalize(features)

  if split == "public":
    masks = _public_split(num_nodes, num_train, test_ids)
  else:
    masks = _random_split(labels, label_mask, num_classes, seed)
  graph = make_graph(senders, receivers, num_nodes, {
      "x": np.asarray(features.toarray(), dtype=np.float32),
      "y": labels,
      "label_mask": label_mask,
  })
  graph = splits.with_node_split(graph, *masks)
  report = {
      "source": {ext: str(path) for ext, path in paths.items()},
      "split": split if split == "public" else f"random(seed={seed})",
      "split_sizes": {k: int(m.sum()) for k, m in zip(splits.SPLIT_KEYS, masks)},
      "unlabelled_nodes": int((~label_mask).sum()),
      "adjacency_entries": edge_counts["raw_entries"],
      "self_loops_removed": edge_counts["self_loops_removed"],
      "directed_edges": int(senders.size),
      "normalize_features": normalize_features,
  }
  return GraphDataset(name=key, graphs=[graph], task_level=NODE, task_type=MULTICLASS,
                      num_outputs=num_classes, report=report)


def resplit(dataset: GraphDataset, split: str, seed: int = 0) -> GraphDataset:
  """The same Planetoid graph with another split: 'public' keeps the loaded one (it must be the
  public split), 'random' draws 20 per class / 500 / 1000 with `seed`."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
  if split == "public":
    if dataset.report.get("split") != "public":
      raise ValueError(f"{dataset.name} was loaded with split {dataset.report.get('split')!r}; "
                       "reload it with split='public'")
    return dataset
  graph = dataset.graphs[0]
  masks = _random_split(graph.nodes["y"], graph.nodes["label_mask"], dataset.num_outputs, seed)
  report = dict(dataset.report, split=f"random(seed={seed})",
                split_sizes={k: int(m.sum()) for k, m in zip(splits.SPLIT_KEYS, masks)})
  return dataclasses.replace(dataset, graphs=[splits.with_node_split(graph, *masks)],
                             report=report)
