"""GraphGym's ranking analysis of a controlled random search (graphgym.md 6.2).

For one studied dimension X, every setup (task, base design) was trained with each choice of X.

1. Pivot: setups x choices of X; a cell is the accuracy of that config, the mean over seeds of
   the final-epoch validation accuracy.
2. Missing cells (failed or absent trials) take that choice's minimum accuracy over all setups;
   setups without any result and choices without any result are dropped (pandas' pivot would
   not have them). Accuracies are rounded to 2 decimals.
3. Per setup: the median m of the negated accuracies; every negated accuracy within 0.021 of m
   is set to m (a tie); ranks use the 'min' method (ties share the best rank: 1, 1, 3). So with
   3 choices a choice within 0.02 of the middle one ties with it, 2 choices tie when
   |diff| <= 0.04, and with 4 choices m is the mean of the middle two.
4. Per choice: the average rank over setups (lower is better) and the rank distribution.

    table = rank_table(results, plan, "batch_norm")
    print(format_table(table))
    plot_ranks([table], "ranks.png")
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from gnnjax.design import trial as trial_lib
from gnnjax.design.trial import TrialResult

TIE_THRESHOLD = 0.021
DECIMALS = 2


def choice_label(choice: Any) -> str:
  """A short label for a dimension's choice: 'True', '0.01', 'skipsum', or for a joint
  choice 'conv_type=gat,heads=4'."""
  if isinstance(choice, Mapping):
    return ",".join(f"{k}={v}" for k, v in choice.items())
  return str(choice)


@dataclasses.dataclass
class RankTable:
  """Ranks of one dimension's choices over the setups of a controlled random search.

  Attributes:
    dim: the studied dimension.
    choices: [C] choice labels, in the space's order.
    setups: [S] setup labels (task, setup_id).
    accuracy: [S, C] float64 accuracies as ranked: missing cells filled, rounded to 2 decimals.
    filled: [S, C] bool, True where the cell had no result and was filled.
    ranks: [S, C] int64 ranks within each setup, 1 = best, ties share the smallest rank.
    absent_choices: choice labels with no result in any setup (left out of the table).
  """

  dim: str
  choices: list[str]
  setups: list[tuple[str, int]]
  accuracy: np.ndarray
  filled: np.ndarray
  ranks: np.ndarray
  absent_choices: list[str] = dataclasses.field(default_factory=list)

  @property
  def num_setups(self) -> int:
    return len(self.setups)

  @property
  def average_rank(self) -> np.ndarray:
    """[C] float64 mean rank over setups (NaN with no setups)."""
    if not self.setups:
      return np.full(len(self.choices), np.nan)
    return self.ranks.mean(axis=0)

  @property
  def rank_counts(self) -> np.ndarray:
    """[C, C] int64: [c, r - 1] = number of setups where choice c has rank r."""
    counts = np.zeros((len(self.choices), len(self.choices)), np.int64)
    for c in range(len(self.choices)):
      counts[c] = np.bincount(self.ranks[:, c] - 1, minlength=len(self.choices))
    return counts

  @property
  def top1_fraction(self) -> np.ndarray:
    """[C] float64 fraction of setups where the choice ranks first (ties included)."""
    if not self.setups:
      return np.full(len(self.choices), np.nan)
    return (self.ranks == 1).mean(axis=0)

  def to_dict(self) -> dict[str, Any]:
    return {"dim": self.dim, "num_setups": self.num_setups, "choices": self.choices,
            "average_rank": _floats(self.average_rank),
            "top1_fraction": _floats(self.top1_fraction),
            "rank_counts": self.rank_counts.tolist(), "filled_cells": int(self.filled.sum()),
            "absent_choices": self.absent_choices, "setups": [list(s) for s in self.setups],
            "accuracy": self.accuracy.tolist(), "ranks": self.ranks.tolist()}


def _floats(values: np.ndarray) -> list[float | None]:
  return [None if math.isnan(v) else round(float(v), 4) for v in values]


# ----------------------------------------------------------------------------------------------
# The steps.


def fill_missing(accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Fills NaN cells with their column's minimum.

  Args:
    accuracy: [S, C] float with NaN for missing cells.

  Returns:
    ([S, C] filled accuracies, [S, C] bool mask of the filled cells).
  """
  missing = np.isnan(accuracy)
  # A column with no value at all is filled with 0 (rank_accuracies drops such columns first).
  column_min = np.nanmin(np.where(missing.all(axis=0)[:, None], 0.0, accuracy.T), axis=1)
  return np.where(missing, column_min[None, :], accuracy), missing


def tie_ranks(accuracy: np.ndarray, threshold: float = TIE_THRESHOLD) -> np.ndarray:
  """GraphGym's per-setup ranks with median ties.

  Args:
    accuracy: [S, C] float accuracies (already rounded, no NaN); higher is better.
    threshold: negated accuracies within this distance of the row median snap to it.

  Returns:
    [S, C] int64 ranks, 1 = best, 'min' method.
  """
  negated = -np.asarray(accuracy, np.float64)
  if negated.size == 0:
    return np.zeros(negated.shape, np.int64)
  median = np.median(negated, axis=1, keepdims=True)
  snapped = np.where(np.abs(negated - median) <= threshold, median, negated)
  return stats.rankdata(snapped, method="min", axis=1).astype(np.int64)


def rank_accuracies(dim: str, choices: Sequence[str], setups: Sequence[tuple[str, int]],
                    accuracy: np.ndarray, threshold: float = TIE_THRESHOLD) -> RankTable:
  """Ranks a setups x choices accuracy pivot (steps 2-4 of the module docstring).

  Args:
    dim: the studied dimension.
    choices: [C] labels.
    setups: [S] labels.
    accuracy: [S, C] float, NaN where a config has no result.
    threshold: the tie threshold.
  """
  accuracy = np.asarray(accuracy, np.float64).reshape(len(setups), len(choices))
  present = ~np.isnan(accuracy)
  keep_setups = present.any(axis=1)
  keep_choices = present.any(axis=0)
  absent = [c for c, keep in zip(choices, keep_choices) if not keep]
  accuracy = accuracy[keep_setups][:, keep_choices]
  filled_accuracy, filled = fill_missing(accuracy)
  rounded = np.round(filled_accuracy, DECIMALS)
  return RankTable(dim=dim, choices=[c for c, keep in zip(choices, keep_choices) if keep],
                   setups=[s for s, keep in zip(setups, keep_setups) if keep],
                   accuracy=rounded, filled=filled, ranks=tie_ranks(rounded, threshold),
                   absent_choices=absent)


def trial_accuracy(result: TrialResult, split: str = "val", metric: str | None = None
                   ) -> float:
  """The final-epoch `metric` of a trial (None: the task's own, `trial.score_metric`: accuracy,
  or ROC-AUC on MoleculeNet), NaN when it failed or did not report it."""
  value = trial_lib.score_of(result.final.get(split, {}), metric)
  if result.status == "failed" or value is None:
    return math.nan
  value = float(value)
  return value if math.isfinite(value) else math.nan


def pivot(results: Sequence[TrialResult], plan: Sequence[Any], dim: str, split: str = "val",
          metric: str | None = None, tasks: Sequence[str] | None = None
          ) -> tuple[list[str], list[tuple[str, int]], np.ndarray]:
  """The setups x choices pivot of dimension `dim` (step 1).

  Args:
    results: trials (any seeds; each cell averages the seeds it finds).
    plan: `study.PlanRow`s (dim, setup_id, choice, design).
    dim: the studied dimension.
    split, metric: the cell value is the mean over seeds of final[split][metric] (metric None:
      the task's own, see `trial_accuracy`).
    tasks: the tasks whose setups count (default: every task in `results`, sorted).

  Returns:
    (choices [C], setups [S] as (task, setup_id), [S, C] float64 with NaN where missing).
  """
  rows = [row for row in plan if row.dim == dim]
  if not rows:
    raise ValueError(f"the plan has no configs for dimension {dim!r}")
  choices = list(dict.fromkeys(row.choice for row in rows))
  setup_ids = sorted({row.setup_id for row in rows})
  tasks = sorted({r.key.task for r in results}) if tasks is None else list(tasks)
  setups = [(task, setup_id) for task in tasks for setup_id in setup_ids]
  values: dict[tuple[str, str], list[float]] = {}
  for result in results:
    accuracy = trial_accuracy(result, split, metric)
    if not math.isnan(accuracy):
      values.setdefault((result.key.task, result.key.design_id), []).append(accuracy)
  matrix = np.full((len(setups), len(choices)), np.nan)
  setup_index = {setup: i for i, setup in enumerate(setups)}
  choice_index = {choice: j for j, choice in enumerate(choices)}
  for task in tasks:
    for row in rows:
      seeds = values.get((task, row.design.design_id))
      if seeds:
        matrix[setup_index[(task, row.setup_id)], choice_index[row.choice]] = np.mean(seeds)
  return choices, setups, matrix


def rank_table(results: Sequence[TrialResult], plan: Sequence[Any], dim: str,
               split: str = "val", metric: str | None = None,
               tasks: Sequence[str] | None = None, threshold: float = TIE_THRESHOLD
               ) -> RankTable:
  """GraphGym's rank table of one dimension from trial results (see the module docstring)."""
  choices, setups, matrix = pivot(results, plan, dim, split, metric, tasks)
  return rank_accuracies(dim, choices, setups, matrix, threshold)


# ----------------------------------------------------------------------------------------------
# Output.


def format_table(table: RankTable) -> str:
  """A text table: per choice, average rank, P[rank 1] and the rank histogram."""
  lines = [f"{table.dim} ({table.num_setups} setups; {int(table.filled.sum())} missing cells "
           f"filled): average rank (lower is better), P[rank 1], setups per rank"]
  if table.absent_choices:
    lines.append(f"  no results at all for: {', '.join(table.absent_choices)}")
  width = max([len(c) for c in table.choices] + [6])
  counts = table.rank_counts
  for c, choice in enumerate(table.choices):
    histogram = " ".join(f"{r + 1}:{n}" for r, n in enumerate(counts[c]))
    lines.append(f"  {choice:<{width}}  {table.average_rank[c]:5.2f}  "
                 f"({table.top1_fraction[c]:.2f})  {histogram}")
  return "\n".join(lines)


def _violins(axis, table: RankTable) -> None:
  positions = np.arange(len(table.choices))
  for c in positions:
    ranks = table.ranks[:, c].astype(np.float64)
    if ranks.size and np.ptp(ranks) > 0:
      parts = axis.violinplot([ranks], positions=[c], showmeans=True, widths=0.8)
      for body in parts["bodies"]:
        body.set_facecolor("C0")
      for name in ("cmeans", "cmins", "cmaxes", "cbars"):
        parts[name].set_color("C0")
    elif ranks.size:  # a KDE of one value is singular: draw a bar at that rank
      axis.plot([c - 0.3, c + 0.3], [ranks[0], ranks[0]], color="C0", linewidth=3)
  axis.set_xticks(positions, table.choices, rotation=30, ha="right")
  axis.set_ylim(0.5, len(table.choices) + 0.5)
  axis.set_yticks(np.arange(1, len(table.choices) + 1))
  axis.invert_yaxis()  # rank 1 on top
  axis.set_ylabel("rank per setup")


def _bars(axis, table: RankTable) -> None:
  positions = np.arange(len(table.choices))
  axis.bar(positions, np.nan_to_num(table.average_rank), color="C1")
  axis.set_xticks(positions, table.choices, rotation=30, ha="right")
  axis.set_ylim(0, max(len(table.choices), 1))
  axis.set_yticks(np.arange(0, len(table.choices) + 1))
  axis.set_ylabel("average rank")
  axis.set_title(f"{table.dim} ({table.num_setups} setups)")


def plot_ranks(tables: Sequence[RankTable], path: str | os.PathLike) -> str:
  """Saves a PNG: per dimension, average-rank bars (top) and rank-distribution violins
  (bottom), as GraphGym's Fig. 3. Returns the path."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  if not tables:
    raise ValueError("plot_ranks needs at least one rank table")
  figure, axes = plt.subplots(2, len(tables), figsize=(2.8 * len(tables) + 0.6, 6),
                              squeeze=False)
  for column, table in enumerate(tables):
    _bars(axes[0, column], table)
    _violins(axes[1, column], table)
  figure.tight_layout()
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path
