"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one,
never a torn one.

The payload goes to a temporary file in the target's folder, is flushed to disk, then renamed
over the target (`os.replace` is atomic within one file system).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_atomic(path: str | os.PathLike, payload: bytes | str) -> None:
  """Writes `payload` (bytes, or text as UTF-8) to `path` atomically, creating its folder."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  data = payload.encode() if isinstance(payload, str) else payload
  handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
  try:
    with os.fdopen(handle, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write_json_atomic(path: str | os.PathLike, payload: Any, **dump_kwargs: Any) -> None:
  """`json.dump(payload, **dump_kwargs)` to `path` atomically, with a trailing newline."""
  write_atomic(path, json.dumps(payload, **dump_kwargs) + "\n")
