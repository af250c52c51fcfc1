"""Shared pytest fixtures.

Real-data tests read the offline dataset copies from `$GNNJAX_DATA`, defaulting to
`../shared/datasets` beside the checkout. Outside CI, a missing folder skips those tests; in CI
(`CI=true`) it is an error, so a broken checkout cannot pass silently.
"""

import os
import pathlib
import urllib.error

import pytest

from gnnjax.data import sources

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  path = pathlib.Path(os.environ.get("GNNJAX_DATA", REPO.parent / "shared" / "datasets"))
  if not path.is_dir():
    message = f"dataset folder {path} not found (set GNNJAX_DATA)"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
  """Keeps tests from writing into the user's real download cache."""
  monkeypatch.setenv("GNNJAX_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  """No test may reach the network: downloads are refused unless a test installs its own fake."""
  def refuse(url, timeout=60.0):
    raise urllib.error.URLError(f"offline test, refused {url}")
  monkeypatch.setattr(sources, "_download", refuse)
