"""Principal Neighbourhood Aggregation (Corso et al., 2020; PyG PNAConv).

    m_ij  = pre_nn([x_i, x_j, (E(e_ij))])                         per tower
    a_i   = [S(d_i) * AGG_j m_ij  for S in scalers for AGG in aggregators]
    out_i = lin([post_nn_t([x_i, a_i]) for each tower t])

The degree scalers use the in-degree d_i of node i (real edges only) and the average degree of
the training graphs, summarised by the histogram `deg` (deg[k] = number of nodes with in-degree
k; compute it once with `degree_histogram`). Layout, names and initialisation follow PyG, so
weights can be transplanted: the concatenation is scaler-major, each tower has its own pre and
post networks, every linear layer is initialised like PyTorch's `Linear`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from gnnjax import batching
from gnnjax import graph as graph_lib
from gnnjax.nn import aggregate as agg_lib
from gnnjax.nn.deeper import torch_dense

Array = jax.Array

PNA_SCALERS = ("identity", "amplification", "attenuation", "linear", "inverse_linear")


def degree_histogram(graphs: batching.PackedGraphs | Iterable[jraph.GraphsTuple]) -> np.ndarray:
  """In-degree histogram over all nodes of a set of graphs (PyG's `PNAConv.get_degree_histogram`).

  Args:
    graphs: a `PackedGraphs`, or host-side graphs (single or batched, but NOT padded: padding
      nodes would be counted).

  Returns:
    int64 [max_degree + 1]: entry k is the number of nodes with exactly k incoming edges.
  """
  if isinstance(graphs, batching.PackedGraphs):
    shift = np.repeat(graphs.node_offsets, graphs.n_edge)
    return np.bincount(np.bincount(graphs.receivers + shift, minlength=int(graphs.n_node.sum())))
  histogram = np.zeros(1, np.int64)
  for graph in graphs:
    n = int(np.sum(graph.n_node))
    counts = np.bincount(np.bincount(np.asarray(graph.receivers), minlength=n))
    if counts.size > histogram.size:
      counts[:histogram.size] += histogram
      histogram = counts
    else:
      histogram[:counts.size] += counts
  return histogram.astype(np.int64)


def average_degrees(deg: Sequence[int] | np.ndarray) -> tuple[float, float]:
  """(mean of d, mean of log(d + 1)) over nodes, from a degree histogram (PyG's avg_deg)."""
  counts = np.asarray(deg, np.float64)
  if counts.ndim != 1 or counts.sum() <= 0:
    raise ValueError(f"deg must be a 1-D histogram with at least one node, got {deg!r}")
  bins = np.arange(counts.size)
  total = counts.sum()
  return float((bins * counts).sum() / total), float((np.log(bins + 1.0) * counts).sum() / total)


def _scale(kind: str, aggregated: Array, degree: Array, avg_lin: float, avg_log: float
           ) -> Array:
  """aggregated [N, T, K] times scaler(degree [N]) (PyG DegreeScalerAggregation)."""
  d = degree[:, None, None]
  if kind == "identity":
    return aggregated
  if kind == "amplification":
    return aggregated * (jnp.log(d + 1.0) / avg_log)
  if kind == "attenuation":
    return aggregated * (avg_log / jnp.log(jnp.maximum(d, 1.0) + 1.0))
  if kind == "linear":
    return aggregated * (d / avg_lin)
  if kind == "inverse_linear":
    return aggregated * (avg_lin / jnp.maximum(d, 1.0))
  raise ValueError(f"unknown PNA scaler {kind!r}; choose from {list(PNA_SCALERS)}")


class PNAConv(nn.Module):
  """PNA convolution (PyG PNAConv).

  Attributes:
    features: output width F_out (divisible by `towers`).
    deg: in-degree histogram of the training graphs (a tuple of ints; see `degree_histogram`).
    aggregators: any of gnnjax.nn.aggregate's names: 'mean', 'min', 'max', 'std', 'sum', ...
    scalers: any of PNA_SCALERS.
    towers: number of towers; each has its own pre/post networks and F_out / towers outputs.
    pre_layers: linear layers of each pre network (ReLU between them).
    post_layers: linear layers of each post network (ReLU between them).
    divide_input: split the input features across towers instead of giving each tower all.
  """

  features: int
  deg: Sequence[int]
  aggregators: Sequence[str] = ("mean", "min", "max", "std")
  scalers: Sequence[str] = ("identity", "amplification", "attenuation")
  towers: int = 1
  pre_layers: int = 1
  post_layers: int = 1
  divide_input: bool = False

  def _tower_inputs(self, x: Array) -> Array:
    """[N, D] -> [N, T, F_in]: split across towers, or the whole x repeated for each."""
    n, width = x.shape
    if self.divide_input:
      if width % self.towers:
        raise ValueError(f"divide_input needs the input width {width} divisible by towers "
                         f"{self.towers}")
      return x.reshape(n, self.towers, width // self.towers)
    return jnp.broadcast_to(x[:, None, :], (n, self.towers, width))

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple, edge_features: Array | None = None
               ) -> Array:
    """Applies the layer.

    Args:
      x: float [N, D] node features.
      graph: padded graph with E edges.
      edge_features: optional float [E, D_e]; encoded by a linear map to each tower's width.

    Returns:
      float [N, features].
    """
    if self.features % self.towers:
      raise ValueError(f"features {self.features} must be divisible by towers {self.towers}")
    for kind in self.scalers:
      if kind not in PNA_SCALERS:
        raise ValueError(f"unknown PNA scaler {kind!r}; choose from {list(PNA_SCALERS)}")
    avg_lin, avg_log = average_degrees(self.deg)
    n = x.shape[0]
    towers_x = self._tower_inputs(x)  # [N, T, F_in]
    f_in, f_out = towers_x.shape[-1], self.features // self.towers
    parts = [towers_x[graph.receivers], towers_x[graph.senders]]
    if edge_features is not None:
      encoded = torch_dense(f_in, edge_features.shape[-1], name="edge_encoder")(edge_features)
      parts.append(jnp.broadcast_to(encoded[:, None, :], (encoded.shape[0], self.towers, f_in)))
    pre_input = jnp.concatenate(parts, axis=-1)  # [E, T, (2|3) F_in]
    messages = jnp.stack([self._stack(pre_input[:, t], f_in, self.pre_layers, f"pre_nns_{t}")
                          for t in range(self.towers)], axis=1)  # [E, T, F_in]

    mask = graph_lib.edge_mask(graph)
    aggregated = jnp.concatenate(
        [agg_lib.aggregate(kind, messages, graph.receivers, n, mask) for kind in self.aggregators],
        axis=-1)  # [N, T, A F_in]
    degree = graph_lib.in_degree(graph).astype(aggregated.dtype)
    scaled = jnp.concatenate([_scale(kind, aggregated, degree, avg_lin, avg_log)
                              for kind in self.scalers], axis=-1)  # [N, T, S A F_in]
    post_input = jnp.concatenate([towers_x, scaled], axis=-1)
    out = jnp.concatenate([self._stack(post_input[:, t], f_out, self.post_layers, f"post_nns_{t}")
                           for t in range(self.towers)], axis=-1)  # [N, F_out]
    return torch_dense(self.features, self.features, name="lin")(out)

  def _stack(self, h: Array, width: int, layers: int, prefix: str) -> Array:
    """PyG's tower network: Linear, then (ReLU, Linear) x (layers - 1)."""
    for i in range(layers):
      if i > 0:
        h = nn.relu(h)
      h = torch_dense(width, h.shape[-1], name=f"{prefix}_{i}")(h)
    return h
