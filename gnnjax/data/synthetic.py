"""GraphGym's synthetic graph tasks: structural labels on small-world and scale-free graphs.

GraphGym ("Design Space for Graph Neural Networks", You et al., 2020) adds 20 synthetic tasks to its
task space. Each takes 256 graphs of 64 nodes (Watts-Strogatz 'smallworld' or Holme-Kim
'scalefree'), derives a label from the graph structure and a node input from another structural
quantity:

* labels: 'clustering' (node clustering coefficient), 'pagerank' (node PageRank) and 'path_len'
  (average shortest-path length of the graph). Values are pooled over the whole dataset and cut into
  5 'balanced' (quantile) classes before any split.
* features: 'const', 'onehot' (a random permutation of the node ids, despite the name),
  'pagerank' or 'clustering', each encoded as a 10-d sinusoidal vector plus a constant 1 (11 dims).

The published graphs are read from `<data_root>/graphgym_synthetic/<family>.npz` (GraphGym's
pickles re-saved as arrays; they have no public download). `generate_graphs` makes fresh,
seeded graphs with GraphGym's recipe when the files are absent.
"""

from __future__ import annotations

import math
import os
import pathlib
import zipfile

import jraph
import networkx as nx
import numpy as np

from gnnjax.data import sources
from gnnjax.data.dataset import GRAPH, MULTICLASS, NODE, DataFormatError, GraphDataset, make_graph

COLLECTION = "graphgym_synthetic"
FAMILIES = ("scalefree", "smallworld", "ba", "ws", "ba500", "ws500")
GENERATED_FAMILIES = ("scalefree", "smallworld")
LABELS = ("clustering", "pagerank", "path_len")
FEATURES = ("const", "onehot", "pagerank", "clustering")
NODE_LABELS = ("clustering", "pagerank")

NUM_LABEL_CLASSES = 5  # GraphGym's augment_label_dims
ENCODING_DIMS = 10  # GraphGym's augment_feature_dims
ENCODING_BASE = 10000.0

# GraphGym's stratification grid (run/datasets/syn_graph.py): 7 edges per axis -> 8x8 cells,
# the outer cells open-ended.
CLUSTERING_BIN_EDGES = np.linspace(0.3, 0.6, 7)
PATH_LEN_BIN_EDGES = np.linspace(1.8, 3.0, 7)
NUM_CELLS = (len(CLUSTERING_BIN_EDGES) + 1) * (len(PATH_LEN_BIN_EDGES) + 1)

# Generator parameter grids (GraphGym's choices): Holme-Kim attachments m, Watts-Strogatz ring
# degrees k, and the probability p shared by both.
SCALEFREE_M = np.arange(2, 12)
SMALLWORLD_K = np.arange(4, 23, 2)
REWIRE_P = np.linspace(0.0, 1.0, 101)
# Default cap on generator draws. The rarest cells get about 2 in 100,000 draws (smallworld:
# clustering [0.45, 0.5) with path length [2.8, 3.0); scalefree: clustering < 0.3 with path
# length < 1.8). Filling 4 per cell took 60,000-344,000 draws for seeds 0-6 of each family.
DEFAULT_MAX_ATTEMPTS = 1_000_000

_FEATURES_BY_LABEL = {
    "clustering": ("const", "onehot", "pagerank"),
    "pagerank": ("const", "onehot", "clustering"),
    "path_len": ("const", "onehot", "clustering", "pagerank"),
}
# GraphGym round-1 synthetic tasks (chunks 3-5 of run/grids/design/round1.txt), as
# (family, label, feature) triples: 6 + 6 + 8 = 20.
SYNTHETIC_TASKS = tuple(
    (family, label, feature)
    for label, features in _FEATURES_BY_LABEL.items()
    for family in ("smallworld", "scalefree")
    for feature in features)


# ---------------------------------------------------------------------------------------------
# Graph structure: reading the shared files, generating fresh graphs.
# ---------------------------------------------------------------------------------------------


def undirected_graph(senders: np.ndarray, receivers: np.ndarray, num_nodes: int
                     ) -> jraph.GraphsTuple:
  """A structure-only graph that stores both directions of each undirected edge.

  Args:
    senders, receivers: int `[m]`, each undirected edge once (self-loops are kept once).
    num_nodes: number of nodes.

  Returns:
    A `GraphsTuple` with empty nodes/edges/globals dicts and int32 `[e]` senders/receivers,
    sorted by (receiver, sender).
  """
  senders = np.asarray(senders, dtype=np.int32)
  receivers = np.asarray(receivers, dtype=np.int32)
  not_loop = senders != receivers
  both_senders = np.concatenate([senders, receivers[not_loop]])
  both_receivers = np.concatenate([receivers, senders[not_loop]])
  order = np.lexsort((both_senders, both_receivers))
  return make_graph(both_senders[order], both_receivers[order], num_nodes, node_features={})


def graphgym_graphs_path(family: str, data_dir: str | os.PathLike | None = None
                         ) -> pathlib.Path:
  """The local `<root>/graphgym_synthetic/<family>.npz`.

  Raises:
    ValueError: unknown family.
    DatasetUnavailableError: no data root has the file (there is nothing to download).
  """
  if family not in FAMILIES:
    raise ValueError(f"unknown GraphGym synthetic family {family!r}; valid: {FAMILIES}")
  relpath = f"{COLLECTION}/{family}.npz"
  folder = sources.find_collection_dir(COLLECTION, data_dir)
  if folder is not None and (folder / f"{family}.npz").is_file():
    return folder / f"{family}.npz"
  where = ", ".join(str(root) for root in sources.data_roots(data_dir))
  looked_in = f" (the first {COLLECTION}/ found was {folder})" if folder is not None else ""
  raise sources.DatasetUnavailableError(
      f"{relpath} not found under any data root ({where}){looked_in}. GraphGym's synthetic "
      f"graphs have no public download: copy {family}.npz (shared/datasets/{relpath} in this "
      f"project) to <data_dir>/{relpath} and pass --data_dir=<data_dir> or set "
      f"{sources.ENV_DATA}=<data_dir>. Alternatively generate_graphs({family!r}) (or "
      f"load_synthetic_task(..., generate=True)) makes fresh graphs with GraphGym's recipe.")


def _read_npz_arrays(path: pathlib.Path) -> dict[str, np.ndarray]:
  """The four int arrays of a synthetic-graph file, with their shapes checked."""
  names = ("senders", "receivers", "n_node", "n_edge")
  arrays = None
  try:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
      with loaded:
        arrays = {name: loaded[name] for name in loaded.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise DataFormatError(f"{path}: not a readable .npz archive ({e})") from e
  if arrays is None:
    raise DataFormatError(f"{path}: holds a single .npy array; expected an .npz archive of {names}")
  missing = [name for name in names if name not in arrays]
  if missing:
    raise DataFormatError(
        f"{path}: missing array(s) {missing}; expected arrays {list(names)}, found "
        f"{sorted(arrays)}")
  arrays = {name: arrays[name] for name in names}
  for name, array in arrays.items():
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
      raise DataFormatError(
          f"{path}: array {name!r} must be a 1-D integer vector, got shape {array.shape} and "
          f"dtype {array.dtype}")
  return arrays


def _check_npz_arrays(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """Raises DataFormatError unless the arrays describe consistent per-graph edge lists."""
  senders, receivers = arrays["senders"], arrays["receivers"]
  n_node, n_edge = arrays["n_node"], arrays["n_edge"]
  if senders.shape != receivers.shape:
    raise DataFormatError(
        f"{path}: senders has {senders.size} entries but receivers has {receivers.size}; "
        f"expected one entry each per undirected edge")
  if n_node.shape != n_edge.shape:
    raise DataFormatError(
        f"{path}: n_node has {n_node.size} entries but n_edge has {n_edge.size}; expected one "
        f"entry each per graph")
  for name, counts in (("n_node", n_node), ("n_edge", n_edge)):
    if (counts < 0).any():
      graph = int(np.argmax(counts < 0))
      raise DataFormatError(
          f"{path}: {name}[{graph}] = {int(counts[graph])}; expected a non-negative count")
  if int(n_edge.sum()) != senders.size:
    raise DataFormatError(
        f"{path}: n_edge sums to {int(n_edge.sum())} but there are {senders.size} edges in "
        f"senders/receivers; expected equal")
  # Node ids are local to their graph: each must lie in [0, n_node of the edge's graph).
  limit = np.repeat(n_node, n_edge)
  for name, ids in (("senders", senders), ("receivers", receivers)):
    bad = (ids < 0) | (ids >= limit)
    if bad.any():
      edge = int(np.argmax(bad))
      graph = int(np.searchsorted(np.cumsum(n_edge), edge, side="right"))
      raise DataFormatError(
          f"{path}: {name}[{edge}] = {int(ids[edge])} (edge of graph {graph}) is out of range; "
          f"expected a local node id in [0, {int(n_node[graph])})")


def load_graphgym_graphs(family: str, data_dir: str | os.PathLike | None = None
                         ) -> list[jraph.GraphsTuple]:
  """Reads GraphGym's published synthetic graphs of one family.

  Args:
    family: one of FAMILIES.
    data_dir: optional data root; the file is `<root>/graphgym_synthetic/<family>.npz`.

  Returns:
    Structure-only graphs in file order (see `undirected_graph`).

  Raises:
    ValueError: unknown family.
    DatasetUnavailableError: no data root has the file.
    DataFormatError: the file is malformed.
  """
  return _graphs_from_npz(graphgym_graphs_path(family, data_dir))


def _graphs_from_npz(path: pathlib.Path) -> list[jraph.GraphsTuple]:
  arrays = _read_npz_arrays(path)
  _check_npz_arrays(path, arrays)
  splits = np.cumsum(arrays["n_edge"])[:-1]
  return [
      undirected_graph(senders, receivers, int(num_nodes))
      for senders, receivers, num_nodes in zip(
          np.split(arrays["senders"], splits), np.split(arrays["receivers"], splits),
          arrays["n_node"])
  ]


def _sample_networkx_graph(family: str, num_nodes: int, rng: np.random.Generator) -> nx.Graph:
  """One draw of GraphGym's generator: uniform parameters, then a seeded networkx graph."""
  p = float(rng.choice(REWIRE_P))
  if family == "scalefree":
    m = int(rng.choice(SCALEFREE_M))
    return nx.powerlaw_cluster_graph(num_nodes, m, p, seed=int(rng.integers(2**31)))
  k = int(rng.choice(SMALLWORLD_K))
  return nx.watts_strogatz_graph(num_nodes, k, p, seed=int(rng.integers(2**31)))


def _edge_arrays(graph: nx.Graph) -> tuple[np.ndarray, np.ndarray]:
  edges = np.asarray(list(graph.edges()), dtype=np.int32).reshape(-1, 2)
  return edges[:, 0], edges[:, 1]


def _stratification_cell(adjacency: np.ndarray, path_len: float) -> tuple[int, int]:
  clustering_cell = np.digitize(average_clustering(adjacency), CLUSTERING_BIN_EDGES)
  path_cell = np.digitize(path_len, PATH_LEN_BIN_EDGES)
  return int(clustering_cell), int(path_cell)


def _check_generation_args(family: str, num_graphs: int, num_nodes: int) -> None:
  if family not in GENERATED_FAMILIES:
    raise ValueError(f"cannot generate family {family!r}; valid: {GENERATED_FAMILIES}")
  if num_graphs < 1:
    raise ValueError(f"num_graphs must be positive, got {num_graphs}")
  largest_degree = int(SCALEFREE_M.max() if family == "scalefree" else SMALLWORLD_K.max())
  if num_nodes <= largest_degree:
    raise ValueError(f"{family} graphs need num_nodes > {largest_degree}, got {num_nodes}")


def generate_graphs(family: str, num_graphs: int = 256, num_nodes: int = 64, seed: int = 0,
                    max_attempts: int | None = None) -> list[jraph.GraphsTuple]:
  """Generates fresh synthetic graphs with GraphGym's recipe (`run/datasets/syn_graph.py`).

  Each draw picks p uniformly from {0, 0.01, ..., 1} and either m uniformly from {2, ..., 11}
  for `nx.powerlaw_cluster_graph(num_nodes, m, p)` ('scalefree') or k uniformly from
  {4, 6, ..., 22} for `nx.watts_strogatz_graph(num_nodes, k, p)` ('smallworld'). Disconnected
  draws are discarded. With `num_graphs >= 64` draws are stratified as in GraphGym: the
  (average clustering, average shortest-path length) plane is cut into 8x8 cells by
  `CLUSTERING_BIN_EDGES` and `PATH_LEN_BIN_EDGES`, and a draw is kept only while its cell holds
  fewer than ceil(num_graphs / 64) graphs (num_graphs = 256 gives GraphGym's 4 per cell; other
  sizes stop at num_graphs, so cells filled last may stay short). With `num_graphs < 64` draws are
  kept as they come (no stratification), which is fast and meant for quick runs.

  Rare cells (e.g. smallworld graphs with clustering in [0.45, 0.5) and path length in
  [2.8, 3.0), about 2 draws in 100,000) make the stratified mode slow: 256 graphs took 60,000 to
  344,000 draws at ~1.5 ms each, i.e. 2 to 9 minutes (seeds 0-6 of both families). Prefer the
  published files; the attempt cap turns a hopeless search into an error.

  Args:
    family: 'scalefree' or 'smallworld'.
    num_graphs: number of graphs to return.
    num_nodes: nodes per graph (must exceed the largest m or k, i.e. > 22 for 'smallworld').
    seed: seeds a `np.random.default_rng` that draws the parameters and the networkx seeds,
      so the same arguments give the same graphs.
    max_attempts: cap on generator draws; default DEFAULT_MAX_ATTEMPTS.

  Returns:
    `num_graphs` structure-only graphs (see `undirected_graph`) in acceptance order.

  Raises:
    ValueError: unknown family or bad sizes.
    RuntimeError: the cap was reached before `num_graphs` graphs were accepted.
  """
  _check_generation_args(family, num_graphs, num_nodes)
  if max_attempts is None:
    max_attempts = DEFAULT_MAX_ATTEMPTS
  stratified = num_graphs >= NUM_CELLS
  per_cell = math.ceil(num_graphs / NUM_CELLS)
  cell_counts = np.zeros((len(CLUSTERING_BIN_EDGES) + 1, len(PATH_LEN_BIN_EDGES) + 1), np.int64)
  rng = np.random.default_rng(seed)
  graphs = []
  for _ in range(max_attempts):
    senders, receivers = _edge_arrays(_sample_networkx_graph(family, num_nodes, rng))
    adjacency = adjacency_matrix(senders, receivers, num_nodes)
    path_len = average_shortest_path_length(adjacency)
    if path_len is None:
      continue
    if stratified:
      cell = _stratification_cell(adjacency, path_len)
      if cell_counts[cell] >= per_cell:
        continue
      cell_counts[cell] += 1
    graphs.append(undirected_graph(senders, receivers, num_nodes))
    if len(graphs) == num_graphs:
      return graphs
  short_cells = ""
  if stratified:
    short = np.argwhere(cell_counts < per_cell).tolist()
    short_cells = f"; (clustering, path length) cells still short of {per_cell} graphs: {short}"
  raise RuntimeError(
      f"generate_graphs({family!r}, num_graphs={num_graphs}, seed={seed}) accepted only "
      f"{len(graphs)} graphs in {max_attempts} draws{short_cells}. Raise max_attempts, ask for "
      "fewer graphs (< 64 skips stratification), or use the published graphs "
      "(load_graphgym_graphs).")


# ---------------------------------------------------------------------------------------------
# Structural quantities (match networkx's clustering / average_shortest_path_length exactly).
# ---------------------------------------------------------------------------------------------


def adjacency_matrix(senders: np.ndarray, receivers: np.ndarray, num_nodes: int) -> np.ndarray:
  """Symmetric 0/1 float32 adjacency `[n, n]` of an undirected edge list (either direction).

  Self-loops are dropped: networkx's clustering ignores them and they never shorten a path.
  """
  adjacency = np.zeros((num_nodes, num_nodes), dtype=np.float32)
  adjacency[senders, receivers] = 1.0
  adjacency[receivers, senders] = 1.0
  np.fill_diagonal(adjacency, 0.0)
  return adjacency


def node_clustering(adjacency: np.ndarray) -> np.ndarray:
  """Local clustering coefficients, float64 `[n]` (0 for degree < 2, like networkx).

  Args:
    adjacency: symmetric 0/1 `[n, n]` without self-loops.
  """
  adjacency = adjacency.astype(np.float64)
  degree = adjacency.sum(axis=1)
  # Twice the triangles through each node; same numerator and denominator as networkx.
  closed_walks = ((adjacency @ adjacency) * adjacency).sum(axis=1)
  pairs = degree * (degree - 1)
  return np.divide(closed_walks, pairs, out=np.zeros_like(degree), where=pairs > 0)


def average_clustering(adjacency: np.ndarray) -> float:
  """Mean local clustering, summed left to right like `nx.average_clustering`."""
  clustering = node_clustering(adjacency)
  return float(np.cumsum(clustering)[-1] / clustering.size)


def average_shortest_path_length(adjacency: np.ndarray) -> float | None:
  """Mean hop distance over ordered node pairs, or None if the graph is disconnected.

  Args:
    adjacency: symmetric 0/1 float32 `[n, n]`.

  Returns:
    sum of d(i, j) over i != j, divided by n (n - 1) (as `nx.average_shortest_path_length`).
  """
  num_nodes = adjacency.shape[0]
  if num_nodes < 2:
    return 0.0
  # sum_{i != j} d(i, j) = sum_{t >= 0} #(pairs farther than t hops); grow reachability by BFS
  # frontier expansion done as matrix products.
  reached = np.eye(num_nodes, dtype=bool)
  num_reached = num_nodes
  distance_sum = 0
  while True:
    distance_sum += num_nodes * num_nodes - num_reached
    reached = reached | ((reached.astype(np.float32) @ adjacency) > 0)
    now_reached = int(reached.sum())
    if now_reached == num_reached:
      break
    num_reached = now_reached
  if num_reached < num_nodes * num_nodes:
    return None
  return distance_sum / (num_nodes * (num_nodes - 1))


def node_pagerank(graph: jraph.GraphsTuple) -> np.ndarray:
  """networkx PageRank (alpha 0.85, default tolerance) of each node, float64 `[n]`."""
  num_nodes = int(graph.n_node[0])
  nx_graph = nx.Graph()
  nx_graph.add_nodes_from(range(num_nodes))
  nx_graph.add_edges_from(zip(graph.senders.tolist(), graph.receivers.tolist()))
  scores = nx.pagerank(nx_graph, alpha=0.85)
  return np.array([scores[node] for node in range(num_nodes)], dtype=np.float64)


def _graph_adjacency(graph: jraph.GraphsTuple) -> np.ndarray:
  return adjacency_matrix(graph.senders, graph.receivers, int(graph.n_node[0]))


def structural_values(graphs: list[jraph.GraphsTuple], quantity: str) -> list[np.ndarray]:
  """A structural quantity of each graph.

  Args:
    graphs: structure-only graphs.
    quantity: 'clustering' or 'pagerank' (float64 `[n]` per graph) or 'path_len' (float64 `[1]`).
  """
  if quantity == "clustering":
    return [node_clustering(_graph_adjacency(graph)) for graph in graphs]
  if quantity == "pagerank":
    return [node_pagerank(graph) for graph in graphs]
  if quantity == "path_len":
    values = []
    for index, graph in enumerate(graphs):
      path_len = average_shortest_path_length(_graph_adjacency(graph))
      if path_len is None:
        raise ValueError(f"graph {index} is disconnected; average path length is undefined")
      values.append(np.array([path_len]))
    return values
  raise ValueError(f"unknown structural quantity {quantity!r}; valid: {LABELS}")


# ---------------------------------------------------------------------------------------------
# Labels and features.
# ---------------------------------------------------------------------------------------------


def balanced_bins(values: np.ndarray, num_bins: int = NUM_LABEL_CLASSES
                  ) -> tuple[np.ndarray, np.ndarray]:
  """GraphGym's 'balanced' label binning: quantile edges over all values, ties collapse classes.

  Args:
    values: float `[N]`, pooled over the whole dataset.
    num_bins: number of quantile edges before de-duplication.

  Returns:
    classes: int32 `[N]`, the index of the last edge <= value (0 .. num_edges - 1).
    edges: float64 `[num_edges]`, the unique values at sorted positions floor(i N / num_bins).
  """
  values = np.asarray(values, dtype=np.float64)
  ordered = np.sort(values)
  positions = (np.arange(num_bins) * values.size) // num_bins
  edges = np.unique(ordered[positions])
  classes = np.digitize(values, edges) - 1
  return classes.astype(np.int32), edges


def position_encoding(values: np.ndarray, max_value: float, dims: int = ENCODING_DIMS
                      ) -> np.ndarray:
  """GraphGym's sinusoidal 'position' encoding of a scalar node quantity.

  Args:
    values: float `[n]` raw scalars.
    max_value: maximum of the quantity over the whole dataset; values are scaled to
      [0, dims / 2].
    dims: even encoding width.

  Returns:
    float64 `[n, dims]`: cos(p w_k) for k < dims / 2, then sin(p w_k), with p = value * (dims / 2)
    / max_value and w_k = 10000^(-k / (dims / 2)).
  """
  half = dims // 2
  scale = half / max_value if max_value > 0 else 0.0
  frequencies = ENCODING_BASE ** (-np.arange(half) / half)
  angles = (scale * np.asarray(values, dtype=np.float64))[:, None] * frequencies
  return np.concatenate([np.cos(angles), np.sin(angles)], axis=1)


def _raw_feature_values(graphs: list[jraph.GraphsTuple], feature: str, seed: int
                        ) -> list[np.ndarray]:
  """The scalar each node's input encodes, float64 `[n]` per graph."""
  if feature == "const":
    return [np.ones(int(graph.n_node[0])) for graph in graphs]
  if feature == "onehot":
    # GraphGym's node_onehot: a random node-id permutation per graph, redrawn per seed.
    rng = np.random.default_rng(seed)
    return [rng.permutation(int(graph.n_node[0])).astype(np.float64) for graph in graphs]
  return structural_values(graphs, feature)


def node_inputs(graphs: list[jraph.GraphsTuple], feature: str, seed: int = 0
                ) -> tuple[list[np.ndarray], float]:
  """Encoded node inputs `[encoding, 1.0]`, float32 `[n, ENCODING_DIMS + 1]` per graph.

  Returns:
    The per-graph inputs and the dataset-wide maximum of the raw feature used for scaling.
  """
  raw = _raw_feature_values(graphs, feature, seed)
  max_value = float(max(values.max(initial=0.0) for values in raw))
  inputs = []
  for values in raw:
    encoding = position_encoding(values, max_value)
    inputs.append(np.concatenate([encoding, np.ones((values.size, 1))], axis=1).astype(np.float32))
  return inputs, max_value


def _check_task_names(label: str, feature: str) -> None:
  if label not in LABELS:
    raise ValueError(f"unknown synthetic label {label!r}; valid: {LABELS}")
  if feature not in FEATURES:
    raise ValueError(f"unknown synthetic feature {feature!r}; valid: {FEATURES}")


def load_synthetic_task(family: str, label: str, feature: str,
                        data_dir: str | os.PathLike | None = None, seed: int = 0,
                        generate: bool = False, num_graphs: int = 256) -> GraphDataset:
  """One GraphGym synthetic task as a 5-class (at most) classification dataset.

  Args:
    family: one of FAMILIES (with `generate`, one of GENERATED_FAMILIES).
    label: 'clustering' or 'pagerank' (node-level) or 'path_len' (graph-level).
    feature: 'const', 'onehot', 'pagerank' or 'clustering' (the quantity encoded as input).
    data_dir: optional data root holding `graphgym_synthetic/<family>.npz`.
    seed: draws the 'onehot' permutations and, with `generate`, the graphs.
    generate: make fresh graphs with `generate_graphs` instead of reading the published ones.
    num_graphs: number of graphs to generate (ignored when reading the file).

  Returns:
    A MULTICLASS `GraphDataset` named '<family>/<label>/<feature>'. nodes['x'] is float32
    `[n, 11]`; node labels go to nodes['y'] int32 `[n]`, 'path_len' to globals['y'] int32 `[1]`.
    num_outputs = number of distinct quantile edges (5 on GraphGym's graphs).
  """
  _check_task_names(label, feature)
  if generate:
    graphs = generate_graphs(family, num_graphs=num_graphs, seed=seed)
    source = f"generate_graphs({family!r}, num_graphs={num_graphs}, seed={seed})"
  else:
    path = graphgym_graphs_path(family, data_dir)
    graphs = _graphs_from_npz(path)
    source = str(path)

  label_values = structural_values(graphs, label)
  classes, edges = balanced_bins(np.concatenate(label_values))
  inputs, feature_max = node_inputs(graphs, feature, seed)

  node_level = label in NODE_LABELS
  splits = np.cumsum([values.size for values in label_values])[:-1]
  labelled = []
  for graph, x, y in zip(graphs, inputs, np.split(classes, splits)):
    if node_level:
      labelled.append(graph._replace(nodes={"x": x, "y": y}))
    else:
      labelled.append(graph._replace(nodes={"x": x}, globals={"y": y}))
  return GraphDataset(
      name=f"{family}/{label}/{feature}",
      graphs=labelled,
      task_level=NODE if node_level else GRAPH,
      task_type=MULTICLASS,
      num_outputs=int(edges.size),
      report={
          "source": source,
          "label_bin_edges": edges.tolist(),
          "class_counts": np.bincount(classes, minlength=edges.size).tolist(),
          "feature_max": feature_max,
      })
