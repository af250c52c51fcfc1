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
`gnnjax.deep.depth_study.register_block`.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging

from gnnjax.deep import depth_study as study_lib
from gnnjax.models import deepgcn
from gnnjax.nn import deeper

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

def main(argv):
  del argv
  if FLAGS.merge:
    study_lib.merge_results(FLAGS.merge, FLAGS.out_dir)
    return
  depths = [int(d) for d in FLAGS.depths]
  seeds = [int(s) for s in FLAGS.seeds]
  unknown = [b for b in FLAGS.blocks if b not in study_lib.BLOCK_BUILDERS]
  if unknown:
    raise app.UsageError(f"unknown block(s) {unknown}; choose from "
                         f"{list(study_lib.BLOCK_BUILDERS)}")
  unavailable = [b for b in FLAGS.blocks if study_lib.BLOCK_BUILDERS[b] is None]
  if unavailable:
    raise app.UsageError(f"block(s) {unavailable} are not hooked up yet "
                         "(gnnjax.deep.depth_study.register_block)")
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
    record = study_lib.run_one(name, block, depth, seed, settings, task_cache)
    runs.append(record)
    fmt = study_lib.format_value
    print(f"[{i + 1}/{len(jobs)}] {name:>12s} {block:>5s} depth {depth:3d} seed {seed}: "
          f"{record['status']}, train loss {fmt(record['final_train_loss'])}, best val "
          f"{record['metric']} {fmt(record['best_val'])}, test "
          f"{fmt(record['test_at_best_val'])} ({record['seconds']:.1f}s, "
          f"{record['num_params']} params; {time.time() - started:.0f}s so far)", flush=True)
    study_lib.write_json(json_path, {"settings": settings, "runs": runs,
                                     "summary": study_lib.summarise(runs)})
  study_lib.report(runs, settings, FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)
