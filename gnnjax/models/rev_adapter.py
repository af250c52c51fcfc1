"""RevGNN (gnnjax.models.revgnn) behind flax's `init`/`apply` interface, so that the shared
training loop (gnnjax.training.loop.fit) trains it unchanged.

RevGNN is a frozen dataclass with pure `init(key, graph)` / `apply(params, graph, train, key)`.
`RevGNNModule` keeps RevGNN's whole parameter tree under `variables['params']['revgnn']`
(created by `RevGNN.init` from the 'params' key) and calls `RevGNN.apply` with the 'dropout'
key when `train`; it adds no parameters of its own, so the function is exactly RevGNN's (tested
against calling init/apply directly).

Beyond node tasks it supports:
* graph tasks: per-node outputs are mean-pooled per graph. RevGNN's head ends with one affine
  map after per-node LayerNorm/ReLU/dropout, and a mean commutes with an affine map, so this is
  the same as mean-pooling the head's input and applying the head to the pooled vector.
* point clouds without edges: with `knn` set, one k-NN graph of the input node features (the
  xyz of gnnjax.data.pointcloud) is built once per forward pass and used by every reversible
  block. It is static through depth: re-building a dynamic k-NN graph of the hidden state per
  block (as DeepGCN's EdgeConv blocks do) would make the blocks' graph depend on the state, and
  the reversible stack would then need to recompute it during the inverse pass. Its edges carry
  the relative positions x_j - x_i (`relative_edges`), EdgeConv's local-geometry input.

The dataset's own edge features are not read (edge_dim=None: GEN messages are ReLU(h_j) + eps);
on k-NN graphs, `relative_edges` supplies x_j - x_i as edge features instead.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import jraph

from gnnjax.data import dataset as ds
from gnnjax.models import revgnn
from gnnjax.nn import knn as knn_lib
from gnnjax.nn import pool as pool_lib

Array = jax.Array


def _typed_key(key: Array) -> Array:
  """RevGNN splits keys into reshaped batches (gnnjax.deep.blocks.init_stacked), which needs
  typed keys; the training loop and flax hand out raw uint32 [2] keys. Same random bits."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


@dataclasses.dataclass(frozen=True)
class RevGNNModule:
  """RevGNN behind flax's `init`/`apply` interface (variables = {'params': {'revgnn': ...}}).

  Not an `nn.Module`: RevGNN instantiates flax modules (its dense layers, norms and GEN blocks)
  inside its pure functions, and flax would adopt those as children of a calling linen module;
  a frozen dataclass with the two methods the training loop calls keeps RevGNN's functions
  untouched.

  Attributes:
    config: the RevGNN (width, depth, groups, dropout, aggregation, edge_dim, ...).
    task_level: 'node' -> [N, num_outputs]; 'graph' -> mean-pooled [G, num_outputs].
    knn: if set, run the blocks on the k-NN graph (self included) of graph.nodes['x'] instead of
      the graph's own edges (point clouds, which come without edges).
    points_per_graph: every real graph has exactly this many nodes: blocked k-NN search (see
      gnnjax.nn.knn); None: flat search over the batch.
    relative_edges: with `knn`, give every k-NN edge j -> i the feature x_j - x_i (float [E, F],
      F = node feature width; needs config.edge_dim = F). GEN messages ReLU(h_j + W e_ji) then
      see relative positions, as EdgeConv does; without them the blocks only see functions of
      absolute coordinates, which carry no label on rotated point clouds.
  """

  config: revgnn.RevGNN
  task_level: str = ds.NODE
  knn: int | None = None
  points_per_graph: int | None = None
  relative_edges: bool = False

  def __post_init__(self):
    if not isinstance(self.config, revgnn.RevGNN):
      raise ValueError(f"config must be a revgnn.RevGNN, got {type(self.config).__name__}")
    if self.task_level not in (ds.NODE, ds.GRAPH):
      raise ValueError(f"task_level must be {ds.NODE!r} or {ds.GRAPH!r}, got "
                       f"{self.task_level!r}")
    if self.knn is not None and self.knn < 1:
      raise ValueError(f"knn must be None or >= 1, got {self.knn}")
    if self.relative_edges and self.knn is None:
      raise ValueError("relative_edges needs knn (it describes the k-NN edges)")
    if self.knn is not None and not self.relative_edges and self.config.edge_dim is not None:
      raise ValueError("knn graphs carry no edge features: use edge_dim=None with knn, or "
                       "relative_edges=True with edge_dim = node feature width")

  def _graph(self, graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
    if self.knn is None:
      return graph
    x = jnp.asarray(graph.nodes["x"], jnp.float32)
    graph = knn_lib.knn_graph(x, graph, self.knn, 1, points_per_graph=self.points_per_graph)
    if self.relative_edges:  # senders are the neighbours j, receivers the point i
      graph = graph._replace(edges={"x": x[graph.senders] - x[graph.receivers]})
    return graph

  def init(self, rngs: Array | dict, graph: jraph.GraphsTuple, train: bool = False) -> dict:
    """{'params': {'revgnn': RevGNN.init(rngs['params'], graph)}}; `rngs` is a key or a dict
    of keys with 'params' (as flax)."""
    del train  # no state depends on the mode
    key = rngs["params"] if isinstance(rngs, dict) else rngs
    return {"params": {"revgnn": self.config.init(_typed_key(key), self._graph(graph))}}

  def apply(self, variables: dict, graph: jraph.GraphsTuple, train: bool = False,
            rngs: Array | dict | None = None, mutable=False):
    """Outputs [N, K] (node tasks) or [G, K] (graph tasks); dropout (when `train`) draws from
    rngs['dropout']. With `mutable` (a list of collections, as flax) returns (outputs, {})."""
    key = None
    if train and self.config.dropout > 0:
      if rngs is None or (isinstance(rngs, dict) and "dropout" not in rngs):
        raise ValueError("train=True with dropout > 0 needs rngs={'dropout': key}")
      key = _typed_key(rngs["dropout"] if isinstance(rngs, dict) else rngs)
    graph = self._graph(graph)
    out = self.config.apply(variables["params"]["revgnn"], graph, train=train, key=key)
    if self.task_level == ds.GRAPH:
      out = pool_lib.global_pool("mean", out, graph)
    return (out, {}) if mutable else out


def build_model(dataset: ds.GraphDataset, *, hidden: int = 64, num_layers: int = 4,
                dropout: float = 0.1, aggregation: str = "max", groups: int = 2,
                knn: int | None = None, relative_edges: bool = True,
                **kwargs) -> RevGNNModule:
  """A RevGNNModule for `dataset`'s task (output width, task level, point-cloud k-NN).

  Node features must be float (categorical inputs have no encoder here); the dataset's edge
  features are not used. Point-cloud datasets (report['points_per_graph'] set, no edges) get a
  static k-NN graph of their xyz with `knn` neighbours (default 16), with relative positions
  x_j - x_i as edge features when `relative_edges`. `kwargs` are further RevGNN attributes.
  """
  if dataset.node_features_categorical:
    raise ValueError(f"{dataset.name}: RevGNNModule has no encoder for categorical node "
                     "features; one-hot them first")
  if dataset.task_level not in (ds.NODE, ds.GRAPH):
    raise ValueError(f"RevGNNModule supports node and graph tasks, not {dataset.task_level!r}")
  if hidden % groups:
    raise ValueError(f"RevGNN needs hidden divisible by groups={groups}, got hidden={hidden}")
  per_cloud = dataset.report.get("points_per_graph")
  if per_cloud and knn is None:
    knn = 16
  relative = bool(knn) and relative_edges
  config = revgnn.RevGNN(num_outputs=dataset.num_outputs, hidden=hidden, num_layers=num_layers,
                         groups=groups, dropout=dropout, aggregation=aggregation,
                         edge_dim=dataset.num_node_features if relative else None, **kwargs)
  return RevGNNModule(config, task_level=dataset.task_level, knn=knn,
                      points_per_graph=int(per_cloud) if (per_cloud and knn) else None,
                      relative_edges=relative)
