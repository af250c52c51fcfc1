"""A JSON cache of FIM task features (task name -> L2-normalised vector).

Computing a task's feature (`fisher.task_feature`: U anchors x R initialisations) costs minutes
on a CPU, so experiments keep the results in one JSON file and compute only what is missing.
Writes are atomic (temporary file + rename), so a killed run never leaves a torn cache.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gnnjax import files

from gnnjax.design.design import Design


def load_features(path: str | None) -> dict[str, np.ndarray]:
  """The cached features ({} when there is no file)."""
  if path is None or not os.path.exists(path):
    return {}
  with open(path) as f:
    return {task: np.asarray(v, np.float64) for task, v in json.load(f).items()}


def save_features(path: str, features: Mapping[str, np.ndarray]) -> None:
  """Writes the cache atomically."""
  files.write_json_atomic(path, {t: np.asarray(v).tolist() for t, v in features.items()},
                          indent=1)


def compute_features(tasks: Sequence[str], cache_path: str | None, load: Callable[[str], Any],
                     num_anchors: int, fisher_seeds: int, max_examples: int | None,
                     print_fn: Callable[[str], None] = print, num_probes: int = 0,
                     compile_workers: int = 1, anchors: Sequence[Design] | None = None
                     ) -> dict[str, np.ndarray]:
  """FIM task features of `tasks` (`gnnjax.tasks.fisher.task_feature`), read from / added to
  the cache file. `load(task)` returns the task's dataset; `anchors` default to AutoTransfer's
  12 (the first `num_anchors` are used)."""
  features = load_features(cache_path)
  missing = [t for t in tasks if t not in features]
  if missing:
    from gnnjax.tasks import anchors as anchors_lib
    from gnnjax.tasks import fisher
    config = fisher.FisherConfig(num_seeds=fisher_seeds, max_examples=max_examples,
                                 num_probes=num_probes)
    anchors = list(anchors or anchors_lib.AUTOTRANSFER_ANCHORS)[:num_anchors]
    for i, task in enumerate(missing):
      print_fn(f"FIM features {i + 1}/{len(missing)}: {task} ({len(anchors)} anchors x "
               f"{fisher_seeds} seeds)")
      result = fisher.task_feature(load(task), anchors, config,
                                   progress=lambda line: print_fn("  " + line),
                                   compile_workers=compile_workers)
      features[task] = result.feature
      print_fn(f"  feature {np.round(result.feature, 3).tolist()} (compile "
               f"{result.compile_seconds.sum():.1f} s, run {result.run_seconds.sum():.1f} s)")
      if cache_path:
        save_features(cache_path, features)
  return {t: features[t] for t in tasks}
