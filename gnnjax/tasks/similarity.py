"""GraphGym task similarity: Kendall rank correlation of the anchors' performance on two tasks.

You et al. (2020, sec. 6.3): train the same U anchor designs on every task; the similarity of two
tasks is Kendall's tau between the anchors' performance vectors (tau-b, which handles ties, as
`scipy.stats.kendalltau`). tau in [-1, 1]; 1 means the anchors rank identically. AutoTransfer's
GraphGym distance d_g orders tasks by this similarity (larger tau = closer).

Note: AutoTransfer's code takes tau between the two tasks' argsort sequences (anchor ids sorted
by score), which differs from tau between rank vectors; we follow the papers (rank vectors,
i.e. the score vectors themselves, since tau depends only on their order).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from gnnjax.design.design import Design
from gnnjax.tasks import anchors as anchors_lib


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
  """Kendall's tau-b of two equally long vectors (NaN if either is constant).

  tau_b = sum_{i<j} sign(x_i - x_j) sign(y_i - y_j) / sqrt(P_x P_y), where P_x counts the pairs
  not tied in x (and P_y in y); equals scipy.stats.kendalltau(x, y).statistic.

  Raises:
    ValueError: different lengths, fewer than 2 entries, or NaN entries.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 1 or x.shape != y.shape:
    raise ValueError(f"kendall_tau needs two 1-d vectors of equal length, got {x.shape} and "
                     f"{y.shape}")
  if x.size < 2:
    raise ValueError(f"kendall_tau needs at least 2 entries, got {x.size}")
  if np.isnan(x).any() or np.isnan(y).any():
    raise ValueError("kendall_tau: NaN entries (give failed anchors a score first)")
  upper = np.triu_indices(x.size, k=1)
  sx = np.sign(x[:, None] - x[None, :])[upper]
  sy = np.sign(y[:, None] - y[None, :])[upper]
  denominator = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
  if denominator == 0.0:
    return math.nan
  return float(np.dot(sx, sy) / denominator)


def kendall_matrix(vectors: np.ndarray) -> np.ndarray:
  """Pairwise Kendall tau-b between the rows of `vectors` [T, U] -> [T, T] (unit diagonal for
  non-constant rows)."""
  vectors = np.asarray(vectors, np.float64)
  if vectors.ndim != 2:
    raise ValueError(f"expected a [tasks, anchors] array, got shape {vectors.shape}")
  t = vectors.shape[0]
  out = np.eye(t)
  for i in range(t):
    for j in range(i + 1, t):
      out[i, j] = out[j, i] = kendall_tau(vectors[i], vectors[j])
  return out


def similarity_matrix(performance: Mapping[str, Sequence[float]]
                      ) -> tuple[list[str], np.ndarray]:
  """Task similarity matrix from task -> anchor performance vector (same anchor order).

  Returns:
    (task names in the mapping's order, [T, T] Kendall tau matrix, symmetric, unit diagonal).

  Raises:
    ValueError: vectors of different lengths.
  """
  names = list(performance)
  lengths = {len(performance[n]) for n in names}
  if len(lengths) > 1:
    raise ValueError(f"anchor performance vectors have different lengths {sorted(lengths)}; "
                     "every task needs one score per anchor, in the same anchor order")
  if not names:
    return [], np.zeros((0, 0))
  return names, kendall_matrix(np.array([performance[n] for n in names], np.float64))


def distance_from_similarity(similarity: np.ndarray) -> np.ndarray:
  """GraphGym distance d_g = 1 - tau (in [0, 2]); only its order matters to the triplet loss."""
  return 1.0 - np.asarray(similarity, np.float64)


def anchor_performance_from_bank(bank, anchors: Sequence[Design] | None = None,
                                 tasks: Sequence[str] | None = None,
                                 metric: str = "val", which: str = "final",
                                 failed_score: float | None = None
                                 ) -> dict[str, np.ndarray]:
  """task -> [U] anchor scores, read from the task-model bank's anchor trials.

  Args:
    bank: a `gnnjax.design.bank.Bank`.
    anchors: the anchor designs (default AutoTransfer's 12); trials are matched by design_id.
    tasks: tasks to read (default: every bank task that has a trial of every anchor).
    metric: '<split>_<metric>' scored per trial ('<split>': the task's own metric, accuracy or
      MoleculeNet's ROC-AUC; see `anchors.performance`).
    which: 'final' or 'best' (at the best validation epoch).
    failed_score: score of an anchor whose trials all failed/diverged (default: the task's
      lowest anchor score, so it ranks last).

  Returns:
    task -> mean score over the anchor's seeds, in anchor order.

  Raises:
    ValueError: a requested task lacks trials of some anchor (named).
  """
  anchors = list(anchors if anchors is not None else anchors_lib.AUTOTRANSFER_ANCHORS)
  ids = [a.design_id for a in anchors]
  explicit = tasks is not None
  tasks = list(tasks) if explicit else bank.tasks()
  out = {}
  for task in tasks:
    scores = {i: [] for i in ids}
    for result in bank.query(task=task):
      if result.key.design_id in scores:
        scores[result.key.design_id].append(anchors_lib.performance(result, metric, which))
    missing = [n for n, i in zip(range(len(ids)), ids) if not scores[i]]
    if missing:
      if explicit:
        raise ValueError(f"task {task!r} has no trials of anchor(s) {missing} (0-based) in the "
                         "bank; train the anchors on it first")
      continue
    vector = np.array([np.nanmean(v) if not np.all(np.isnan(v)) else np.nan
                       for v in (scores[i] for i in ids)])
    if np.isnan(vector).any():
      fill = failed_score if failed_score is not None else (
          np.nanmin(vector) - 1.0 if not np.all(np.isnan(vector)) else 0.0)
      vector = np.where(np.isnan(vector), fill, vector)
    out[task] = vector
  return out


def plot_heatmap(names: Sequence[str], matrix: np.ndarray, path: str,
                 title: str = "Task similarity (Kendall tau of anchor performance)") -> str:
  """Writes a heatmap PNG of a [T, T] similarity matrix (values annotated); returns the path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  matrix = np.asarray(matrix, np.float64)
  t = len(names)
  if matrix.shape != (t, t):
    raise ValueError(f"matrix shape {matrix.shape} does not match {t} task names")
  size = max(4.0, 0.55 * t + 2.0)
  fig, ax = plt.subplots(figsize=(size + 1.5, size))
  image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
  ax.set_xticks(range(t), names, rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(t), names, fontsize=8)
  if t <= 30:
    for i in range(t):
      for j in range(t):
        if np.isfinite(matrix[i, j]):
          ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                  color="white" if abs(matrix[i, j]) > 0.6 else "black")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)
  return path
