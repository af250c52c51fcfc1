"""The DeepGCNs depth study: train DeepGCN / RevGNN backbones of growing depth and compare.

The library half of `experiments/depth_study.py` (which only parses flags): block builders and
their registry, task loading, one training run (`run_one`), the summary over runs, the figures
and the report. `settings` is a dict of the study's options (the experiment's flags: hidden,
dropout, knn, conv, epochs, ...).
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable

import flax.linen as nn
import numpy as np
from absl import logging

from gnnjax import data as data_lib
from gnnjax import files
from gnnjax import metrics as metrics_lib
from gnnjax.data import dataset as ds
from gnnjax.data import pointcloud
from gnnjax.design import reference
from gnnjax.models import deepgcn, rev_adapter
from gnnjax.training import loop, optim, pipeline


BlockBuilder = Callable[[ds.GraphDataset, int, dict], nn.Module]
BLOCK_BUILDERS: dict[str, BlockBuilder | None] = {}


def register_block(name: str, builder: BlockBuilder | None) -> None:
  """Adds a block type: builder(dataset, depth, settings) -> a flax module trainable by
  gnnjax.training.loop (apply(variables, batch, train=...) -> [N, C] or [G, C]). `settings` holds
  the study's flags (hidden, dropout, knn, conv, ...); None marks a name as not available yet."""
  BLOCK_BUILDERS[name] = builder


def _deepgcn_builder(block: str) -> BlockBuilder:
  def build(dataset: ds.GraphDataset, depth: int, settings: dict) -> nn.Module:
    is_cloud = bool(dataset.report.get("points_per_graph"))
    conv = settings["conv"]
    if conv == "auto":
      conv = "edge" if is_cloud else "gcn"
    kwargs = dict(block=block, conv=conv, num_layers=depth, hidden=settings["hidden"],
                  growth=settings["growth"] or None, norm=settings["norm"],
                  dropout=settings["dropout"], pooling="mean",
                  scan=settings.get("scan", False) and block != "dense")
    if is_cloud:
      # DeepGCNs' PlainGCN uses neither dilation nor stochastic dilation.
      kwargs.update(knn=settings["knn"], dilated=block != "plain",
                    stochastic=settings["stochastic"] and block != "plain")
    else:
      kwargs.update(knn=None, points_per_graph=None)
    return deepgcn.build_model(dataset, **kwargs)
  return build


for _name in deepgcn.BLOCKS:
  register_block(_name, _deepgcn_builder(_name))


def _rev_builder(dataset: ds.GraphDataset, depth: int, settings: dict) -> nn.Module:
  """RevGNN (2 groups, GEN blocks, its own encoder and LayerNorm head) through the flax adapter;
  depth = number of reversible blocks. Graph tasks mean-pool the node outputs; point clouds get
  one static k-NN graph of their xyz (k = --knn) with relative positions x_j - x_i as edge
  features, shared by all blocks, not DeepGCN's dynamic, dilated k-NN graphs of the hidden
  state."""
  hidden = settings["hidden"]
  if hidden % 2:
    raise ValueError(f"block 'rev' splits --hidden into 2 groups: it must be even, got {hidden}")
  is_cloud = bool(dataset.report.get("points_per_graph"))
  return rev_adapter.build_model(
      dataset, hidden=hidden, num_layers=depth, dropout=settings["dropout"], groups=2,
      aggregation=settings.get("rev_aggregation", "mean"),
      knn=settings["knn"] if is_cloud else None)


register_block("rev", _rev_builder)


def load_task(name: str, settings: dict, seed: int):
  """(dataset with its split, graph index splits or None) for one dataset name."""
  if name.lower() == pointcloud.COLLECTION:
    dataset = data_lib.load_dataset(f"{pointcloud.COLLECTION}/{settings['points']}",
                                    num_graphs=settings["num_clouds"], seed=0)
  else:
    dataset = data_lib.load_dataset(name, settings["data_dir"])
    limit = settings["max_graphs"]
    if limit and len(dataset) > limit:  # the same subset for every seed; the split varies
      keep = np.sort(np.random.default_rng(0).choice(len(dataset), limit, replace=False))
      dataset = dataset.subset(keep)
  return data_lib.apply_split(dataset, "default", seed=seed)


def run_one(dataset_name: str, block: str, depth: int, seed: int, settings: dict,
            task_cache: dict) -> dict:
  """Trains one (dataset, block, depth, seed) and returns its record."""
  builder = BLOCK_BUILDERS.get(block)
  if builder is None:
    known = sorted(k for k, v in BLOCK_BUILDERS.items() if v is not None)
    raise ValueError(f"block {block!r} is not available; choose from {known} (or register it "
                     "with experiments.depth_study.register_block)")
  key = (dataset_name, seed)
  if key not in task_cache:
    task_cache[key] = load_task(dataset_name, settings, seed)
  dataset, graph_splits = task_cache[key]
  pipe = pipeline.make_pipeline(dataset, graph_splits, settings["batch_size"], seed)
  if settings["single_shape"]:
    pipe.ladder = pipe.ladder[-1:]
  model = builder(dataset, depth, settings)
  metric = metrics_lib.default_metric(dataset.task_type)
  result = loop.fit(
      model, pipe, dataset.task_type,
      optim.OptimConfig(learning_rate=settings["lr"], weight_decay=settings["weight_decay"],
                        epochs=settings["epochs"]),
      loop.FitConfig(epochs=settings["epochs"], eval_every=settings["eval_every"], seed=seed,
                     metric=metric))
  last = result.history[-1] if result.history else {}
  return {
      "dataset": dataset_name, "block": block, "depth": depth, "seed": seed,
      "status": result.status, "diverged_epoch": result.diverged_epoch, "metric": metric,
      "final_epoch_loss": last.get("epoch_loss"), "final_train_loss": last.get("train_loss"),
      "best_epoch": result.best_epoch,
      "best_val": result.best.get("val", {}).get(metric),
      "test_at_best_val": result.best.get("test", {}).get(metric),
      "num_params": reference.count_params(result.state.params),
      "seconds": round(result.seconds, 2),
      "history": [{k: v for k, v in h.items()
                   if k in ("epoch", "epoch_loss", "train_loss", f"val_{metric}",
                            f"test_{metric}")} for h in result.history],
  }


def _finite(values):
  return [v for v in values if v is not None and math.isfinite(v)]


def summarise(runs: list[dict]) -> dict:
  """dataset -> block -> depth -> mean/std of test, val and final train loss over seeds."""
  out: dict = {}
  for r in runs:
    out.setdefault(r["dataset"], {}).setdefault(r["block"], {}).setdefault(str(r["depth"]), []
                                                                          ).append(r)
  for blocks in out.values():
    for block, depths in blocks.items():
      for depth, rs in depths.items():
        cell = {"seeds": len(rs), "diverged": sum(r["status"] != "ok" for r in rs)}
        for field in ("test_at_best_val", "best_val", "final_train_loss"):
          vals = _finite([r[field] for r in rs])
          cell[field] = ({"mean": float(np.mean(vals)), "std": float(np.std(vals))} if vals
                         else None)
        depths[depth] = cell
  return out


def format_value(value) -> str:
  return "nan" if value is None else f"{value:.4f}"


def write_json(path: str, payload: dict) -> None:
  files.write_json_atomic(path, payload, indent=1)


def plot(runs: list[dict], summary: dict, out_dir: str) -> list[str]:
  """Metric-vs-depth and training-loss figures; returns their paths."""
  import matplotlib
  import matplotlib.ticker
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  datasets = list(summary)
  blocks = sorted({r["block"] for r in runs}, key=lambda b: list(BLOCK_BUILDERS).index(b)
                  if b in BLOCK_BUILDERS else 99)
  colors = {b: f"C{i}" for i, b in enumerate(blocks)}
  paths = []
  fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
  for ax, name in zip(axes[0], datasets):
    metric = next(r["metric"] for r in runs if r["dataset"] == name)
    for block in blocks:
      cells = summary[name].get(block, {})
      depths = sorted(int(d) for d in cells)
      for field, style in (("test_at_best_val", "-o"), ("best_val", "--")):
        ys = [cells[str(d)][field]["mean"] if cells[str(d)][field] else np.nan for d in depths]
        es = [cells[str(d)][field]["std"] if cells[str(d)][field] else 0.0 for d in depths]
        ax.errorbar(depths, ys, yerr=es if field == "test_at_best_val" else None, fmt=style,
                    color=colors[block], ms=4, capsize=2,
                    label=block if field == "test_at_best_val" else None,
                    alpha=1.0 if field == "test_at_best_val" else 0.5)
    ax.set_xscale("log")
    depths_all = sorted({r["depth"] for r in runs})
    ax.set_xticks(depths_all)
    ax.set_xticklabels([str(d) for d in depths_all])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("depth (convs)")
    ax.set_ylabel(f"test {metric} (dashed: best val)")
    ax.set_title(name)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "depth_study_metric.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  depths_all = sorted({r["depth"] for r in runs})
  fig, axes = plt.subplots(len(datasets), len(depths_all),
                           figsize=(3.2 * len(depths_all), 2.6 * len(datasets)), squeeze=False)
  for row, name in zip(axes, datasets):
    for ax, depth in zip(row, depths_all):
      for block in blocks:
        for r in runs:
          if (r["dataset"], r["block"], r["depth"]) != (name, block, depth) or not r["history"]:
            continue
          epochs = [h["epoch"] for h in r["history"]]
          ax.plot(epochs, [h["train_loss"] for h in r["history"]], color=colors[block],
                  label=block if r["seed"] == min(x["seed"] for x in runs) else None, lw=1)
      ax.set_title(f"{name}, depth {depth}", fontsize=9)
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  for ax in axes[-1]:
    ax.set_xlabel("epoch")
  for row in axes:
    row[0].set_ylabel("train loss")
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "depth_study_loss.png"))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
  return paths


def report(runs: list[dict], settings: dict, out_dir: str) -> None:
  summary = summarise(runs)
  json_path = os.path.join(out_dir, "depth_study.json")
  write_json(json_path, {"settings": settings, "runs": runs, "summary": summary})
  for path in plot(runs, summary, out_dir):
    print("wrote", path)
  print("wrote", json_path)
  for name, blocks in summary.items():
    print(f"\n{name}: test metric at best val (mean over seeds) by depth")
    depths_seen = sorted({int(d) for cells in blocks.values() for d in cells})
    print("  block " + "".join(f"{d:>9d}" for d in depths_seen))
    for block, cells in blocks.items():
      row = "".join(f"{cells[str(d)]['test_at_best_val']['mean']:9.4f}"
                    if str(d) in cells and cells[str(d)]["test_at_best_val"] else f"{'-':>9s}"
                    for d in depths_seen)
      print(f"  {block:>5s} {row}")


def merge_results(paths: list[str], out_dir: str) -> None:
  by_key, settings = {}, {}
  for path in paths:
    with open(path) as f:
      part = json.load(f)
    for r in part["runs"]:
      key = (r["dataset"], r["block"], r["depth"], r["seed"])
      if key in by_key:
        logging.warning("%s appears in several inputs; keeping the one from %s", key, path)
      by_key[key] = r
    settings[path] = part["settings"]
  os.makedirs(out_dir, exist_ok=True)
  report(list(by_key.values()), {"merged": settings}, out_dir)
