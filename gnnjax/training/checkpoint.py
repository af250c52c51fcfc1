"""Orbax checkpoints behind two functions, so the rest of gnnjax never touches orbax directly.

A checkpoint holds a pytree of arrays (train state, best weights) plus a JSON document (epoch,
metric history). Orbax writes each step to a temporary folder and renames it when complete, so
an interrupted save never replaces the last good checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores (arrays, metadata) pairs under `directory`, keeping the last `keep`."""

  def __init__(self, directory: str | os.PathLike, keep: int = 2):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(os.fspath(directory)),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, arrays: Any, metadata: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays), metadata=ocp.args.JsonSave(metadata)))
    self._manager.wait_until_finished()

  def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores the arrays into the structure of `like` (a pytree of arrays or ShapeDtypeStructs)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError("no checkpoint to restore")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()))
    return restored["arrays"], restored["metadata"]

  def close(self) -> None:
    self._manager.close()
