r"""Depth study of DeepGCN backbones: does training still work as the network gets deeper?

For every (dataset, block, depth, seed) a DeepGCN (gnnjax.models.deepgcn) is trained with the
shared loop; the final training loss, the best validation metric and the test metric at that
epoch are recorded. Writes `<out_dir>/depth_study.json` (rewritten after every run; re-running
the same command skips runs already in it) and two figures:

* `depth_study_metric.png`: test metric (solid) and best validation metric (dashed) against
  depth, one line per block, one panel per dataset;
* `depth_study_loss.png`: training-loss curves, one row per dataset, one column per depth.

Expected (DeepGCNs, DeeperGCN): PlainGCN degrades as depth grows; ResGCN+, DenseGCN (and
RevGNN) keep training.

Quick CPU check (a few minutes):
  python -m experiments.depth_study --data_dir=../shared/datasets
Full study on a GPU, one job per dataset (and per block for point clouds) so that each fits a
~10-minute job; every job writes its own JSON, `--merge` combines them (no training):
  python -m experiments.depth_study --datasets=citeseer --data_dir=../shared/datasets \
      --depths=3,7,14,28,56 --epochs=200 --hidden=64 --dropout=0.5 --weight_decay=5e-4 \
      --seeds=0,1 --out_dir=results/depth_citeseer
  python -m experiments.depth_study --datasets=PROTEINS --data_dir=../shared/datasets \
      --max_graphs=0 --depths=3,7,14,28,56 --epochs=100 --hidden=64 --eval_every=2 \
      --seeds=0 --out_dir=results/depth_proteins
  python -m experiments.depth_study --datasets=pointcloud --num_clouds=1024 --points=512 \
      --knn=16 --depths=3,7,14,28,56 --epochs=50 --hidden=64 --growth=32 --batch_size=16 \
      --dropout=0 --eval_every=5 --blocks=res+ --out_dir=results/depth_pointcloud_resplus
      (likewise --blocks=plain, res, dense; and --blocks=rev --rev_aggregation=max: RevGNN on
      one static k-NN graph with relative-position edges, max aggregation as EdgeConv)
  python -m experiments.depth_study --merge=results/depth_citeseer/depth_study.json,... \
      --out_dir=results/depth_study

Datasets: any name of gnnjax.data (citation graphs with their public split, TU graphs with a
seeded 80/10/10 split, 'pointcloud' = the generated part-segmentation task sized by
--num_clouds/--points, split by whole clouds). Blocks: plain, res, res+, dense from
gnnjax.models.deepgcn; rev = RevGNN (gnnjax.models.revgnn through gnnjax.models.rev_adapter: 2
groups of GEN blocks with --rev_aggregation, depth = reversible blocks, mean pooling for graph
tasks, one static k-NN graph of the input xyz with relative-position edge features for point
clouds); more are added with
`register_block`.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable

import flax.linen as nn
import numpy as np
from absl import app, flags, logging

from gnnjax import data as data_lib
from gnnjax import metrics as metrics_lib
from gnnjax.data import dataset as ds
from gnnjax.data import pointcloud
from gnnjax.design import reference
from gnnjax.models import deepgcn, rev_adapter
from gnnjax.nn import deeper
from gnnjax.training import loop, optim, pipeline

FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", ["citeseer", "PROTEINS", "pointcloud"],
                  "Datasets (gnnjax.data names; 'pointcloud' is generated, see --num_clouds).")
flags.DEFINE_string("data_dir", None, "Local data root laid out like shared/datasets "
                    "(default: $GNNJAX_DATA, then the download cache).")
flags.DEFINE_list("depths", ["2", "4"], "Network depths (convs in total, stem included), e.g. "
                  "3,7,14,28,56.")
flags.DEFINE_list("blocks", ["plain", "res", "res+", "dense"],
                  "Block types: plain, res, res+, dense (DeepGCN), rev (RevGNN, even --hidden) "
                  "and any registered with register_block.")
flags.DEFINE_integer("epochs", 3, "Training epochs per run.")
flags.DEFINE_list("seeds", ["0"], "Seeds (init, dropout, batch order, TU split).")
flags.DEFINE_string("out_dir", "/tmp/gnnjax_depth_study", "Where the JSON and figures go.")
flags.DEFINE_string("conv", "auto", "Conv of every block (gcn, sage, gin, gen, edge, mr); 'auto' = "
                    "edge (dynamic k-NN EdgeConv) for point clouds, gcn otherwise.")
flags.DEFINE_integer("hidden", 16, "Channels C of the stem and of plain/res/res+ blocks.")
flags.DEFINE_integer("growth", 0, "DenseGCN growth rate (0: = --hidden, as DeepGCNs).")
flags.DEFINE_enum("norm", "batch", list(deepgcn.NORMS), "Normalisation in every block.")
flags.DEFINE_float("dropout", 0.2, "Dropout rate.")
flags.DEFINE_float("lr", 0.005, "Adam learning rate.")
flags.DEFINE_float("weight_decay", 0.0, "Adam weight decay (coupled L2).")
flags.DEFINE_integer("batch_size", 32, "Graphs (clouds) per batch; citation graphs: full batch.")
flags.DEFINE_integer("max_graphs", 256, "Use a seeded random subset of at most this many graphs of "
                     "multi-graph datasets other than point clouds (TU); 0: all.")
flags.DEFINE_integer("num_clouds", 48, "Generated point clouds (pointcloud dataset).")
flags.DEFINE_integer("points", 64, "Points per generated cloud.")
flags.DEFINE_integer("knn", 8, "k of the dynamic k-NN graphs (point clouds).")
flags.DEFINE_bool("stochastic", True, "Stochastic dilation (point clouds, res/res+/dense).")
flags.DEFINE_integer("eval_every", 1, "Evaluate every k epochs.")
flags.DEFINE_bool("single_shape", True, "Pad every batch to the largest budget rung: one "
                  "compilation of the train step (and one of evaluation) per model instead of one "
                  "per rung; deep unrolled models compile slowly, small graphs pad cheaply.")
flags.DEFINE_bool("scan", True, "Run plain/res/res+ blocks as one nn.scan (one block in the "
                  "compiled program: fast compilation at any depth; dense stays unrolled).")
flags.DEFINE_enum("rev_aggregation", "mean", list(deeper.GEN_AGGREGATIONS),
                  "GENConv aggregation of the 'rev' (RevGNN) blocks.")
flags.DEFINE_bool("resume", True, "Skip runs already recorded in the output JSON.")
flags.DEFINE_list("merge", [], "Train nothing: merge these depth_study.json files (e.g. one per "
                  "dataset, run as separate jobs) into <out_dir> and plot them.")

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
      "num_params": reference.count_params(result.state.params), "seconds": round(result.seconds, 2),
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


def _fmt(value) -> str:
  return "nan" if value is None else f"{value:.4f}"


def _write_json(path: str, payload: dict) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=1)
  os.replace(tmp, path)


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


def _report(runs: list[dict], settings: dict, out_dir: str) -> None:
  summary = summarise(runs)
  json_path = os.path.join(out_dir, "depth_study.json")
  _write_json(json_path, {"settings": settings, "runs": runs, "summary": summary})
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


def _merge(paths: list[str], out_dir: str) -> None:
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
  _report(list(by_key.values()), {"merged": settings}, out_dir)


def main(argv):
  del argv
  if FLAGS.merge:
    _merge(FLAGS.merge, FLAGS.out_dir)
    return
  depths = [int(d) for d in FLAGS.depths]
  seeds = [int(s) for s in FLAGS.seeds]
  unknown = [b for b in FLAGS.blocks if b not in BLOCK_BUILDERS]
  if unknown:
    raise app.UsageError(f"unknown block(s) {unknown}; choose from {list(BLOCK_BUILDERS)}")
  unavailable = [b for b in FLAGS.blocks if BLOCK_BUILDERS[b] is None]
  if unavailable:
    raise app.UsageError(f"block(s) {unavailable} are not hooked up yet "
                         "(experiments.depth_study.register_block)")
  if FLAGS.conv != "auto" and FLAGS.conv not in deepgcn.CONVS:
    raise app.UsageError(f"--conv must be 'auto' or one of {list(deepgcn.CONVS)}")
  settings = {name: FLAGS[name].value for name in (
      "data_dir", "conv", "hidden", "growth", "norm", "dropout", "lr", "weight_decay",
      "batch_size", "max_graphs", "num_clouds", "points", "knn", "stochastic", "epochs",
      "eval_every", "single_shape", "scan", "rev_aggregation")}
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  json_path = os.path.join(FLAGS.out_dir, "depth_study.json")
  runs: list[dict] = []
  if FLAGS.resume and os.path.exists(json_path):
    with open(json_path) as f:
      previous = json.load(f)
    if previous.get("settings") == settings:
      runs = previous["runs"]
      logging.info("resuming: %d runs already in %s", len(runs), json_path)
    else:
      logging.warning("%s has other settings; starting over", json_path)
  done = {(r["dataset"], r["block"], r["depth"], r["seed"]) for r in runs}
  jobs = [(d, b, L, s) for d in FLAGS.datasets for b in FLAGS.blocks for L in depths
          for s in seeds if (d, b, L, s) not in done]
  task_cache: dict = {}
  started = time.time()
  for i, (name, block, depth, seed) in enumerate(jobs):
    record = run_one(name, block, depth, seed, settings, task_cache)
    runs.append(record)
    print(f"[{i + 1}/{len(jobs)}] {name:>12s} {block:>5s} depth {depth:3d} seed {seed}: "
          f"{record['status']}, train loss {_fmt(record['final_train_loss'])}, best val "
          f"{record['metric']} {_fmt(record['best_val'])}, test "
          f"{_fmt(record['test_at_best_val'])} ({record['seconds']:.1f}s, "
          f"{record['num_params']} params; {time.time() - started:.0f}s so far)", flush=True)
    _write_json(json_path, {"settings": settings, "runs": runs, "summary": summarise(runs)})
  _report(runs, settings, FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)
