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


def _umask() -> int:
  mask = os.umask(0)  # reading the mask means setting it; put back at once
  os.umask(mask)
  return mask


# The process's file mode mask, read once (at import, before any thread writes): mkstemp
# creates 0600 files, and a results file should get the mode open() would give it.
_FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: str | os.PathLike, payload: bytes | str) -> None:
  """Writes `payload` (bytes, or text as UTF-8) to `path` atomically, creating its folder,
  with the mode open() would give a new file (0666 less the umask)."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  data = payload.encode() if isinstance(payload, str) else payload
  handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
  try:
    with os.fdopen(handle, "wb") as f:
      os.fchmod(f.fileno(), _FILE_MODE)
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
