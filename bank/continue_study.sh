#!/usr/bin/env bash
# Continues the real-training study (bank/README.md, "The real-training study's candidates"):
# one process per held-out task given, all at once (two per GPU paid off, three did not),
# each resuming from bank/study_train.sqlite and its pinned distances. Finished trials are
# rows in the bank, so a process stopped by LIMIT (or a job's time limit) loses only its
# round in flight. Run from the checkout's root:
#
#   DATA_DIR=../shared/datasets LIMIT=540 bash bank/continue_study.sh MUTAG citeseer
#
# DATA_DIR: the data root (default ../shared/datasets); LIMIT: seconds per process (default:
# none); XLA_PYTHON_CLIENT_MEM_FRACTION: set it to share the GPUs yourself (by default each
# of several processes is pinned as below); EXTRA: more flags for
# experiments.autotransfer (e.g. engine policies); logs go to results/study_train/<task>.log
# and each task's table and plot to results/study_train/<task>/.
set -u
[ $# -ge 1 ] || { echo "usage: bash bank/continue_study.sh TASK [TASK ...]" >&2; exit 2; }
DATA_DIR=${DATA_DIR:-../shared/datasets}
# Several processes at once are pinned as `design_space --workers` pins its workers
# (gnnjax.design.workers.slot_environments): one GPU each where the host has several, and an
# equal share of 0.9 of its memory. With JAX's default 75% each, the second process on a GPU
# failed to start cuBLASLt ("BlasLt is unavailable", 2026-12-05); the engine packs its
# populations into the share it is given (memory_stats' bytes_limit).
slot_envs() {  # a line of NAME=value words per process of $1 (empty: one process, set share)
  if [ "$1" -gt 1 ] && [ -z "${XLA_PYTHON_CLIENT_MEM_FRACTION:-}" ]; then
    python3 -c "from gnnjax.design import workers
for env in workers.slot_environments($1, workers.accelerator_ids()):
  print(' '.join(f'{name}={value}' for name, value in env.items()))"
  else
    for _ in $(seq "$1"); do echo; done
  fi
}
mkdir -p results/study_train
counts() {
  python3 -c "import sqlite3; c = sqlite3.connect('bank/study_train.sqlite'); print('trials', \
dict(c.execute('select task, count(*) from trials group by task').fetchall()))"
}
counts
mapfile -t SLOT_ENVS < <(slot_envs $#)  # one Python start for all processes
slot=0
for task in "$@"; do
  safe=${task//\//_}
  env ${SLOT_ENVS[$slot]} ${LIMIT:+timeout $LIMIT} python3 -m experiments.autotransfer --mode=study \
      --db=bank/bank.sqlite --features=bank/features.json --data_dir="$DATA_DIR" \
      --space=autotransfer --fix=epochs=50 --anchor_epochs=50 --tasks="$task" \
      --evaluator=train --algorithms=tpe --runs=10 --trials=30 --eval_every=10 \
      --search_db=bank/study_train.sqlite --out_dir="results/study_train/$safe" ${EXTRA:-} \
      > "results/study_train/$safe.log" 2>&1 &
  slot=$((slot + 1))
done
wait
for task in "$@"; do
  safe=${task//\//_}
  echo "== $task"
  grep -v "compiled [0-9]* programs of" "results/study_train/$safe.log" | tail -6
done
counts
