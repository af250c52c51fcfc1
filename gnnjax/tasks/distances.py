"""Distances between a new task and the bank's tasks (AutoTransfer sec. 3-4).

* `embedding_distances`: the paper's d_e = 1 - z_e(new) . z_e(task), with the projection g
  trained on the bank tasks, supervised by GraphGym's anchor similarity;
* `cosine_distances`: 1 - cos of the raw FIM task features;
* `graphgym_distances`: 1 - Kendall tau of the anchors' performance (needs the new task's
  anchors trained: an oracle for comparisons);
* `task_distances`: one entry point over the three and a distances file.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from gnnjax.design.design import Design
from gnnjax.tasks import embedding
from gnnjax.tasks import features as features_lib
from gnnjax.tasks import similarity as similarity_lib


def cosine_distances(new: np.ndarray, bank: Mapping[str, np.ndarray]) -> dict[str, float]:
  """1 - cos(new, bank task) for each bank task."""
  new = np.asarray(new, np.float64)
  out = {}
  for task, vector in bank.items():
    vector = np.asarray(vector, np.float64)
    cos = float(new @ vector / max(np.linalg.norm(new) * np.linalg.norm(vector), 1e-12))
    out[task] = max(0.0, 1.0 - cos)
  return out


def anchor_similarity(bank, anchors: Sequence[Design] | None = None
                      ) -> tuple[list[str], np.ndarray]:
  """GraphGym's similarity (Kendall tau of the anchors' performance) of the bank tasks that
  hold every anchor (default AutoTransfer's 12; pass `anchors_with_epochs(e)` for a bank whose
  anchors were trained e epochs): (task names, [T, T] matrix)."""
  performance = similarity_lib.anchor_performance_from_bank(bank, anchors)
  return similarity_lib.similarity_matrix(performance)


def embedding_distances(new_feature: np.ndarray, bank_features: Mapping[str, np.ndarray],
                        similarity: tuple[list[str], np.ndarray], seed: int = 0,
                        print_fn: Callable[[str], None] = print) -> dict[str, float]:
  """d_e = 1 - z_e(new) . z_e(task) with g trained on the bank tasks that have both a feature
  and a row of the anchor similarity (falls back to the raw-feature cosine distance when fewer
  than 3 tasks qualify)."""
  names, matrix = similarity
  train = [t for t in names if t in bank_features]
  if len(train) < 3:
    print_fn(f"  only {len(train)} bank task(s) have anchor trials for g's supervision: using "
             "the raw-feature cosine distance")
    return cosine_distances(new_feature, bank_features)
  index = [names.index(t) for t in train]
  features = np.stack([bank_features[t] for t in train])
  params, _ = embedding.train_projection(jax.random.key(seed), features,
                                         matrix[np.ix_(index, index)])
  tasks = list(bank_features)
  z = np.asarray(embedding.project(params, np.stack([new_feature] + [bank_features[t]
                                                                     for t in tasks])))
  return {t: float(max(0.0, 1.0 - z[0] @ z[i + 1])) for i, t in enumerate(tasks)}


def graphgym_distances(bank, new_task: str, bank_tasks: Sequence[str],
                       anchors: Sequence[Design] | None = None) -> dict[str, float]:
  """1 - Kendall tau of anchor performance between the new task and each bank task (needs the
  new task's anchor trials in the bank): GraphGym's exact distance, an oracle for comparisons."""
  names, matrix = anchor_similarity(bank, anchors)
  if new_task not in names:
    raise ValueError(f"the graphgym distance needs the anchors of {new_task!r} in the bank")
  i = names.index(new_task)
  return {t: float(1.0 - matrix[i, names.index(t)]) for t in bank_tasks if t in names}


def task_distances(new_task: str, bank_tasks: Sequence[str], bank, *, distance: str,
                   load: Callable[[str], Any], features_path: str | None = None,
                   distances_json: str | None = None, num_anchors: int = 12,
                   fisher_seeds: int = 5, max_examples: int | None = None,
                   num_probes: int = 0, compile_workers: int = 1, embedding_seed: int = 0,
                   similarity: tuple[list[str], np.ndarray] | None = None,
                   anchors: Sequence[Design] | None = None,
                   print_fn: Callable[[str], None] = print) -> dict[str, float]:
  """{bank task: distance to new_task} (smaller = closer); `new_task` itself is never a bank
  task here.

  Args:
    distance: 'embedding' (the paper's d_e), 'feature' (cosine of raw FIM features), 'graphgym'
      (anchor-ranking Kendall, needs the new task's anchors in the bank) or 'file'
      (`distances_json`: {"task": d} or {"new task": {"task": d}}).
    load: task name -> dataset, for FIM features missing from `features_path`.
    similarity: precomputed `anchor_similarity(bank, anchors)` (g's supervision).
    anchors: the anchor trials to read from the bank (default AutoTransfer's 12).
  """
  bank_tasks = [t for t in bank_tasks if t != new_task]
  if distance == "file":
    if not distances_json:
      raise ValueError("distance 'file' needs distances_json")
    with open(distances_json) as f:
      table = json.load(f)
    if new_task in table and isinstance(table[new_task], Mapping):
      table = table[new_task]
    return {t: float(table[t]) for t in bank_tasks if t in table}
  if distance == "graphgym":
    return graphgym_distances(bank, new_task, bank_tasks, anchors)
  if distance not in ("embedding", "feature"):
    raise ValueError(f"unknown distance {distance!r}; choose embedding, feature, graphgym, file")
  features = features_lib.compute_features([new_task, *bank_tasks], features_path, load,
                                           num_anchors, fisher_seeds, max_examples, print_fn,
                                           num_probes, compile_workers)
  bank_features = {t: features[t] for t in bank_tasks}
  if distance == "feature":
    return cosine_distances(features[new_task], bank_features)
  if similarity is None:
    similarity = anchor_similarity(bank, anchors)
  names, matrix = similarity
  keep = [i for i, t in enumerate(names) if t != new_task]  # g never sees the new task
  similarity = ([names[i] for i in keep], matrix[np.ix_(keep, keep)])
  return embedding_distances(features[new_task], bank_features, similarity, embedding_seed,
                             print_fn)
