"""FIM task features (AutoTransfer, Cao et al. 2023, sec. 4.2), computed functionally.

For one anchor design and one seed r (the AutoTransfer brief, sec. 2):

1. Fresh parameters from seed r; the data split of seed r (tasks without a fixed split get a
   new random split per seed, as `torch.manual_seed(r)` does in the reference code).
2. Head inputs (the input of the final Linear `post_mp_out`) of every train batch, from one
   forward in train mode (batch norm on batch statistics), computed once and cached.
3. "Train only the last linear layer": Adam (lr 1e-2, coupled L2 weight decay 1e-4, as torch's
   Adam) on the final Linear's kernel and bias, one step per cached train batch per epoch, true
   labels and the task loss, up to 100 epochs with the reference code's plateau stop (mode min
   on the epoch's summed loss, relative threshold 1e-4, patience 10: stop once 11 consecutive
   epochs fail to beat best * (1 - 1e-4)). Written as a `lax.while_loop` over epochs, so under
   `vmap` each seed stops at its own epoch (a stopped seed's carry is frozen by vmap's select).
4. Diagonal Fisher of the message weights W of every message-passing layer (`mp_i/conv/lin/
   kernel`; not W_self, batch norm, biases, pre/post layers, as the reference code's name filter
   selects), over the val examples (val-mask nodes, or val graphs):
       F = sum_i (d/dW log p(y_i | x; W))^2,   y_i ~ p(. | x; W)   (the true Fisher)
   The forward runs in train mode on the val batch (as the reference); example i's
   log-likelihood is read from that batched forward, so its gradient includes the batch-norm
   coupling. Per-example gradients: ONE forward with `jax.vjp`, then the VJP at one cotangent
   per example (a one-hot row times d(-log p)/d(output)), vmapped over chunks of examples and
   squared-and-summed chunk by chunk (`lax.scan`), so no per-example gradient outlives its
   chunk. Sampled labels: categorical (multiclass), Bernoulli (binary / multi-task, per task),
   y = f + N(0, 1) (regression, unit-variance Gaussian likelihood).
5. alpha = m2 / m1^2 with m1 = tr(F)/n = mean(F), m2 = tr(F^2)/n = mean(F^2) (F diagonal),
   computed on F / max(F) so float32 neither overflows nor underflows (`alpha`).

A task's feature averages alpha over the R seeds per anchor, concatenates the U anchors and
divides by the L2 norm (`task_feature`).

Deviations from the reference code, deliberate (see the issue: "per-example log-likelihoods"):
the code squares the gradient of each val BATCH's mean loss (one squared batch gradient for a
node task), and on binary tasks samples every label as 0 (a 1-way softmax); here the Fisher
sums squared per-example gradients, and binary labels are Bernoulli(sigmoid). `max_examples`
(default: all) estimates the same sum from a random subset of the val examples, rescaled by
(#examples / #used) so m1 keeps its scale (alpha is scale-invariant anyway).

Cost. The exact Fisher needs one backward pass per val example (train-mode batch norm couples
every example to the whole batch, so per-example gradients are dense): on Cora's 500 val nodes
that is 500 backward passes per (anchor, seed), ~250 TFLOP for all 12 x 5 (fine on a GPU, about
an hour on a 2-core CPU). `num_probes = P` gives an unbiased estimate of the same diagonal from
P backward passes (random-sign combinations of the per-example cotangents; its noise inflates
alpha by about a factor 1 + 2/P, nearly uniformly over anchors, so the normalised feature moves
less than alpha), and `max_examples` subsamples the val examples.

Batching: one jitted program per anchor, vmapped over the R seeds (their splits, inits and
label samples); every batch of every seed is padded to one common budget so the seeds stack.
The 12 anchors have 12 different structures, so there are 12 programs (compiled in parallel
threads by `task_feature`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax

from gnnjax import batching
from gnnjax import data as data_lib
from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds
from gnnjax.design.design import Design
from gnnjax.models import graphgym
from gnnjax.tasks import anchors as anchors_lib
from gnnjax.training import losses

Array = jax.Array

HEAD = "post_mp_out"


@dataclasses.dataclass(frozen=True)
class FisherConfig:
  """Settings of the FIM task feature.

  Attributes:
    num_seeds: R, random initialisations (and splits) per anchor.
    first_seed: seeds are first_seed .. first_seed + R - 1 (the reference code uses 0..4).
    head_epochs: at most this many epochs of head fitting.
    head_lr: Adam learning rate of the head fit.
    head_weight_decay: coupled L2 weight decay of the head fit (torch Adam's weight_decay).
    patience: plateau stop: epochs without improvement tolerated.
    threshold: plateau stop: relative improvement needed (loss < best * (1 - threshold)).
    split: `gnnjax.data.apply_split` protocol ('default': Planetoid public, TU random 80/10/10,
      synthetic 80/20, MoleculeNet scaffold).
    max_examples: estimate F from at most this many val examples per seed (None: all). A
      small subset inflates alpha strongly and noisily (Cora, 16 of 500 nodes: 2-3x); prefer
      `num_probes` to cut the cost.
    num_probes: 0 (default): exact sum of squared per-example gradients, one VJP per example;
      P > 0: unbiased random-sign estimate of the same sum from P VJPs per val batch (cheap
      on large val sets; see `fisher_diagonal`).
    chunk_size: VJPs computed together (vmapped; memory knob).
    batch_size: graphs per batch (AutoTransfer's anchors: 32).
  """

  num_seeds: int = 5
  first_seed: int = 0
  head_epochs: int = 100
  head_lr: float = 1e-2
  head_weight_decay: float = 1e-4
  patience: int = 10
  threshold: float = 1e-4
  split: str = "default"
  max_examples: int | None = None
  num_probes: int = 0
  chunk_size: int = 32
  batch_size: int = 32

  def __post_init__(self):
    if self.num_seeds < 1:
      raise ValueError(f"num_seeds must be >= 1, got {self.num_seeds}")
    if self.head_epochs < 0:
      raise ValueError(f"head_epochs must be >= 0, got {self.head_epochs}")
    if self.max_examples is not None and self.max_examples < 1:
      raise ValueError(f"max_examples must be None or >= 1, got {self.max_examples}")
    if self.num_probes < 0:
      raise ValueError(f"num_probes must be >= 0 (0: exact per-example), got {self.num_probes}")
    if self.chunk_size < 1 or self.batch_size < 1:
      raise ValueError(f"chunk_size and batch_size must be >= 1, got {self.chunk_size}, "
                       f"{self.batch_size}")


# ----------------------------------------------------------------------------------------------
# Scale-invariant statistic.


def alpha(fisher_diagonal: Array) -> Array:
  """alpha = m2 / m1^2, m1 = mean(F), m2 = mean(F^2), for a diagonal Fisher F [n] (in [1, n]).

  Invariant to F -> c F (so to scaling the log-likelihood gradients), and computed on F / max(F)
  so that it stays finite where float32 moments do not. Seen on GraphGym's constant-feature
  tasks: every node carries the same features, so train-mode batch norm sees a variance of ~0
  and its Jacobian is ~1/sqrt(eps) (316) per layer; through a deep max- or mean-aggregation
  anchor, whose nodes stay identical, the gradients grow as its power and the Fisher reaches
  mean(F) ~ 1e20, whose square overflows (alpha inf or NaN); a tiny Fisher underflows the same
  way. An identically zero Fisher (no message weight gets a gradient) has no defined alpha; it
  gets 1, the value of every constant Fisher (the limit of alpha(c * 1) as c -> 0) and the
  statistic's minimum. NaNs in F propagate."""
  f = jnp.asarray(fisher_diagonal)
  scale = jnp.max(jnp.abs(f))
  zero = scale == 0
  g = f / jnp.where(zero, 1.0, scale)
  m1 = jnp.mean(g)
  return jnp.where(zero, 1.0, jnp.mean(g * g) / (m1 * m1))


# ----------------------------------------------------------------------------------------------
# Sampled labels and per-example log-likelihoods.


def sample_targets(key: Array, outputs: Array, task_type: str) -> Array:
  """Labels drawn from the model's predictive distribution (the true Fisher's expectation).

  outputs [B, C] -> multiclass: int [B]; binary: float [B, 1]; multitask: float [B, T];
  regression: float [B, T] (outputs + standard normal noise).
  """
  if task_type == ds.MULTICLASS:
    return jax.random.categorical(key, outputs, axis=-1)
  if task_type in (ds.BINARY, ds.MULTITASK):
    return jax.random.bernoulli(key, jax.nn.sigmoid(outputs)).astype(outputs.dtype)
  if task_type == ds.REGRESSION:
    return outputs + jax.random.normal(key, outputs.shape, outputs.dtype)
  raise ValueError(f"unknown task type {task_type!r}; expected one of {ds.TASK_TYPES}")


def example_nll(output: Array, target: Array, entry_mask: Array, task_type: str) -> Array:
  """-log p(target | output) of ONE example: output [C], target [] or [C], entry_mask [C]
  (multi-task/regression: which entries are labelled; ignored otherwise)."""
  if task_type == ds.MULTICLASS:
    return -jax.nn.log_softmax(output)[target]
  if task_type == ds.BINARY:
    return optax.sigmoid_binary_cross_entropy(output, target).sum()
  if task_type == ds.MULTITASK:
    return jnp.where(entry_mask, optax.sigmoid_binary_cross_entropy(output, target), 0.0).sum()
  if task_type == ds.REGRESSION:
    return jnp.where(entry_mask, 0.5 * (output - target) ** 2, 0.0).sum()
  raise ValueError(f"unknown task type {task_type!r}; expected one of {ds.TASK_TYPES}")


def _output_cotangents(outputs: Array, targets: Array, entry_mask: Array, task_type: str
                       ) -> Array:
  """d(-log p(y_i | o_i)) / d o_i for every row i: [B, C]."""
  return jax.vmap(jax.grad(lambda o, t, m: example_nll(o, t, m, task_type)))(
      outputs, targets, entry_mask)


def fisher_diagonal(outputs_fn: Callable[[Any], Array], params: Any, rows: Array,
                    weights: Array, key: Array, task_type: str,
                    entry_mask: Array | None = None, chunk_size: int = 32,
                    num_probes: int = 0, signs: Array | None = None) -> tuple[Any, Array]:
  """Diagonal Fisher sum_i w_i (grad_params log p(y_i | x))^2 over selected output rows.

  Exact (default, num_probes = 0): one VJP per example, i.e. the squared per-example
  gradients. With num_probes = P > 0: the unbiased random-sign estimate
  (1/P) sum_p (sum_i v_pi sqrt(w_i) g_i)^2, v_pi = +-1 (E_v = the exact sum, since
  E[v_pi v_pj] = [i == j]), which costs P VJPs instead of one per example.

  Args:
    outputs_fn: params -> outputs [B, C] (a full batched forward; row i is example i's output).
    params: the parameters F is taken over (any pytree).
    rows: int [K] output rows of the examples (padding entries may repeat any row; distinct
      rows otherwise).
    weights: float [K] example weights (0 drops a padding entry).
    key: PRNG key of the sampled labels (and of the probes' signs).
    task_type: the dataset's task type.
    entry_mask: bool [B, C] labelled entries (multi-task / regression); default all.
    chunk_size: VJPs computed together (vmapped); the rest is a `lax.scan` over chunks.
    num_probes: 0 for the exact per-example sum, else the number of random-sign probes.
    signs: optional explicit probe signs [P, K] (tests); overrides num_probes' random draw.

  Returns:
    (F with the structure of `params`, sampled targets of all B rows).
  """
  outputs, vjp = jax.vjp(outputs_fn, params)
  outputs = jax.lax.stop_gradient(outputs)
  if entry_mask is None:
    entry_mask = jnp.ones(outputs.shape, bool)
  entry_mask = jnp.broadcast_to(entry_mask.reshape(outputs.shape[0], -1), outputs.shape)
  label_key, sign_key = jax.random.split(key)
  targets = sample_targets(label_key, outputs, task_type)
  if task_type == ds.BINARY:
    targets = targets.reshape(outputs.shape)
  cotangents = _output_cotangents(outputs, targets, entry_mask, task_type)  # [B, C]

  if signs is None and num_probes > 0:
    signs = jax.random.rademacher(sign_key, (num_probes, rows.shape[0]), outputs.dtype)
  if signs is None:  # exact: probe k is the one-hot vector of example k
    units, scale = jnp.sqrt(weights), 1.0  # squared below: F gets w_i g_i^2
    make = lambda unit, index: jnp.zeros_like(outputs).at[rows[index]].set(
        cotangents[rows[index]] * unit)
    items = (units, jnp.arange(rows.shape[0]))
  else:
    scale = 1.0 / signs.shape[0]
    root = jnp.sqrt(weights)[:, None]
    make = lambda sign, _: jnp.zeros_like(outputs).at[rows].add(
        cotangents[rows] * root * sign[:, None])
    items = (signs, jnp.arange(signs.shape[0]))
  k = items[1].shape[0]
  chunk = max(1, min(chunk_size, k))
  pad = -k % chunk
  padded = []
  for x in items:
    filler = jnp.zeros((pad,) + x.shape[1:], x.dtype)
    padded.append(jnp.concatenate([x, filler]).reshape((-1, chunk) + x.shape[1:]))
  if pad:  # padding probes contribute nothing
    valid = (jnp.arange(k + pad) < k).reshape(-1, chunk)
  else:
    valid = jnp.ones((k // chunk, chunk), bool)

  def one_probe(item, index, ok):
    (grad,) = vjp(make(item, index) * ok)
    return grad

  def accumulate(total, chunk_inputs):
    grads = jax.vmap(one_probe)(*chunk_inputs)
    return jax.tree.map(lambda t, g: t + jnp.sum(g * g, axis=0), total, grads), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  fisher, _ = jax.lax.scan(accumulate, zeros, (*padded, valid))
  return jax.tree.map(lambda f: f * scale, fisher), targets


# ----------------------------------------------------------------------------------------------
# Parameters: message weights and the head.


def message_weight_paths(params: Mapping) -> list[tuple[str, ...]]:
  """Paths of the message weight W of every message-passing layer, in layer order.

  GeneralConv: `mp_i/conv/lin/kernel` (its self weight `lin_self` is excluded, as in the
  reference code). Other conv types: every `kernel` under `mp_i/conv` (their message weights).
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  paths = [p for p in flat if p[0].startswith("mp_") and p[1:] == ("conv", "lin", "kernel")]
  if not paths:  # non-GeneralConv: the conv's kernels (no self weight to exclude)
    paths = [p for p in flat if p[0].startswith("mp_") and p[-1] == "kernel"
             and "lin_self" not in p]
  if not paths:
    raise ValueError("no message-passing kernels found under 'mp_*/conv' in the parameters")
  return sorted(paths, key=lambda p: (int(p[0].split("_")[1]), p))


def _split_params(params, paths):
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  selected = {"/".join(p): flat.pop(p) for p in paths}
  return selected, flat


def _merge_params(selected, rest):
  flat = dict(rest)
  flat.update({tuple(k.split("/")): v for k, v in selected.items()})
  return flax.traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------------------------
# Host-side data: every seed's train / val batches padded to one budget and stacked.


@dataclasses.dataclass
class PreparedTask:
  """A task's batches for all R seeds, stacked (leading axes [R, batches, ...]).

  Attributes:
    name, task_level, task_type, num_outputs: from the dataset.
    seeds: the R seeds.
    train: padded train batches [R, Bt, ...] (node tasks: all graphs, train nodes count).
    val: padded val batches [R, Bv, ...].
    val_rows: int [R, Bv, K] output rows of the val examples in each val batch.
    val_weights: float [R, Bv, K] their weights (0: padding; > 1 when subsampled).
    num_examples: val examples per seed before subsampling.
  """

  name: str
  task_level: str
  task_type: str
  num_outputs: int
  seeds: tuple[int, ...]
  train: jraph.GraphsTuple
  val: jraph.GraphsTuple
  val_rows: np.ndarray
  val_weights: np.ndarray
  num_examples: int


def _chunks(indices: np.ndarray, size: int) -> list[np.ndarray]:
  return [indices[i:i + size] for i in range(0, len(indices), size)]


def _val_node_rows(batch: jraph.GraphsTuple) -> np.ndarray:
  mask = np.asarray(batch.nodes["val_mask"], bool)
  if "label_mask" in batch.nodes:
    mask &= np.asarray(batch.nodes["label_mask"], bool)
  return np.nonzero(mask)[0]


def prepare_task(dataset: ds.GraphDataset, config: FisherConfig = FisherConfig()
                 ) -> PreparedTask:
  """Splits the dataset per seed and builds the padded, stacked batches of `FisherConfig`.

  Node tasks: every batch holds `batch_size` whole graphs (a single-graph task is one batch),
  train batches shuffled per seed; examples are the batch's val-mask nodes. Graph tasks: train
  batches of shuffled train graphs, val batches of val graphs in order; examples are graphs.
  Integer (categorical) node features are one-hot encoded first, as the population engine
  does (`gnnjax.data.one_hot_node_features`), for the anchors' GraphGymGNN.

  Raises:
    ValueError: a split without val examples, or seeds whose splits differ in size.
  """
  dataset = data_lib.one_hot_node_features(dataset)
  seeds = tuple(config.first_seed + r for r in range(config.num_seeds))
  packed = None
  plans = []  # per seed: (train index lists, val index lists, per-val-batch example rows)
  for seed in seeds:
    data, graph_splits = data_lib.apply_split(dataset, config.split, seed)
    rng = np.random.default_rng(seed)
    if dataset.task_level == ds.NODE:
      packed = batching.PackedGraphs.from_graphs(data.graphs)
      everything = np.arange(len(data))
      train = _chunks(rng.permutation(everything), config.batch_size)
      val = _chunks(everything, config.batch_size)
      rows = [_val_node_rows(packed.gather(idx)) for idx in val]
    else:
      if graph_splits is None or len(graph_splits.get("val", ())) == 0:
        raise ValueError(f"{dataset.name}: split {config.split!r} has no val graphs; the "
                         "Fisher is taken over val examples")
      packed = batching.PackedGraphs.from_graphs(data.graphs)
      train = _chunks(rng.permutation(np.asarray(graph_splits["train"])), config.batch_size)
      val = _chunks(np.asarray(graph_splits["val"]), config.batch_size)
      rows = [np.arange(len(idx)) for idx in val]
    plans.append((packed, train, val, rows, rng))

  num_examples = {sum(len(r) for r in plan[3]) for plan in plans}
  shapes = {(len(plan[1]), len(plan[2])) for plan in plans}
  if len(shapes) != 1 or len(num_examples) != 1:
    raise ValueError(f"{dataset.name}: seeds' splits differ in size ({shapes}, {num_examples} "
                     "examples); they must stack")
  total = num_examples.pop()
  if total == 0:
    raise ValueError(f"{dataset.name}: no val examples under split {config.split!r}")

  # One budget for every batch of every seed, so all of them stack.
  all_batches = [idx for plan in plans for idx in plan[1] + plan[2]]
  n_node = max(int(plans[0][0].n_node[idx].sum()) for idx in all_batches)
  n_edge = max(int(plans[0][0].n_edge[idx].sum()) for idx in all_batches)
  n_graph = max(len(idx) for idx in all_batches)
  budget = batching.Budget(-(-(n_node + 1) // 8) * 8, max(-(-n_edge // 64) * 64, 64),
                           n_graph + 1)

  keep = config.max_examples
  width = 0
  stacked_rows, stacked_weights, trains, vals = [], [], [], []
  for packed, train, val, rows, rng in plans:
    trains.append([packed.gather(idx, budget) for idx in train])
    vals.append([packed.gather(idx, budget) for idx in val])
    weights = [np.ones(len(r)) for r in rows]
    if keep is not None and keep < total:
      chosen = np.zeros(total, bool)
      chosen[rng.choice(total, keep, replace=False)] = True
      parts = np.split(chosen, np.cumsum([len(r) for r in rows])[:-1])
      rows = [r[c] for r, c in zip(rows, parts)]
      weights = [np.full(int(c.sum()), total / keep) for c in parts]
    stacked_rows.append(rows)
    stacked_weights.append(weights)
    width = max(width, max(len(r) for r in rows))
  width = max(width, 1)
  val_rows = np.zeros((len(seeds), len(vals[0]), width), np.int32)
  val_weights = np.zeros((len(seeds), len(vals[0]), width), np.float32)
  for s, (rows, weights) in enumerate(zip(stacked_rows, stacked_weights)):
    for b, (r, w) in enumerate(zip(rows, weights)):
      val_rows[s, b, :len(r)] = r
      val_weights[s, b, :len(w)] = w

  stack = lambda batches: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                                       *batches)
  return PreparedTask(
      name=dataset.name, task_level=dataset.task_level, task_type=dataset.task_type,
      num_outputs=dataset.num_outputs, seeds=seeds,
      train=stack([stack(t) for t in trains]), val=stack([stack(v) for v in vals]),
      val_rows=val_rows, val_weights=val_weights, num_examples=total)


def _index(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


# ----------------------------------------------------------------------------------------------
# The per-anchor program, vmapped over seeds.


def _head_input_fn(model: nn.Module):
  """(variables, batch) -> the input of the final Linear [rows, h], in train mode."""

  def head_input(variables, batch):
    captured = []

    def interceptor(next_fun, args, kwargs, context):
      if context.module.name == HEAD and context.method_name == "__call__":
        captured.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      model.apply(variables, batch, train=True, mutable=["batch_stats"])
    return captured[-1]

  return head_input


def fit_head(head: Mapping[str, Array], inputs: Array, labels: Array, masks: Array,
             task_type: str, config: FisherConfig) -> tuple[dict, Array, Array]:
  """Trains the final Linear on cached head inputs (one Adam step per batch per epoch).

  Args:
    head: {'kernel' [h, C], 'bias' [C]}.
    inputs: [Bt, rows, h] cached head inputs; labels [Bt, rows(, T)]; masks [Bt, rows(, T)].
    task_type: the task's loss.
    config: lr, weight decay, epochs, plateau rule.

  Returns:
    (fitted head, epochs run, last epoch's summed loss).
  """
  tx = optax.chain(optax.add_decayed_weights(config.head_weight_decay),
                   optax.adam(config.head_lr))

  def loss_fn(p, x, y, m):
    return losses.masked_loss(x @ p["kernel"] + p["bias"], y, m, task_type)[0]

  def epoch(p, opt):
    def step(carry, batch):
      p, opt = carry
      value, grad = jax.value_and_grad(loss_fn)(p, *batch)
      updates, opt = tx.update(grad, opt, p)
      return (optax.apply_updates(p, updates), opt), value
    (p, opt), values = jax.lax.scan(step, (p, opt), (inputs, labels, masks))
    return p, opt, values.sum()

  def cond(carry):
    _, _, epoch_index, _, bad, _ = carry
    return (epoch_index < config.head_epochs) & (bad <= config.patience)

  def body(carry):
    p, opt, epoch_index, best, bad, _ = carry
    p, opt, total = epoch(p, opt)
    better = total < best * (1.0 - config.threshold)
    best = jnp.where(better, total, best)
    bad = jnp.where(better, 0, bad + 1)
    return p, opt, epoch_index + 1, best, bad, total

  head = dict(head)
  carry = (head, tx.init(head), jnp.int32(0), jnp.float32(jnp.inf), jnp.int32(0),
           jnp.float32(jnp.nan))
  p, _, epochs, _, _, last = jax.lax.while_loop(cond, body, carry)
  return p, epochs, last


def _entry_mask(batch: jraph.GraphsTuple, task_level: str, task_type: str, rows: int
                ) -> Array | None:
  if task_type not in (ds.MULTITASK, ds.REGRESSION):
    return None
  _, mask = losses.targets_and_mask(batch, task_level, task_type, None)
  return mask.reshape(rows, -1)


def make_anchor_program(model: graphgym.GraphGymGNN, task: PreparedTask, config: FisherConfig
                        ) -> Callable:
  """A jitted function of (init keys [R], label keys [R], train [R, Bt], val [R, Bv],
  val_rows, val_weights) -> dict of [R] arrays: 'alpha', 'm1', 'm2', 'head_epochs',
  'head_loss', 'num_params' (n, the Fisher's size)."""
  level, task_type = task.task_level, task.task_type
  head_input = _head_input_fn(model)

  def one_seed(init_key, label_key, train, val, val_rows, val_weights):
    first = _index(train, 0)
    variables = model.init({"params": init_key, "dropout": init_key}, first, train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    full = {"params": params, "batch_stats": batch_stats}

    # 1-2. Cached head inputs of every train batch, then the head fit.
    inputs = jax.lax.map(lambda b: head_input(full, b), train)
    labels, masks = jax.vmap(lambda b: losses.targets_and_mask(b, level, task_type, "train"))(
        train)
    head, epochs, head_loss = fit_head(params[HEAD], inputs, labels, masks, task_type, config)
    params = flax.core.unfreeze(params)
    params = {**params, HEAD: head}

    # 3. Diagonal Fisher of the message weights over the val batches.
    paths = message_weight_paths(params)
    selected, rest = _split_params(params, paths)

    def batch_fisher(total, inputs_b):
      batch, rows, weights, key = inputs_b

      def outputs_fn(sel):
        out, _ = model.apply({"params": _merge_params(sel, rest), "batch_stats": batch_stats},
                             batch, train=True, mutable=["batch_stats"])
        return out

      n_rows = (graph_lib.num_nodes(batch) if level == ds.NODE
                else int(batch.n_node.shape[0]))
      entry = _entry_mask(batch, level, task_type, n_rows)
      f, _ = fisher_diagonal(outputs_fn, selected, rows, weights, key, task_type, entry,
                             config.chunk_size, config.num_probes)
      return jax.tree.map(jnp.add, total, f), None

    keys = jax.random.split(label_key, val_rows.shape[0])
    zeros = jax.tree.map(jnp.zeros_like, selected)
    fisher, _ = jax.lax.scan(batch_fisher, zeros, (val, val_rows, val_weights, keys))
    flat = jnp.concatenate([fisher[k].reshape(-1) for k in sorted(fisher, key=lambda k: (
        int(k.split("/")[0].split("_")[1]), k))])
    return {"alpha": alpha(flat), "m1": jnp.mean(flat), "m2": jnp.mean(flat * flat),
            "head_epochs": epochs, "head_loss": head_loss, "num_params": jnp.int32(flat.size)}

  return jax.jit(jax.vmap(one_seed))


def seed_keys(seeds: Sequence[int]) -> tuple[Array, Array]:
  """Per seed: init key fold_in(key(seed), 0) (as gnnjax.training.loop) and label key
  fold_in(key(seed), 1)."""
  base = [jax.random.key(int(s)) for s in seeds]
  init = jnp.stack([jax.random.fold_in(k, 0) for k in base])
  label = jnp.stack([jax.random.fold_in(k, 1) for k in base])
  return init, label


def anchor_model(design: Design, task: PreparedTask) -> graphgym.GraphGymGNN:
  """The anchor's GraphGymGNN for the task (dim_inner must be set: anchors are not
  budget-matched)."""
  if design.dim_inner is None:
    raise ValueError(f"anchor {design.summary()} has dim_inner None; anchors use a fixed width")
  return graphgym.GraphGymGNN(design, task.num_outputs, task.task_level)


@dataclasses.dataclass
class FeatureResult:
  """A task's FIM feature and its ingredients.

  Attributes:
    feature: [U] L2-normalised mean alpha per anchor (the task feature z_f).
    alphas: [U, R] alpha per anchor and seed.
    m1, m2: [U, R] the Fisher moments.
    head_epochs: [U, R] head-fit epochs run.
    compile_seconds, run_seconds: [U] per anchor, wall (compile = lowering + XLA
      compilation; with several compile workers, overlapping).
    compile_phase_seconds: wall time of the whole compile phase.
    compile_cpu_seconds, run_cpu_seconds: process CPU time (all threads) of the whole
      compile phase and the whole run phase.
  """

  feature: np.ndarray
  alphas: np.ndarray
  m1: np.ndarray
  m2: np.ndarray
  head_epochs: np.ndarray
  compile_seconds: np.ndarray
  run_seconds: np.ndarray
  compile_cpu_seconds: float = math.nan
  run_cpu_seconds: float = math.nan
  compile_phase_seconds: float = math.nan


def normalize_feature(mean_alphas: np.ndarray) -> np.ndarray:
  """z_f = a / ||a||_2 (AutoTransfer: 'normalize the concatenated feature vector to a scale
  of 1')."""
  a = np.asarray(mean_alphas, np.float64)
  norm = np.linalg.norm(a)
  if not np.isfinite(norm) or norm == 0:
    raise ValueError(f"cannot normalise task feature {a} (norm {norm})")
  return a / norm


def task_feature(dataset: ds.GraphDataset | PreparedTask,
                 anchors: Sequence[Design] = anchors_lib.AUTOTRANSFER_ANCHORS,
                 config: FisherConfig = FisherConfig(),
                 progress: Callable[[str], None] | None = None,
                 compile_workers: int = 1) -> FeatureResult:
  """The FIM task feature of a dataset: alpha for every anchor x seed, averaged over seeds,
  concatenated over anchors, L2-normalised. One jitted program per anchor, vmapped over the
  R seeds; the programs are traced in turn, compiled by `compile_workers` threads (XLA
  compiles outside the GIL), then run one after another.

  Args:
    dataset: the task, or its `prepare_task` output (reused across calls).
    anchors: the U anchor designs (dim_inner set).
    config: Fisher settings.
    progress: called with one line per anchor.
    compile_workers: threads compiling the U programs.
  """
  task = dataset if isinstance(dataset, PreparedTask) else prepare_task(dataset, config)
  init_keys, label_keys = seed_keys(task.seeds)
  args = (init_keys, label_keys, task.train, task.val, task.val_rows, task.val_weights)
  lowered, compile_s = [], []
  cpu_start, phase_start = time.process_time(), time.perf_counter()
  for design in anchors:
    start = time.perf_counter()
    lowered.append(make_anchor_program(anchor_model(design, task), task, config).lower(*args))
    compile_s.append(time.perf_counter() - start)

  def compile_one(u):
    start = time.perf_counter()
    program = lowered[u].compile()
    return program, time.perf_counter() - start

  if compile_workers > 1:
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(compile_workers) as pool:
      compiled = list(pool.map(compile_one, range(len(anchors))))
  else:
    compiled = [compile_one(u) for u in range(len(anchors))]
  compile_cpu = time.process_time() - cpu_start
  compile_phase = time.perf_counter() - phase_start
  cpu_start = time.process_time()
  out = {k: [] for k in ("alpha", "m1", "m2", "head_epochs")}
  run_s = []
  for u, design in enumerate(anchors):
    program, seconds = compiled[u]
    compile_s[u] += seconds
    start = time.perf_counter()
    result = jax.block_until_ready(program(*args))
    run_s.append(time.perf_counter() - start)
    for k in out:
      out[k].append(np.asarray(result[k]))
    if progress is not None:
      zero = int(np.sum(out["m1"][-1] == 0))
      progress(f"anchor {u + 1}/{len(anchors)} ({design.summary()}): alpha "
               f"{np.round(out['alpha'][-1], 2).tolist()}, head epochs "
               f"{out['head_epochs'][-1].tolist()}, compile {compile_s[u]:.1f} s, "
               f"run {run_s[-1]:.2f} s"
               + (f" ({zero} seed(s) with an all-zero Fisher: no message weight gets a "
                  f"gradient; alpha set to 1)" if zero else ""))
  alphas = np.stack(out["alpha"])
  return FeatureResult(feature=normalize_feature(alphas.mean(axis=1)), alphas=alphas,
                       m1=np.stack(out["m1"]), m2=np.stack(out["m2"]),
                       head_epochs=np.stack(out["head_epochs"]),
                       compile_seconds=np.array(compile_s), run_seconds=np.array(run_s),
                       compile_cpu_seconds=compile_cpu, compile_phase_seconds=compile_phase,
                       run_cpu_seconds=time.process_time() - cpu_start)
