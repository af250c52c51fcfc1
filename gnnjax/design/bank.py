"""The task-model bank: every (task, design, seed) trial ever trained, in one SQLite file.

The bank is an embedded SQLite database (stdlib `sqlite3`), by default `<out_dir>/bank.sqlite`.
It runs in WAL mode with a busy timeout, so several local processes (one per GPU, or a study and
a notebook reading it) can write and read at once. Every trial is written in its own
transaction: a finished trial is never lost, and a writer killed mid-write leaves no partial
trial (SQLite rolls the open transaction back).

Schema (version 1, stored in `PRAGMA user_version`):

    trials(                         -- one row per trial
      task           TEXT,          -- e.g. 'generated/smallworld/clustering/pagerank'
      design_id      TEXT,          -- Design.design_id of the design as planned
      seed           INTEGER,
      design_json    TEXT,          -- the design as trained (dim_inner resolved), JSON object
      num_params     INTEGER,
      status         TEXT,          -- 'ok' | 'diverged' | 'failed'
      diverged_epoch INTEGER NULL,
      message        TEXT NULL,     -- why a trial failed
      final_json     TEXT,          -- {split: {metric: value}} at the last evaluation
      best_json      TEXT,          -- the same at the best validation epoch
      wall_seconds   REAL,
      created_at     TEXT,          -- UTC, ISO 8601
      PRIMARY KEY (task, design_id, seed))

    evals(                          -- one row per (evaluation, split, metric): the history
      task, design_id, seed,        -- the trial (no foreign key: rows go in one transaction)
      epoch          INTEGER,
      split          TEXT,          -- 'train' | 'val' | 'test', or '' for split-less entries
      metric         TEXT,          -- 'loss', 'accuracy', 'roc_auc', ... ('epoch_loss' if '')
      value          REAL,          -- NULL for a non-finite value
      PRIMARY KEY (task, design_id, seed, epoch, split, metric)) WITHOUT ROWID

`evals` is stored in its key's b-tree (WITHOUT ROWID, since 2026-12-04): a rowid table kept a
second, full copy of every row in the key's index, and a (task, split, metric, epoch) index a
third; the three made 27 of the shipped bank's 32 MB. A task's curves are a range of the key,
so reading them by metric needs no index of its own. Banks written before keep their layout
(and that index) and work the same; `python -m experiments.bank --db=<new> --merge=<old>`
copies one into the new layout.

A history record {'epoch': 19, 'val_accuracy': 0.71, 'epoch_loss': 1.2} becomes the rows
(19, 'val', 'accuracy', 0.71) and (19, '', 'epoch_loss', 1.2). The history is a table rather
than a JSON column so that learning curves can be selected by metric in SQL, e.g.

    SELECT design_id, epoch, value FROM evals
    WHERE task = ? AND split = 'val' AND metric = 'accuracy' ORDER BY design_id, epoch;

Design fields are filtered with SQLite's JSON functions on `design_json`
(`json_extract(design_json, '$.stage_type') IS 'skipsum'`).

    with Bank("results/bank.sqlite") as bank:
      bank.add(result)
      best = bank.query(task="cora", status="ok", where={"batch_norm": True},
                        order_by="val_accuracy", top=10)
      bank.export("top.csv", task="cora", order_by="val_accuracy", top=10)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import json
import math
import os
import sqlite3
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

from gnnjax.design.design import FIELDS, validate_field
from gnnjax.design.trial import STATUSES, TrialKey, TrialResult

SCHEMA_VERSION = 1
DEFAULT_FILENAME = "bank.sqlite"
SPLITS = ("train", "val", "test")
# Metrics where smaller is better; every other metric is ordered largest first.
_LOWER_IS_BETTER = ("loss", "mae", "rmse", "mse")
_BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
  task TEXT NOT NULL,
  design_id TEXT NOT NULL,
  seed INTEGER NOT NULL,
  design_json TEXT NOT NULL,
  num_params INTEGER NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('ok', 'diverged', 'failed')),
  diverged_epoch INTEGER,
  message TEXT,
  final_json TEXT NOT NULL,
  best_json TEXT NOT NULL,
  wall_seconds REAL NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (task, design_id, seed)
);
CREATE TABLE IF NOT EXISTS evals (
  task TEXT NOT NULL,
  design_id TEXT NOT NULL,
  seed INTEGER NOT NULL,
  epoch INTEGER NOT NULL,
  split TEXT NOT NULL,
  metric TEXT NOT NULL,
  value REAL,
  PRIMARY KEY (task, design_id, seed, epoch, split, metric)
) WITHOUT ROWID;
"""

_TRIAL_COLUMNS = ("task", "design_id", "seed", "design_json", "num_params", "status",
                  "diverged_epoch", "message", "final_json", "best_json", "wall_seconds",
                  "created_at")
# Columns `order_by` may name directly (besides '[best_]<split>_<metric>').
_ORDERABLE_COLUMNS = ("num_params", "wall_seconds", "created_at", "seed", "design_id")


def default_path(out_dir: str | os.PathLike) -> str:
  """The bank file inside a results folder: `<out_dir>/bank.sqlite`."""
  return os.path.join(os.fspath(out_dir), DEFAULT_FILENAME)


# ----------------------------------------------------------------------------------------------
# History <-> eval rows.


def split_metric_name(name: str) -> tuple[str, str]:
  """'val_accuracy' -> ('val', 'accuracy'); names without a split prefix -> ('', name)."""
  prefix, _, rest = name.partition("_")
  if prefix in SPLITS and rest:
    return prefix, rest
  return "", name


def join_metric_name(split: str, metric: str) -> str:
  return f"{split}_{metric}" if split else metric


def _finite_or_none(value: Any) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


EvalRow = tuple  # (epoch: int, split: str, metric: str, value: float | None)


def history_rows(history: Sequence[Mapping[str, float]]) -> list[EvalRow]:
  """Flattens a TrialResult history into (epoch, split, metric, value) rows."""
  rows = []
  for record in history:
    epoch = int(record["epoch"])
    for name, value in record.items():
      if name != "epoch":
        rows.append((epoch, *split_metric_name(name), _finite_or_none(value)))
  return rows


def history_from_rows(rows: Iterable[EvalRow]) -> list[dict[str, float]]:
  """The inverse of `history_rows` (non-finite values come back as NaN)."""
  by_epoch: dict[int, dict[str, float]] = {}
  for epoch, split, metric, value in rows:
    record = by_epoch.setdefault(int(epoch), {"epoch": int(epoch)})
    record[join_metric_name(split, metric)] = math.nan if value is None else value
  return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _dumps(value: Any) -> str:
  # NaN is not JSON: a diverged run's final loss is stored as null and read back as NaN.
  return json.dumps(_nan_to_none(value), sort_keys=True)


def _nan_to_none(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_nan_to_none(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _metrics_from_json(text: str) -> dict[str, dict[str, float]]:
  return {split: {name: math.nan if v is None else v for name, v in metrics.items()}
          for split, metrics in json.loads(text).items()}


# ----------------------------------------------------------------------------------------------
# Query building.


def _order_expression(order_by: str) -> tuple[str, bool]:
  """SQL expression for `order_by` and whether larger is better.

  'val_accuracy' orders by the final val accuracy, 'best_val_accuracy' by the accuracy at the
  best validation epoch; 'num_params', 'wall_seconds', ... order by that column.
  """
  if order_by in _ORDERABLE_COLUMNS:
    return order_by, False
  column = "final_json"
  name = order_by
  if name.startswith("best_"):
    column, name = "best_json", name[len("best_"):]
  split, metric = split_metric_name(name)
  if not split:
    raise ValueError(f"order_by={order_by!r}: expected '[best_]<split>_<metric>' with split in "
                     f"{list(SPLITS)} (e.g. 'val_accuracy'), or one of {list(_ORDERABLE_COLUMNS)}")
  if not metric.replace("_", "").isalnum():
    raise ValueError(f"order_by={order_by!r}: metric names are letters, digits and '_'")
  larger_is_better = not metric.endswith(_LOWER_IS_BETTER)
  return f"json_extract({column}, '$.{split}.{metric}')", larger_is_better


def _where_clauses(task: str | None, status: str | Sequence[str] | None,
                   where: Mapping[str, Any] | None) -> tuple[list[str], list[Any]]:
  clauses: list[str] = []
  params: list[Any] = []
  if task is not None:
    clauses.append("task = ?")
    params.append(task)
  if status is not None:
    statuses = [status] if isinstance(status, str) else list(status)
    unknown = sorted(set(statuses) - set(STATUSES))
    if unknown:
      raise ValueError(f"unknown status {unknown}; valid: {list(STATUSES)}")
    clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
    params.extend(statuses)
  for field, value in (where or {}).items():
    if field not in FIELDS:
      raise ValueError(f"where: unknown Design field {field!r}; valid fields: {list(FIELDS)}")
    value = validate_field(field, value) if value is not None else None
    # IS compares NULL (dim_inner=None) too; the field name was checked against FIELDS above.
    clauses.append(f"json_extract(design_json, '$.{field}') IS ?")
    params.append(value)
  return clauses, params


# ----------------------------------------------------------------------------------------------


class Bank:
  """A task-model bank in one SQLite file (schema in the module docstring).

  Safe to open from several processes at once; each `add` is one transaction.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(self.path))
    os.makedirs(folder, exist_ok=True)
    # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE) where needed.
    self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    self._enable_wal()
    self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints
    self._create_schema()

  def _enable_wal(self) -> None:
    """PRAGMA journal_mode = WAL, retried while another process holds the file: SQLite answers
    a journal-mode change under a competing lock with 'database is locked' at once, without
    waiting on busy_timeout, so worker processes that open a new bank together failed (4
    processes opening a fresh file at once: 13 of 40 rounds, 2026-12-04)."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
      try:
        self._db.execute("PRAGMA journal_mode = WAL")
        return
      except sqlite3.OperationalError as error:
        if "locked" not in str(error) or time.monotonic() > deadline:
          raise
        time.sleep(0.02)

  def _create_schema(self) -> None:
    if self._schema_version() == SCHEMA_VERSION:
      return  # nothing to write: reading a bank leaves its file as it was (e.g. a shipped one)
    with self._transaction():
      if self._schema_version() == SCHEMA_VERSION:  # another process made it meanwhile
        return
      for statement in _SCHEMA.split(";"):
        if statement.strip():
          self._db.execute(statement)
      self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

  def _schema_version(self) -> int:
    version = self._db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
      raise ValueError(f"{self.path}: bank schema version {version} is newer than this "
                       f"gnnjax's ({SCHEMA_VERSION})")
    return version

  @contextlib.contextmanager
  def _transaction(self) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so two writers queue (busy_timeout) instead of
    # deadlocking on a read-to-write upgrade.
    self._db.execute("BEGIN IMMEDIATE")
    try:
      yield
    except BaseException:
      self._db.execute("ROLLBACK")
      raise
    self._db.execute("COMMIT")

  # -- context manager -------------------------------------------------------------------------

  def close(self) -> None:
    self._db.close()

  def __enter__(self) -> "Bank":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  @property
  def journal_mode(self) -> str:
    return self._db.execute("PRAGMA journal_mode").fetchone()[0]

  # -- writing ---------------------------------------------------------------------------------

  def add(self, result: TrialResult) -> None:
    """Stores one trial (replacing an earlier row with the same key) in one transaction."""
    key = result.key
    created_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    row = (key.task, key.design_id, int(key.seed), _dumps(result.design), int(result.num_params),
           result.status, result.diverged_epoch, result.message, _dumps(result.final),
           _dumps(result.best), float(result.seconds), created_at)
    evals = [(key.task, key.design_id, int(key.seed), *r) for r in history_rows(result.history)]
    with self._transaction():
      self._db.execute("DELETE FROM evals WHERE task = ? AND design_id = ? AND seed = ?",
                       (key.task, key.design_id, int(key.seed)))
      self._db.execute(f"INSERT OR REPLACE INTO trials ({', '.join(_TRIAL_COLUMNS)}) "
                       f"VALUES ({', '.join('?' * len(_TRIAL_COLUMNS))})", row)
      self._db.executemany("INSERT INTO evals VALUES (?, ?, ?, ?, ?, ?, ?)", evals)

  # -- reading ---------------------------------------------------------------------------------

  def merge_from(self, path: str | os.PathLike) -> int:
    """Copies the trials (with their evaluations) of the bank at `path` that this bank lacks,
    in one transaction; rows already here are never touched. Returns the trials copied.

    Used to gather per-host banks of a multi-host run into one."""
    source = os.fspath(path)
    if not os.path.exists(source):
      raise FileNotFoundError(f"no bank at {source}")
    if os.path.abspath(source) == os.path.abspath(self.path):
      raise ValueError(f"cannot merge {source} into itself")
    self._db.execute("ATTACH DATABASE ? AS other", (source,))
    try:
      with self._transaction():
        new = ("NOT EXISTS (SELECT 1 FROM main.trials m WHERE m.task = o.task AND "
               "m.design_id = o.design_id AND m.seed = o.seed)")
        count = self._db.execute(f"SELECT COUNT(*) FROM other.trials o WHERE {new}").fetchone()[0]
        # Evaluations first, while `new` still tells which trials are missing here.
        self._db.execute(f"INSERT OR IGNORE INTO main.evals SELECT e.* FROM other.evals e "
                         f"JOIN other.trials o USING (task, design_id, seed) WHERE {new}")
        columns = ", ".join(_TRIAL_COLUMNS)
        self._db.execute(f"INSERT OR IGNORE INTO main.trials ({columns}) "
                         f"SELECT {columns} FROM other.trials")
    finally:
      self._db.execute("DETACH DATABASE other")
    return int(count)

  def has(self, key: TrialKey, statuses: Sequence[str] = STATUSES) -> bool:
    """Whether the trial is stored (with one of `statuses`)."""
    return not self.missing([key], statuses)

  def missing(self, keys: Iterable[TrialKey], statuses: Sequence[str] = STATUSES
              ) -> list[TrialKey]:
    """The keys not stored with one of `statuses`, in their given order.

    Pass statuses=('ok', 'diverged') to treat failed trials as missing (to retry them).
    """
    keys = list(keys)
    stored = set()
    for task in {k.task for k in keys}:
      rows = self._db.execute(
          f"SELECT design_id, seed FROM trials WHERE task = ? AND status IN "
          f"({', '.join('?' * len(statuses))})", (task, *statuses))
      stored.update((task, design_id, seed) for design_id, seed in rows)
    return [k for k in keys if (k.task, k.design_id, int(k.seed)) not in stored]

  def get(self, key: TrialKey) -> TrialResult | None:
    """The stored trial with its full history, or None."""
    row = self._db.execute(
        f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials WHERE task = ? AND design_id = ? "
        f"AND seed = ?", (key.task, key.design_id, int(key.seed))).fetchone()
    return None if row is None else self._result(row, with_history=True)

  def history(self, key: TrialKey) -> list[dict[str, float]]:
    """The trial's evaluation records, in epoch order ([] when unknown)."""
    rows = self._db.execute(
        "SELECT epoch, split, metric, value FROM evals WHERE task = ? AND design_id = ? "
        "AND seed = ? ORDER BY epoch", (key.task, key.design_id, int(key.seed)))
    return history_from_rows(rows)

  def curves(self, task: str, split: str, metric: str) -> dict[TrialKey, list[tuple[int, float]]]:
    """Learning curves of one metric over every trial of a task: key -> [(epoch, value)]."""
    rows = self._db.execute(
        "SELECT design_id, seed, epoch, value FROM evals WHERE task = ? AND split = ? AND "
        "metric = ? ORDER BY design_id, seed, epoch", (task, split, metric))
    curves: dict[TrialKey, list[tuple[int, float]]] = {}
    for design_id, seed, epoch, value in rows:
      curves.setdefault(TrialKey(task, design_id, seed), []).append(
          (epoch, math.nan if value is None else value))
    return curves

  def query(self, task: str | None = None, status: str | Sequence[str] | None = None,
            where: Mapping[str, Any] | None = None, order_by: str | None = None,
            top: int | None = None, descending: bool | None = None,
            with_history: bool = False) -> list[TrialResult]:
    """Selects trials.

    Args:
      task: only this task.
      status: only this status (or any of these statuses).
      where: design field -> value, all of which must hold (e.g. {'batch_norm': True}).
      order_by: '[best_]<split>_<metric>' (final value, or at the best validation epoch), e.g.
        'val_accuracy', or a column: 'num_params', 'wall_seconds', 'created_at'. Trials lacking
        the metric come last.
      top: keep the first `top` rows.
      descending: default: largest first for metrics except losses / errors (mae, rmse, mse),
        smallest first for columns.
      with_history: also read each trial's history (one extra query per trial).

    Returns:
      TrialResults (key order when order_by is None).
    """
    clauses, params = _where_clauses(task, status, where)
    sql = f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials"
    if clauses:
      sql += " WHERE " + " AND ".join(clauses)
    if order_by is None:
      sql += " ORDER BY task, design_id, seed"
    else:
      expression, larger_is_better = _order_expression(order_by)
      direction = "DESC" if (larger_is_better if descending is None else descending) else "ASC"
      sql += f" ORDER BY {expression} IS NULL, {expression} {direction}, task, design_id, seed"
    if top is not None:
      if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
      sql += " LIMIT ?"
      params.append(int(top))
    rows = self._db.execute(sql, params).fetchall()
    return [self._result(row, with_history) for row in rows]

  def tasks(self) -> list[str]:
    """Task names with at least one trial, sorted."""
    return [task for (task,) in self._db.execute("SELECT DISTINCT task FROM trials ORDER BY task")]

  def count(self, task: str | None = None) -> int:
    clauses, params = _where_clauses(task, None, None)
    sql = "SELECT COUNT(*) FROM trials" + (" WHERE " + " AND ".join(clauses) if clauses else "")
    return self._db.execute(sql, params).fetchone()[0]

  def seed_counts(self, task: str) -> dict[int, int]:
    """{seed: trials of `task` with that seed}, seeds in order."""
    return dict(self._db.execute("SELECT seed, COUNT(*) FROM trials WHERE task = ? "
                                 "GROUP BY seed ORDER BY seed", (task,)).fetchall())

  def __len__(self) -> int:
    return self.count()

  def _result(self, row: Sequence[Any], with_history: bool) -> TrialResult:
    values = dict(zip(_TRIAL_COLUMNS, row))
    key = TrialKey(values["task"], values["design_id"], int(values["seed"]))
    return TrialResult(
        key=key, design=json.loads(values["design_json"]), num_params=values["num_params"],
        status=values["status"], history=self.history(key) if with_history else [],
        final=_metrics_from_json(values["final_json"]),
        best=_metrics_from_json(values["best_json"]), diverged_epoch=values["diverged_epoch"],
        message=values["message"], seconds=values["wall_seconds"])

  # -- export ----------------------------------------------------------------------------------

  def export(self, path: str | os.PathLike, fmt: str | None = None, **query: Any) -> int:
    """Writes the trials selected by `query` (see `query`) to CSV or JSON; returns the count.

    Args:
      path: output file.
      fmt: 'csv' (one row per trial: key, status, params, seconds, every design field,
        final_<split>_<metric> and best_<split>_<metric> columns) or 'json' (a list of full
        records, histories included). Default: from the file extension.
    """
    path = os.fspath(path)
    fmt = fmt or os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in ("csv", "json"):
      raise ValueError(f"export format must be 'csv' or 'json', got {fmt!r} (from {path!r})")
    results = self.query(**{**query, "with_history": fmt == "json"})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "csv":
      _write_csv(path, results)
    else:
      _write_json(path, results)
    return len(results)


def result_record(result: TrialResult) -> dict[str, Any]:
  """A JSON-ready dict of a TrialResult (NaN as null)."""
  record = dataclasses.asdict(result)
  record.update(dataclasses.asdict(result.key))
  del record["key"]
  return _nan_to_none(record)


def _flat_metrics(prefix: str, metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  return {f"{prefix}_{split}_{name}": value
          for split, values in metrics.items() for name, value in values.items()}


def _write_csv(path: str, results: Sequence[TrialResult]) -> None:
  rows = []
  for r in results:
    row = {"task": r.key.task, "design_id": r.key.design_id, "seed": r.key.seed,
           "status": r.status, "num_params": r.num_params, "wall_seconds": r.seconds,
           "diverged_epoch": r.diverged_epoch, "message": r.message}
    row.update(r.design)
    row.update(_flat_metrics("final", r.final))
    row.update(_flat_metrics("best", r.best))
    rows.append(row)
  columns: list[str] = ["task", "design_id", "seed", "status", "num_params", "wall_seconds",
                        "diverged_epoch", "message", *FIELDS]
  for row in rows:  # metric columns in first-seen order (they differ by task type)
    columns.extend(c for c in row if c not in columns)
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)


def _write_json(path: str, results: Sequence[TrialResult]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump([result_record(r) for r in results], f, indent=1)
    f.write("\n")
  os.replace(tmp, path)
