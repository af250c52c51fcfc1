"""Where dataset files come from: a local data root, or a download cache with checksums.

Resolution order for a dataset file `<collection>/<name>` (e.g. `planetoid/ind.cora.x`):
  1. the explicit `data_dir` argument (the `--data_dir` flag of the experiments),
  2. the `GNNJAX_DATA` environment variable,
  3. the cache folder (`$GNNJAX_CACHE`, else `$XDG_CACHE_HOME/gnnjax`, else `~/.cache/gnnjax`),
     filled on demand from the file's canonical URL and verified against its SHA-256.
A data root is laid out like `shared/datasets`: one folder per collection (planetoid/, tu/,
moleculenet/, graphgym_synthetic/). If nothing local has the file and the download fails (no
network), `DatasetUnavailableError` says exactly which file to place where.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import urllib.error
import urllib.request
import zipfile

from gnnjax import files

ENV_DATA = "GNNJAX_DATA"
ENV_CACHE = "GNNJAX_CACHE"


class DatasetUnavailableError(FileNotFoundError):
  """A dataset file is neither local nor downloadable."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """One dataset file.

  Attributes:
    relpath: path under a data root, e.g. 'planetoid/ind.cora.x'.
    url: canonical download URL. For members of an archive, the archive's URL.
    sha256: expected SHA-256 of the file itself (not of the archive), or None if unknown.
    archive_member: path of the file inside the zip archive at `url`, if it comes from one.
  """

  relpath: str
  url: str
  sha256: str | None = None
  archive_member: str | None = None


def cache_dir() -> pathlib.Path:
  if os.environ.get(ENV_CACHE):
    return pathlib.Path(os.environ[ENV_CACHE]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "gnnjax"


def data_roots(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """The local roots searched, in order (explicit, environment, cache)."""
  roots = []
  if data_dir:
    roots.append(pathlib.Path(data_dir).expanduser())
  if os.environ.get(ENV_DATA):
    roots.append(pathlib.Path(os.environ[ENV_DATA]).expanduser())
  roots.append(cache_dir())
  return roots


def sha256_of(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _download(url: str, timeout: float = 60.0) -> bytes:
  request = urllib.request.Request(url, headers={"User-Agent": "gnnjax"})
  with urllib.request.urlopen(request, timeout=timeout) as response:
    return response.read()


def fetch(remote: RemoteFile, data_dir: str | os.PathLike | None = None,
          download: bool = True) -> pathlib.Path:
  """Returns a local path for `remote`, downloading it into the cache if needed.

  Raises:
    DatasetUnavailableError: if no root has the file and it cannot be downloaded.
    DatasetChecksumError: if a downloaded file does not match its checksum.
  """
  roots = data_roots(data_dir)
  for root in roots:
    candidate = root / remote.relpath
    if candidate.is_file():
      return candidate

  target = cache_dir() / remote.relpath
  where = ", ".join(str(r) for r in roots)
  if not download:
    raise DatasetUnavailableError(
        f"{remote.relpath} not found under any data root ({where}); downloads are disabled. "
        f"Place the file at <data_dir>/{remote.relpath} and pass --data_dir or set {ENV_DATA}.")
  try:
    if remote.archive_member is None:
      payload = _download(remote.url)
    else:
      # Archives are kept in the cache so that their other members need no new download.
      archive_path = cache_dir() / "_archives" / remote.url.rsplit("/", 1)[-1]
      if not archive_path.is_file():
        files.write_atomic(archive_path, _download(remote.url))
      with zipfile.ZipFile(archive_path) as archive:
        if remote.archive_member not in archive.namelist():
          raise ArchiveMemberMissingError(
              f"{remote.url} has no member {remote.archive_member}")
        payload = archive.read(remote.archive_member)
  except (urllib.error.URLError, OSError, zipfile.BadZipFile) as e:
    raise DatasetUnavailableError(
        f"{remote.relpath} not found under any data root ({where}) and the download from "
        f"{remote.url} failed ({e}). If this machine is offline, copy the file to "
        f"<data_dir>/{remote.relpath} and pass --data_dir=<data_dir> or set {ENV_DATA}=<data_dir>."
    ) from e
  if remote.sha256 is not None:
    got = hashlib.sha256(payload).hexdigest()
    if got != remote.sha256:
      raise DatasetChecksumError(
          f"checksum mismatch for {remote.relpath} downloaded from {remote.url}: expected sha256 "
          f"{remote.sha256}, got {got}; the file was not saved.")
  files.write_atomic(target, payload)
  return target


class ArchiveMemberMissingError(KeyError):
  """The downloaded archive exists but does not contain the requested file."""


class DatasetChecksumError(ValueError):
  """A downloaded file does not match its published checksum."""


def find_collection_dir(collection: str, data_dir: str | os.PathLike | None = None
                        ) -> pathlib.Path | None:
  """The first local `<root>/<collection>` folder that exists, or None."""
  for root in data_roots(data_dir):
    if (root / collection).is_dir():
      return root / collection
  return None

