"""Baseline GNNs for node and graph tasks: GCN, GraphSAGE, GIN and GAT, built from gnnjax.nn.

* Node tasks (`task_level='node'`), Kipf & Welling's recipe: [dropout -> conv -> act] for the
  hidden layers, then dropout -> conv to the outputs. GAT uses `heads` heads (concatenated) in
  hidden layers and one averaged head at the output, as Velickovic et al.
* Graph tasks (`task_level='graph'`), the GIN paper's recipe: `num_layers` counts the input
  layer, so there are num_layers - 1 message-passing layers, each conv -> batch norm -> ReLU
  (GIN's conv is a 2-layer MLP with batch norm inside); every layer's node states (input
  included) are pooled and mapped to the outputs by their own linear layer, with dropout, and
  the scores are summed.

Integer node features (molecules) are embedded by summing one embedding table per column.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds
from gnnjax.nn import conv as conv_lib
from gnnjax.nn import mlp as mlp_lib
from gnnjax.nn import pool as pool_lib

MODELS = ("gcn", "sage", "gin", "gat")


class CategoricalEncoder(nn.Module):
  """Sum of per-column embeddings: int [N, K] -> float [N, features]."""

  vocab_sizes: Sequence[int]
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return sum(nn.Embed(size, self.features, embedding_init=nn.initializers.xavier_uniform(),
                        name=f"embed_{i}")(x[:, i]) for i, size in enumerate(self.vocab_sizes))


class BaselineGNN(nn.Module):
  """A plain GNN of one conv type for node- or graph-level prediction.

  Attributes:
    model: 'gcn', 'sage', 'gin' or 'gat'.
    num_outputs: output width C.
    task_level: 'node' (returns [N, C]) or 'graph' (returns [G, C]).
    hidden: hidden width (per head for GAT).
    num_layers: node tasks: number of convs; graph tasks: GIN's count (input layer included).
    dropout: dropout rate (node tasks: on conv inputs; graph tasks: on the per-layer scores).
    heads: GAT heads in hidden layers.
    pooling: graph readout ('sum', 'mean' or 'max').
    categorical_vocab: vocabulary sizes of integer node-feature columns, if x is categorical.
    learn_eps: GIN with learnable epsilon (GIN-eps) instead of GIN-0.
  """

  model: str
  num_outputs: int
  task_level: str = ds.NODE
  hidden: int = 16
  num_layers: int = 2
  dropout: float = 0.5
  heads: int = 8
  pooling: str = "sum"
  categorical_vocab: Sequence[int] | None = None
  learn_eps: bool = False

  def setup(self):
    if self.model not in MODELS:
      raise ValueError(f"unknown model {self.model!r}; choose from {list(MODELS)}")
    if self.task_level not in (ds.NODE, ds.GRAPH):
      raise ValueError(f"baseline models predict nodes or graphs, not {self.task_level!r} "
                       "targets; train link prediction with a GraphGym design (--design)")

  def _conv(self, features: int, last: bool, batch_norm_mlp: bool) -> nn.Module:
    if self.model == "gcn":
      return conv_lib.GCNConv(features)
    if self.model == "sage":
      return conv_lib.SAGEConv(features)
    if self.model == "gat":
      heads = 1 if last else self.heads
      return conv_lib.GATConv(features, heads=heads, concat=not last,
                              attention_dropout=self.dropout if self.task_level == ds.NODE else 0.)
    mlp = mlp_lib.MLP((features, features), batch_norm=batch_norm_mlp)
    return conv_lib.GINConv(mlp, train_eps=self.learn_eps)

  def _apply_conv(self, conv, h, graph, train):
    if isinstance(conv, (conv_lib.GINConv, conv_lib.GATConv)):
      return conv(h, graph, train=train)
    return conv(h, graph)

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple, train: bool = False) -> jax.Array:
    x = graph.nodes["x"]
    if self.categorical_vocab is not None:
      x = CategoricalEncoder(self.categorical_vocab, self.hidden)(x)
    x = x.astype(jnp.float32)
    if self.task_level == ds.NODE:
      return self._node_forward(x, graph, train)
    return self._graph_forward(x, graph, train)

  def _node_forward(self, h, graph, train):
    act = nn.elu if self.model == "gat" else nn.relu
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
      h = self._apply_conv(self._conv(self.num_outputs if last else self.hidden, last, False),
                           h, graph, train)
      if not last:
        h = act(h)
    return h

  def _graph_forward(self, h, graph, train):
    mask = graph_lib.node_mask(graph)
    states = [h]
    for _ in range(self.num_layers - 1):
      h = self._apply_conv(self._conv(self.hidden, False, True), h, graph, train)
      h = nn.relu(mlp_lib.MaskedBatchNorm()(h, mask, train))
      states.append(h)
    score = 0.0
    for h_layer in states:
      pooled = pool_lib.global_pool(self.pooling, h_layer, graph)
      score = score + nn.Dropout(self.dropout, deterministic=not train)(
          nn.Dense(self.num_outputs)(pooled))
    return score
