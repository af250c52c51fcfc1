"""gnnjax.files: atomic writes leave the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os

import pytest

from gnnjax import files


def test_write_json_atomic_round_trips_and_replaces(tmp_path):
  path = tmp_path / "sub" / "a.json"
  files.write_json_atomic(path, {"b": 1, "a": [1.5]}, sort_keys=True)
  assert path.read_text() == '{"a": [1.5], "b": 1}\n'
  files.write_atomic(path, b"new")
  assert path.read_bytes() == b"new"
  assert os.listdir(tmp_path / "sub") == ["a.json"]  # no temporary left behind


def test_a_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "a.json"
  files.write_json_atomic(path, {"ok": True})
  with pytest.raises(TypeError):
    files.write_json_atomic(path, {"bad": object()})  # fails while serialising
  assert json.loads(path.read_text()) == {"ok": True}
  assert os.listdir(tmp_path) == ["a.json"]


def test_written_files_get_the_mode_open_would_give(tmp_path):
  """mkstemp makes 0600 files; an atomically written results file is as readable as one
  written with open() under the same umask."""
  files.write_atomic(tmp_path / "atomic.txt", "x")
  with open(tmp_path / "plain.txt", "w") as f:
    f.write("x")
  mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777
  assert mode("atomic.txt") == mode("plain.txt")
