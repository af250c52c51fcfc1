"""DeepGCN backbones (Li et al., DeepGCNs ICCV'19 / TPAMI'21; DeeperGCN arXiv 2006.07739).

One model, four ways of stacking L graph convolutions (a stem conv + L-1 blocks):

    plain  h <- D(A(N(conv(h))))                    PlainGCN (no skip connection)
    res    h <- D(A(N(conv(h))) + h)                ResGCN, post-activation: y = F(x) + x
    res+   h <- conv(D(A(N(h)))) + h                ResGCN+ / DeeperGCN's pre-activation 'res+'
    dense  h <- concat(h, D(A(N(conv(h)))))         DenseGCN: width grows by `growth` per block

(N = norm, A = activation, D = dropout; N before A as in DeeperGCN's sparse code, where
DeepGCNs' dense point-cloud code applies ReLU before batch norm.) The stem maps the input to
`hidden` channels: for plain/res/dense it is D(A(N(conv(x)))), for res+ a bare conv (DeeperGCN's
layer 0 has nothing in front of it); res+ then ends with N -> A -> D before the output head, as
DeeperGCN does. Node tasks return [N, C] from a Linear head on the final node states; graph
tasks pool them ('mean'/'sum'/'max') and return [G, C].

Graphs are either the batch's own (citation, TU graphs) or, with `knn=k`, dynamic dilated k-NN
graphs (point clouds): the stem uses the k-NN graph of the first `knn_input_dims` input channels
(xyz) with dilation 1; block i (0-based) recomputes the graph from its own input features with
dilation 1+i (clipped so that k*d fits a cloud; `dilated=False` keeps dilation 1) and, with
`stochastic`, DeepGCNs' stochastic dilation in training (its randomness comes from the
'dropout' RNG stream). DeepGCNs' PlainGCN uses neither dilation nor stochasticity; that is left to
the caller (`dilated=False`).

Convs come from the layer library: 'gcn', 'sage', 'gin', 'gen' (GENConv), 'edge' (EdgeConv),
'mr' (MRConv); EdgeConv/MRConv use a single Linear as their MLP, with the block's norm and
activation applied to the aggregated node features (DeepGCNs' dense code applies them per edge
before the max; per node is k times cheaper and commutes with the max for ReLU without norm).

Differences from the reference code, on purpose: no fusion of all block outputs and no global
context branch in the point-cloud head (a plain Linear on the last block's output), so that
depth studies compare the backbones themselves; batch norm is the padding-aware
`MaskedBatchNorm` (statistics over real nodes only) or LayerNorm.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds
from gnnjax.models.baselines import CategoricalEncoder
from gnnjax.nn import conv as conv_lib
from gnnjax.nn import deeper as deeper_lib
from gnnjax.nn import knn as knn_lib
from gnnjax.nn import mlp as mlp_lib
from gnnjax.nn import point as point_lib
from gnnjax.nn import pool as pool_lib

Array = jax.Array

BLOCKS = ("plain", "res", "res+", "dense")
CONVS = ("gcn", "sage", "gin", "gen", "edge", "mr")
NORMS = ("batch", "layer", "none")

# DeepGCNs re-initialise point-net convs with kaiming_normal (PyTorch: fan_in, not truncated).
_KAIMING_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _mlp(features, **kwargs) -> mlp_lib.MLP:
  # Unbound (parent=None): the conv adopts it, so its parameters live under '<conv>/mlp'.
  return mlp_lib.MLP(tuple(features), parent=None, **kwargs)


def make_conv(kind: str, features: int, *, norm: str = "batch", gen_aggr: str = "softmax",
              name: str | None = None) -> nn.Module:
  """A conv of the layer library with `features` output channels (called inside compact)."""
  if kind == "gcn":
    return conv_lib.GCNConv(features, name=name)
  if kind == "sage":
    return conv_lib.SAGEConv(features, name=name)
  if kind == "gin":
    return conv_lib.GINConv(_mlp((features, features), batch_norm=norm == "batch"), name=name)
  if kind == "gen":
    return deeper_lib.GENConv(features, aggr=gen_aggr, learn_t=gen_aggr == "softmax",
                              norm=None if norm == "none" else norm, name=name)
  if kind == "edge":
    return point_lib.EdgeConv(_mlp((features,), kernel_init=_KAIMING_NORMAL), name=name)
  if kind == "mr":
    return point_lib.MRConv(_mlp((features,), kernel_init=_KAIMING_NORMAL), name=name)
  raise ValueError(f"unknown conv {kind!r}; choose from {list(CONVS)}")


def apply_conv(conv: nn.Module, h: Array, graph: jraph.GraphsTuple, train: bool) -> Array:
  """Calls a library conv, passing `train` to those that have batch norm or dropout inside."""
  if isinstance(conv, (conv_lib.GCNConv, conv_lib.SAGEConv)):
    return conv(h, graph)
  return conv(h, graph, train=train)


class Norm(nn.Module):
  """'batch' (padding-aware batch norm), 'layer' (PyTorch's LayerNorm) or 'none'."""

  kind: str = "batch"

  @nn.compact
  def __call__(self, h: Array, graph: jraph.GraphsTuple, train: bool) -> Array:
    if self.kind == "batch":
      return mlp_lib.MaskedBatchNorm(name="bn")(h, graph_lib.node_mask(graph), train)
    if self.kind == "layer":
      return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="ln")(h)
    if self.kind == "none":
      return h
    raise ValueError(f"unknown norm {self.kind!r}; choose from {list(NORMS)}")


class DeepGCNBlock(nn.Module):
  """One backbone block (see the module docstring for the four orderings).

  Attributes:
    block: 'plain', 'res', 'res+' or 'dense'.
    conv: conv type (CONVS).
    features: conv output width (hidden for plain/res/res+, the growth rate for dense).
    norm, activation, dropout: the N, A, D of the block.
    knn: k of a dynamic k-NN graph built from the block input, or None (use `graph`).
    dilation: dilation of that graph.
    stochastic, epsilon: stochastic dilation (training only).
    points_per_graph: blocked k-NN layout (see gnnjax.nn.knn).
    gen_aggr: GENConv aggregation.
    max_dilation: static bound that lets the call pass a traced dilation (scanned blocks).
  """

  block: str
  conv: str
  features: int
  norm: str = "batch"
  activation: str = "relu"
  dropout: float = 0.0
  knn: int | None = None
  dilation: int = 1
  stochastic: bool = False
  epsilon: float = knn_lib.STOCHASTIC_EPSILON
  points_per_graph: int | None = None
  gen_aggr: str = "softmax"
  max_dilation: int | None = None

  def block_graph(self, h: Array, graph: jraph.GraphsTuple, train: bool,
                  dilation: Array | None = None) -> jraph.GraphsTuple:
    """The graph this block convolves over (dynamic k-NN of h, or the input graph)."""
    if self.knn is None:
      return graph
    use_rng = train and self.stochastic
    return knn_lib.knn_graph(h, graph, self.knn, self.dilation if dilation is None else dilation,
                             points_per_graph=self.points_per_graph, train=train,
                             stochastic=self.stochastic, epsilon=self.epsilon,
                             rng=self.make_rng("dropout") if use_rng else None,
                             max_dilation=self.max_dilation)

  @nn.compact
  def __call__(self, h: Array, graph: jraph.GraphsTuple, train: bool = False,
               dilation: Array | None = None) -> Array:
    """h: float [N, D] -> [N, D] (plain/res/res+; D must equal `features` for res/res+) or
    [N, D + features] (dense). `dilation` (traced, <= max_dilation) overrides the attribute."""
    if self.block not in BLOCKS:
      raise ValueError(f"unknown block {self.block!r}; choose from {list(BLOCKS)}")
    if self.block in ("res", "res+") and h.shape[-1] != self.features:
      raise ValueError(f"{self.block} block needs input width == features ({self.features}), "
                       f"got {h.shape[-1]}")
    act = mlp_lib.get_activation(self.activation)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    g = self.block_graph(h, graph, train, dilation)
    conv = make_conv(self.conv, self.features, norm=self.norm, gen_aggr=self.gen_aggr,
                     name="conv")
    if self.block == "res+":
      return apply_conv(conv, drop(act(Norm(self.norm, name="norm")(h, graph, train))), g,
                        train) + h
    out = act(Norm(self.norm, name="norm")(apply_conv(conv, h, g, train), graph, train))
    if self.block == "plain":
      return drop(out)
    if self.block == "res":
      return drop(out + h)
    return jnp.concatenate([h, drop(out)], axis=-1)


class _ScannedBlock(nn.Module):
  """A DeepGCNBlock as an nn.scan cell: (h, dilation, graph) -> (h, None), the dilation scanned
  over; `train` is an attribute so the scanned function is a pure function of arrays."""

  kwargs: dict
  train: bool

  @nn.compact
  def __call__(self, h: Array, dilation: Array, graph: jraph.GraphsTuple):
    return DeepGCNBlock(**self.kwargs, name="block")(h, graph, self.train, dilation), None


class DeepGCN(nn.Module):
  """A DeepGCN backbone with a node- or graph-level head.

  Attributes:
    num_outputs: output width C.
    task_level: 'node' ([N, C]) or 'graph' ([G, C]).
    block: 'plain', 'res', 'res+' or 'dense'.
    conv: conv type (CONVS).
    num_layers: convs in total: the stem conv plus num_layers - 1 blocks (DeepGCNs' "ResGCN-28"
      has num_layers=28).
    hidden: channels C of the stem and of plain/res/res+ blocks.
    growth: dense growth rate (default: hidden, as DeepGCNs).
    norm: 'batch', 'layer' or 'none'.
    activation: activation name (gnnjax.nn.mlp).
    dropout: dropout rate.
    knn: k for dynamic dilated k-NN graphs (point clouds), or None for the batch's own graph.
    dilated: block i uses dilation 1 + i (else 1).
    stochastic, epsilon: stochastic dilation in training.
    points_per_graph: every graph has exactly this many nodes: blocked k-NN (see gnnjax.nn.knn).
    knn_input_dims: the stem's k-NN graph uses the first this-many input channels (xyz); None:
      all of them.
    pooling: graph readout for graph tasks.
    categorical_vocab: vocabulary sizes of integer node-feature columns (molecules).
    gen_aggr: GENConv aggregation ('softmax' learns its temperature).
    scan: run the blocks as one `nn.scan` (parameters stacked on a leading axis under
      'blocks/block'): the compiled program holds one block instead of num_layers - 1, so deep
      models compile in seconds. Not for dense blocks (their widths differ). With dilated k-NN
      every block sorts the k * (num_layers - 1) nearest (clipped to the cloud size) and picks
      its dilated ranks from them; the result equals the unrolled model's.
  """

  num_outputs: int
  task_level: str = ds.NODE
  block: str = "res+"
  conv: str = "edge"
  num_layers: int = 7
  hidden: int = 64
  growth: int | None = None
  norm: str = "batch"
  activation: str = "relu"
  dropout: float = 0.0
  knn: int | None = None
  dilated: bool = True
  stochastic: bool = False
  epsilon: float = knn_lib.STOCHASTIC_EPSILON
  points_per_graph: int | None = None
  knn_input_dims: int | None = 3
  pooling: str = "mean"
  categorical_vocab: Sequence[int] | None = None
  gen_aggr: str = "softmax"
  scan: bool = False

  def _check(self) -> None:
    if self.block not in BLOCKS:
      raise ValueError(f"unknown block {self.block!r}; choose from {list(BLOCKS)}")
    if self.conv not in CONVS:
      raise ValueError(f"unknown conv {self.conv!r}; choose from {list(CONVS)}")
    if self.norm not in NORMS:
      raise ValueError(f"unknown norm {self.norm!r}; choose from {list(NORMS)}")
    if self.task_level not in ds.TASK_LEVELS:
      raise ValueError(f"unknown task level {self.task_level!r}; choose from "
                       f"{list(ds.TASK_LEVELS)}")
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
    if self.scan and self.block == "dense":
      raise ValueError("scan=True needs blocks of one width: plain, res or res+, not dense")

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple, train: bool = False) -> Array:
    self._check()
    x = graph.nodes["x"]
    if self.categorical_vocab is not None:
      x = CategoricalEncoder(self.categorical_vocab, self.hidden, name="encoder")(x)
    x = x.astype(jnp.float32)
    act = mlp_lib.get_activation(self.activation)
    drop = nn.Dropout(self.dropout, deterministic=not train)

    # Stem: the first conv, on the input (k-NN of xyz for point clouds).
    g = graph
    if self.knn is not None:
      pos = x if self.knn_input_dims is None else x[:, :self.knn_input_dims]
      g = knn_lib.knn_graph(pos, graph, self.knn, 1, points_per_graph=self.points_per_graph)
    h = apply_conv(make_conv(self.conv, self.hidden, norm=self.norm, gen_aggr=self.gen_aggr,
                             name="stem_conv"), x, g, train)
    if self.block != "res+":
      h = drop(act(Norm(self.norm, name="stem_norm")(h, graph, train)))

    if self.scan and self.num_layers > 1:
      blocks = nn.scan(_ScannedBlock, variable_axes={"params": 0, "batch_stats": 0},
                       split_rngs={"params": True, "dropout": True},
                       in_axes=(0, nn.broadcast), length=self.num_layers - 1)
      n_blocks = self.num_layers - 1
      dilations = (jnp.arange(1, n_blocks + 1, dtype=jnp.int32) if self.dilated
                   else jnp.ones((n_blocks,), jnp.int32))
      kwargs = dict(block=self.block, conv=self.conv, features=self.hidden, norm=self.norm,
                    activation=self.activation, dropout=self.dropout, knn=self.knn,
                    stochastic=self.stochastic, epsilon=self.epsilon,
                    points_per_graph=self.points_per_graph, gen_aggr=self.gen_aggr,
                    max_dilation=n_blocks if self.dilated else 1)
      h, _ = blocks(kwargs, train, name="blocks")(h, dilations, graph)
    for i in range(0 if self.scan else self.num_layers - 1):
      h = DeepGCNBlock(
          block=self.block, conv=self.conv,
          features=(self.growth or self.hidden) if self.block == "dense" else self.hidden,
          norm=self.norm, activation=self.activation, dropout=self.dropout, knn=self.knn,
          dilation=1 + i if self.dilated else 1, stochastic=self.stochastic,
          epsilon=self.epsilon, points_per_graph=self.points_per_graph,
          gen_aggr=self.gen_aggr, name=f"block_{i}")(h, graph, train)

    if self.block == "res+":
      h = drop(act(Norm(self.norm, name="final_norm")(h, graph, train)))
    if self.task_level == ds.GRAPH:
      h = pool_lib.global_pool(self.pooling, h, graph)
    return nn.Dense(self.num_outputs, name="head")(h)


def build_model(dataset: ds.GraphDataset, **kwargs) -> DeepGCN:
  """A DeepGCN for `dataset`'s task (output width, task level, categorical inputs); `kwargs` are
  DeepGCN attributes. Point-cloud datasets (report['points_per_graph']) default to dynamic
  EdgeConv k-NN graphs with k=16 in the blocked layout."""
  defaults: dict = {}
  per_cloud = dataset.report.get("points_per_graph")
  if per_cloud:
    defaults.update(knn=16, conv="edge", points_per_graph=int(per_cloud))
  if dataset.node_features_categorical:
    x = dataset.graphs[0].nodes["x"]
    vocab = [int(max(g.nodes["x"][:, j].max() for g in dataset.graphs)) + 1
             for j in range(x.shape[1])]
    defaults["categorical_vocab"] = tuple(vocab)
  defaults.update(kwargs)
  return DeepGCN(num_outputs=dataset.num_outputs, task_level=dataset.task_level, **defaults)
