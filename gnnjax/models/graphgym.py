"""The GraphGym design-space GNN (You, Ying, Leskovec, NeurIPS 2020), built from a `Design`.

Forward order (GraphGym's graphgym/models/gnn.py of the release commit):

1. Preprocess: concatenate the node feature arrays named in `feature_keys` -> [N, F].
2. Pre-MP: `layers_pre_mp` Linear GeneralLayers F -> d, then d -> d.
3. Message passing, by `stage_type` (d = dim_inner):
   * stack: x <- act(layer(x)) for each of `layers_mp` conv layers;
   * skipsum: x <- act(x + layer(x));
   * skipconcat: x <- act([x, layer(x)]), so layer i maps (i + 1) d -> d and the stage outputs
     (layers_mp + 1) d; the activation is re-applied to the carried part every block.
   Then (l2norm) every node embedding is scaled to unit L2 norm.
4. Head: graph tasks first pool the nodes of each graph (`graph_pooling`); then
   (layers_post_mp - 1) Linear GeneralLayers h -> h, h = the stage's output width, and a plain
   Linear h -> C with bias. Edge (link) tasks use GraphGym's GNNEdgeHead: with 'dot' or
   'cosine_similarity' decoding the same MLP maps every node h -> h and a query pair (u, v)
   scores <h_u, h_v> (or their cosine); with 'concat' the MLP maps [h_u, h_v] 2h -> 1.

A GeneralLayer is core -> [BatchNorm] -> [Dropout] -> act, its core biased only without batch
norm; here the activation is applied by the model so that PReLU's single slope is one parameter
shared by every layer (`params['prelu']['slope']`), as in GraphGym. Batch norm ignores padding:
statistics are taken over real nodes (node layers) or real graphs (graph-head layers).

Initialisation as graphgym/init.py: Linear weights Xavier-uniform with gain sqrt(2) (biases 0),
conv weights glorot-uniform (gain 1), batch norm scale 1 and shift 0, PReLU slope 0.25.

Parameter names: `pre_mp_{i}/lin`, `mp_{i}/conv` (GeneralConv's message weight is
`mp_{i}/conv/lin/kernel`, its self weight `mp_{i}/conv/lin_self/kernel`; GIN's MLP is
`mp_{i}/gin_mlp`), `*/bn`, `post_mp_{i}/lin`, `post_mp_out`, `prelu`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds
from gnnjax.design import budget as budget_lib
from gnnjax.design.design import DESIGN_V1, Design
from gnnjax.nn import conv as conv_lib
from gnnjax.nn import general_conv
from gnnjax.nn import mlp as mlp_lib
from gnnjax.nn import pool as pool_lib

Array = jax.Array

# torch.nn.init.xavier_uniform_ with gain calculate_gain('relu') = sqrt(2): variance scale 2.
XAVIER_RELU = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")
L2_EPS = 1e-12  # torch.nn.functional.normalize's eps
EDGE_DECODINGS = ("dot", "cosine_similarity", "concat")


def make_conv(design: Design, features: int) -> nn.Module:
  """The message-passing core of one GeneralLayer (bias only when no batch norm follows).

  GCN/SAGE/GIN/GAT keep PyG's defaults as GraphGym's wrappers do (GCN: self-loops and
  symmetric normalisation; SAGE: mean; GIN: Linear -> ReLU -> Linear, eps 0; GAT: self-loops,
  `design.heads` heads averaged so the width stays `features`); `design.aggregation` only
  applies to GeneralConv.
  """
  use_bias = not design.batch_norm
  if design.conv_type == "generalconv":
    return general_conv.GeneralConv(features, aggregation=design.aggregation,
                                    variant=design.conv_variant, use_bias=use_bias, name="conv")
  if design.conv_type == "gcn":
    return conv_lib.GCNConv(features, use_bias=use_bias, name="conv")
  if design.conv_type == "sage":
    return conv_lib.SAGEConv(features, name="conv")
  if design.conv_type == "gin":
    mlp = mlp_lib.MLP((features, features), activation="relu", kernel_init=XAVIER_RELU,
                      name="gin_mlp")
    return conv_lib.GINConv(mlp, name="conv")
  if design.conv_type == "gat":
    return conv_lib.GATConv(features, heads=design.heads, concat=False, use_bias=use_bias,
                            name="conv")
  raise ValueError(f"unknown conv_type {design.conv_type!r}")


def _call_conv(conv: nn.Module, x: Array, graph: jraph.GraphsTuple, train: bool) -> Array:
  if isinstance(conv, (conv_lib.GINConv, conv_lib.GATConv)):
    return conv(x, graph, train=train)
  return conv(x, graph)


class GeneralLayer(nn.Module):
  """GraphGym GeneralLayer without its activation: core -> [BatchNorm] -> [Dropout].

  Attributes:
    features: output width.
    design: supplies batch_norm, dropout and (for convs) the conv settings.
    kind: 'linear' (Dense core) or 'conv' (message passing, see `make_conv`).
  """

  features: int
  design: Design
  kind: str = "linear"

  @nn.compact
  def __call__(self, x: Array, graph: jraph.GraphsTuple | None, mask: Array,
               train: bool) -> Array:
    """x [R, D_in] float32 (rows: nodes or graphs), mask bool [R] (real rows) -> [R, features]."""
    if self.kind == "linear":
      h = nn.Dense(self.features, use_bias=not self.design.batch_norm, kernel_init=XAVIER_RELU,
                   name="lin")(x)
    elif self.kind == "conv":
      h = _call_conv(make_conv(self.design, self.features), x, graph, train)
    else:
      raise ValueError(f"unknown GeneralLayer kind {self.kind!r}; choose 'linear' or 'conv'")
    if self.design.batch_norm:
      h = mlp_lib.MaskedBatchNorm(name="bn")(h, mask, train)
    if self.design.dropout > 0:
      h = nn.Dropout(self.design.dropout, deterministic=not train)(h)
    return h


def l2_normalize(x: Array) -> Array:
  """Row-wise x / max(||x||_2, 1e-12), as torch.nn.functional.normalize."""
  squared = jnp.sum(x * x, axis=-1, keepdims=True)
  # The double where keeps torch's value max(||x||, eps) and gives a finite gradient for an
  # all-zero row, where d sqrt(s)/ds at s = 0 would be inf (and 0 * inf = NaN).
  big = squared > L2_EPS ** 2
  norm = jnp.where(big, jnp.sqrt(jnp.where(big, squared, 1.0)), L2_EPS)
  return x / norm


class GraphGymGNN(nn.Module):
  """The GraphGym GNN of a design: padded batch -> [N, C] (node task) or [G, C] (graph task).

  Edge tasks return [G * Q] logits, one per query pair in `globals['pairs']` [G, Q, 2] (node ids
  within each graph; see gnnjax.data.links), flattened in the order of
  `gnnjax.training.losses.targets_and_mask`.

  Attributes:
    design: the design; `design.dim_inner` must be set (`build_model` sets it by budget).
    num_outputs: output width C (1 logit for binary tasks).
    task_level: 'node', 'edge' or 'graph'.
    feature_keys: node arrays concatenated into the input, in order (GraphGym's preprocess).
    edge_decoding: edge tasks: 'dot' (GraphGym's default), 'cosine_similarity' or 'concat'.
  """

  design: Design
  num_outputs: int
  task_level: str = ds.NODE
  feature_keys: Sequence[str] = ("x",)
  edge_decoding: str = "dot"

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple, train: bool = False) -> Array:
    design = self.design
    if design.dim_inner is None:
      raise ValueError("design.dim_inner is None; set it or build the model with "
                       "gnnjax.models.graphgym.build_model, which matches the compute budget")
    if self.task_level not in ds.TASK_LEVELS:
      raise ValueError(f"unknown task level {self.task_level!r}; choose from {ds.TASK_LEVELS}")
    act = self._activation()
    node_mask = graph_lib.node_mask(graph)
    x = self._preprocess(graph)
    for i in range(design.layers_pre_mp):
      x = act(GeneralLayer(design.dim_inner, design, "linear", name=f"pre_mp_{i}")(
          x, graph, node_mask, train))
    x = self._stage(x, graph, node_mask, act, train)
    if design.l2norm:
      x = l2_normalize(x)
    if self.task_level == ds.EDGE:
      return self._edge_head(x, graph, node_mask, act, train)
    mask = node_mask
    if self.task_level == ds.GRAPH:
      x = pool_lib.global_pool(design.graph_pooling, x, graph)
      mask = graph_lib.graph_mask(graph)
    return self._head(x, mask, act, train, self.num_outputs)

  def _activation(self) -> Callable[[Array], Array]:
    if self.design.activation == "prelu":
      return mlp_lib.PReLU(name="prelu")  # one instance: one slope for the whole model
    return mlp_lib.get_activation(self.design.activation)

  def _preprocess(self, graph: jraph.GraphsTuple) -> Array:
    parts = []
    for key in self.feature_keys:
      value = jnp.asarray(graph.nodes[key])
      parts.append((value[:, None] if value.ndim == 1 else value).astype(jnp.float32))
    return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

  def _stage(self, x: Array, graph: jraph.GraphsTuple, mask: Array, act: Callable,
             train: bool) -> Array:
    design = self.design
    for i in range(design.layers_mp):
      y = GeneralLayer(design.dim_inner, design, "conv", name=f"mp_{i}")(x, graph, mask, train)
      if design.stage_type == "stack":
        x = y
      elif design.stage_type == "skipsum":
        x = x + y
      else:  # skipconcat
        x = jnp.concatenate([x, y], axis=-1)
      x = act(x)
    return x

  def _head(self, x: Array, mask: Array, act: Callable, train: bool, features: int) -> Array:
    width = x.shape[-1]
    for i in range(self.design.layers_post_mp - 1):
      x = act(GeneralLayer(width, self.design, "linear", name=f"post_mp_{i}")(
          x, None, mask, train))
    return nn.Dense(features, kernel_init=XAVIER_RELU, name="post_mp_out")(x)

  def _edge_head(self, x: Array, graph: jraph.GraphsTuple, node_mask: Array, act: Callable,
                 train: bool) -> Array:
    """x [N, h] node embeddings -> [G * Q] pair logits (GraphGym's GNNEdgeHead)."""
    if self.edge_decoding not in EDGE_DECODINGS:
      raise ValueError(f"unknown edge_decoding {self.edge_decoding!r}; choose from "
                       f"{list(EDGE_DECODINGS)}")
    if self.num_outputs != 1:
      raise ValueError(f"link prediction scores one logit per pair, got num_outputs "
                       f"{self.num_outputs}")
    pairs = graph.globals["pairs"]  # [G, Q, 2], ids local to each graph
    first_node = jnp.cumsum(graph.n_node) - graph.n_node
    ids = (pairs + first_node[:, None, None]).reshape(-1, 2)
    if self.edge_decoding == "concat":
      pair_mask = (graph_lib.graph_mask(graph)[:, None]
                   & jnp.ones(pairs.shape[:2], bool)).reshape(-1)
      h = jnp.concatenate([x[ids[:, 0]], x[ids[:, 1]]], axis=-1)
      return self._head(h, pair_mask, act, train, 1).reshape(-1)
    h = self._head(x, node_mask, act, train, x.shape[-1])
    h_u, h_v = h[ids[:, 0]], h[ids[:, 1]]
    if self.edge_decoding == "cosine_similarity":
      h_u, h_v = l2_normalize(h_u), l2_normalize(h_v)
    return jnp.sum(h_u * h_v, axis=-1)


def build_model(design: Design, dataset: ds.GraphDataset, *, synthetic: bool | None = None,
                budget: int | None = None, reference: Design = DESIGN_V1,
                edge_decoding: str = "dot") -> tuple[GraphGymGNN, Design]:
  """The GraphGym model of `design` for `dataset`, with dim_inner budget-matched if unset.

  Args:
    design: the design; if design.dim_inner is None it is chosen by GraphGym's budget matching.
    dataset: supplies the task level and the output width (`num_outputs`; 1 logit for binary).
    synthetic: whether the proxy model has F = 11 inputs (GraphGym's synthetic tasks) instead
      of 1; default: True for dataset names starting with 'smallworld' or 'scalefree'.
    budget: parameter budget P*; default: the proxy count of `reference`.
    reference: the budget's reference design (GraphGym: design_v1, P* = 133,121).
    edge_decoding: how link-prediction tasks score a node pair (EDGE_DECODINGS).

  Returns:
    (model, design with dim_inner set).

  Raises:
    ValueError: integer (categorical) node features, which GraphGym's model cannot embed
      (`gnnjax.data.one_hot_node_features` encodes them; the engine, `reference.train_design`
      and the Fisher task features call it for you).
  """
  if dataset.node_features_categorical:
    raise ValueError(f"{dataset.name} has integer (categorical) node features; GraphGymGNN "
                     "takes float features: call gnnjax.data.one_hot_node_features(dataset) "
                     "first")
  if design.dim_inner is None:
    f_proxy = budget_lib.proxy_dim_in(dataset.name, synthetic)
    target = budget if budget is not None else budget_lib.reference_budget(reference)
    design = design.replace(dim_inner=budget_lib.match_dim_inner(design, target, f_proxy))
  return GraphGymGNN(design, dataset.num_outputs, dataset.task_level,
                     edge_decoding=edge_decoding), design
