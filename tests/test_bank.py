"""Tests for the task-model bank, resumable trial runs and the bank / design_space CLIs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import threading

import numpy as np
import pytest

from gnnjax.design import bank as bank_lib
from gnnjax.design import spaces, study
from gnnjax.design.design import Design
from gnnjax.design.trial import TrialKey, TrialResult

REPO = pathlib.Path(__file__).resolve().parents[1]
TASK = "generated/smallworld/clustering/pagerank"


def fake_accuracy(design: Design, seed: int) -> float:
  """A made-up, deterministic accuracy: BN and skip connections help, as in GraphGym."""
  value = 0.5 + 0.2 * design.batch_norm + 0.05 * (design.stage_type != "stack")
  return round(value + 0.001 * seed + 0.0001 * design.layers_mp, 4)


def fake_result(design: Design, seed: int, task: str = TASK, status: str = "ok") -> TrialResult:
  accuracy = fake_accuracy(design, seed)
  history = [{"epoch": 0, "epoch_loss": 1.5, "train_loss": 1.4, "train_accuracy": 0.3,
              "val_loss": 1.45, "val_accuracy": 0.28},
             {"epoch": design.epochs - 1, "epoch_loss": 0.5, "train_loss": 0.4,
              "train_accuracy": accuracy + 0.1, "val_loss": 0.6, "val_accuracy": accuracy}]
  if status == "diverged":
    history[-1]["val_loss"] = math.nan
  final = {"train": {"loss": 0.4, "accuracy": accuracy + 0.1},
           "val": {"loss": history[-1]["val_loss"], "accuracy": accuracy}}
  return TrialResult(key=TrialKey(task, design.design_id, seed),
                     design=design.replace(dim_inner=design.dim_inner or 64).to_dict(),
                     num_params=1000 + design.layers_mp, status=status, history=history,
                     final=final, best=final,
                     diverged_epoch=design.epochs - 1 if status == "diverged" else None,
                     seconds=0.25)


class FakeTrainer:
  """Records every (design, seed) it trains; optionally raises after `fail_after` results."""

  def __init__(self, fail_after: int | None = None, as_list: bool = False):
    self.fail_after = fail_after
    self.as_list = as_list
    self.trained: list[tuple[str, int]] = []
    self.calls = 0
    self.population_sizes: list[int] = []

  def __call__(self, designs, dataset, seeds, **kwargs):
    self.calls += 1
    self.population_sizes.append(len(designs))
    generator = self._generate(designs, seeds, dataset)
    return list(generator) if self.as_list else generator

  def _generate(self, designs, seeds, dataset):
    for design in designs:
      for seed in seeds:
        if self.fail_after is not None and len(self.trained) >= self.fail_after:
          raise RuntimeError("simulated crash")
        self.trained.append((design.design_id, seed))
        # Trainers may name the task after the dataset; the study's name must win.
        yield fake_result(design, seed, task=f"dataset:{dataset}")


def designs_sample(n: int = 5) -> list[Design]:
  return spaces.GRAPHGYM_ROUND1.sample(0, n)


# ----------------------------------------------------------------------------------------------
# Bank.


def test_round_trip_and_wal(tmp_path):
  design = designs_sample(1)[0]
  result = fake_result(design, 2)
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    assert bank.journal_mode == "wal"
    bank.add(result)
    got = bank.get(result.key)
    assert bank.has(result.key) and len(bank) == 1
    assert bank.get(TrialKey(TASK, design.design_id, 99)) is None
  assert got == result
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    curve = bank.curves(TASK, "val", "accuracy")
  assert curve == {result.key: [(0, 0.28), (design.epochs - 1, result.final["val"]["accuracy"])]}
  # Another connection sees the committed row and the WAL mode is stored in the file.
  connection = sqlite3.connect(tmp_path / "bank.sqlite")
  assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
  rows = connection.execute("SELECT split, metric, value FROM evals WHERE epoch = 0 "
                            "ORDER BY split, metric").fetchall()
  assert rows == [("", "epoch_loss", 1.5), ("train", "accuracy", 0.3), ("train", "loss", 1.4),
                  ("val", "accuracy", 0.28), ("val", "loss", 1.45)]
  connection.close()


def test_reading_a_bank_leaves_its_file_unchanged(tmp_path):
  """Opening and querying an existing bank writes nothing (a shipped bank stays as committed),
  and a bank of a newer schema is refused."""
  path = tmp_path / "bank.sqlite"
  design = designs_sample(1)[0]
  with bank_lib.Bank(path) as bank:
    bank.add(fake_result(design, 1))
  connection = sqlite3.connect(path)
  connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
  connection.close()
  before = path.read_bytes()
  with bank_lib.Bank(path) as bank:
    assert len(bank) == 1 and bank.tasks() == [TASK]
    bank.curves(TASK, "val", "accuracy")
  assert path.read_bytes() == before
  connection = sqlite3.connect(path)
  connection.execute(f"PRAGMA user_version = {bank_lib.SCHEMA_VERSION + 1}")
  connection.close()
  with pytest.raises(ValueError, match="newer than"):
    bank_lib.Bank(path)


_OLD_LAYOUT = """
CREATE TABLE trials (task TEXT NOT NULL, design_id TEXT NOT NULL, seed INTEGER NOT NULL,
  design_json TEXT NOT NULL, num_params INTEGER NOT NULL, status TEXT NOT NULL,
  diverged_epoch INTEGER, message TEXT, final_json TEXT NOT NULL, best_json TEXT NOT NULL,
  wall_seconds REAL NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (task, design_id, seed));
CREATE TABLE evals (task TEXT NOT NULL, design_id TEXT NOT NULL, seed INTEGER NOT NULL,
  epoch INTEGER NOT NULL, split TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
  PRIMARY KEY (task, design_id, seed, epoch, split, metric));
CREATE INDEX evals_by_metric ON evals (task, split, metric, epoch);
PRAGMA user_version = 1;
"""


def _layout(path) -> list[tuple[str, str]]:
  connection = sqlite3.connect(path)
  rows = connection.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
  connection.close()
  return rows


def test_evals_are_stored_once_and_old_layout_banks_still_work(tmp_path):
  # New banks keep evals in their key's b-tree (no rowid copy, no second index).
  designs = designs_sample(3)
  new = tmp_path / "new.sqlite"
  with bank_lib.Bank(new) as bank:
    bank.add(fake_result(designs[0], 1))
  layout = {name: sql for _, name, sql in _layout(new)}
  assert layout["evals"].rstrip().endswith("WITHOUT ROWID")
  assert "evals_by_metric" not in layout and "sqlite_autoindex_evals_1" not in layout
  # A bank written in the earlier layout opens, reads, takes trials and merges into the new one.
  old = tmp_path / "old.sqlite"
  connection = sqlite3.connect(old)
  connection.executescript(_OLD_LAYOUT)
  connection.close()
  with bank_lib.Bank(old) as bank:
    for design in designs[1:]:
      bank.add(fake_result(design, 1))
    old_curves = bank.curves(TASK, "val", "accuracy")
    assert len(old_curves) == 2
  assert "evals_by_metric" in {name for _, name, _ in _layout(old)}  # left as it was
  with bank_lib.Bank(new) as bank:
    assert bank.merge_from(old) == 2
    merged = bank.curves(TASK, "val", "accuracy")
    assert {k: v for k, v in merged.items() if k in old_curves} == old_curves
    assert bank.get(fake_result(designs[2], 1).key) == fake_result(designs[2], 1)


def test_non_finite_values_and_replace(tmp_path):
  design = designs_sample(1)[0]
  diverged = fake_result(design, 1, status="diverged")
  with bank_lib.Bank(tmp_path / "b.sqlite") as bank:
    bank.add(diverged)
    got = bank.get(diverged.key)
    assert got.status == "diverged" and got.diverged_epoch == design.epochs - 1
    assert math.isnan(got.final["val"]["loss"]) and math.isnan(got.history[-1]["val_loss"])
    bank.add(fake_result(design, 1))  # a rerun replaces the row and its history
    assert len(bank) == 1 and bank.get(diverged.key).status == "ok"
    assert len(bank.history(diverged.key)) == 2


def test_missing_keeps_order_and_retry_statuses(tmp_path):
  designs = designs_sample(3)
  keys = [TrialKey(TASK, d.design_id, s) for d in designs for s in (1, 2)]
  with bank_lib.Bank(tmp_path / "b.sqlite") as bank:
    bank.add(fake_result(designs[1], 2))
    failed = dataclass_replace_status(fake_result(designs[0], 1), "failed")
    bank.add(failed)
    assert bank.missing(keys) == [k for k in keys if k not in (failed.key, keys[3])]
    assert failed.key in bank.missing(keys, statuses=("ok", "diverged"))


def dataclass_replace_status(result: TrialResult, status: str) -> TrialResult:
  result.status, result.message = status, "out of memory"
  return result


def test_query_filter_order_and_export(tmp_path):
  designs = designs_sample(8)
  with bank_lib.Bank(tmp_path / "b.sqlite") as bank:
    for d in designs:
      bank.add(fake_result(d, 1))
    bank.add(fake_result(designs[0], 1, task="other"))
    assert bank.tasks() == sorted([TASK, "other"])
    everything = bank.query(task=TASK)
    assert len(everything) == 8

    ordered = bank.query(task=TASK, order_by="val_accuracy")
    expected = sorted(fake_accuracy(d, 1) for d in designs)[::-1]
    assert [r.final["val"]["accuracy"] for r in ordered] == expected
    by_loss = bank.query(task=TASK, order_by="val_loss", top=3)
    assert len(by_loss) == 3  # losses all equal here; ascending order, then key order

    with_bn = bank.query(task=TASK, where={"batch_norm": True, "stage_type": "skipsum"})
    assert {r.key.design_id for r in with_bn} == {
        d.design_id for d in designs if d.batch_norm and d.stage_type == "skipsum"}
    lr = designs[0].learning_rate
    assert {r.key.design_id for r in bank.query(task=TASK, where={"learning_rate": lr})} == {
        d.design_id for d in designs if d.learning_rate == lr}
    assert bank.query(status="diverged") == []
    with pytest.raises(ValueError, match="unknown Design field 'depth'"):
      bank.query(where={"depth": 3})
    with pytest.raises(ValueError, match="order_by='accuracy'"):
      bank.query(order_by="accuracy")

    top = bank.query(task=TASK, order_by="val_accuracy", top=4)
    assert bank.export(tmp_path / "top.csv", task=TASK, order_by="val_accuracy", top=4) == 4
    assert bank.export(tmp_path / "top.json", task=TASK, order_by="val_accuracy", top=4) == 4

  with open(tmp_path / "top.csv") as f:
    rows = list(csv.DictReader(f))
  assert [row["design_id"] for row in rows] == [r.key.design_id for r in top]
  assert float(rows[0]["final_val_accuracy"]) == top[0].final["val"]["accuracy"]
  assert rows[0]["stage_type"] == top[0].design["stage_type"]
  records = json.loads((tmp_path / "top.json").read_text())
  assert [r["design_id"] for r in records] == [r.key.design_id for r in top]
  assert records[0]["history"][-1]["val_accuracy"] == top[0].final["val"]["accuracy"]


def _write_trials(path: str, worker: int, count: int, start) -> None:
  designs = spaces.GRAPHGYM_ROUND1.sample(worker, count)
  with bank_lib.Bank(path) as bank:
    start.wait(timeout=60)  # both processes write at the same time
    for design in designs:
      bank.add(fake_result(design, seed=worker))


def test_two_processes_write_concurrently(tmp_path):
  path = str(tmp_path / "shared.sqlite")
  bank_lib.Bank(path).close()
  context = multiprocessing.get_context("spawn")
  start = context.Barrier(2)
  workers = [context.Process(target=_write_trials, args=(path, worker, 60, start))
             for worker in (1, 2)]
  for process in workers:
    process.start()
  for process in workers:
    process.join(timeout=120)
    assert process.exitcode == 0
  with bank_lib.Bank(path) as bank:
    assert len(bank) == 120
    assert sorted({r.key.seed for r in bank.query()}) == [1, 2]


def test_connections_opening_a_new_bank_at_once_all_succeed(tmp_path):
  """Worker processes open the run's bank together when it does not exist yet; SQLite then
  refuses some of them the switch to WAL with 'database is locked' at once (before the retry:
  7 of 40 rounds of 4 threads here, 13 of 40 with 4 processes). Threads open their own
  connections, which lock the file as processes do."""
  def round_of(path: str) -> list[str]:
    barrier, outcomes = threading.Barrier(4), []

    def open_bank():
      barrier.wait(timeout=30)
      try:
        with bank_lib.Bank(path) as bank:
          bank.query(task=TASK)
        outcomes.append("ok")
      except sqlite3.OperationalError as error:
        outcomes.append(str(error))
    threads = [threading.Thread(target=open_bank) for _ in range(4)]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join(timeout=60)
    return outcomes

  failures = [out for i in range(40) for out in round_of(str(tmp_path / f"{i}.sqlite"))
              if out != "ok"]
  assert failures == []


# ----------------------------------------------------------------------------------------------
# Resumable runs.


def test_run_trials_skips_what_the_bank_has(tmp_path):
  designs = designs_sample(5)
  trainer = FakeTrainer()
  with bank_lib.Bank(tmp_path / "b.sqlite") as bank:
    summary = study.run_trials(bank, TASK, "data", designs, [1, 2], trainer, population_size=2)
    assert (summary.requested, summary.skipped, summary.trained) == (10, 0, 10)
    assert trainer.population_sizes == [1, 2, 2]  # 5 designs in populations of at most 2
    stored = bank.query(task=TASK)
    assert {r.key for r in stored} == set(study.trial_keys(TASK, designs, [1, 2]))
    again = FakeTrainer()
    summary = study.run_trials(bank, TASK, lambda: pytest.fail("loaded data"), designs, [1, 2],
                               again)
    assert (summary.skipped, summary.trained, again.calls) == (10, 0, 0)
    # One more seed: only the new trials are trained.
    summary = study.run_trials(bank, TASK, "data", designs, [1, 2, 3], again)
    assert sorted(again.trained) == sorted((d.design_id, 3) for d in designs)


@pytest.mark.parametrize("as_list", [False, True])
def test_interrupted_run_keeps_committed_trials(tmp_path, as_list):
  designs = designs_sample(6)
  crashing = FakeTrainer(fail_after=5, as_list=as_list)
  with bank_lib.Bank(tmp_path / "b.sqlite") as bank:
    with pytest.raises(RuntimeError, match="simulated crash"):
      study.run_trials(bank, TASK, "data", designs, [1], crashing, population_size=2)
    # Streaming trainers commit each trial (5 kept); list trainers whole populations (4 kept).
    kept = 4 if as_list else 5
    assert len(bank) == kept
    assert [(r.key.design_id, r.key.seed) for r in bank.query()] == sorted(crashing.trained[:kept])
    rerun = FakeTrainer()
    study.run_trials(bank, TASK, "data", designs, [1], rerun, population_size=2)
    assert len(rerun.trained) == 6 - kept
    assert len(bank) == 6


def test_retry_failed(tmp_path):
  designs = designs_sample(2)
  with bank_lib.Bank(tmp_path / "b.sqlite") as bank:
    bank.add(dataclass_replace_status(fake_result(designs[0], 1), "failed"))
    bank.add(fake_result(designs[1], 1, status="diverged"))
    trainer = FakeTrainer()
    study.run_trials(bank, TASK, "data", designs, [1], trainer)
    assert trainer.trained == []
    study.run_trials(bank, TASK, "data", designs, [1], trainer, retry_failed=True)
    assert trainer.trained == [(designs[0].design_id, 1)]


def test_positional_keys_when_trainer_hashes_another_design(tmp_path):
  designs = designs_sample(2)

  def resolving_trainer(population, dataset, seeds, **kwargs):
    # Keys from the budget-resolved design, as a trainer might compute them.
    return [dataclass_rekey(fake_result(d.replace(dim_inner=77), s)) for d in population
            for s in seeds]

  with bank_lib.Bank(tmp_path / "b.sqlite") as bank:
    study.run_trials(bank, TASK, "data", designs, [1, 2], resolving_trainer)
    assert {r.key for r in bank.query()} == set(study.trial_keys(TASK, designs, [1, 2]))


def dataclass_rekey(result: TrialResult) -> TrialResult:
  result.key = TrialKey("cora", Design.from_dict(result.design).design_id, result.key.seed)
  return result


def test_trainer_kwargs_reach_the_trainer(tmp_path):
  seen = {}

  def trainer(designs, dataset, seeds, **kwargs):
    seen.update(kwargs)
    return [fake_result(d, s) for d in designs for s in seeds]

  with bank_lib.Bank(tmp_path / "b.sqlite") as bank:
    study.run_trials(bank, TASK, "data", designs_sample(1), [0], trainer, eval_every=5,
                     max_parallel=3)
  assert seen == {"eval_every": 5, "max_parallel": 3}


# ----------------------------------------------------------------------------------------------
# Plans.


def test_controlled_random_search_plan():
  space = spaces.GRAPHGYM_ROUND1
  plan = study.controlled_random_search(space, ["batch_norm", "stage_type"], 4, seed=3)
  assert len(plan) == 4 * 2 + 4 * 3
  for dim in ("batch_norm", "stage_type"):
    rows = [row for row in plan if row.dim == dim]
    for setup_id in range(4):
      setup = [row.design for row in rows if row.setup_id == setup_id]
      assert [getattr(d, dim) for d in setup] == list(space.dims[dim])
      # Everything but the studied dimension is shared within a setup.
      others = {json.dumps({k: v for k, v in d.to_dict().items() if k != dim}) for d in setup}
      assert len(others) == 1 and all(d in space for d in setup)
    bases = {row.design.design_id for row in rows if row.choice == str(space.dims[dim][0])}
    assert len(bases) == 4  # distinct base designs
  # Seeded; more base designs keep the first ones; each dim's setups ignore the other dims.
  assert plan == study.controlled_random_search(space, ["batch_norm", "stage_type"], 4, seed=3)
  larger = study.controlled_random_search(space, ["stage_type"], 6, seed=3)
  assert larger[:12] == [row for row in plan if row.dim == "stage_type"]
  assert plan != study.controlled_random_search(space, ["batch_norm", "stage_type"], 4, seed=4)
  with pytest.raises(ValueError, match="unknown dimension"):
    study.controlled_random_search(space, ["depth"], 2)


def test_base_designs_are_uniform_over_the_pinned_space():
  space = spaces.DesignSpace({"batch_norm": [True, False], "layers_mp": [2, 4, 6],
                              "activation": ["relu", "prelu"]})
  counts = {}
  for seed in range(600):
    (base,) = study.sample_base_designs(space, "batch_norm", 1, seed)
    assert base.batch_norm is True  # pinned to the first choice
    counts[(base.layers_mp, base.activation)] = counts.get((base.layers_mp, base.activation), 0) + 1
  assert len(counts) == 6 and min(counts.values()) > 600 / 6 * 0.6
  assert len(study.sample_base_designs(space, "batch_norm", 6, 0)) == 6
  with pytest.raises(ValueError, match="cannot draw 7 distinct base designs"):
    study.sample_base_designs(space, "batch_norm", 7, 0)


def test_joint_dimension_plan():
  plan = study.controlled_random_search(spaces.AUTOTRANSFER, ["conv"], 2, seed=0)
  assert len(plan) == 14
  assert plan[5].choice == "conv_type=gat,heads=2" and plan[5].design.heads == 2


def test_cap_epochs():
  plan = study.controlled_random_search(spaces.GRAPHGYM_ROUND1, ["batch_norm"], 3, seed=0)
  capped = study.cap_epochs(plan, 40)
  assert all(row.design.epochs == 40 for row in capped)
  assert study.cap_epochs(plan, None) == plan
  with pytest.raises(ValueError, match="'epochs'"):
    study.cap_epochs(study.controlled_random_search(spaces.GRAPHGYM_ROUND1, ["epochs"], 1), 40)
  assert study.plan_from_json(study.plan_to_json(capped)) == capped


# ----------------------------------------------------------------------------------------------
# The whole study (the library function experiments/design_space.py calls) and the CLIs.


def test_run_study_with_fake_trainer_resumes(tmp_path):
  space = spaces.GRAPHGYM_ROUND1
  lines = []
  trainer = FakeTrainer()
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    result = study.run_study(bank, space, {"task_a": "A", "task_b": "B"},
                             ["batch_norm", "stage_type"], 3, seeds=[1, 2], max_epochs=40,
                             trainer=trainer, print_fn=lines.append)
    designs = study.plan_designs(result.plan)
    assert len(trainer.trained) == len(bank) == 2 * 2 * len(designs)
    assert "ETA" in lines[-1] and lines[-1].startswith(f"[{len(bank)}/{len(bank)}]")
    table = result.tables["batch_norm"]
    # The fake accuracy always favours batch norm by 0.2.
    assert table.num_setups == 6 and table.choices == ["True", "False"]
    np.testing.assert_array_equal(table.average_rank, [1.0, 2.0])
    stage = result.tables["stage_type"]
    assert stage.choices == ["stack", "skipsum", "skipconcat"]
    np.testing.assert_array_equal(stage.ranks[:, 0], 3)
    paths = study.save_study(result, str(tmp_path / "out"))
    assert {pathlib.Path(p).name for p in paths} == {
        "plan.json", "ranks.json", "ranks.png", "ranks_batch_norm.png", "ranks_stage_type.png"}
    again = FakeTrainer()
    study.run_study(bank, space, {"task_a": "A", "task_b": "B"}, ["batch_norm", "stage_type"],
                    3, seeds=[1, 2], max_epochs=40, trainer=again, print_fn=None)
    assert again.calls == 0


def _small_bank(path: pathlib.Path) -> list[TrialResult]:
  results = [fake_result(d, 1) for d in designs_sample(6)]
  with bank_lib.Bank(path) as bank:
    for result in results:
      bank.add(result)
  return results


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=120)


def test_bank_cli(tmp_path):
  results = _small_bank(tmp_path / "bank.sqlite")
  with_bn = [r for r in results if r.design["batch_norm"]]
  best = max(with_bn, key=lambda r: r.final["val"]["accuracy"])
  out = _run("experiments.bank", f"--db={tmp_path / 'bank.sqlite'}", f"--task={TASK}",
             "--top=3", "--status=ok", "--where=batch_norm=True",
             f"--export={tmp_path / 'out.csv'}")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0].split()[:3] == ["task", "design_id", "seed"] and "val_accuracy" in lines[0]
  assert best.key.design_id in lines[1]
  with open(tmp_path / "out.csv") as f:
    exported = list(csv.DictReader(f))
  assert len(exported) == min(3, len(with_bn)) and with_bn
  assert all(row["batch_norm"] == "True" for row in exported)
  bad = _run("experiments.bank", f"--db={tmp_path / 'bank.sqlite'}", "--where=depth=3")
  assert bad.returncode == 2 and "unknown Design field 'depth'" in bad.stderr


def test_bank_cli_merges_banks_and_counts_seeds(tmp_path):
  designs = designs_sample(4)
  with bank_lib.Bank(tmp_path / "job1.sqlite") as bank:  # seed 1 of all four
    for design in designs:
      bank.add(fake_result(design, 1))
  with bank_lib.Bank(tmp_path / "job2.sqlite") as bank:  # seed 2 of two, one of them also seed 1
    for design in designs[:2]:
      bank.add(fake_result(design, 2))
    clash = fake_result(designs[0], 1)
    bank.add(dataclasses.replace(clash, final={"val": {"accuracy": 0.0}}))
  db = tmp_path / "all.sqlite"
  merge = ["experiments.bank", f"--db={db}",
           f"--merge={tmp_path / 'job1.sqlite'},{tmp_path / 'job2.sqlite'}"]
  out = _run(*merge)
  assert out.returncode == 0, out.stderr
  assert "merged 4 new trial(s)" in out.stdout and "merged 2 new trial(s)" in out.stdout
  again = _run(*merge)
  assert "merged 0 new trial(s)" in again.stdout and f"{db}: 6 trial(s)" in again.stdout
  with bank_lib.Bank(db) as bank:
    assert bank.seed_counts(TASK) == {1: 4, 2: 2}
    kept = bank.get(TrialKey(TASK, designs[0].design_id, 1))
  assert kept.final["val"]["accuracy"] == fake_accuracy(designs[0], 1)  # the first copy stays
  listed = _run("experiments.bank", f"--db={db}", "--tasks")
  assert listed.stdout.split("\n")[0] == f"{TASK}\t6 trials (seed 1: 4, seed 2: 2)"
  before = db.read_bytes()
  bad = _run("experiments.bank", f"--db={db}", f"--merge={tmp_path / 'job1.sqlite'},nope.sqlite")
  assert bad.returncode == 2 and "--merge: no bank at nope.sqlite" in bad.stderr
  assert db.read_bytes() == before


def test_design_space_cli_help():
  out = _run("experiments.design_space", "--help")
  assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr  # absl: 1
  for flag in ("--space", "--tasks", "--num_designs", "--dims", "--seeds", "--epochs_override",
               "--db", "--out_dir", "--data_dir", "--max_parallel", "--trainer", "--fix",
               "--checkpoint_every", "--checkpoint_dir", "--compilation_cache_dir", "--plan"):
    assert flag in out.stdout


def test_pinned_dimensions():
  space = spaces.pin_dimensions(spaces.GRAPHGYM_ROUND1, ["batch_size=32", "epochs=100",
                                                         "activation=prelu"])
  assert not {"batch_size", "epochs", "activation"} & set(space.dim_names)
  assert (space.fixed["batch_size"], space.fixed["epochs"]) == (32, 100)
  assert space.fixed["activation"] == "prelu"
  assert space.size == spaces.GRAPHGYM_ROUND1.size // 27
  assert spaces.pin_dimensions(spaces.GRAPHGYM_ROUND1, []) is spaces.GRAPHGYM_ROUND1
  with pytest.raises(ValueError, match="field=value"):
    spaces.pin_dimensions(spaces.GRAPHGYM_ROUND1, ["batch_size"])


def test_resolve_space_pins_outside_the_choices(tmp_path):
  # AutoTransfer's epochs are 200-1600; a bank trained at 50 epochs is a space of its own, and
  # the experiment that fills the bank and the one that searches it must agree on it.
  space = spaces.resolve_space("autotransfer", ["epochs=50"])
  assert space.name == "autotransfer[epochs=50]" and "epochs" not in space.dims
  assert space.size == spaces.AUTOTRANSFER.size // 3
  design = space.design_at(7)
  assert design.epochs == 50 and design in space and design not in spaces.AUTOTRANSFER
  assert design.replace(epochs=200) in spaces.AUTOTRANSFER
  assert spaces.resolve_space("graphgym_round1") is spaces.GRAPHGYM_ROUND1
  spaces.AUTOTRANSFER.save(tmp_path / "space.json")
  from_file = spaces.resolve_space(str(tmp_path / "space.json"), ["epochs=50"])
  assert from_file.size == space.size and design in from_file
  with pytest.raises(ValueError, match="unknown design space 'nope'"):
    spaces.resolve_space("nope")


def test_random_plan_is_uniform_distinct_and_prefix_stable():
  space = spaces.resolve_space("autotransfer", ["epochs=50"])
  plan = study.random_plan(space, 40, seed=3)
  designs = [row.design for row in plan]
  assert len({d.design_id for d in designs}) == 40 and all(d in space for d in designs)
  assert [row.setup_id for row in plan] == list(range(40))
  assert {row.dim for row in plan} == {study.RANDOM_DIM}
  assert [r.design for r in study.random_plan(space, 15, seed=3)] == designs[:15]
  assert study.random_plan(space, 15, seed=4)[0].design != designs[0]
  # Uniform: every conv choice turns up about equally often among many draws.
  many = study.random_plan(space, 2100, seed=0)
  convs = {}
  for row in many:
    label = (row.design.conv_type, row.design.heads)
    convs[label] = convs.get(label, 0) + 1
  assert len(convs) == 7 and min(convs.values()) > 2100 / 7 * 0.8
  small = spaces.DesignSpace({"layers_mp": [2, 4, 6]})
  assert len(study.random_plan(small, 3)) == 3
  with pytest.raises(ValueError, match="cannot draw 4 distinct designs"):
    study.random_plan(small, 4)
  assert study.make_plan(space, "random", None, 5, 3) == plan[:5]
  capped = study.make_plan(spaces.AUTOTRANSFER, "random", None, 5, 3, max_epochs=60)
  assert all(row.design.epochs == 60 for row in capped)
  with pytest.raises(ValueError, match="unknown plan 'grid'"):
    study.make_plan(space, "grid")


def test_run_study_random_plan_fills_pools(tmp_path):
  space = spaces.pin_dimensions(spaces.GRAPHGYM_ROUND1, ["epochs=40"])
  trainer = FakeTrainer()
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    result = study.run_study(bank, space, {"task_a": "A", "task_b": "B"}, ["batch_norm"], 6,
                             seeds=[1], trainer=trainer, print_fn=None, search="random")
    assert result.tables == {} and len(result.plan) == 6
    assert len(trainer.trained) == len(bank) == 12 == len(result.results)
    grown = FakeTrainer()  # more designs, same seed: only the new ones train
    study.run_study(bank, space, {"task_a": "A"}, None, 9, seeds=[1], trainer=grown,
                    print_fn=None, search="random")
    assert len(grown.trained) == 3
    summary = study.format_pools(bank.query())
  lines = summary.splitlines()
  assert lines[0].split()[:5] == ["task", "trials", "ok", "diverged", "failed"]
  task_a = lines[1].split()
  assert task_a[:5] == ["task_a", "9", "9", "0", "0"]
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    scores = [fake_accuracy(Design.from_dict(r.design), 1) for r in bank.query(task="task_a")]
  assert float(task_a[5]) == pytest.approx(max(scores), abs=1e-4)
  paths = study.save_study(result, str(tmp_path / "out"))
  assert {pathlib.Path(p).name for p in paths} == {"plan.json", "ranks.json"}


def test_progress_printers():
  now = [0.0]
  lines = []
  printer = study.ProgressPrinter(total=4, done=1, print_fn=lines.append, clock=lambda: now[0])
  now[0] = 30.0
  printer(fake_result(designs_sample(1)[0], 1))
  assert lines[-1].startswith("[2/4]  50%  elapsed 0m30s  ETA 1m00s")
  engine_lines = []
  report = study.engine_progress(engine_lines.append, every_seconds=10, clock=lambda: now[0])
  info = {"chunk": 1, "chunks": 2, "members": 8, "epoch": 3, "epochs": 40}
  report(0, 16, info)
  now[0] = 35.0
  report(0, 16, info)  # within 10 s of the last line: quiet
  now[0] = 41.0
  report(8, 16, {**info, "chunk": 2, "epoch": 0})
  assert engine_lines == [
      "  population: 0/16 trials done; chunk 1/2 (8 members) at epoch 3/40",
      "  population: 8/16 trials done; chunk 2/2 (8 members) at epoch 0/40"]


def test_study_job_script_carries_trials_between_jobs(tmp_path):
  # bank/study_job.sh in a checkout of its own: the study itself is cut off at once (LIMIT=1),
  # what is tested is the state around it: an earlier job's trials merged in, the bank copied
  # (WAL rows included) to the state and the output folder, the logs packed.
  checkout = tmp_path / "checkout"
  (checkout / "bank").mkdir(parents=True)
  for script in ("continue_study.sh", "study_job.sh"):
    shutil.copy(REPO / "bank" / script, checkout / "bank" / script)
  designs = designs_sample(4)
  with bank_lib.Bank(checkout / "bank" / "study_train.sqlite") as bank:
    for design in designs[:2]:
      bank.add(fake_result(design, 1))
  state, out = tmp_path / "state", tmp_path / "out"
  state.mkdir()
  with bank_lib.Bank(state / "study_train.sqlite") as bank:  # trials the checkout lacks
    for design in designs[1:]:
      bank.add(fake_result(design, 1))
  env = {**os.environ, "PYTHONPATH": str(REPO), "LIMIT": "1", "STATE": str(state),
         "OUT": str(out), "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
  job = subprocess.run(["bash", "bank/study_job.sh", TASK], cwd=checkout, env=env,
                       capture_output=True, text=True, timeout=120)
  assert job.returncode == 0, job.stdout + job.stderr
  assert "merged 2 new trial(s)" in job.stdout
  for copy in (state / "study_train.sqlite", out / "study_train.sqlite"):
    with bank_lib.Bank(copy) as bank:
      assert bank.count(TASK) == 4
  assert (out / "logs.tgz").stat().st_size > 0 and not list(state.glob("*.tmp"))
  env.pop("STATE")
  refused = subprocess.run(["bash", "bank/study_job.sh", TASK], cwd=checkout, env=env,
                           capture_output=True, text=True, timeout=60)
  assert refused.returncode != 0 and "set STATE" in refused.stderr


@pytest.mark.parametrize("visible, set_share, expected", [
    ("0", "", "CUDA_VISIBLE_DEVICES=0 XLA_PYTHON_CLIENT_MEM_FRACTION=0.450"),  # two on one GPU
    ("0,1", "", "CUDA_VISIBLE_DEVICES=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.900"),  # one GPU each
    ("0", "0.3", ""),  # the user's own share: left alone
    ("", "", ""),  # a CPU host
])
def test_continue_study_pins_several_processes_like_workers(visible, set_share, expected):
  # bank/continue_study.sh's slot_envs, the second of two processes' line.
  env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": visible,
         "XLA_PYTHON_CLIENT_MEM_FRACTION": set_share,
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
  define = 'source <(sed -n "/^slot_envs()/,/^}/p" bank/continue_study.sh)'
  got = subprocess.run(["bash", "-c", f"{define}; slot_envs 2 | sed -n 2p; slot_envs 1"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=60)
  assert got.returncode == 0, got.stderr
  assert got.stdout.strip() == expected  # and one process alone gets no variables
