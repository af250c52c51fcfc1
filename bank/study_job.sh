#!/usr/bin/env bash
# One time-limited batch job of the real-training study: bank/continue_study.sh between a
# state folder that outlives the job and an output folder the job hands back. Run from the
# checkout's root, e.g. as consecutive jobs on one GPU:
#
#   STATE=/scratch/study OUT=$JOB_OUTPUT LIMIT=480 DATA_DIR=../shared/datasets \
#       bash bank/study_job.sh DHFR smallworld/clustering/onehot
#
# STATE (kept between jobs): the newest copy of the study's bank and the persistent
# compilation cache, so a job after the first compiles only programs new to it. OUT: the
# job's bank (merge it into the checkout's with `python -m experiments.bank --merge`, rows
# already there win) and its logs. LIMIT, DATA_DIR, EXTRA: as for continue_study.sh.
set -u
[ $# -ge 1 ] || { echo "usage: STATE=... OUT=... bash bank/study_job.sh TASK [TASK ...]" >&2; exit 2; }
: "${STATE:?set STATE to a folder kept between jobs}" "${OUT:?set OUT to the output folder of the job}"
DB=bank/study_train.sqlite
mkdir -p "$STATE/compilation_cache" "$OUT"
if [ -f "$STATE/study_train.sqlite" ]; then  # an earlier job's trials the checkout lacks
  python3 -m experiments.bank --db="$DB" --merge="$STATE/study_train.sqlite" || exit 1
fi
EXTRA="--compilation_cache_dir=$STATE/compilation_cache ${EXTRA:-}" \
    bash bank/continue_study.sh "$@"
# SQLite's backup API copies the WAL's rows too (cp would not), into a temporary file first
# so that a job killed here leaves the last good copy in STATE.
python3 - "$DB" "$STATE/study_train.sqlite" "$OUT/study_train.sqlite" <<'PY' || exit 1
import os, sqlite3, sys
source = sqlite3.connect(sys.argv[1])
for path in sys.argv[2:]:
  with sqlite3.connect(path + ".tmp") as copy:
    source.backup(copy)
  copy.close()
  os.replace(path + ".tmp", path)
print("trials", dict(source.execute("select task, count(*) from trials group by task")))
PY
tar czf "$OUT/logs.tgz" results/study_train
