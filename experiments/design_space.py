r"""A GraphGym design-space study: controlled random search, the task-model bank, rank plots.

For each studied dimension, --num_designs base designs are sampled from --space with that
dimension pinned and trained with each of its choices on every task in --tasks, for every seed.
Every trial goes into the bank (--db) as soon as its population chunk finishes, and the chunk
in flight saves its state every --checkpoint_every epochs (orbax, under --checkpoint_dir);
re-running the same command skips finished trials and continues the in-flight chunk from its
last save, so an interrupted study loses at most --checkpoint_every epochs of one chunk. At the
end the choices of each dimension are ranked as in GraphGym (analysis.rank_table) and the rank
tables are printed and plotted into --out_dir. Compiled programs are kept in a persistent XLA
cache (--compilation_cache_dir), so a rerun or a resumed run does not compile again.

The defaults are a quick demonstration sized for a 2-core laptop CPU, under 10 minutes (a
32-graph generated task, 3 base designs x 4 dimensions = 33 designs, one seed, epochs capped at
30):

  python -m experiments.design_space

The whole controlled random search of GraphGym's headline dimensions on several task kinds (one
invocation; each task's trials go into the same bank):

  python -m experiments.design_space --data_dir=../shared/datasets \
      --tasks=smallworld/clustering/onehot,scalefree/pagerank/onehot,cora,citeseer,MUTAG,PROTEINS

A fuller study (GraphGym's seeds, full epochs, two shipped synthetic tasks):

  python -m experiments.design_space --data_dir=../shared/datasets --num_designs=16 \
      --tasks=smallworld/clustering/pagerank,scalefree/pagerank/onehot --seeds=1,2,3 \
      --epochs_override=0 --out_dir=results/round1

With --workers=N > 1 and several tasks, the tasks are spread over N worker processes
(gnnjax.design.workers): one child per task re-runs this module with --tasks=<task> --workers=1
and the other flags as given, worker k pinned to GPU --worker_devices[k % #devices] (default:
every GPU visible; empty: no pinning, e.g. on a CPU host) with an equal share of its memory, so
the tasks compile and train side by side instead of one after another. Tasks whose programs
have one shape (`gnnjax.data.program_group`: GraphGym's 20 synthetic tasks form 4 groups, by
graph family and node or graph label) run one after another in one worker where that leaves
no worker idle: the later ones load the first one's programs from the compilation cache
instead of compiling them at the same time. All children write into
the same bank (--db, SQLite in WAL mode); each has its own out_dir (<out_dir>/tasks/<task>) and
population checkpoints under it, and its output lines are streamed prefixed with [<task>]. The
parent never initialises JAX devices before they end; then it prints a table of (task, return
code, seconds) and, when every child succeeded, analyses all tasks in-process exactly as one
process would (every trial is in the bank, nothing is trained). When some failed, it prints
their output tails, analyses the tasks whose trials are all in the bank (if any; the rank tables
then cover only those) and exits with status 1; re-running the same command trains only what is
missing. On a host with two GPUs:

  python -m experiments.design_space --data_dir=../shared/datasets --workers=2 \
      --tasks=smallworld/clustering/onehot,scalefree/pagerank/onehot,cora,citeseer,MUTAG,PROTEINS

Several hosts (--distributed): run the same command on every host (one process per host;
jax.distributed detects SLURM, Open MPI or TPU pods, or give --coordinator_address,
--num_processes and --process_id). Host k trains every n-th (task, design) pair of the plan on its
local devices into its own bank shard (<db>.host<k>of<n>.sqlite); host 0 waits for the others'
markers (<out_dir>/hosts/), merges the shards into --db (rows already there are never replaced)
and analyses. --out_dir and --db must be on a file system all hosts see:

  srun python -m experiments.design_space --distributed --data_dir=... --tasks=... \
      --out_dir=$SCRATCH/study
"""

from __future__ import annotations

import functools
import os
import sys

from absl import app, flags

from experiments import engine_flags, task_flags
from gnnjax import data as data_lib
from gnnjax.design import analysis
from gnnjax.design import bank as bank_lib
from gnnjax.design import checkpoints
from gnnjax.design import hosts as hosts_lib
from gnnjax.design import spaces, study
from gnnjax.design import workers as workers_lib
from gnnjax.training import protocols

FLAGS = flags.FLAGS
flags.DEFINE_string("space", "graphgym_round1", "Design space: a built-in name "
                    f"({', '.join(sorted(spaces.SPACES))}) or a path to a space JSON file.")
flags.DEFINE_list("fix", [], "Pin dimensions of --space to one value, as field=value pairs "
                  "(e.g. batch_size=32: one program per task instead of one per batch size). "
                  "Values are JSON (true, 0.01, \"relu\") or plain strings, and need not be "
                  "among the dimension's choices (epochs=50).")
flags.DEFINE_list("tasks", [data_lib.DEFAULT_DATASET], "Comma-separated dataset names "
                  "(see gnnjax.data) or @groups of them (@synthetic, @tu, @planetoid, "
                  "@moleculenet_classification, @autotransfer_bank: all 35 bank tasks). The "
                  "default is generated on the fly and needs no files.")
task_flags.check_task_groups()
flags.DEFINE_enum("plan", "controlled", list(study.PLANS), "controlled: GraphGym's controlled "
                  "random search over --dims, ranked; random: --num_designs designs drawn "
                  "uniformly from --space for every task (a task-model bank's pool for "
                  "experiments.autotransfer; --dims unused, no rank tables).")
flags.DEFINE_integer("num_designs", 3, "controlled: base designs (setups) per studied dimension "
                     "and task (GraphGym used about 3 per task over 32 tasks, 96 per dimension); "
                     "random: designs per task. Both keep the earlier designs of a smaller "
                     "--num_designs as a prefix, so a bank grows without retraining.")
flags.DEFINE_list("dims", ["batch_norm", "activation", "aggregation", "stage_type"],
                  "Dimensions to study (default: 4 of round 1's 12, 2+3+3+3 = 11 configs per "
                  "base design).")
flags.DEFINE_string("seeds", "1", "Training seeds: a comma list (1,2,3, GraphGym's) or a range "
                    "(1-3). Default: one seed, for speed.")
flags.DEFINE_integer("epochs_override", 30, "Cap every design's epochs at this many (the "
                     "space's are 100-400); 0 keeps the space's epochs. Must be 0 when "
                     "studying 'epochs'.")
flags.DEFINE_integer("eval_every", 20, "Evaluate every k epochs (plus the first and last), as "
                     "GraphGym.")
flags.DEFINE_integer("num_graphs", 32, "Graphs per generated/ synthetic task (GraphGym: 256; "
                     "tasks read from files keep theirs).")
flags.DEFINE_string("out_dir", "results/design_space", "Where the bank (unless --db), the plan, "
                    "the rank tables and the rank plots go.")
flags.DEFINE_string("db", None, "The task-model bank (default: <out_dir>/bank.sqlite).")
flags.DEFINE_string("data_dir", None, "Local data root laid out like shared/datasets "
                    "(default: $GNNJAX_DATA, then the download cache).")
flags.DEFINE_integer("max_parallel", None, "Most designs the population engine trains at once "
                     "(default: the engine's choice).")
flags.DEFINE_integer("population_size", study.DEFAULT_POPULATION_SIZE, "Designs per trainer "
                     "call; an interruption loses at most one call's trials.")
flags.DEFINE_enum("trainer", "population", ["population", "sequential"],
                  "population: engine.train_population (batched designs); sequential: "
                  "reference.train_design one trial at a time.")
flags.DEFINE_bool("distributed", False, "Several hosts on one study: call "
                  "jax.distributed.initialize (cluster settings detected, or the three flags "
                  "below); host k trains every n-th (task, design) into its own bank shard, and "
                  "host 0 merges the shards into --db and analyses (gnnjax.design.hosts). "
                  "--out_dir and --db must be on a file system every host sees.")
flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "--distributed: number of processes (hosts).")
flags.DEFINE_integer("process_id", None, "--distributed: this process's index.")
flags.DEFINE_float("host_timeout", 24 * 3600.0, "--distributed: seconds host 0 waits for the "
                   "others to finish.")
flags.DEFINE_integer("plan_seed", 0, "Seed of the controlled random search plan.")
flags.DEFINE_integer("checkpoint_every", 10, "Save the in-flight population chunk every this "
                     "many epochs (0: no population checkpoints; finished trials are in the bank "
                     "either way).")
flags.DEFINE_string("compilation_cache_dir", "", task_flags.COMPILATION_CACHE_HELP)
flags.DEFINE_string("checkpoint_dir", None, "Where population checkpoints go (default: "
                    "<out_dir>/checkpoints, removed when the study is complete; a given folder "
                    "is left as it is, minus the chunks that finished).")
flags.DEFINE_integer("workers", 1, "Worker processes: with more than 1 and several --tasks, "
                     "one child process per task, at most this many at once, all writing into "
                     "the same bank; 1 runs every task in this process.")
flags.DEFINE_list("worker_devices", None, "GPU ids the workers are pinned to, worker k to "
                  "entry k % len (default: every GPU visible, from CUDA_VISIBLE_DEVICES or "
                  "nvidia-smi; empty: no pinning).")
# Set by the parent for its children, or a task's flag of its own: never forwarded as is.
_PER_CHILD_FLAGS = ("tasks", "workers", "worker_devices", "out_dir", "db", "checkpoint_dir")


def _task_loader(name: str):
  # Deferred: a resumed study whose trials are all in the bank loads no data.
  return functools.partial(data_lib.load_dataset, name, FLAGS.data_dir,
                           num_graphs=FLAGS.num_graphs)


def checkpoint_dir() -> str | None:
  if not FLAGS.checkpoint_every:
    return None
  return FLAGS.checkpoint_dir or os.path.join(FLAGS.out_dir, "checkpoints")


def _trainer_and_kwargs():
  if FLAGS.trainer == "sequential":
    return study.sequential_trainer, {"eval_every": FLAGS.eval_every}
  kwargs = {"eval_every": FLAGS.eval_every, "max_parallel": FLAGS.max_parallel,
            "progress": study.engine_progress(),
            **engine_flags.engine_policies()}
  if checkpoint_dir():
    kwargs.update(checkpoint_dir=checkpoint_dir(), checkpoint_every=FLAGS.checkpoint_every)
  return None, kwargs


def run_and_report(space: spaces.DesignSpace, db: str, task_names: list[str]) -> None:
  """Trains what the bank lacks of `task_names` in this process, then prints the rank tables
  and writes the plan, tables and plots into --out_dir."""
  trainer, trainer_kwargs = _trainer_and_kwargs()
  tasks = {name: _task_loader(name) for name in task_names}
  with bank_lib.Bank(db) as bank:
    result = study.run_study(
        bank, space, tasks, FLAGS.dims, FLAGS.num_designs, protocols.parse_seeds(FLAGS.seeds),
        plan_seed=FLAGS.plan_seed, max_epochs=FLAGS.epochs_override or None, trainer=trainer,
        population_size=FLAGS.population_size, search=FLAGS.plan, **trainer_kwargs)
    designs = study.plan_designs(result.plan)
    complete = not bank.missing([key for task in tasks for key in study.trial_keys(
        task, designs, protocols.parse_seeds(FLAGS.seeds))])
  if complete and not FLAGS.checkpoint_dir:  # the study's own folder; a given one may be shared
    checkpoints.remove_all(checkpoint_dir())
  for table in result.tables.values():
    print()
    print(analysis.format_table(table))
  if FLAGS.plan == "random":
    print()
    print(study.format_pools(result.results))
  print()
  for path in study.save_study(result, FLAGS.out_dir):
    print(f"wrote {path}")
  print(f"bank: {db} (query it with: python -m experiments.bank --db={db})")


# ----------------------------------------------------------------------------------------------
# Several hosts (--distributed).


def run_on_hosts(space: spaces.DesignSpace, db: str, task_names: list[str]) -> int:
  """This host's share of the study into its shard; on host 0, then: wait, merge, analyse."""
  index, count = hosts_lib.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                      FLAGS.process_id)
  if count == 1:
    run_and_report(space, db, task_names)
    return 0
  markers = os.path.join(FLAGS.out_dir, "hosts")
  hosts_lib.clear_marks(markers, index, count)
  shard = hosts_lib.shard_path(db, index, count)
  trainer, trainer_kwargs = _trainer_and_kwargs()
  if "checkpoint_dir" in trainer_kwargs:  # hosts never share a checkpoint folder
    trainer_kwargs["checkpoint_dir"] = os.path.join(trainer_kwargs["checkpoint_dir"],
                                                    f"host{index}of{count}")
  print(f"host {index} of {count}: training its share into {shard}", flush=True)
  with bank_lib.Bank(shard) as bank:
    study.run_study(
        bank, space, {name: _task_loader(name) for name in task_names}, FLAGS.dims,
        FLAGS.num_designs, protocols.parse_seeds(FLAGS.seeds), plan_seed=FLAGS.plan_seed,
        max_epochs=FLAGS.epochs_override or None, trainer=trainer,
        population_size=FLAGS.population_size, host=(index, count), analyze=False,
        search=FLAGS.plan, **trainer_kwargs)
  hosts_lib.mark_done(markers, index, count)
  if index != 0:
    print(f"host {index} of {count} done; host 0 merges the shards and analyses")
    return 0
  hosts_lib.wait_for_hosts(markers, count, FLAGS.host_timeout,
                           print_fn=functools.partial(print, flush=True))
  with bank_lib.Bank(db) as bank:
    for k in range(count):
      copied = bank.merge_from(hosts_lib.shard_path(db, k, count))
      print(f"merged {copied} trial(s) of host {k} into {db}")
  run_and_report(space, db, task_names)  # every trial is in the bank: analysis only
  return 0


# ----------------------------------------------------------------------------------------------
# Several worker processes (--workers > 1).


def worker_argv(task: str, out_dir: str, db: str) -> list[str]:
  """The command of the worker running `task` alone: this module with --tasks=task,
  --workers=1, out_dir (its checkpoints go under it unless --checkpoint_dir), the shared db and
  every other flag of this module and of `engine_flags` at its current value."""
  module = FLAGS.find_module_defining_flag("tasks")  # __name__, or sys.argv[0] under -m
  forwarded = (workers_lib.flag_arguments(FLAGS, module, exclude=_PER_CHILD_FLAGS)
               + workers_lib.flag_arguments(FLAGS, engine_flags.__name__))
  if __spec__ is not None and __spec__.name:
    command = [sys.executable, "-m", __spec__.name]
  else:  # run as a script
    command = [sys.executable, os.path.abspath(__file__)]
  own = [f"--tasks={task}", "--workers=1", f"--out_dir={out_dir}", f"--db={db}"]
  if FLAGS.checkpoint_dir:
    own.append("--checkpoint_dir=" + os.path.join(os.path.abspath(FLAGS.checkpoint_dir),
                                                  os.path.basename(out_dir)))
  return command + own + forwarded


def the_plan(space: spaces.DesignSpace) -> list[study.PlanRow]:
  """The plan the flags describe (the same in every worker and host)."""
  return study.make_plan(space, FLAGS.plan, FLAGS.dims, FLAGS.num_designs, FLAGS.plan_seed,
                         FLAGS.epochs_override or None)


def _complete_tasks(space: spaces.DesignSpace, db: str, task_names: list[str]) -> list[str]:
  """The tasks whose planned trials are all in the bank (reads the bank; trains nothing)."""
  plan = the_plan(space)
  keys = functools.partial(study.trial_keys, designs=study.plan_designs(plan),
                           seeds=protocols.parse_seeds(FLAGS.seeds))
  with bank_lib.Bank(db) as bank:
    return [task for task in task_names if not bank.missing(keys(task))]


def run_workers(space: spaces.DesignSpace, db: str, task_names: list[str]) -> int:
  """Runs each task in its own worker process, then analyses all tasks here; the exit status.

  Nothing here initialises JAX devices before the workers end: they need the GPUs. When some
  worker failed, its output tail is printed, the tasks complete in the bank are analysed (if
  any) and the status is 1.
  """
  # Fail here, once, on a bad --dims / --seeds / space rather than in every worker.
  the_plan(space)
  protocols.parse_seeds(FLAGS.seeds)
  db, out_dir = os.path.abspath(db), os.path.abspath(FLAGS.out_dir)
  devices = (workers_lib.accelerator_ids() if FLAGS.worker_devices is None
             else FLAGS.worker_devices)
  jobs = [workers_lib.Job(task, worker_argv(task, os.path.join(out_dir, "tasks", folder), db),
                          group=data_lib.program_group(task))
          for task, folder in zip(task_names, workers_lib.folder_names(task_names))]
  print(f"{len(jobs)} tasks over {min(FLAGS.workers, len(jobs))} worker processes "
        f"(devices: {','.join(devices) if devices else 'not pinned'}); bank: {db}", flush=True)
  results = workers_lib.run_jobs(jobs, FLAGS.workers, devices,
                                 print_fn=functools.partial(print, flush=True))
  width = max(len("task"), *(len(r.name) for r in results))
  print(f"\n{'task':<{width}}  {'return code':>11}  {'seconds':>8}")
  for r in results:
    print(f"{r.name:<{width}}  {r.returncode:>11}  {r.seconds:>8.1f}")
  failed = workers_lib.print_failures(results)
  if not failed:
    print()
    run_and_report(space, db, task_names)
    return 0
  complete = _complete_tasks(space, db, task_names)
  if complete:
    print(f"\nanalysing the {len(complete)} of {len(task_names)} tasks complete in the bank: "
          f"{', '.join(complete)}")
    run_and_report(space, db, complete)
  print(f"\n{len(failed)} of {len(jobs)} task worker(s) failed: "
        f"{', '.join(r.name for r in failed)}; rerun the same command to train what is missing",
        file=sys.stderr)
  return 1


def main(argv):
  del argv
  if FLAGS.workers < 1:
    raise app.UsageError(f"--workers must be >= 1, got {FLAGS.workers}")
  task_flags.use_compilation_cache(FLAGS.compilation_cache_dir)  # config only, no device
  space = spaces.resolve_space(FLAGS.space, FLAGS.fix)
  db = FLAGS.db or bank_lib.default_path(FLAGS.out_dir)
  task_names = data_lib.expand_task_names(FLAGS.tasks)
  if FLAGS.distributed:
    return run_on_hosts(space, db, task_names)
  if FLAGS.workers > 1 and len(task_names) > 1:
    return run_workers(space, db, task_names)
  run_and_report(space, db, task_names)
  return 0


if __name__ == "__main__":
  app.run(main)
