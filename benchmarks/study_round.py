r"""What one round of a search with real training costs, under several engine policies.

    python -m benchmarks.study_round --data_dir=../shared/datasets --task=BZR

A round of the real-training study (`experiments.autotransfer --mode=study --evaluator=train`)
is one small population: up to 20 designs of the AutoTransfer space (2 priors x 10 runs),
spread over up to 8 programs (conv type and GAT heads; GeneralConv's max/min apart from its
add/mean). Each variant trains --designs designs drawn uniformly with seed 1 (round A), then
--designs others drawn with seed 2 (round B: a new round, compiling what A did not), then
round B again (its programs all compiled: the steady state a study reaches once its
programs exist). One seed per design, --epochs epochs (a round's training time is linear in
them), evaluated every --eval_every. Variants:

* `stable`: the study's setting: every layout covers the whole space (`layout_cover`) and
  chunks are padded to a power of two (`size_buckets`), under the default split policies.
* `stable_split`: the same with skipconcat and deep designs always split apart (on
  accelerators they otherwise split only where each part has 32 members, never in a round;
  on CPUs they always do, so there this is `stable` again).
* `stable_split_stages`: the same with only skipconcat designs split apart: the other
  members' layer inputs narrow to D columns (a BZR cover's skipconcat reads 8 x D), without
  the depth split's extra chunks.
* `stable_one_aggregation`: the same with max designs in the add/mean programs (fewer
  programs and chunks; every member computes both aggregations).
* `stable_epoch_scan`: the same with one call per epoch for one-shape programs.
* `stable_scatter`: the same with every aggregation (GeneralConv's, GCN's and GAT's) a
  scatter over the edges instead of per-graph blocks.
* `own_layouts`: no cover: each program is as wide as its round's designs, so every new round
  compiles new programs (round B), and each member computes less (B again).
* `own_scatter`: own layouts with every aggregation a scatter (on the CPU, where the blocks'
  G M^2 D flops weigh against E D messages).

Printed and written (results/study_round_<task>.json after every variant, with "complete"
false until the last, so a run stopped by a time limit keeps what it finished; RESULTS.md at
the end): per variant the seconds of each round, the programs traced in round B, its chunks,
and the largest difference of a round-B trial's validation metric from the `stable` variant's
(float noise: the layouts differ in width, and on a GPU two trainings of one design differ
anyway; see BUILD_NOTES' known limits).
"""

from __future__ import annotations

import math
import time

from absl import app, flags

from benchmarks import common
from gnnjax import data as data_lib
from gnnjax import metrics as metrics_lib
from gnnjax.design import engine, spaces

# The engine keywords of each variant (the cover, the whole space, is filled in by main()).
COVERED = {"layout_cover": None, "size_buckets": True}
VARIANTS = {
    "stable": dict(COVERED),
    "stable_split": {**COVERED, "split_stages": True, "split_depths": True},
    "stable_split_stages": {**COVERED, "split_stages": True},
    "stable_one_aggregation": {**COVERED, "split_aggregations": False},
    "stable_epoch_scan": {**COVERED, "epoch_scan": True},
    "stable_scatter": {**COVERED, "block_aggregation": False},
    "own_layouts": {},
    "own_scatter": {"block_aggregation": False},
}

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "BZR", "Registry name of the held-out task.")
flags.DEFINE_string("data_dir", None, "Data root (shared/datasets).")
flags.DEFINE_integer("designs", 20, "Designs per round (the study's: 2 priors x 10 runs).")
flags.DEFINE_integer("epochs", 10, "Epochs per design (the study trains 50; a round's "
                     "training time is linear in them).")
flags.DEFINE_integer("eval_every", 10, "Evaluate every k epochs (the study's).")
flags.DEFINE_list("variants", ["stable", "stable_split", "stable_one_aggregation"],
                  f"Variants to run, in order, of: {', '.join(VARIANTS)}.")
flags.DEFINE_string("results_name", None, "Results JSON name (default: study_round_<task>).")
flags.DEFINE_string("out_dir", "benchmarks", "Where results/<name>.json and RESULTS.md go.")


def run_round(designs, dataset, policies: dict) -> dict:
  """Trains one round; its seconds, programs traced, chunks and validation values."""
  chunks = set()
  before = dict(engine.TRACE_COUNTS)
  start = time.perf_counter()
  results = engine.train_population(
      designs, dataset, [1], eval_every=FLAGS.eval_every,
      progress=lambda done, total, info: chunks.add(info["chunks"]), **policies)
  seconds = time.perf_counter() - start
  traced = sum(v - before.get(k, 0) for k, v in engine.TRACE_COUNTS.items())
  metric = metrics_lib.default_metric(dataset.task_type)
  values = [r.best["val"][metric] if r.best else float("nan") for r in results]
  return {"seconds": seconds, "traced": traced, "chunks": max(chunks, default=0),
          "trials": len(results), "statuses": sorted({r.status for r in results}),
          "val": values}


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.variants) - set(VARIANTS))
  if unknown:
    raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
  dataset = data_lib.load_dataset(FLAGS.task, FLAGS.data_dir)
  space = spaces.resolve_space("autotransfer", [f"epochs={FLAGS.epochs}"])
  cover = tuple(space)
  round_a, round_b = (space.sample(seed, FLAGS.designs) for seed in (1, 2))
  print(f"{dataset.name}: rounds of {FLAGS.designs} designs x {FLAGS.epochs} epochs; cover "
        f"{len(cover)} designs; device {common.device_description()}", flush=True)
  name = FLAGS.results_name or f"study_round_{dataset.name}".replace("/", "_")
  measured = {}
  for variant in FLAGS.variants:
    policies = {k: (cover if k == "layout_cover" else v) for k, v in VARIANTS[variant].items()}
    measured[variant] = [run_round(designs, dataset, policies)
                         for designs in (round_a, round_b, round_b)]
    a, b, again = measured[variant]
    print(f"  {variant}: A {a['seconds']:.1f} s, B {b['seconds']:.1f} s ({b['traced']} traced, "
          f"{b['chunks']} chunks), B again {again['seconds']:.1f} s", flush=True)
    metrics, table = summarize(dataset, measured)
    if not metrics["complete"]:  # a run stopped by a time limit keeps the variants it did
      common.write_record(name, metrics, {}, FLAGS.out_dir)
  print(table)
  path = common.write_results(name, metrics, {}, FLAGS.out_dir, table)
  print(f"wrote {path}")


def summarize(dataset, measured: dict[str, list[dict]]) -> tuple[dict, str]:
  """The results' metrics (the variants measured so far, "complete" once all of --variants
  are) and their markdown table."""
  reference = measured.get("stable", next(iter(measured.values())))[2]["val"]
  lines = ["| variant | round A (s) | round B (s) | traced in B | chunks in B | B again (s) | "
           "trials/s, B again | max diff of val vs stable |",
           "|---|---|---|---|---|---|---|---|"]
  metrics = {"task": dataset.name, "designs": FLAGS.designs, "epochs": FLAGS.epochs,
             "eval_every": FLAGS.eval_every, "complete": list(measured) == FLAGS.variants,
             "variants": {}}
  for variant, (a, b, again) in measured.items():
    diff = max((abs(x - y) for x, y in zip(again["val"], reference)
                if math.isfinite(x) and math.isfinite(y)), default=0.0)
    rate = again["trials"] / again["seconds"]
    lines.append(f"| {variant} | {a['seconds']:.1f} | {b['seconds']:.1f} | {b['traced']} | "
                 f"{b['chunks']} | {again['seconds']:.1f} | {rate:.2f} | {diff:.4f} |")
    metrics["variants"][variant] = {
        "round_seconds": {"A": a["seconds"], "B": b["seconds"], "B_again": again["seconds"]},
        "traced": {"A": a["traced"], "B": b["traced"], "B_again": again["traced"]},
        "chunks": {"A": a["chunks"], "B": b["chunks"]}, "trials_per_second": rate,
        "max_val_diff": diff, "statuses": again["statuses"]}
  return metrics, "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
