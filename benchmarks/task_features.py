r"""Time of a task's FIM feature: all U x R Fisher estimates (AutoTransfer's 12 anchors x 5
seeds) on a Cora-size task, compile time apart from run time.

    python -m benchmarks.task_features --data_dir=../shared/datasets --out_dir=benchmarks

Per anchor, one jitted program vmapped over the R seeds: init, cached head inputs, head fit
(<= 100 epochs, plateau stop), Fisher of the message weights over the val examples (Cora's
public split: 500 val nodes) and alpha. Reported: data preparation, per-anchor compile (trace +
XLA) and run seconds, their totals, the process CPU time (user + system, all threads; on a
shared machine wall time overstates the cost), and the resulting feature.

Targets (issue 5): run < 10 s on one GPU, < 120 s on a 2-core CPU. The default is the exact
per-example Fisher (one backward pass per val node: meant for the GPU). `--num_probes=2` is the
CPU setting: an unbiased random-sign estimate of the same diagonal from 2 backward passes per
(anchor, seed); alpha comes out about 1 + 2/P times the exact value, nearly uniformly over
anchors, so the L2-normalised feature barely moves (cosine 0.9995 to the exact GPU feature on
Cora; see gnnjax/tasks/fisher.py). `--max_examples` subsamples val examples (biased, not
recommended).
`--chunk_size` sets how many VJPs run at once (memory), `--compile_workers` how many threads
compile the 12 anchor programs.

    # GPU (H200)
    python -m benchmarks.task_features --data_dir=../shared/datasets --chunk_size=64 \
        --compile_workers=8
    # 2-core CPU
    python -m benchmarks.task_features --data_dir=../shared/datasets --num_probes=2 \
        --compile_workers=2 --name=task_features_cpu \
        --reference=benchmarks/results/task_features.json
"""

from __future__ import annotations

import json
import resource
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from gnnjax import data as data_lib
from gnnjax.tasks import anchors, fisher

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Data root with planetoid/ (Cora).")
flags.DEFINE_string("dataset", "cora", "Dataset name (gnnjax.data.load_dataset).")
flags.DEFINE_integer("num_anchors", 12, "Use the first k of AutoTransfer's 12 anchors.")
flags.DEFINE_integer("num_seeds", 5, "R, seeds per anchor.")
flags.DEFINE_integer("max_examples", None, "Val examples per seed (default: all).")
flags.DEFINE_integer("num_probes", 0, "0: exact per-example Fisher; P: random-sign estimate "
                     "from P VJPs per val batch.")
flags.DEFINE_integer("chunk_size", 32, "VJPs vmapped together (memory knob).")
flags.DEFINE_integer("head_epochs", 100, "Head-fit epochs at most.")
flags.DEFINE_integer("compile_workers", 2, "Threads compiling the anchor programs.")
flags.DEFINE_string("reference", None, "A results JSON of this benchmark holding the exact "
                    "feature (e.g. benchmarks/results/task_features.json from the GPU): report "
                    "the cosine similarity of this run's feature to it.")
flags.DEFINE_string("name", "task_features", "Results name (results/<name>.json), e.g. "
                    "task_features_cpu for the CPU run beside the GPU one.")
flags.DEFINE_string("out_dir", "benchmarks", "Where results/task_features.json and RESULTS.md "
                    "go (use /tmp/... for trial runs).")


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main(argv):
  del argv
  on_gpu = jax.devices()[0].platform == "gpu"
  config = fisher.FisherConfig(num_seeds=FLAGS.num_seeds, max_examples=FLAGS.max_examples,
                               num_probes=FLAGS.num_probes, chunk_size=FLAGS.chunk_size,
                               head_epochs=FLAGS.head_epochs)
  chosen = anchors.AUTOTRANSFER_ANCHORS[:FLAGS.num_anchors]
  dataset = data_lib.load_dataset(FLAGS.dataset, FLAGS.data_dir)
  cpu0, start = _cpu_seconds(), time.perf_counter()
  task = fisher.prepare_task(dataset, config)
  prep = time.perf_counter() - start
  print(f"{dataset.summary()}; {task.num_examples} val examples per seed, "
        f"{len(chosen)} anchors x {config.num_seeds} seeds; prepared in {prep:.2f} s")
  result = fisher.task_feature(task, chosen, config, progress=print,
                               compile_workers=FLAGS.compile_workers)
  cpu = _cpu_seconds() - cpu0
  # Compile workers overlap: the phase's wall time, not the per-anchor sum.
  compile_total = float(result.compile_phase_seconds)
  run_total = float(result.run_seconds.sum())
  total = prep + compile_total + run_total

  estimator = ("exact per-example" if FLAGS.num_probes == 0 else
               f"{FLAGS.num_probes} random-sign probes")
  used = task.num_examples if FLAGS.max_examples is None else min(FLAGS.max_examples,
                                                                  task.num_examples)
  rows = ["| anchor | design | alpha (mean over seeds) | head epochs | compile s | run s |",
          "|---|---|---|---|---|---|"]
  for u, design in enumerate(chosen):
    rows.append(f"| {anchors.ANCHOR_NAMES[u]} | {design.summary().split(' adam')[0]} | "
                f"{result.alphas[u].mean():.3f} | {result.head_epochs[u].tolist()} | "
                f"{result.compile_seconds[u]:.1f} | {result.run_seconds[u]:.2f} |")
  rows.append(f"| total | {len(chosen)} x {config.num_seeds} estimates, {estimator}, {used} "
              f"val examples per seed | | | {compile_total:.1f} | {run_total:.2f} |")
  table = "\n".join(rows)
  print(table)
  print(f"prepare {prep:.2f} s, compile {compile_total:.1f} s, run {run_total:.2f} s, "
        f"total {total:.1f} s (wall); process CPU time {cpu:.1f} s: compile "
        f"{result.compile_cpu_seconds:.1f} s, run {result.run_cpu_seconds:.1f} s")
  print("feature:", np.round(result.feature, 4).tolist())
  agreement = None
  if FLAGS.reference:
    with open(FLAGS.reference) as f:
      reference = json.load(f)
    exact = np.asarray(reference["metrics"]["feature"], np.float64)
    agreement = float(exact @ result.feature / (np.linalg.norm(exact)
                                                * np.linalg.norm(result.feature)))
    print(f"cosine similarity to the reference feature ({reference['metrics']['estimator']}, "
          f"{reference['device']}): {agreement:.5f}")

  goal = 10.0 if on_gpu else 120.0
  metrics = {"dataset": FLAGS.dataset, "anchors": len(chosen), "seeds": config.num_seeds,
             "estimator": estimator, "val_examples_per_seed": used,
             "chunk_size": FLAGS.chunk_size, "prepare_seconds": prep,
             "compile_seconds": compile_total, "run_seconds": run_total,
             "total_seconds": total, "process_cpu_seconds": cpu,
             "compile_cpu_seconds": result.compile_cpu_seconds,
             "run_cpu_seconds": result.run_cpu_seconds,
             "per_anchor_compile_seconds": result.compile_seconds.tolist(),
             "per_anchor_run_seconds": result.run_seconds.tolist(),
             "alphas": result.alphas.tolist(), "head_epochs": result.head_epochs.tolist(),
             "feature": result.feature.tolist(), "cosine_to_reference": agreement,
             "reference": FLAGS.reference}
  targets = {"run_seconds": common.target(run_total, goal, higher_is_better=False),
             "total_seconds_with_compile": common.target(total, goal, higher_is_better=False)}
  notes = (f"Target {goal:.0f} s ({'GPU' if on_gpu else '2-core CPU'}); process CPU time "
           f"{cpu:.1f} s (compile {result.compile_cpu_seconds:.1f} s, run "
           f"{result.run_cpu_seconds:.1f} s)."
           + (f" Cosine similarity of the feature to {FLAGS.reference}: {agreement:.5f}."
              if agreement is not None else ""))
  path = common.write_results(FLAGS.name, metrics, targets, FLAGS.out_dir, table, notes)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
