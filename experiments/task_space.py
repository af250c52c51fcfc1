r"""The task space: anchors trained into the bank, FIM task features, similarity, leave-one-out.

Build (--mode=build or all): for every task in --tasks, AutoTransfer's 12 anchor designs are
trained (population engine, GraphGym's protocol, --anchor_epochs) into the task-model bank
(--db; finished trials are skipped on a rerun) and the task's FIM feature (12 anchors x
--fisher_seeds initialisations, `gnnjax.tasks.fisher`) is added to the feature cache
(--features; cached tasks are skipped). With --workers > 1 the tasks are spread over worker
processes pinned to the host's GPUs (`gnnjax.design.workers`), all writing into the same bank;
each worker writes its own feature file, which the parent merges. Compiled programs go to a
persistent cache (--compilation_cache_dir), and tasks of one program group
(`gnnjax.data.program_group`) run one after another where that leaves no worker idle, so the
later ones compile next to nothing.

Analyse (--mode=analyze or all): GraphGym's task similarity (Kendall tau between the anchors'
performance rankings on two tasks) for every pair of tasks that have all anchors in the bank,
as a heatmap; and AutoTransfer's leave-one-task-out check (Table 5): for each held-out task,
the Kendall tau between the ranking of the other tasks by feature (raw FIM features; the learned
embedding g, trained without the held-out task, --runs times) and by GraphGym's similarity.
The paper reports 0.18 (raw) and 0.43 (embedding) with 12 anchors.

  python -m experiments.task_space --data_dir=../shared/datasets --db=results/bank/bank.sqlite \
      --tasks=cora,citeseer,MUTAG,PROTEINS,BZR,DHFR --anchor_epochs=100

Writes into --out_dir: task_similarity.png (heatmap), task_space.json (similarity matrix,
features, per-task and summary leave-one-out numbers) and the table printed at the end.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
from absl import app, flags

from experiments import task_flags
from gnnjax import data as data_lib
from gnnjax import files
from gnnjax.design import bank as bank_lib
from gnnjax.design import study
from gnnjax.design import workers as workers_lib
from gnnjax.tasks import anchors as anchors_lib
from gnnjax.tasks import features as features_lib
from gnnjax.training import protocols

PAPER_LOO = {"feature": 0.18, "embedding": 0.43}  # AutoTransfer Table 5, 12 anchors

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "all", ["all", "build", "analyze"], "build: anchors + FIM features; "
                  "analyze: similarity heatmap and leave-one-task-out; all: both.")
flags.DEFINE_list("tasks", None, "Dataset names of gnnjax.data or @groups of them (e.g. "
                  "@autotransfer_bank; build: required; analyze: default every task of the "
                  "bank).")
task_flags.check_task_groups()
flags.DEFINE_string("data_dir", None, "Local data root laid out like shared/datasets.")
flags.DEFINE_integer("num_graphs", 32, "Graphs per generated/ synthetic task.")
flags.DEFINE_string("db", None, "The task-model bank (SQLite).", required=True)
flags.DEFINE_string("out_dir", "results/task_space", "Where the heatmap and JSON go.")
flags.DEFINE_string("features", None, "FIM feature cache (default <out_dir>/features.json).")
flags.DEFINE_integer("num_anchors", 12, "Use the first N of AutoTransfer's 12 anchors (fewer: "
                     "quick runs only; the paper's numbers are for 12).")
flags.DEFINE_integer("anchor_epochs", 0, "Train the anchors this many epochs (0: their own "
                     "400); read back with the same value (experiments.autotransfer too).")
flags.DEFINE_string("seeds", "1", "Anchor training seeds (comma list or range).")
flags.DEFINE_integer("eval_every", 20, "Evaluate anchors every k epochs.")
flags.DEFINE_integer("max_parallel", None, "Most anchors the population engine trains at once.")
flags.DEFINE_integer("fisher_seeds", 5, "R: random initialisations per anchor.")
flags.DEFINE_integer("fisher_max_examples", None, "Estimate each Fisher from at most this many "
                     "validation examples (default: all).")
flags.DEFINE_integer("fisher_probes", 0, "0: exact per-example Fisher; P > 0: P random-sign "
                     "probes per example (cheaper on a CPU).")
flags.DEFINE_integer("compile_workers", 4, "Anchor programs compiled in parallel for features.")
flags.DEFINE_integer("runs", 10, "Trainings of g per held-out task.")
flags.DEFINE_integer("seed", 0, "Seed of g's trainings.")
flags.DEFINE_integer("workers", 1, "Worker processes for --mode=build over several tasks; tasks "
                     "of one program group (`gnnjax.data.program_group`) run one after another "
                     "where that leaves no worker idle, so they share compiled programs.")
flags.DEFINE_string("compilation_cache_dir", "", task_flags.COMPILATION_CACHE_HELP)
flags.DEFINE_list("worker_devices", None, "GPU ids the workers are pinned to (default: every "
                  "visible GPU; empty: no pinning).")


@functools.cache
def _load(name: str):
  """The task's dataset, loaded and one-hot encoded once per process: the anchors' training
  and the FIM features both read it (and then find nothing left to encode)."""
  return data_lib.one_hot_node_features(
      data_lib.load_dataset(name, FLAGS.data_dir, num_graphs=FLAGS.num_graphs))


def features_path() -> str:
  return FLAGS.features or os.path.join(FLAGS.out_dir, "features.json")


def anchors():
  """The anchor designs trained and read back (the first --num_anchors, --anchor_epochs)."""
  return anchors_lib.anchors_with_epochs(FLAGS.anchor_epochs)[:FLAGS.num_anchors]


# ----------------------------------------------------------------------------------------------
# Build.


def build(task_names: list[str], db: str, feature_file: str) -> None:
  """Anchors into the bank, then features into the cache, task by task (both resumable)."""
  seeds, designs = protocols.parse_seeds(FLAGS.seeds), anchors()
  with bank_lib.Bank(db) as bank:
    for i, task in enumerate(task_names):
      print(f"[{i + 1}/{len(task_names)}] {task}: anchors", flush=True)
      summary = study.run_trials(
          bank, task, functools.partial(_load, task), designs, seeds,
          eval_every=FLAGS.eval_every, max_parallel=FLAGS.max_parallel,
          progress=study.engine_progress(), on_result=study.ProgressPrinter(
              len(designs) * len(seeds)))
      print(f"  anchors: {summary.trained} trained, {summary.skipped} already in the bank",
            flush=True)
      features_lib.compute_features(
          [task], feature_file, _load, len(designs), FLAGS.fisher_seeds,
          FLAGS.fisher_max_examples, print_fn=functools.partial(print, flush=True),
          num_probes=FLAGS.fisher_probes, compile_workers=FLAGS.compile_workers,
          anchors=designs)


def build_in_workers(task_names: list[str], db: str) -> int:
  """One worker process per task; their feature files are merged into --features."""
  db, out_dir = os.path.abspath(db), os.path.abspath(FLAGS.out_dir)
  parts = os.path.join(out_dir, "features")
  devices = (workers_lib.accelerator_ids() if FLAGS.worker_devices is None
             else FLAGS.worker_devices)
  module = FLAGS.find_module_defining_flag("tasks")
  forwarded = workers_lib.flag_arguments(
      FLAGS, module, exclude=("tasks", "workers", "worker_devices", "mode", "db", "features",
                              "out_dir"))
  part_files = {task: os.path.join(parts, folder + ".json")
                for task, folder in zip(task_names, workers_lib.folder_names(task_names))}
  jobs = [workers_lib.Job(task, [sys.executable, "-m", "experiments.task_space", "--mode=build",
                                 f"--tasks={task}", "--workers=1", f"--db={db}",
                                 f"--out_dir={out_dir}", f"--features={path}", *forwarded],
                          group=data_lib.program_group(task))
          for task, path in part_files.items()]
  print(f"{len(jobs)} tasks over {min(FLAGS.workers, len(jobs))} workers (devices: "
        f"{','.join(devices) if devices else 'not pinned'}); bank {db}", flush=True)
  results = workers_lib.run_jobs(jobs, FLAGS.workers, devices,
                                 print_fn=functools.partial(print, flush=True))
  merged = features_lib.load_features(features_path())
  for path in part_files.values():
    merged.update(features_lib.load_features(path))
  features_lib.save_features(features_path(), merged)
  return 1 if workers_lib.print_failures(results) else 0


# ----------------------------------------------------------------------------------------------
# Analyse.


def analyze(task_names: list[str], db: str) -> dict:
  """Similarity heatmap and leave-one-task-out over the tasks with anchors and a feature."""
  from gnnjax.tasks import embedding, similarity
  with bank_lib.Bank(db) as bank:
    performance = similarity.anchor_performance_from_bank(bank, anchors())
  features = features_lib.load_features(features_path())
  names = [t for t in task_names if t in performance and t in features]
  skipped = [t for t in task_names if t not in names]
  if skipped:
    print(f"left out (no anchors in the bank or no feature): {', '.join(skipped)}")
  if len(names) < 4:
    raise SystemExit(f"the leave-one-task-out check needs >= 4 tasks with anchors and features; "
                     f"have {len(names)}")
  names, matrix = similarity.similarity_matrix({t: performance[t] for t in names})
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  heatmap = os.path.join(FLAGS.out_dir, "task_similarity.png")
  similarity.plot_heatmap(names, matrix, heatmap)
  loo = embedding.leave_one_out({t: features[t] for t in names}, matrix, runs=FLAGS.runs,
                                seed=FLAGS.seed)
  summary = loo.summary()
  rows = [f"| {t} | {loo.feature_tau[i]:+.3f} | {np.nanmean(loo.embedding_tau[:, i]):+.3f} "
          f"+- {np.nanstd(loo.embedding_tau[:, i]):.3f} |" for i, t in enumerate(loo.tasks)]
  table = "\n".join([
      "| held-out task | Kendall tau, raw FIM features | Kendall tau, embedding g "
      f"(mean +- std over {FLAGS.runs} runs) |", "|---|---|---|", *rows,
      f"| **mean** | **{summary['feature_mean']:+.3f}** (paper {PAPER_LOO['feature']}) | "
      f"**{summary['embedding_mean']:+.3f}** +- {summary['embedding_std_over_runs']:.3f} over "
      f"runs (paper {PAPER_LOO['embedding']}) |"])
  print(table)
  record = {"tasks": names, "anchor_epochs": FLAGS.anchor_epochs or 400,
            "similarity": matrix.tolist(),
            "anchor_performance": {t: performance[t].tolist() for t in names},
            "features": {t: np.asarray(features[t]).tolist() for t in names},
            "loo_tasks": loo.tasks, "feature_tau": loo.feature_tau.tolist(),
            "embedding_tau": loo.embedding_tau.tolist(), "summary": summary,
            "paper": PAPER_LOO}
  path = os.path.join(FLAGS.out_dir, "task_space.json")
  files.write_json_atomic(path, record, indent=1)
  files.write_atomic(os.path.join(FLAGS.out_dir, "task_space.md"), table + "\n")
  print(f"wrote {heatmap}, {path}")
  return record


def main(argv):
  del argv
  db = FLAGS.db
  status = 0
  task_names = data_lib.expand_task_names(FLAGS.tasks or [])
  if FLAGS.mode in ("all", "build"):
    task_flags.use_compilation_cache(FLAGS.compilation_cache_dir)
    if not task_names:
      raise app.UsageError("--mode=build/all needs --tasks")
    if FLAGS.workers > 1 and len(task_names) > 1:
      status = build_in_workers(task_names, db)
    else:
      build(task_names, db, features_path())
  if FLAGS.mode in ("all", "analyze"):
    if task_names:
      tasks = task_names
    else:
      with bank_lib.Bank(db) as bank:
        tasks = bank.tasks()
    analyze(tasks, db)
  sys.exit(status)


if __name__ == "__main__":
  app.run(main)
