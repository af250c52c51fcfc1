"""A design-space study killed mid-way (SIGKILL) and run again ends as if it had never stopped.

The CLI (`python -m experiments.design_space`) trains two designs of one superset program as
two chunks of one member (--max_parallel=1): the first chunk's trial is committed to the bank,
then the second chunk saves a population checkpoint every few epochs. The test kills the
process once both exist, checks the bank file, reruns the same command and compares the bank
with an uninterrupted run of the same command: same trials, same histories, none twice.
The three processes share a persistent XLA compilation cache, so only the first compiles.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 200  # long enough that the second chunk is still running when the test sees a save
SPACE = {"name": "tiny", "dims": {"batch_norm": [True, False]},
         "fixed": {"layers_pre_mp": 1, "layers_mp": 1, "layers_post_mp": 1, "dim_inner": 8,
                   "stage_type": "skipsum", "epochs": EPOCHS, "batch_size": 16,
                   "learning_rate": 0.01}}


def _command(out_dir: str, space_path: str) -> list[str]:
  return [sys.executable, "-m", "experiments.design_space", f"--space={space_path}",
          "--tasks=generated/smallworld/clustering/pagerank", "--num_graphs=8",
          "--dims=batch_norm", "--num_designs=1", "--seeds=1", "--epochs_override=0",
          "--eval_every=50", "--max_parallel=1", "--checkpoint_every=5",
          f"--out_dir={out_dir}"]


def _env(cache_dir: str) -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _finished(db: str) -> set[str]:
  """Design ids of the trials in the bank (read-only, beside the writer)."""
  if not os.path.exists(db):
    return set()
  try:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
      return {row[0] for row in connection.execute("SELECT design_id FROM trials")}
  except sqlite3.OperationalError:  # the schema is not there yet
    return set()


def _saved_epochs(checkpoint_dir: str, finished: set[str]) -> list[int]:
  """Complete orbax steps (epochs done) of the chunk checkpoints of unfinished trials (a
  finished chunk's folder lives on until the bank has its results)."""
  steps = []
  if os.path.isdir(checkpoint_dir):
    for chunk in os.listdir(checkpoint_dir):
      try:
        with open(os.path.join(checkpoint_dir, chunk, "manifest.json")) as f:
          members = {design_id for design_id, _, _ in json.load(f)["members"]}
        saved = os.listdir(os.path.join(checkpoint_dir, chunk, "state"))
      except (OSError, ValueError):
        continue
      if not members & finished:
        steps += [int(s) for s in saved if s.isdigit()]
  return steps


def _bank_rows(db: str) -> tuple[dict, list]:
  with sqlite3.connect(db) as connection:
    trials = {(t, d, s): (status, json.loads(final), json.loads(best), num_params)
              for t, d, s, status, final, best, num_params in connection.execute(
                  "SELECT task, design_id, seed, status, final_json, best_json, num_params "
                  "FROM trials")}
    evals = connection.execute("SELECT task, design_id, seed, epoch, split, metric, value "
                               "FROM evals ORDER BY 1, 2, 3, 4, 5, 6").fetchall()
  return trials, evals


def _assert_close(got, want, path=""):
  if isinstance(want, dict):
    assert got.keys() == want.keys(), path
    for key in want:
      _assert_close(got[key], want[key], f"{path}/{key}")
  else:
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6), path


def test_killed_study_resumes_from_its_population_checkpoint(tmp_path):
  space_path = str(tmp_path / "space.json")
  with open(space_path, "w") as f:
    json.dump(SPACE, f)
  env = _env(str(tmp_path / "xla_cache"))

  # An uninterrupted run (also fills the compilation cache).
  plain = str(tmp_path / "plain")
  done = subprocess.run(_command(plain, space_path), env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=240)
  assert done.returncode == 0, done.stderr[-3000:]
  want_trials, want_evals = _bank_rows(os.path.join(plain, "bank.sqlite"))
  assert len(want_trials) == 2
  assert not os.path.exists(os.path.join(plain, "checkpoints"))  # removed: study complete

  # The same study, killed once the first trial is committed and the second has a save.
  out = str(tmp_path / "killed")
  db, checkpoint_dir = os.path.join(out, "bank.sqlite"), os.path.join(out, "checkpoints")
  log = open(tmp_path / "killed.log", "w")  # not a pipe: nobody reads it while it runs
  process = subprocess.Popen(_command(out, space_path), env=env, cwd=REPO, stdout=log,
                             stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 180
  try:
    while not (len(_finished(db)) == 1 and _saved_epochs(checkpoint_dir, _finished(db))):
      assert process.poll() is None, "the run ended before it could be killed mid-way"
      assert time.monotonic() < deadline, "no checkpoint appeared in time"
      time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
  finally:
    process.kill()
    process.wait()
    log.close()
  assert process.returncode == -signal.SIGKILL
  saved = max(_saved_epochs(checkpoint_dir, _finished(db)))
  assert 0 < saved < EPOCHS

  # The bank survived the kill: intact, with the finished trial and nothing of the other.
  with sqlite3.connect(db) as connection:
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = connection.execute("SELECT task, design_id, seed, status FROM trials").fetchall()
  assert len(rows) == 1 and rows[0][3] == "ok" and rows[0][:3] in want_trials

  # Rerun: the finished trial is skipped, the second continues from its checkpoint.
  rerun = subprocess.run(_command(out, space_path), env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=240)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "1 already in" in rerun.stdout
  resumed = [line for line in rerun.stdout.splitlines() if "resumed from its checkpoint" in line]
  assert len(resumed) == 1 and resumed[0].endswith(f"at epoch {saved}"), rerun.stdout[-2000:]
  assert not os.path.exists(checkpoint_dir)

  got_trials, got_evals = _bank_rows(db)
  assert got_trials.keys() == want_trials.keys()  # each trial once (the key is the primary key)
  for key, (status, final, best, num_params) in want_trials.items():
    got = got_trials[key]
    assert (got[0], got[3]) == (status, num_params)
    _assert_close(got[1], final)
    _assert_close(got[2], best)
  assert [e[:6] for e in got_evals] == [e[:6] for e in want_evals]  # same history rows, once
  for got, want in zip(got_evals, want_evals):
    assert got[6] == pytest.approx(want[6], rel=1e-6, abs=1e-6), got[:6]


def test_find_resumable_matches_members_task_and_settings(tmp_path):
  import dataclasses
  import numpy as np
  from gnnjax.design import checkpoints

  @dataclasses.dataclass(frozen=True)
  class Program:
    layout: tuple = (1, 2)
    steps_per_epoch: int = 3

  design = {"dim_inner": 8, "epochs": 10}
  common = dict(task="t", fingerprint="f", eval_every=5, program=Program(), size=2,
                num_devices=1)
  saved = checkpoints.ChunkCheckpoint(tmp_path, checkpoints.manifest(
      members=[("a", 1, design), ("b", 1, design)], **common))
  saved.save(4, {"w": np.arange(3.0)}, {"loss": float("nan"), "history": [{"x": 1.0}]})
  unsaved = checkpoints.ChunkCheckpoint(tmp_path, checkpoints.manifest(
      members=[("c", 1, design)], **common))
  os.makedirs(unsaved.path)  # a folder with no complete save is not resumable
  find = lambda available, **kw: [
      [m[0] for m in c.description["members"]] for c in checkpoints.find_resumable(
          tmp_path, **{"task": "t", "fingerprint": "f", "eval_every": 5, "num_devices": 1,
                       **kw, "available": available})]
  everything = {(k, 1): design for k in "abcd"}
  assert find(everything) == [["a", "b"]]
  assert find({("a", 1): design}) == []  # 'b' is done (or not asked for)
  assert find({**everything, ("a", 1): {**design, "dim_inner": 9}}) == []
  for mismatch in ({"task": "u"}, {"fingerprint": "g"}, {"eval_every": 4}, {"num_devices": 2}):
    assert find(everything, **mismatch) == []
  arrays, metadata = checkpoints.find_resumable(
      tmp_path, task="t", fingerprint="f", eval_every=5, num_devices=1,
      available=everything)[0].restore({"w": np.zeros(3)})
  np.testing.assert_array_equal(arrays["w"], np.arange(3.0))
  assert np.isnan(metadata["loss"]) and metadata["history"] == [{"x": 1.0}]
  checkpoints.remove_all(tmp_path)
  assert not os.path.exists(tmp_path)
