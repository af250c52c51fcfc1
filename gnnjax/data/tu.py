"""TU Dortmund graph-classification datasets (Morris et al., 2020), in their text format.

A dataset NAME is a folder `<root>/tu/NAME/` of comma-separated text files, one value row per
line, node and graph ids 1-based:
  NAME_A.txt               m lines 'i, j': directed edges of the block-diagonal adjacency matrix
                           of all graphs (undirected graphs list both directions).
  NAME_graph_indicator.txt n lines: graph id of node i (nodes are grouped by graph, ids 1..N).
  NAME_graph_labels.txt    N lines: class label of graph i.
  optional: NAME_node_labels.txt (n lines), NAME_node_attributes.txt (n rows of floats),
            NAME_edge_labels.txt (m lines), NAME_edge_attributes.txt (m rows of floats).
Features follow PyG's TUDataset: attributes first, then each label column one-hot over
(label - min), of width max - min + 1, with min/max over the whole dataset.
"""

from __future__ import annotations

import os
import pathlib
import re
import warnings

import numpy as np

from gnnjax.data.dataset import GRAPH, MULTICLASS, DataFormatError, GraphDataset, make_graph
from gnnjax.data.sources import (ArchiveMemberMissingError, RemoteFile, data_roots,
                                 fetch)

_URL = "https://www.chrsmrrs.com/graphkerneldatasets/{name}.zip"
REQUIRED_FILES = ("A", "graph_indicator", "graph_labels")
OPTIONAL_FILES = ("node_labels", "node_attributes", "edge_labels", "edge_attributes")
# SHA-256 of the files of the datasets shipped in shared/datasets/tu.
_SHA256 = {
    "BZR": {
        "A": "ff3fea72cbb9c7791892f1f44a7f04d90c7c5ceab6a72f1208da135d247b543b",
        "graph_indicator": "7be0ae28ac3ce0ea0735242dc31ca8e25fba6f61e75af9f49c2c86fa21bf4712",
        "graph_labels": "ba3c70e696ca733371e43444551df8402a90711e1f9d964c400461f50a762b03",
        "node_attributes": "b63d1ad66f2f89dee341a2212e0311c13d180d25537844636ab01bcb56a844dc",
        "node_labels": "3fa5cea6c33294f4a4fb1fe9ce70a9fe42045f7d555763fb40d99456766e4ba5",
    },
    "DHFR": {
        "A": "7e7f5844ed35e99174577dad18c2697be3e15c259bd12d8b8e620715d79b586b",
        "graph_indicator": "cd17a206683812cae069748bd536b2b38304b00e90b87de9572dbc62795ada78",
        "graph_labels": "bdd65eb1813b2a68d071bc8617aed739be215f64ebaf485e27d80c6ff3d05c50",
        "node_attributes": "73234d37ad47e84cefd6da45f2570d09c143c45c76639560e58ad8f31ae0f537",
        "node_labels": "6532c0378e3070c163d69a81a0c9ca78652e88a9becb3fd2e59f143b6dba5079",
    },
    "MUTAG": {
        "A": "d9656ca7493f3445d737c711710bb36fd432dddd1c0ea32e1d4713c86ebd28e2",
        "edge_labels": "4669ce755075ff86c3240709345745886400908fa637a49310459b9c267b3e56",
        "graph_indicator": "7d520a4d6c7961c0cdeabe076d8fe27e795b6d373485c9a2b744987e560a2056",
        "graph_labels": "a1518ea39ba3426bd42f57396b9c4baffe68e9adc718caeeab0119c6591a5f2c",
        "node_labels": "678f429965490e84dd27713017538c995fc05d1621beac910848b600015ee863",
    },
    "NCI109": {
        "A": "9c0ae8c1e631f771663de1e095eb36604f4feeb512e46b90b0409f05f876bab6",
        "graph_indicator": "f86bb0249bf985be397f46c493879022cb068b1d4331215151442de1738c9163",
        "graph_labels": "8ab9932d5347b935e3aaa7be2f787cc78860fa1af9df836dd3f03cde6939b640",
        "node_labels": "d2ceda711b4ea4218909e5527325374d7e50c698b0d8a22567390a5526dbd6bc",
    },
    "PROTEINS": {
        "A": "4c4b33e272fc95cac6d27ed6d5d12b9a852c8610e91fff59f8f0dbdd5a20df67",
        "graph_indicator": "8d4ff1e852a5c28561e9bffb44cf9490bc552b13a3b6156dd12dc7f44e9afc4a",
        "graph_labels": "c0ef9810c440775252872318d0c8adc385588e14bc4c47a2c34aa96ee3c7cdcd",
        "node_attributes": "54eef829abb37e458a5fbf3a3c581e48e5810e220463c2cd951856b9ceb08f07",
        "node_labels": "f758e8ad3d6e3c026b50833d75f6f90735b94eb3345e4243707f495ca8afea8d",
    },
}
SHIPPED_NAMES = tuple(_SHA256)
_VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


# ----------------------------------------------------------------------------- locating files


def _canonical_name(name: str) -> str:
  """The dataset's folder name; shipped datasets match in any case."""
  if not _VALID_NAME.fullmatch(name or ""):
    raise ValueError(f"invalid TU dataset name {name!r}: expected a TU Dortmund dataset name such "
                     f"as {', '.join(SHIPPED_NAMES)}")
  by_upper = {known.upper(): known for known in SHIPPED_NAMES}
  return by_upper.get(name.upper(), name)


def _remote(name: str, kind: str) -> RemoteFile:
  filename = f"{name}_{kind}.txt"
  return RemoteFile(relpath=f"tu/{name}/{filename}", url=_URL.format(name=name),
                    sha256=_SHA256.get(name, {}).get(kind), archive_member=f"{name}/{filename}")


def _local_folder(name: str, data_dir: str | os.PathLike | None) -> pathlib.Path | None:
  """The first data root's tu/NAME folder that holds NAME_A.txt, if any."""
  for root in data_roots(data_dir):
    folder = root / "tu" / name
    if (folder / f"{name}_A.txt").is_file():
      return folder
  return None


def _locate_files(name: str, data_dir: str | os.PathLike | None) -> dict[str, pathlib.Path]:
  """Paths of the required files and of the optional files the dataset has.

  A local copy decides which optional files exist; with none, each optional archive member is
  tried and its absence tolerated.
  """
  folder = _local_folder(name, data_dir)  # Before fetching: a download creates one in the cache.
  paths = {kind: fetch(_remote(name, kind), data_dir) for kind in REQUIRED_FILES}
  for kind in OPTIONAL_FILES:
    if folder is not None:
      candidate = folder / f"{name}_{kind}.txt"
      if candidate.is_file():
        paths[kind] = candidate
      continue
    try:
      paths[kind] = fetch(_remote(name, kind), data_dir)
    except ArchiveMemberMissingError:
      pass  # This dataset has no such file (a network failure still raises).
  return paths


# ----------------------------------------------------------------------------- parsing


def _line_number(path: pathlib.Path, row: int) -> int:
  """1-based line of the 0-based value row `row` (np.loadtxt skips empty lines)."""
  seen = -1
  with open(path, "r", encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      if line.rstrip("\r\n"):
        seen += 1
        if seen == row:
          return number
  raise IndexError(f"{path} has no value row {row}")


def _find_bad_line(path: pathlib.Path, dtype: type, num_columns: int | None) -> DataFormatError:
  """Scans `path` line by line for the first row np.loadtxt could not parse."""
  parse = int if dtype is np.int64 else float
  kind = "an integer" if dtype is np.int64 else "a number"
  with open(path, "r", encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if not line:
        continue
      tokens = line.split(",")
      if num_columns is None:
        num_columns = len(tokens)
      if len(tokens) != num_columns:
        return DataFormatError(f"{path}, line {number}: {line!r} has {len(tokens)} "
                               f"comma-separated values, expected {num_columns}")
      for token in tokens:
        try:
          parse(token.strip())
        except ValueError:
          return DataFormatError(f"{path}, line {number}: {token.strip()!r} is not {kind}")
  return DataFormatError(f"{path}: could not be parsed as comma-separated {dtype.__name__} values")


def _read_table(path: pathlib.Path, dtype: type, num_columns: int | None = None) -> np.ndarray:
  """Reads a comma-separated numeric text file.

  Args:
    path: the file.
    dtype: np.int64 or np.float64.
    num_columns: required number of columns, or None for any (consistent) number.

  Returns:
    `[rows, columns]` array of `dtype`; empty lines are skipped.
  """
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
      table = np.loadtxt(path, delimiter=",", dtype=dtype, ndmin=2, comments=None)
  except ValueError:
    raise _find_bad_line(path, dtype, num_columns) from None
  if table.size == 0:
    return np.zeros((0, num_columns or 1), dtype=dtype)
  if num_columns is not None and table.shape[1] != num_columns:
    raise DataFormatError(f"{path}, line {_line_number(path, 0)}: {table.shape[1]} "
                          f"comma-separated values per line, expected {num_columns}")
  return table


def _check_row_count(path: pathlib.Path, rows: int, expected: int, what: str) -> None:
  if rows != expected:
    raise DataFormatError(f"{path}: {rows} rows, expected {expected} (one per {what})")


# ----------------------------------------------------------------------------- validation


def _graph_of_node(path: pathlib.Path) -> np.ndarray:
  """0-based graph index of every node, int64 `[n]`, checked to be grouped and contiguous."""
  indicator = _read_table(path, np.int64, 1)[:, 0]
  if indicator.size == 0:
    raise DataFormatError(f"{path}: no nodes")
  # Ids must start at 1 and step by 0 or 1 from one node to the next.
  steps = np.diff(indicator, prepend=1)
  is_bad = (steps != 0) & (steps != 1)
  is_bad[0] = indicator[0] != 1
  bad = np.flatnonzero(is_bad)
  if bad.size:
    row = int(bad[0])
    previous = "the start" if row == 0 else f"graph id {indicator[row - 1]}"
    raise DataFormatError(
        f"{path}, line {_line_number(path, row)}: graph id {indicator[row]} after {previous}; "
        "expected nodes grouped by graph with graph ids running 1, 2, ..., N without gaps")
  return indicator - 1


def _read_edges(path: pathlib.Path, graph_of_node: np.ndarray) -> np.ndarray:
  """0-based global edge endpoints, int64 `[m, 2]` (sender, receiver), checked."""
  edges = _read_table(path, np.int64, 2)
  num_nodes = graph_of_node.size
  out_of_range = np.flatnonzero(((edges < 1) | (edges > num_nodes)).any(axis=1))
  if out_of_range.size:
    row = int(out_of_range[0])
    raise DataFormatError(f"{path}, line {_line_number(path, row)}: edge {edges[row].tolist()} "
                          f"names a node outside 1..{num_nodes}")
  edges = edges - 1
  crossing = np.flatnonzero(graph_of_node[edges[:, 0]] != graph_of_node[edges[:, 1]])
  if crossing.size:
    row = int(crossing[0])
    sender, receiver = edges[row]
    raise DataFormatError(
        f"{path}, line {_line_number(path, row)}: edge {sender + 1}, {receiver + 1} joins graph "
        f"{graph_of_node[sender] + 1} to graph {graph_of_node[receiver] + 1}; expected both ends "
        "in one graph")
  return edges


# ----------------------------------------------------------------------------- features


def _one_hot_columns(labels: np.ndarray) -> np.ndarray:
  """One-hot encodes each column of int `[rows, k]` labels over (label - min) .. (max - min).

  Returns:
    float32 `[rows, sum_j (max_j - min_j + 1)]`.
  """
  blocks = []
  for column in labels.T:
    shifted = column - column.min()
    block = np.zeros((column.size, int(shifted.max()) + 1), dtype=np.float32)
    block[np.arange(column.size), shifted] = 1.0
    blocks.append(block)
  return np.concatenate(blocks, axis=1)


def _features(paths: dict[str, pathlib.Path], attributes_kind: str, labels_kind: str,
              num_rows: int, what: str) -> np.ndarray | None:
  """concat[attributes, one-hot labels] as float32 `[num_rows, F]`, or None if neither exists."""
  parts = []
  if attributes_kind in paths:
    attributes = _read_table(paths[attributes_kind], np.float64)
    _check_row_count(paths[attributes_kind], attributes.shape[0], num_rows, what)
    parts.append(attributes.astype(np.float32))
  if labels_kind in paths:
    labels = _read_table(paths[labels_kind], np.int64)
    _check_row_count(paths[labels_kind], labels.shape[0], num_rows, what)
    if num_rows:
      parts.append(_one_hot_columns(labels))
  if not parts:
    return None
  return np.concatenate(parts, axis=1)


def _describe_features(paths: dict[str, pathlib.Path], element: str) -> str:
  parts = [text for kind, text in ((f"{element}_attributes", "attributes"),
                                   (f"{element}_labels", "one-hot labels")) if kind in paths]
  if parts:
    return " + ".join(parts)
  return "constant 1" if element == "node" else "none"


def _graph_labels(path: pathlib.Path, num_graphs: int) -> tuple[np.ndarray, dict[int, int]]:
  """Graph labels remapped to 0..C-1 in sorted order of the raw values.

  Returns:
    labels: int32 `[N]`; mapping: raw value -> class id.
  """
  raw = _read_table(path, np.int64, 1)[:, 0]
  _check_row_count(path, raw.size, num_graphs, "graph in the graph indicator")
  values, labels = np.unique(raw, return_inverse=True)
  if values.size < 2:
    raise DataFormatError(f"{path}: every graph has label {values.tolist()}; expected at least "
                          "two classes")
  return labels.astype(np.int32), {int(v): i for i, v in enumerate(values)}


# ----------------------------------------------------------------------------- graphs


def _split_into_graphs(graph_of_node: np.ndarray, edges: np.ndarray, labels: np.ndarray,
                       node_x: np.ndarray, edge_x: np.ndarray | None) -> list:
  """Cuts the block-diagonal dataset into one GraphsTuple per graph, with local node ids."""
  num_graphs = labels.size
  nodes_per_graph = np.bincount(graph_of_node, minlength=num_graphs)
  first_node = np.concatenate([[0], np.cumsum(nodes_per_graph)[:-1]])
  graph_of_edge = graph_of_node[edges[:, 0]]
  order = np.argsort(graph_of_edge, kind="stable")  # Keeps each graph's edges in file order.
  local = edges[order] - first_node[graph_of_edge[order], None]
  cuts = np.cumsum(np.bincount(graph_of_edge, minlength=num_graphs))[:-1]
  local_per_graph = np.split(local, cuts)
  edge_x_per_graph = np.split(edge_x[order], cuts) if edge_x is not None else None
  node_x_per_graph = np.split(node_x, np.cumsum(nodes_per_graph)[:-1])
  graphs = []
  for g in range(num_graphs):
    graphs.append(make_graph(
        senders=local_per_graph[g][:, 0],
        receivers=local_per_graph[g][:, 1],
        num_nodes=int(nodes_per_graph[g]),
        node_features={"x": node_x_per_graph[g]},
        edge_features={"x": edge_x_per_graph[g]} if edge_x is not None else None,
        graph_features={"y": labels[g:g + 1]},
    ))
  return graphs


def _edge_facts(edges: np.ndarray, num_nodes: int) -> dict[str, int | bool]:
  """Self-loops, repeated directed edges and symmetry of the raw edge list."""
  keys = np.sort(edges[:, 0] * num_nodes + edges[:, 1])
  reverse_keys = np.sort(edges[:, 1] * num_nodes + edges[:, 0])
  return {
      "self_loops": int((edges[:, 0] == edges[:, 1]).sum()),
      "repeated_edges": int((np.diff(keys) == 0).sum()),
      # Symmetric as a multiset: every edge is listed as often as its reverse.
      "symmetric": bool(np.array_equal(keys, reverse_keys)),
  }


def load_tu(name: str, data_dir: str | os.PathLike | None = None, use_node_attr: bool = False,
            use_edge_attr: bool = False) -> GraphDataset:
  """Loads a TU Dortmund graph-classification dataset.

  Args:
    name: dataset name as TU Dortmund spells it (e.g. 'PROTEINS', 'IMDB-BINARY'); the shipped
      datasets (BZR, DHFR, MUTAG, NCI109, PROTEINS) match in any case.
    data_dir: data root holding tu/NAME/; see `gnnjax.data.sources`.
    use_node_attr: include the continuous node attributes (off by default, as PyG's TUDataset:
      the published GIN/GraphGym numbers use one-hot node labels only; PROTEINS' attribute is an
      unnormalised count up to 798).
    use_edge_attr: include continuous edge attributes (off by default, as PyG).

  Returns:
    A graph-level multiclass dataset: per graph nodes['x'] float32 `[n, F]` (node attributes if
    requested, then one-hot node labels; a constant 1 column when there is neither), edges['x']
    float32 `[e, Fe]` (edge attributes, then one-hot edge labels) when present, globals['y']
    int32 `[1]` in 0..C-1. Edges are the file's, both directions as listed, in file order.
    `report` records the files, the label mapping and edge facts.

  Raises:
    ValueError: a name that cannot be a TU dataset.
    DataFormatError: a malformed file (the message names the file and line).
  """
  name = _canonical_name(name)
  paths = _locate_files(name, data_dir)
  available = dict(paths)
  if not use_node_attr:
    paths.pop("node_attributes", None)
  if not use_edge_attr:
    paths.pop("edge_attributes", None)
  graph_of_node = _graph_of_node(paths["graph_indicator"])
  num_nodes = graph_of_node.size
  num_graphs = int(graph_of_node[-1]) + 1
  edges = _read_edges(paths["A"], graph_of_node)
  labels, label_map = _graph_labels(paths["graph_labels"], num_graphs)
  node_x = _features(paths, "node_attributes", "node_labels", num_nodes, "node")
  if node_x is None:
    node_x = np.ones((num_nodes, 1), dtype=np.float32)
  edge_x = _features(paths, "edge_attributes", "edge_labels", edges.shape[0], "edge in _A.txt")
  graphs = _split_into_graphs(graph_of_node, edges, labels, node_x, edge_x)
  report = {
      "source": {kind: str(path) for kind, path in available.items()},
      "label_map": label_map,
      "class_counts": np.bincount(labels, minlength=len(label_map)).tolist(),
      "node_features": _describe_features(paths, "node"),
      "edge_features": _describe_features(paths, "edge"),
      **_edge_facts(edges, num_nodes),
  }
  return GraphDataset(name=name, graphs=graphs, task_level=GRAPH, task_type=MULTICLASS,
                      num_outputs=len(label_map), report=report)
