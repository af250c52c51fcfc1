"""Population checkpoints: an in-flight chunk of the engine, saved every N epochs, found again.

A chunk of `gnnjax.design.engine` (members of one superset program trained together) saves its
train state every `checkpoint_every` epochs under `<checkpoint_dir>/<chunk id>/`:

    manifest.json   what the chunk is: task, dataset fingerprint, eval period, the members
                    (design id, seed, resolved design) in population order, the program
                    (superset layout, optimizers, task type, steps per epoch), padded size and
                    device count. Written once, atomically (temporary file + rename), before
                    the first save.
    state/<epoch>/  an orbax checkpoint (`gnnjax.training.checkpoint.Checkpointer`): the
                    population's arrays (params, batch stats, optimizer state, keys) and a JSON
                    document (epochs done, optimizer step, divergence flags, each member's
                    history and best evaluation, seconds spent). Orbax writes a step into a
                    temporary folder and renames it when complete, so a kill mid-save keeps
                    the previous step.

On a new call, the engine looks for manifests whose members are all among the trials it was
asked for, with the same resolved designs, task, data and eval period (`find_resumable`). Such a
chunk is rebuilt with the saved program (so its arrays have the saved shapes) and continues
from its last step: batches (per (seed, epoch)) and dropout keys (per step) are functions of
the position, so the resumed chunk computes what the uninterrupted one would have. The chunk's
folder is deleted once its results have been handed over (after the caller committed them).
A folder left behind by a kill between the commit and the deletion matches no later request
(its trials are in the bank) and is removed by `remove_all` when a study completes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from gnnjax import files

MANIFEST = "manifest.json"
STATE = "state"
FORMAT_VERSION = 1


def dataset_fingerprint(dataset: Any) -> str:
  """A short hash of a GraphDataset's name, structure, features and labels (a resumed chunk
  must see the data it was trained on)."""
  digest = hashlib.sha256()
  digest.update(f"{dataset.name}|{dataset.task_level}|{dataset.task_type}|"
                f"{dataset.num_outputs}|{len(dataset.graphs)}".encode())
  for graph in dataset.graphs:
    for part in (graph.senders, graph.receivers, graph.n_node, graph.nodes, graph.edges,
                 graph.globals):
      for leaf in _leaves(part):
        array = np.ascontiguousarray(leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
  return digest.hexdigest()[:16]


def _leaves(tree: Any) -> list:
  if tree is None:
    return []
  if isinstance(tree, Mapping):
    return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
  return [tree]


def _encode(value: Any) -> Any:
  """JSON-safe: non-finite floats become strings, NumPy scalars Python numbers."""
  if isinstance(value, Mapping):
    return {str(k): _encode(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_encode(v) for v in value]
  if isinstance(value, (np.generic,)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return {"__float__": repr(value)}
  return value


def _decode(value: Any) -> Any:
  if isinstance(value, Mapping):
    if set(value) == {"__float__"}:
      return float(value["__float__"])
    return {k: _decode(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_decode(v) for v in value]
  return value


def program_to_json(program: Any) -> dict[str, Any]:
  """An engine `_Program` (frozen dataclasses of primitives and tuples) as a JSON object."""
  return json.loads(json.dumps(dataclasses.asdict(program)))


def tuples(value: Any) -> Any:
  """Lists back to tuples, recursively (JSON has no tuples; layouts hash them)."""
  if isinstance(value, list):
    return tuple(tuples(v) for v in value)
  return value


def manifest(*, task: str, fingerprint: str, eval_every: int,
             members: Sequence[tuple[str, int, Mapping[str, Any]]], program: Any, size: int,
             num_devices: int, pad_to: tuple[int, int] | None = None) -> dict[str, Any]:
  """The description of a chunk that decides whether a checkpoint can resume a request.

  Args:
    members: (planned design id, seed, resolved design dict) in the chunk's order.
    program: the engine's `_Program` of the chunk.
    pad_to: (n_node, n_edge) its batches are padded to at least, so that a resumed chunk
      runs on the batch shapes it was compiled and saved with.
  """
  description = {"version": FORMAT_VERSION, "task": task, "fingerprint": fingerprint,
                 "eval_every": int(eval_every),
                 "members": [[d, int(s), dict(r)] for d, s, r in members],
                 "program": program_to_json(program), "size": int(size),
                 "num_devices": int(num_devices)}
  if pad_to is not None:
    description["pad_to"] = [int(pad_to[0]), int(pad_to[1])]
  return description


def chunk_id(description: Mapping[str, Any]) -> str:
  text = json.dumps(description, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


class _QuietOrbax(logging.Filter):
  """Drops orbax's INFO records (about 40 lines per save through absl's logger)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


_QUIET = _QuietOrbax()


class ChunkCheckpoint:
  """The checkpoint folder of one chunk: manifest plus orbax steps (epochs done)."""

  def __init__(self, checkpoint_dir: str | os.PathLike, description: Mapping[str, Any]):
    self.description = dict(description)
    self.path = os.path.join(os.fspath(checkpoint_dir), chunk_id(description))
    self._checkpointer = None

  @property
  def _manager(self):
    if self._checkpointer is None:
      from gnnjax.training import checkpoint as ckpt_lib  # orbax: imported only when used
      absl_logger = logging.getLogger("absl")
      if _QUIET not in absl_logger.filters:
        absl_logger.addFilter(_QUIET)
      self._checkpointer = ckpt_lib.Checkpointer(os.path.join(self.path, STATE), keep=2)
    return self._checkpointer

  def latest_epoch(self) -> int | None:
    """Epochs done at the last complete save (None: nothing saved)."""
    if not os.path.isdir(os.path.join(self.path, STATE)):
      return None
    return self._manager.latest_step()

  def save(self, epochs_done: int, arrays: Any, metadata: Mapping[str, Any]) -> None:
    if not os.path.exists(os.path.join(self.path, MANIFEST)):
      files.write_json_atomic(os.path.join(self.path, MANIFEST), self.description,
                              sort_keys=True)
    self._manager.save(int(epochs_done), arrays, _encode(dict(metadata)))

  def restore(self, like: Any) -> tuple[Any, dict[str, Any]]:
    """(arrays in `like`'s structure, shapes and shardings; metadata) of the last save."""
    arrays, metadata = self._manager.restore(like)
    return arrays, _decode(metadata)

  def close(self) -> None:
    if self._checkpointer is not None:
      self._checkpointer.close()
      self._checkpointer = None

  def remove(self) -> None:
    self.close()
    shutil.rmtree(self.path, ignore_errors=True)


def find_resumable(checkpoint_dir: str | os.PathLike | None, *, task: str, fingerprint: str,
                   eval_every: int, num_devices: int,
                   available: Mapping[tuple[str, int], Mapping[str, Any]]
                   ) -> list[ChunkCheckpoint]:
  """Saved chunks that can continue part of a request, disjoint, largest first.

  Args:
    available: (planned design id, seed) -> resolved design dict of every requested trial.

  Returns:
    Checkpoints with at least one complete save whose task, data fingerprint, eval period and
    device count match and whose members are all available with the same resolved designs.
  """
  if not checkpoint_dir or not os.path.isdir(checkpoint_dir):
    return []
  candidates = []
  for name in sorted(os.listdir(checkpoint_dir)):
    path = os.path.join(checkpoint_dir, name, MANIFEST)
    try:
      with open(path) as f:
        description = json.load(f)
    except (OSError, ValueError):
      continue
    if (description.get("version") != FORMAT_VERSION or description.get("task") != task
        or description.get("fingerprint") != fingerprint
        or description.get("eval_every") != int(eval_every)
        or description.get("num_devices") != int(num_devices)):
      continue
    members = [(d, int(s), r) for d, s, r in description["members"]]
    if all(available.get((d, s)) == r for d, s, r in members):
      candidates.append(ChunkCheckpoint(checkpoint_dir, description))
  claimed: set[tuple[str, int]] = set()
  chosen = []
  for candidate in sorted(candidates, key=lambda c: -len(c.description["members"])):
    keys = {(d, int(s)) for d, s, _ in candidate.description["members"]}
    if keys & claimed or candidate.latest_epoch() is None:
      continue
    claimed |= keys
    chosen.append(candidate)
  return chosen


def remove_all(checkpoint_dir: str | os.PathLike | None) -> None:
  """Deletes every chunk checkpoint under `checkpoint_dir` (a study that is complete)."""
  if checkpoint_dir and os.path.isdir(checkpoint_dir):
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
