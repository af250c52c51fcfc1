r"""AutoTransfer: search a new task's design with a prior transferred from the task-model bank.

Search mode (default): for the task --dataset, compute its distance to every bank task
(`gnnjax.tasks.distances.task_distances`: FIM task features -> learned embedding g ->
d_e = 1 - z_e . z_e'), show the nearest bank tasks, mix their top-K design distributions into
the transferred prior, run a search (--algorithm, --prior, --trials) whose candidates are
trained with the population engine, and report the best design (JSON in --out_dir). A bank
task with the new task's name is left out of the bank (no leakage).

  python -m experiments.autotransfer --db=results/bank/bank.sqlite --dataset=cora \
      --data_dir=../shared/datasets --algorithm=tpe --prior=transferred --trials=30

Study mode (--mode=study): the leave-one-task-out search-efficiency study over the bank's tasks
(gnnjax.search.efficiency): every algorithm with and without the prior, --runs runs of --trials
trials, table + best-so-far plot + JSON in --out_dir. By default it is a TABULAR benchmark
(--evaluator=bank): a search on a held-out task draws from that task's designs in the bank and
reads their stored results instead of training (cheap; the FIM features are the only compute).

  python -m experiments.autotransfer --mode=study --db=results/bank/bank.sqlite \
      --data_dir=../shared/datasets --features=results/bank/features.json --runs=10 --trials=30

Distances (--distance): 'embedding' (default: the paper's; g is trained on the bank tasks that
have anchor trials in the bank, supervised by GraphGym's anchor similarity; with fewer than 3
such tasks it falls back to 'feature'), 'feature' (cosine distance of the raw FIM features),
'graphgym' (1 - Kendall tau of anchor performance; needs the new task's anchors in the bank: an
oracle for comparisons), 'pool' (1 - Kendall tau of the two tasks' results over the
designs both hold in the bank, `efficiency.pool_distances`: an oracle that reads the held-out
task's own results, for the study's upper bound), 'file' (--distances_json: {"task":
distance} or, in study mode, {"held_out": {"task": distance}}), or, in study mode only, 'self':
no other task at all, each held-out task's prior comes from its own other training seeds
(`efficiency.self_transfer`; searches see --held_seeds), the best source any bank could hold,
and 'insample': each held-out task's prior is its own top-K over the very results the
searches read (`efficiency.in_sample_transfer`: the ceiling of a top-K prior on that pool).
FIM features are cached in --features (JSON task -> vector; missing tasks are computed,
loading each task by its bank name, and written back).

Quick CPU run (tiny): see tests/test_search.py for a bank-lookup run; with real training:
  python -m experiments.autotransfer --db=/tmp/bank.sqlite --dataset=<task> --trials=4 \
      --batch_size=2 --epochs_cap=2 --anchors=2 --fisher_seeds=1 --num_graphs=16
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from absl import app, flags

from experiments import engine_flags, task_flags
from gnnjax import data as data_lib
from gnnjax.design import bank as bank_lib
from gnnjax.design import engine, spaces, study
from gnnjax.search import ALGORITHMS, make_searcher, run_search
from gnnjax.search import efficiency
from gnnjax.search.evaluate import BankLookup, TrainingEvaluator
from gnnjax.tasks import anchors as anchors_lib
from gnnjax.tasks import distances as distances_lib
from gnnjax.tasks import prior as prior_lib
from gnnjax.training import protocols

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "search", ["search", "study"], "search: one new task; study: the "
                  "leave-one-task-out search-efficiency study over the bank.")
flags.DEFINE_string("db", None, "The task-model bank (SQLite).", required=True)
flags.DEFINE_string("dataset", data_lib.DEFAULT_DATASET, "search mode: the new task (a dataset "
                    "name of gnnjax.data).")
flags.DEFINE_string("data_dir", None, "Local data root laid out like shared/datasets.")
flags.DEFINE_integer("num_graphs", 64, "Graphs per generated/ synthetic task.")
flags.DEFINE_string("space", "autotransfer", "Design space: a built-in name "
                    f"({', '.join(sorted(spaces.SPACES))}) or a space JSON file.")
flags.DEFINE_list("fix", [], "Pin dimensions of --space, as field=value pairs (the same "
                  "--fix that experiments.design_space filled the bank with, e.g. epochs=50).")
flags.DEFINE_enum("algorithm", "tpe", sorted(ALGORITHMS), "search mode: search algorithm.")
flags.DEFINE_enum("prior", "transferred", ["transferred", "uniform"], "search mode: start from "
                  "the transferred prior or the uniform one.")
flags.DEFINE_integer("trials", 30, "Trials (evaluations) per search.")
flags.DEFINE_integer("batch_size", 1, "Suggestions asked for at once (trained together by the "
                     "population engine).")
flags.DEFINE_integer("seed", 0, "Searcher seed (study: run r uses seed + r).")
flags.DEFINE_integer("top_k", prior_lib.DEFAULT_TOP_K, "K: top designs per bank task in its "
                     "design distribution.")
flags.DEFINE_integer("nearest", prior_lib.DEFAULT_NEAREST, "Use the k nearest bank tasks (the "
                     "released code's rule; also the fallback when --d_thres selects none).")
flags.DEFINE_float("d_thres", None, "The paper's rule: use every bank task within this "
                   "distance (default: the k nearest).")
flags.DEFINE_float("smoothing", 0.0, "Mix this much of the uniform prior into the transferred "
                   "one (0: choices unseen in the near tasks' top-K stay impossible, as the "
                   "paper).")
flags.DEFINE_enum("distance", "embedding",
                  ["embedding", "feature", "graphgym", "pool", "file", "self", "insample"],
                  "How task distances are computed (see the module docstring; 'pool' is an "
                  "oracle that reads the held-out task's own results). --mode=study only: "
                  "'self' takes each held-out task's prior from its own other seeds "
                  "(efficiency.self_transfer: the best source a bank could hold); 'insample' "
                  "from its own top-K over the results the searches read "
                  "(efficiency.in_sample_transfer: the ceiling of a top-K prior).")
flags.DEFINE_list("held_seeds", ["1"], "--distance=self: the seeds whose results the searches "
                  "see; the prior comes from the task's other seeds.")
flags.DEFINE_string("distances_json", None, "--distance=file: the distances JSON.")
flags.DEFINE_string("features", None, "JSON cache of FIM task features (task -> vector); "
                    "default <out_dir>/features.json.")
flags.DEFINE_integer("anchors", 12, "Use the first N of AutoTransfer's 12 anchors for FIM "
                     "features (fewer: faster, coarser).")
flags.DEFINE_integer("anchor_epochs", 0, "Epochs the bank's anchor trials were trained for "
                     "(0: the anchors' own 400; experiments.task_space --anchor_epochs).")
flags.DEFINE_integer("fisher_seeds", 5, "R: random initialisations per anchor.")
flags.DEFINE_integer("fisher_max_examples", None, "Estimate each Fisher from at most this many "
                     "val examples (default: all).")
flags.DEFINE_integer("fisher_probes", 0, "FIM estimator: 0 = exact per-example sum; P > 0 = "
                     "the random-sign estimate from P VJPs per batch (gnnjax.tasks.fisher).")
flags.DEFINE_integer("compile_workers", 1, "Anchor programs compiled in parallel for FIM "
                     "features.")
flags.DEFINE_integer("embedding_seed", 0, "Seed of the projection g's training.")
flags.DEFINE_enum("evaluator", None, ["train", "bank"], "How candidates are evaluated: 'train' "
                  "(population engine) or 'bank' (tabular lookup of the task's trials in the "
                  "bank). Default: train in search mode, bank in study mode.")
flags.DEFINE_string("seeds", "1", "Training seeds per candidate (comma list or range).")
flags.DEFINE_integer("eval_every", 20, "Evaluate every k epochs while training candidates.")
flags.DEFINE_integer("epochs_cap", None, "Train candidates at most this many epochs (quick CPU "
                     "runs; the space's epochs are 200-1600).")
flags.DEFINE_integer("max_parallel", None, "Most designs the population engine trains at once.")
flags.DEFINE_enum("stable_programs", "auto", ["auto", "on", "off"], "With --evaluator=train: "
                  "every population program's layout holds the whole space's designs of its "
                  "group and chunks are padded to powers of two, so a search's rounds reuse a "
                  "few compiled programs instead of compiling every round (each design then "
                  "trains at its group's widest shape; results are the same). auto: the "
                  "engine's default, on on accelerators, off on CPUs, where the width costs "
                  "more than the compilations (engine.stable_programs_by_default).")
flags.DEFINE_string("compilation_cache_dir", "", task_flags.COMPILATION_CACHE_HELP)
flags.DEFINE_string("search_db", None, "Bank for the trained candidates (resumable; default "
                    "<out_dir>/search.sqlite in search mode, <out_dir>/study.sqlite in study "
                    "mode with --evaluator=train, whose task distances are kept beside it in "
                    "<name>.distances.json so that a rerun replays the same priors).")
flags.DEFINE_integer("n_startup", 5, "TPE warm-up trials drawn from the prior (paper: 5).")
flags.DEFINE_integer("population", 5, "Evolution's initial population (paper: 5).")
flags.DEFINE_float("hb_max_resource", 60, "HyperBand R (fraction R/R = the design's epochs).")
flags.DEFINE_float("hb_eta", 3, "HyperBand eta.")
flags.DEFINE_bool("hb_ignore_budget", False, "HyperBand trains every evaluation fully, as the "
                  "reference code's trials do (its budget is a no-op there).")
flags.DEFINE_list("tasks", None, "study mode: held-out tasks or @groups of them (default: every "
                  "bank task with at least --min_pool designs in the space).")
task_flags.check_task_groups()
flags.DEFINE_integer("min_pool", 30, "study mode: smallest pool a held-out task needs.")
flags.DEFINE_bool("full_coverage_sources", False, "Use only bank tasks whose pools tried every "
                  "choice of every dimension as prior sources (a partial pool's prior gives its "
                  "untried choices no mass); off: such tasks are used, and named.")
flags.DEFINE_integer("min_source_pool", 32, "Smallest pool (designs with a result in the space) "
                     "a bank task needs to be a prior source: a top-K distribution of a pool "
                     "not much larger than K is mostly the pool itself (default: 2 x the "
                     "default --top_k). Smaller pools still count for the task distances.")
flags.DEFINE_list("algorithms", sorted(ALGORITHMS), "study mode: algorithms.")
flags.DEFINE_integer("runs", 10, "study mode: runs per (task, algorithm, prior).")
flags.DEFINE_string("out_dir", "results/autotransfer", "Where results go.")


# ----------------------------------------------------------------------------------------------
# Task features and distances.


def print_nearest(distances: Mapping[str, float], transfer: prior_lib.Transfer | None,
                  print_fn: Callable[[str], None] = print, show: int = 10) -> None:
  order = sorted(distances, key=lambda t: (distances[t], t))
  print_fn(f"nearest bank tasks ({len(order)} in all):")
  for rank, task in enumerate(order[:show], start=1):
    weight = transfer.weights.get(task) if transfer is not None else None
    note = f"  weight {weight:.3f}" if weight is not None else ""
    print_fn(f"  {rank:2d}. {task:<45} d={distances[task]:.4f}{note}")


# ----------------------------------------------------------------------------------------------
# Modes.


def _loader(name: str):
  return data_lib.load_dataset(name, FLAGS.data_dir, num_graphs=FLAGS.num_graphs)


def searcher_kwargs() -> dict[str, dict[str, Any]]:
  return {"tpe": {"n_startup": FLAGS.n_startup}, "evolution": {"population_size": FLAGS.population},
          "hyperband": {"max_resource": FLAGS.hb_max_resource, "eta": FLAGS.hb_eta,
                        "ignore_budget": FLAGS.hb_ignore_budget},
          "random": {}}


def _distances_for(bank, space: spaces.DesignSpace, new_task: str, bank_tasks: Sequence[str],
                   similarity=None) -> dict[str, float]:
  if FLAGS.distance == "pool":
    return efficiency.pool_distances(bank, space, new_task, bank_tasks)
  return distances_lib.task_distances(
      new_task, bank_tasks, bank, distance=FLAGS.distance, load=_loader,
      features_path=FLAGS.features or os.path.join(FLAGS.out_dir, "features.json"),
      distances_json=FLAGS.distances_json, num_anchors=FLAGS.anchors,
      fisher_seeds=FLAGS.fisher_seeds, max_examples=FLAGS.fisher_max_examples,
      num_probes=FLAGS.fisher_probes, compile_workers=FLAGS.compile_workers,
      embedding_seed=FLAGS.embedding_seed, similarity=similarity, anchors=_anchors())


def _anchors():
  """The anchors whose trials the bank holds (--anchor_epochs)."""
  return anchors_lib.anchors_with_epochs(FLAGS.anchor_epochs)


def _json_default(value: Any) -> Any:
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def run_search_mode(bank, space: spaces.DesignSpace) -> dict[str, Any]:
  if FLAGS.distance in ("self", "insample"):
    raise ValueError(f"--distance={FLAGS.distance} is a study of the bank's own tasks: use it "
                     "with --mode=study")
  task = FLAGS.dataset
  bank_tasks = [t for t in bank.tasks() if t != task]
  if task in bank.tasks():
    print(f"{task} is in the bank: left out of it for the transfer (no leakage)")
  distributions = prior_lib.bank_distributions(bank, space, bank_tasks, FLAGS.top_k)
  if not distributions:
    raise ValueError(f"no bank task has trials in space {space.name!r}; build the bank first")
  print(f"bank: {len(bank_tasks)} task(s), {len(distributions)} with designs in space "
        f"{space.name!r}")
  sources, thin = prior_lib.split_by_pool(distributions, FLAGS.min_source_pool)
  if thin:
    print(f"not prior sources (fewer than --min_source_pool={FLAGS.min_source_pool} designs): "
          + ", ".join(thin))
  sources, note = prior_lib.select_by_coverage(sources, FLAGS.full_coverage_sources,
                                               " (--full_coverage_sources)")
  if note:
    print(note)
  if not sources:
    raise ValueError(f"no bank task has --min_source_pool={FLAGS.min_source_pool} designs in "
                     f"space {space.name!r}"
                     + (" and a pool that tried every choice" if FLAGS.full_coverage_sources
                        else ""))
  distances = _distances_for(bank, space, task, list(distributions))
  transfer = prior_lib.transfer_prior(sources, distances, FLAGS.d_thres, FLAGS.nearest)
  print_nearest(distances, transfer)
  if transfer.fallback:
    print(f"no bank task within d_thres={FLAGS.d_thres}: used the {FLAGS.nearest} nearest")
  transferred = transfer.prior.smoothed(FLAGS.smoothing) if FLAGS.smoothing else transfer.prior
  print(f"transferred prior: support {transferred.support_size()} of {space.size} designs\n"
        + transferred.summary())
  prior = transferred if FLAGS.prior == "transferred" else None

  evaluator_kind = FLAGS.evaluator or "train"
  pool, evaluate_fn, evaluate_batch = None, None, None
  search_bank = None
  if evaluator_kind == "bank":
    lookup = BankLookup(bank, task, space)
    pool, evaluate_fn, higher = lookup.pool, lookup, lookup.higher_is_better
    print(f"evaluation: lookup of {task}'s {len(lookup)} designs in the bank (tabular)")
  else:
    search_db = FLAGS.search_db or os.path.join(FLAGS.out_dir, "search.sqlite")
    search_bank = bank_lib.Bank(search_db)
    evaluator = _training_evaluator(task, search_bank, space)
    evaluate_batch, higher = evaluator.evaluate_batch, evaluator.higher_is_better
    print(f"evaluation: training with the population engine, seeds {evaluator.seeds}, "
          f"metric val_{evaluator.metric}; trials stored in {search_db}")

  searcher = make_searcher(FLAGS.algorithm, space, prior, FLAGS.seed, pool,
                           **searcher_kwargs()[FLAGS.algorithm])

  def progress(record, best):
    budget = f" ({record.budget_epochs} epochs)" if FLAGS.algorithm == "hyperband" else ""
    print(f"[{record.trial:3d}/{FLAGS.trials}] value {record.value:.4f} best {best:.4f}  "
          f"{record.design.summary()}{budget}")

  print(f"search: {FLAGS.algorithm} from the {FLAGS.prior} prior, {FLAGS.trials} trials, "
        f"batches of {FLAGS.batch_size}")
  try:
    result = run_search(searcher, evaluate_fn, FLAGS.trials, batch_size=FLAGS.batch_size,
                        evaluate_batch=evaluate_batch, higher_is_better=higher,
                        progress=progress)
  finally:
    if search_bank is not None:
      search_bank.close()
  best = result.best_trial
  report = {"task": task, "algorithm": FLAGS.algorithm, "prior": FLAGS.prior,
            "distance": FLAGS.distance, "distances": distances,
            "transfer": {"tasks": list(transfer.weights), "weights": transfer.weights,
                         "rule": transfer.rule, "fallback": transfer.fallback},
            "prior_json": transferred.to_dict(), "search": result.to_dict()}
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  safe = task.replace("/", "_")
  path = os.path.join(FLAGS.out_dir, f"autotransfer_{safe}_{FLAGS.algorithm}_{FLAGS.prior}.json")
  with open(path, "w") as f:
    json.dump(report, f, indent=1, default=_json_default)
    f.write("\n")
  print(f"\nbest design (trial {best.trial}, val {best.value:.4f}"
        + (f", test {best.report:.4f}" if best.report is not None else "") + "):")
  print(json.dumps(best.design.to_dict(), indent=1))
  print(f"wrote {path}")
  return report


def _stable_programs() -> bool:
  """--stable_programs, auto resolved by the engine's policy for this process's devices."""
  chosen = engine.policy_from_flag(FLAGS.stable_programs)
  return engine.stable_programs_by_default(jax.devices()) if chosen is None else chosen


def _training_evaluator(task: str, candidates: bank_lib.Bank,
                        space: spaces.DesignSpace) -> TrainingEvaluator:
  """Real training of `task`'s candidates with the flags' seeds, epochs cap, chunk size and
  engine policies, each result stored in `candidates` (a rerun reads it back instead of
  training again); with --stable_programs the layouts cover `space`."""
  return TrainingEvaluator(_loader(task), task, protocols.parse_seeds(FLAGS.seeds),
                           bank=candidates, eval_every=FLAGS.eval_every,
                           epochs_cap=FLAGS.epochs_cap, max_parallel=FLAGS.max_parallel,
                           progress=study.engine_progress(),
                           layout_cover=list(space) if _stable_programs() else None,
                           **engine_flags.engine_policies())


def _study_config() -> efficiency.StudyConfig:
  return efficiency.StudyConfig(
      algorithms=tuple(FLAGS.algorithms), runs=FLAGS.runs, trials=FLAGS.trials,
      top_k=FLAGS.top_k, min_source_designs=FLAGS.min_source_pool, nearest=FLAGS.nearest,
      full_coverage_sources=FLAGS.full_coverage_sources,
      d_thres=FLAGS.d_thres,
      smoothing=FLAGS.smoothing, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
      searcher_kwargs={a: searcher_kwargs()[a] for a in FLAGS.algorithms})


def _report(result: efficiency.EfficiencyResult) -> efficiency.EfficiencyResult:
  print()
  print(efficiency.format_table(result))
  for path in efficiency.save(result, FLAGS.out_dir):
    print(f"wrote {path}")
  return result


def run_self_transfer_mode(bank, space: spaces.DesignSpace) -> efficiency.EfficiencyResult:
  """--mode=study --distance=self: every task with designs trained on a held seed and
  another (or --tasks), searched over its held seeds with the prior from the others."""
  held = {int(s) for s in FLAGS.held_seeds}
  if FLAGS.tasks:
    tasks = data_lib.expand_task_names(FLAGS.tasks)
  else:
    seeds = {t: set(bank.seed_counts(t)) for t in bank.tasks()}
    tasks = [t for t in seeds if len(seeds[t]) > 1 and held & seeds[t]]
  if not tasks:
    raise ValueError(f"--distance=self: no bank task has trials of one of the seeds "
                     f"{sorted(held)} and of another seed")
  print(f"self-transfer study: {len(tasks)} task(s), searches see seeds {sorted(held)}")
  return _report(efficiency.self_transfer(bank, space, tasks, _study_config(), held))


def run_study_mode(bank, space: spaces.DesignSpace) -> efficiency.EfficiencyResult:
  if FLAGS.distance == "self":
    return run_self_transfer_mode(bank, space)
  all_tasks = bank.tasks()
  distributions = prior_lib.bank_distributions(bank, space, all_tasks, FLAGS.top_k)
  if FLAGS.tasks:
    tasks = data_lib.expand_task_names(FLAGS.tasks)
  else:
    tasks = [t for t in distributions if distributions[t].info["designs_scored"] >= FLAGS.min_pool]
  if not tasks:
    raise ValueError(f"no bank task has {FLAGS.min_pool} designs in space {space.name!r}")
  print(f"study: {len(tasks)} held-out task(s), {len(distributions)} bank task(s) with designs")
  if FLAGS.distance == "insample":
    return _report(efficiency.in_sample_transfer(bank, space, tasks, _study_config(),
                                                 distributions=distributions))
  similarity = None
  if FLAGS.distance == "embedding":
    similarity = distances_lib.anchor_similarity(bank, _anchors())

  def distances_of(task):
    return _distances_for(bank, space, task, [t for t in distributions if t != task],
                          similarity)

  config = _study_config()
  trains = (FLAGS.evaluator or "bank") == "train"
  # Trained candidates go to a bank of their own: the searches are seeded, so a rerun (e.g.
  # the next job of a time-limited series) replays the same suggestions and reads back what
  # is stored, and a design that several runs propose is trained once. The replay needs the
  # same priors, so the first run's distances are kept beside that bank.
  search_db = FLAGS.search_db or os.path.join(FLAGS.out_dir, "study.sqlite")
  if trains:
    distances = efficiency.pinned_distances(
        os.path.splitext(search_db)[0] + ".distances.json", FLAGS.distance, tasks,
        distances_of)
  else:
    distances = {task: distances_of(task) for task in tasks}
  with (bank_lib.Bank(search_db) if trains else contextlib.nullcontext()) as search_bank:
    def training_evaluator(task):
      evaluator = _training_evaluator(task, search_bank, space)
      return None, evaluator.evaluate_batch, None, evaluator.higher_is_better

    if trains:
      print(f"evaluation: training with the population engine (each round of the "
            f"{len(config.priors)} x {config.runs} searches of an algorithm as one population), "
            f"seeds {FLAGS.seeds}; trials stored in {search_db}")
    return _report(efficiency.search_efficiency(bank, space, tasks, distances, config,
                                                 training_evaluator if trains else None,
                                                 distributions=distributions))


def main(argv):
  del argv
  task_flags.use_compilation_cache(FLAGS.compilation_cache_dir)  # config only, no device
  space = spaces.resolve_space(FLAGS.space, FLAGS.fix)
  with bank_lib.Bank(FLAGS.db) as bank:
    if FLAGS.mode == "study":
      run_study_mode(bank, space)
    else:
      run_search_mode(bank, space)


if __name__ == "__main__":
  app.run(main)
