"""Evaluation protocols on top of `loop.fit`: repeated seeds on a fixed split, and k-fold
cross-validation as in the GIN paper. Both return plain JSON-ready dicts."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import flax.linen as nn
import numpy as np
from absl import logging

from gnnjax import metrics as metrics_lib
from gnnjax.data import dataset as ds
from gnnjax.data import splits as splits_lib
from gnnjax.training import loop, optim, pipeline as pipeline_lib

ModelFn = Callable[[ds.GraphDataset], nn.Module]


def parse_seeds(text: str) -> list[int]:
  """A seed list from a command line: '1,2,3' or '1-3' -> [1, 2, 3]."""
  text = text.strip()
  if "-" in text.strip("-") and "," not in text:
    low, high = text.split("-")
    return list(range(int(low), int(high) + 1))
  return [int(s) for s in text.split(",") if s.strip()]


def _mean_std(values) -> dict[str, float]:
  values = np.asarray([v for v in values if v is not None], float)
  return {"mean": float(np.mean(values)) if len(values) else float("nan"),
          "std": float(np.std(values)) if len(values) else float("nan"), "n": int(len(values))}


def _seed_config(fit_config: loop.FitConfig, seed: int, tag: str) -> loop.FitConfig:
  """Per-run copies of the log/checkpoint paths so seeds and folds never overwrite each other."""
  log_path = fit_config.log_path and f"{fit_config.log_path}.{tag}.jsonl"
  ckpt = fit_config.checkpoint_dir and os.path.join(fit_config.checkpoint_dir, tag)
  return dataclasses.replace(fit_config, seed=seed, log_path=log_path, checkpoint_dir=ckpt)


def _run_record(seed: int, result: loop.FitResult) -> dict:
  return {"seed": seed, "status": result.status, "diverged_epoch": result.diverged_epoch,
          "best_epoch": result.best_epoch, "best": result.best, "last": result.last,
          "seconds": round(result.seconds, 2)}


def _summarise(records: list[dict], which: str) -> dict[str, dict[str, float]]:
  keys = sorted({(s, m) for r in records for s, ms in r[which].items() for m in ms})
  return {f"{s}_{m}": _mean_std(r[which].get(s, {}).get(m) for r in records if r["status"] == "ok")
          for s, m in keys}


def run_seeds(dataset: ds.GraphDataset, make_split: Callable[[int], tuple], model_fn: ModelFn,
              optim_config: optim.OptimConfig, fit_config: loop.FitConfig, seeds: list[int],
              batch_size: int) -> dict:
  """Trains one model per seed; `make_split(seed)` returns (dataset, graph_splits or None).

  Returns:
    {'runs': [per-seed records], 'best_val': {split_metric: mean/std}, 'last': {...}}, where
    'best_val' summarises each run at its best validation epoch (model selection) and 'last' at
    its final epoch.
  """
  records = []
  for seed in seeds:
    data, graph_splits = make_split(seed)
    pipe = pipeline_lib.make_pipeline(data, graph_splits, batch_size, seed=seed)
    result = loop.fit(model_fn(data), pipe, data.task_type, optim_config,
                      _seed_config(fit_config, seed, f"seed{seed}"))
    records.append(_run_record(seed, result))
    logging.info("seed %d: %s at best epoch %d: %s", seed, result.status, result.best_epoch,
                 {s: {k: round(v, 4) for k, v in m.items()} for s, m in result.best.items()})
  return {"runs": records, "best_val": _summarise(records, "best"),
          "last": _summarise(records, "last")}


def run_kfold(dataset: ds.GraphDataset, model_fn: ModelFn, optim_config: optim.OptimConfig,
              fit_config: loop.FitConfig, num_folds: int = 10, seed: int = 0,
              batch_size: int = 32) -> dict:
  """Stratified k-fold cross-validation for graph classification (Xu et al., 2019).

  Each fold trains on k-1 folds and evaluates the held-out fold every epoch. As in the GIN
  paper, the reported number is the held-out accuracy at the single epoch that maximises the
  fold-averaged curve (mean and std over folds); the last-epoch numbers are reported too.
  """
  if dataset.task_level != ds.GRAPH:
    raise ValueError("k-fold cross-validation is for graph-level tasks")
  folds = splits_lib.stratified_kfold(dataset.graph_labels, num_folds, seed=seed)
  metric = fit_config.metric or metrics_lib.default_metric(dataset.task_type)
  fit_config = dataclasses.replace(fit_config, eval_every=1)
  curves, records = [], []
  for k, (train_idx, test_idx) in enumerate(folds):
    pipe = pipeline_lib.GraphTaskPipeline(dataset, {"train": train_idx, "test": test_idx},
                                          batch_size, seed=seed)
    result = loop.fit(model_fn(dataset), pipe, dataset.task_type, optim_config,
                      _seed_config(fit_config, seed * 1000 + k, f"fold{k}"))
    records.append(_run_record(seed, result) | {"fold": k})
    curves.append([h[f"test_{metric}"] for h in result.history])
    logging.info("fold %d/%d: last test %s %.4f", k + 1, num_folds, metric, curves[-1][-1])
  length = min(len(c) for c in curves)
  curve = np.asarray([c[:length] for c in curves])
  best = int(np.argmax(curve.mean(axis=0)))
  return {"runs": records, "metric": metric, "best_epoch": best,
          "best_epoch_test": _mean_std(curve[:, best]),
          "last_epoch_test": _mean_std(curve[:, -1]),
          "fold_averaged_curve": curve.mean(axis=0).round(5).tolist()}
