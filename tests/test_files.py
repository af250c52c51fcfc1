"""gnnjax.files: atomic writes leave the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gnnjax import files
from tests.conftest import REPO


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
  written with open() under the same umask. The module reads the umask once, at import, so
  the check runs in a fresh interpreter under umask 022 (under 077 both would be 0600 and the
  test could not fail)."""
  script = (
      "import os, sys\n"
      "os.umask(0o022)\n"
      "from gnnjax import files\n"
      "d = sys.argv[1]\n"
      "files.write_atomic(os.path.join(d, 'atomic.txt'), 'x')\n"
      "open(os.path.join(d, 'plain.txt'), 'w').write('x')\n")
  subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, cwd=REPO)
  mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777
  assert mode("plain.txt") == 0o644
  assert mode("atomic.txt") == 0o644
