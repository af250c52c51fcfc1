"""The training loop shared by every experiment: jitted steps, periodic evaluation, best-val
selection, JSON-lines logs and resumable orbax checkpoints.

A model is any flax module called as `model.apply(variables, batch, train=...)` on a padded
batch, returning per-node outputs [N, C] (node tasks) or per-graph outputs [G, C] (graph tasks),
with parameters in 'params', optional running statistics in 'batch_stats' and dropout drawing
from the 'dropout' RNG stream. All randomness comes from explicit keys derived from `seed`:
init from fold_in(key, 0), dropout from fold_in(key, step), batch order from (seed, epoch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from gnnjax import metrics as metrics_lib
from gnnjax.training import checkpoint as ckpt_lib
from gnnjax.training import losses
from gnnjax.training import optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  key: jax.Array


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Loop settings.

  Attributes:
    epochs: number of training epochs.
    eval_every: evaluate every k epochs (and always after the first and the last epoch).
    metric: model-selection metric name (default: by task type, see gnnjax.metrics).
    seed: the run's seed (init, dropout, batch order).
    log_path: JSON-lines file with one record per evaluation (rewritten on resume).
    checkpoint_dir: if set, save every `checkpoint_every` epochs and resume from the latest.
    checkpoint_every: epochs between checkpoints.
    log_every: print progress every k evaluations (0: silent).
  """

  epochs: int = 200
  eval_every: int = 1
  metric: str | None = None
  seed: int = 0
  log_path: str | None = None
  checkpoint_dir: str | None = None
  checkpoint_every: int = 50
  log_every: int = 0


@dataclasses.dataclass
class FitResult:
  """What a run produced.

  Attributes:
    best_epoch: epoch with the best validation metric (last epoch if there is no val split).
    best: split -> metric name -> value at best_epoch.
    last: the same at the final evaluation.
    history: one dict per evaluation.
    state: final train state; best_variables: model variables at best_epoch.
    status: 'ok' or 'diverged' (non-finite training loss; `diverged_epoch` says when).
  """

  best_epoch: int
  best: dict
  last: dict
  history: list
  state: TrainState
  best_variables: Any
  status: str = "ok"
  diverged_epoch: int | None = None
  seconds: float = 0.0


def _variables(params, batch_stats):
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def init_state(model: nn.Module, example_batch, tx: optax.GradientTransformation,
               key: jax.Array) -> TrainState:
  variables = model.init({"params": jax.random.fold_in(key, 0),
                          "dropout": jax.random.fold_in(key, 1)}, example_batch, train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), key=key)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, task_level: str,
                    task_type: str) -> Callable:
  """A jitted (state, batch) -> (state, loss) step on the batch's 'train' entries."""

  def loss_fn(params, batch_stats, batch, dropout_key):
    outputs, updates = model.apply(_variables(params, batch_stats), batch, train=True,
                                   rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    labels, mask = losses.targets_and_mask(batch, task_level, task_type, "train")
    loss, _ = losses.masked_loss(outputs, labels, mask, task_type)
    return loss, updates.get("batch_stats", batch_stats)

  @jax.jit
  def step(state: TrainState, batch):
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.key, 2), state.step)
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, dropout_key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), loss

  return step


def make_predict(model: nn.Module, task_level: str, task_type: str) -> Callable:
  """A jitted (params, batch_stats, batch, splits) -> (outputs, {split: (labels, mask)}) in eval
  mode; `splits` is a static tuple of split names."""

  def predict(params, batch_stats, batch, splits):
    outputs = model.apply(_variables(params, batch_stats), batch, train=False)
    return outputs, {s: losses.targets_and_mask(batch, task_level, task_type, s) for s in splits}

  return jax.jit(predict, static_argnums=3)


def evaluate(predict: Callable, params, batch_stats, pipeline, task_type: str,
             metric_names: list[str]) -> dict[str, dict[str, float]]:
  """Loss and metrics per split, from host-collected masked predictions."""
  collected: dict[str, list] = {}
  for batch, splits in pipeline.eval_batches():
    outputs, targets = jax.device_get(predict(params, batch_stats, batch, splits))
    for split, (labels, mask) in targets.items():
      rows = mask if mask.ndim == 1 else mask.any(axis=1)
      collected.setdefault(split, []).append((outputs[rows], labels[rows], mask[rows]))
  results = {}
  for split, parts in collected.items():
    outputs, labels, mask = (np.concatenate(p, axis=0) for p in zip(*parts))
    loss, _ = losses.masked_loss(outputs, labels, mask, task_type)
    results[split] = {"loss": float(loss)}
    for name in metric_names:
      results[split][name] = metrics_lib.evaluate_metric(name, outputs, labels, mask)
  return results


def _rewrite_log(path: str, history: list) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    for record in history:
      f.write(json.dumps(record) + "\n")
  os.replace(tmp, path)


def fit(model: nn.Module, pipeline, dataset_task_type: str, optim_config: optim.OptimConfig,
        config: FitConfig) -> FitResult:
  """Trains `model` on `pipeline` and returns the best-validation and last results."""
  started = time.time()
  task_type = dataset_task_type
  metric = config.metric or metrics_lib.default_metric(task_type)
  metric_names = metrics_lib.metrics_for(task_type)
  if metric not in metric_names:
    metric_names = [metric] + metric_names
  tx = optim.make_optimizer(optim_config, pipeline.steps_per_epoch())
  key = jax.random.PRNGKey(config.seed)
  state = init_state(model, pipeline.example_batch(), tx, key)
  best_vars = (state.params, state.batch_stats)
  train_step = make_train_step(model, tx, pipeline.task_level, task_type)
  predict = make_predict(model, pipeline.task_level, task_type)

  history: list[dict] = []
  best_epoch, best_value, best_metrics = -1, None, {}
  start_epoch = 0
  checkpointer = ckpt_lib.Checkpointer(config.checkpoint_dir) if config.checkpoint_dir else None
  if checkpointer is not None and checkpointer.latest_step() is not None:
    (state, best_vars), meta = checkpointer.restore((state, best_vars))
    history, best_epoch = meta["history"], meta["best_epoch"]
    best_value, best_metrics = meta["best_value"], meta["best_metrics"]
    start_epoch = meta["epoch"] + 1
    logging.info("resumed from epoch %d (%s)", meta["epoch"], config.checkpoint_dir)
    if config.log_path:
      _rewrite_log(config.log_path, history)
  elif config.log_path and os.path.exists(config.log_path):
    os.remove(config.log_path)

  selection_split = "val" if "val" in pipeline.split_names else "train"
  status, diverged_epoch = "ok", None
  for epoch in range(start_epoch, config.epochs):
    losses_this_epoch = []
    for batch in pipeline.train_batches(epoch):
      state, loss = train_step(state, batch)
      losses_this_epoch.append(loss)
    train_loss = float(np.mean(jax.device_get(losses_this_epoch)))
    if not math.isfinite(train_loss):
      status, diverged_epoch = "diverged", epoch
      logging.warning("training loss is %s at epoch %d: stopping this run", train_loss, epoch)
      break
    is_last = epoch == config.epochs - 1
    if epoch == 0 or (epoch + 1) % config.eval_every == 0 or is_last:
      results = evaluate(predict, state.params, state.batch_stats, pipeline, task_type,
                         metric_names)
      # 'epoch_loss' is the running loss of the training pass (dropout on); 'train_loss' the
      # clean evaluation on the train split.
      record = {"epoch": epoch, "epoch_loss": train_loss,
                **{f"{s}_{k}": v for s, r in results.items() for k, v in r.items()}}
      history.append(record)
      value = results[selection_split][metric]
      if best_value is None or metrics_lib.is_better(metric, value, best_value):
        best_epoch, best_value, best_metrics = epoch, value, results
        best_vars = (state.params, state.batch_stats)
      if config.log_path:
        with open(config.log_path, "a") as f:
          f.write(json.dumps(record) + "\n")
      if config.log_every and len(history) % config.log_every == 0:
        logging.info("epoch %4d  train loss %.4f  %s", epoch, train_loss, "  ".join(
            f"{s} {metric} {r[metric]:.4f}" for s, r in results.items()))
    if checkpointer is not None and ((epoch + 1) % config.checkpoint_every == 0 or is_last):
      checkpointer.save(epoch, (state, best_vars), {
          "epoch": epoch, "history": history, "best_epoch": best_epoch,
          "best_value": best_value, "best_metrics": best_metrics})
  if checkpointer is not None:
    checkpointer.close()
  last = split_record(history[-1]) if history else {}
  return FitResult(best_epoch=best_epoch, best=best_metrics, last=last, history=history,
                   state=state, best_variables=_variables(*best_vars), status=status,
                   diverged_epoch=diverged_epoch, seconds=time.time() - started)


def split_record(record: dict) -> dict[str, dict[str, float]]:
  """{'val_accuracy': x, ...} -> {'val': {'accuracy': x}, ...} (epoch/epoch_loss dropped)."""
  out: dict[str, dict[str, float]] = {}
  for key, value in record.items():
    if key in ("epoch", "epoch_loss"):
      continue
    split, name = key.split("_", 1)
    out.setdefault(split, {})[name] = value
  return out
