r"""Query the task-model bank: the best trials of a task, filtered by design fields.

Examples:
  # The 16 best designs of a task by final validation accuracy:
  python -m experiments.bank --db=results/design_space/bank.sqlite \
      --task=generated/smallworld/clustering/pagerank --top=16
  # Only successful skip-sum designs with batch norm, exported to CSV:
  python -m experiments.bank --db=results/design_space/bank.sqlite --status=ok \
      --where=stage_type=skipsum,batch_norm=True --export=skipsum.csv
  # Every task in the bank, with its trials per seed:
  python -m experiments.bank --db=results/design_space/bank.sqlite --tasks
  # Gather banks trained elsewhere (GPU jobs, hosts) into one; rows already there are kept:
  python -m experiments.bank --db=bank/bank.sqlite --merge=job1.sqlite,job2.sqlite
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Any, Sequence

from absl import app, flags

from gnnjax.design import bank as bank_lib
from gnnjax.design.design import FIELDS, validate_field
from gnnjax.design.trial import STATUSES, TrialResult

FLAGS = flags.FLAGS
flags.DEFINE_string("db", None, "The bank file (e.g. results/design_space/bank.sqlite).",
                    required=True)
flags.DEFINE_string("task", None, "Only this task (default: every task).")
flags.DEFINE_integer("top", 16, "Show the best N trials (0: all).")
flags.DEFINE_enum("status", None, list(STATUSES), "Only trials with this status.")
flags.DEFINE_string("where", None, "Design-field filter: comma-separated field=value pairs, "
                    "e.g. stage_type=skipsum,batch_norm=True,layers_mp=4.")
flags.DEFINE_string("metric", "val_accuracy", "Order by this final metric, '[best_]<split>_"
                    "<metric>' (e.g. val_accuracy, best_val_roc_auc, val_loss), or num_params.")
flags.DEFINE_string("export", None, "Also write the selected trials to this .csv or .json file.")
flags.DEFINE_bool("tasks", False, "List the bank's tasks with their trial counts (per seed) "
                  "and exit.")
flags.DEFINE_list("merge", [], "Copy into --db (created if missing) the trials of these bank "
                  "files that --db lacks, with their evaluations, then exit. Trials already in "
                  "--db are never touched, so merging twice is harmless.")

# Fields shown in the table, with short headers.
_SHOWN_FIELDS = (("stage_type", "stage"), ("layers_pre_mp", "pre"), ("layers_mp", "mp"),
                 ("layers_post_mp", "post"), ("aggregation", "agg"), ("activation", "act"),
                 ("batch_norm", "bn"), ("dropout", "drop"), ("conv_type", "conv"),
                 ("dim_inner", "dim"), ("learning_rate", "lr"), ("batch_size", "batch"),
                 ("epochs", "epochs"))


def _parse_value(text: str) -> Any:
  """'True' -> True, '4' -> 4, '0.01' -> 0.01, 'None' -> None, anything else -> the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_where(text: str | None) -> dict[str, Any]:
  """'stage_type=skipsum,batch_norm=True' -> {'stage_type': 'skipsum', 'batch_norm': True}.

  Raises:
    ValueError: a pair without '=', an unknown field (valid ones listed) or an invalid value.
  """
  where: dict[str, Any] = {}
  for pair in (text or "").split(","):
    if not pair.strip():
      continue
    field, sep, value = pair.partition("=")
    field = field.strip()
    if not sep:
      raise ValueError(f"--where: expected field=value, got {pair!r}")
    if field not in FIELDS:
      raise ValueError(f"--where: unknown Design field {field!r}; valid fields: {list(FIELDS)}")
    value = _parse_value(value.strip())
    where[field] = None if value is None else validate_field(field, value)
  return where


def _metric_parts(metric: str) -> tuple[str, str, str]:
  """'best_val_roc_auc' -> ('best', 'val', 'roc_auc'); 'val_accuracy' -> ('final', 'val', ...)."""
  which = "final"
  if metric.startswith("best_"):
    which, metric = "best", metric[len("best_"):]
  split, name = bank_lib.split_metric_name(metric)
  return which, split, name


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4f}" if value == value else "nan"
  return str(value)


def format_results(results: Sequence[TrialResult], metric: str = "val_accuracy") -> str:
  """The table printed by the CLI: key, key design fields, params, metric on val/test, status."""
  which, split, name = _metric_parts(metric)
  if not split:  # ordering by a column: show accuracy
    which, name = "final", "accuracy"
  headers = ["task", "design_id", "seed", *[short for _, short in _SHOWN_FIELDS], "params",
             f"val_{name}", f"test_{name}", "status"]
  rows = []
  for r in results:
    metrics = r.best if which == "best" else r.final
    rows.append([r.key.task, r.key.design_id, str(r.key.seed),
                 *[_cell(r.design.get(field)) for field, _ in _SHOWN_FIELDS],
                 str(r.num_params), _cell(metrics.get("val", {}).get(name)),
                 _cell(metrics.get("test", {}).get(name)), r.status])
  widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
            for i, h in enumerate(headers)]
  lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
  lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
  return "\n".join(lines)


def merge_banks(db: str, sources: Sequence[str]) -> int:
  """Copies into the bank at `db` the trials of each source bank it lacks; prints a line per
  source and returns the trials copied. Every source is checked before anything is copied."""
  missing = [source for source in sources if not os.path.exists(source)]
  if missing:
    raise ValueError(f"--merge: no bank at {', '.join(missing)}")
  total = 0
  with bank_lib.Bank(db) as bank:
    for source in sources:
      copied = bank.merge_from(source)
      total += copied
      print(f"merged {copied} new trial(s) from {source}")
    print(f"{db}: {bank.count()} trial(s)")
  return total


def format_tasks(bank: bank_lib.Bank) -> str:
  """One line per task: its trial count, and per seed where there are several."""
  lines = []
  for task in bank.tasks():
    seeds = bank.seed_counts(task)
    per_seed = ("" if len(seeds) < 2 else
                " (" + ", ".join(f"seed {s}: {n}" for s, n in seeds.items()) + ")")
    lines.append(f"{task}\t{sum(seeds.values())} trials{per_seed}")
  return "\n".join(lines)


def main(argv):
  del argv
  if FLAGS.merge:
    merge_banks(FLAGS.db, FLAGS.merge)
    return
  if not os.path.exists(FLAGS.db):
    raise ValueError(f"no bank at {FLAGS.db} (run experiments.design_space to create one)")
  with bank_lib.Bank(FLAGS.db) as bank:
    if FLAGS.tasks:
      print(format_tasks(bank))
      return
    query = dict(task=FLAGS.task, status=FLAGS.status, where=parse_where(FLAGS.where),
                 order_by=FLAGS.metric, top=FLAGS.top or None)
    results = bank.query(**query)
    print(format_results(results, FLAGS.metric))
    print(f"{len(results)} trial(s) of {bank.count(FLAGS.task)} in {FLAGS.db}"
          f"{' for ' + FLAGS.task if FLAGS.task else ''}")
    if FLAGS.export:
      count = bank.export(FLAGS.export, **query)
      print(f"wrote {count} trial(s) to {FLAGS.export}")


def run() -> None:
  try:
    app.run(main)
  except ValueError as e:  # bad --where / --metric: a message, not a traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
