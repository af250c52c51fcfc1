"""Task losses and the masks that decide which predictions count.

`targets_and_mask` is the single place that knows where labels live in a padded batch (see
`gnnjax.data.dataset`): node tasks read `nodes['y']` under the split's node mask, graph tasks
read `globals['y']` under the graph padding mask (and `globals['y_mask']` for missing labels),
edge (link) tasks read `globals['pair_y']` under the split's pair mask (`gnnjax.data.links`).
Padding therefore never reaches a loss or a metric.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph
import optax

from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds

Array = jax.Array


def targets_and_mask(batch: jraph.GraphsTuple, task_level: str, task_type: str,
                     split: str | None) -> tuple[Array, Array]:
  """Labels and a boolean mask of the entries that count.

  Returns:
    (labels, mask): node tasks: labels [N] or [N, T], mask [N] or [N, T]; graph tasks: labels
    [G] or [G, T], mask [G] or [G, T]; edge tasks: labels and mask [G * Q], the G graph slots'
    Q query pairs flattened in order. `split` ('train'/'val'/'test') selects a node (pair)
    split mask for node (edge) tasks (ignored for graph tasks, whose batches hold one split's
    graphs); None means every labelled node (pair).
  """
  if task_level == ds.EDGE:
    labels = batch.globals["pair_y"]
    mask = graph_lib.graph_mask(batch)[:, None]
    if split is not None:
      mask = mask & batch.globals[f"pair_{split}_mask"]
    else:
      mask = mask & (batch.globals["pair_train_mask"] | batch.globals["pair_val_mask"]
                     | batch.globals["pair_test_mask"])
    return labels.reshape(-1), mask.reshape(-1)
  if task_level == ds.NODE:
    labels = batch.nodes["y"]
    mask = graph_lib.node_mask(batch)
    if split is not None:
      mask = mask & batch.nodes[f"{split}_mask"]
    if "label_mask" in batch.nodes:
      mask = mask & batch.nodes["label_mask"]
    entry_mask = batch.nodes.get("y_mask")
  else:
    labels = batch.globals["y"]
    mask = graph_lib.graph_mask(batch)
    entry_mask = batch.globals.get("y_mask")
  if task_type in (ds.MULTITASK, ds.REGRESSION) and labels.ndim == 2:
    mask = mask[:, None] & (entry_mask if entry_mask is not None else True)
  return labels, mask


def masked_loss(outputs: Array, labels: Array, mask: Array, task_type: str) -> tuple[Array, Array]:
  """Mean loss over masked-in entries, and their count.

  multiclass: softmax cross-entropy (outputs [B, C], labels int [B]); binary: sigmoid BCE
  (outputs [B, 1] or [B], labels {0,1}); multitask: BCE summed over valid (example, task)
  entries and divided by their number, as Hu et al.; regression: mean squared error.
  An empty mask gives loss 0 (never NaN).
  """
  if task_type == ds.MULTICLASS:
    per = optax.softmax_cross_entropy_with_integer_labels(outputs, labels.astype(jnp.int32))
  elif task_type == ds.BINARY:
    per = optax.sigmoid_binary_cross_entropy(outputs.reshape(labels.shape),
                                             labels.astype(outputs.dtype))
  elif task_type == ds.MULTITASK:
    per = optax.sigmoid_binary_cross_entropy(outputs, labels.astype(outputs.dtype))
  elif task_type == ds.REGRESSION:
    per = (outputs.reshape(labels.shape) - labels) ** 2
  else:
    raise ValueError(f"unknown task type {task_type!r}")
  mask = jnp.broadcast_to(mask, per.shape)
  count = mask.sum()
  total = jnp.where(mask, per, 0.0).sum()
  return total / jnp.maximum(count, 1), count
