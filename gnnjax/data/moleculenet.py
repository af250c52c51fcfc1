"""MoleculeNet CSV loaders (the chemprop copies) producing Hu et al. molecular graphs.

Each dataset is one CSV (optionally gzip-compressed): a SMILES column and one column per task, an
empty cell meaning a missing label. Graphs follow `gnnjax.data.featurize`; labels go into
`globals['y']` float32 `[1, T]` (classification: {0, 1}; regression: real values, 0 where missing)
and `globals['y_mask']` bool `[1, T]` (False where the cell is empty or 'nan').

Molecules RDKit cannot parse, or that fall outside the featurisation vocabulary (ClinTox has one
with a dummy atom), are skipped; `dataset.report['skipped']` lists them with their data-row index,
file line and reason. `dataset.report['smiles']` holds the SMILES of the kept molecules in order
(what `gnnjax.data.scaffold.scaffold_split` needs), `report['rows']` their 0-based data-row indices.

Featurised arrays are cached in `<cache>/processed/moleculenet/<name>-<sha256[:16]>-v1.npz`, keyed
by the checksum of the source file, so a second load skips RDKit entirely.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import logging
import os
import pathlib
import tempfile
import zipfile
from typing import Any, Sequence

import jraph
import numpy as np

from gnnjax.data import sources
from gnnjax.data.dataset import MULTITASK, REGRESSION, DataFormatError, GraphDataset
from gnnjax.data.featurize import MoleculeError, mol_to_graph, parse_smiles

_URL = "https://raw.githubusercontent.com/chemprop/chemprop/master/data/"
_CACHE_VERSION = "v1"


@dataclasses.dataclass(frozen=True)
class MoleculeNetSpec:
  """Where one dataset's file lives and how to read it.

  Attributes:
    file: file name under `<data root>/moleculenet/` and under the chemprop `data/` folder.
    sha256: checksum of that file.
    smiles_column: header name of the SMILES column.
    task_columns: header names of the label columns, in output order; None means every column
      except the SMILES one, in file order.
    task_type: MULTITASK (binary labels in {0, 1}) or REGRESSION.
  """

  file: str
  sha256: str
  smiles_column: str
  task_columns: tuple[str, ...] | None
  task_type: str


TOX21_TASKS = ("NR-AR", "NR-AR-LBD", "NR-AhR", "NR-Aromatase", "NR-ER", "NR-ER-LBD",
               "NR-PPAR-gamma", "SR-ARE", "SR-ATAD5", "SR-HSE", "SR-MMP", "SR-p53")
MUV_TASKS = ("MUV-466", "MUV-548", "MUV-600", "MUV-644", "MUV-652", "MUV-689", "MUV-692",
             "MUV-712", "MUV-713", "MUV-733", "MUV-737", "MUV-810", "MUV-832", "MUV-846",
             "MUV-852", "MUV-858", "MUV-859")

DATASETS: dict[str, MoleculeNetSpec] = {
    "bbbp": MoleculeNetSpec(
        "bbbp.csv", "a61e17872cbec0743a6147dc802a1f7550acfe8dc1053f881f4c42a3ce2dc597",
        "smiles", ("p_np",), MULTITASK),
    "bace": MoleculeNetSpec(
        "bace.csv", "847be1e38d3798c60df03e1aaf2ccd0f09f9ed89407de78e80463aa637088532",
        "mol", ("Class",), MULTITASK),
    "clintox": MoleculeNetSpec(
        "clintox.csv", "cc561402d058a0d996a9f5e5d02bc20f6652b7003525b32c3598b8da4b24e9b7",
        "smiles", ("FDA_APPROVED", "CT_TOX"), MULTITASK),
    "hiv": MoleculeNetSpec(
        "hiv.csv.gz", "0a4a7390d6f22035c293e8e0d500655d76233b35f0f68ab128f3ceccdd97a297",
        "smiles", ("HIV_active",), MULTITASK),
    "muv": MoleculeNetSpec(
        "muv.csv.gz", "ee68d1fad0b10440dc494ac3a74cf99168a0b0da9683556b2b48220b88172135",
        "smiles", MUV_TASKS, MULTITASK),
    "sider": MoleculeNetSpec(
        "sider.csv", "71efc6ac4ca82d6545bc512509863281be0f17234afd7adaf71a71899988302e",
        "smiles", None, MULTITASK),
    "tox21": MoleculeNetSpec(
        "tox21.csv", "b58cc1f683e78e3c7a1bf7116e9aac0119804018d100f7b8cdb0857941c31aca",
        "smiles", TOX21_TASKS, MULTITASK),
    "toxcast": MoleculeNetSpec(
        "toxcast.csv.gz", "4b9b4366b02ce7ec7a0831d60f8c46f153c53c5e122376df887476240496abd4",
        "smiles", None, MULTITASK),
    "esol": MoleculeNetSpec(
        "delaney.csv", "887aa5930b0a7e7fcb76a2d25dc0ebe11c23878ca2d8d1e2204ca2c46b175140",
        "smiles", ("logp",), REGRESSION),
    "freesolv": MoleculeNetSpec(
        "freesolv.csv", "97d74c86228d4c16c0fbbf063bb8280354d8152db09a85ade8517a2f43bd9824",
        "smiles", ("freesolv",), REGRESSION),
    "lipophilicity": MoleculeNetSpec(
        "lipo.csv", "aa9bd9669188e35efd908758a75561bba402016d901fed2d0d949289abbcf31c",
        "smiles", ("lipo",), REGRESSION),
    # QM8 repeats the four PBE0 column names (def2SVP, then def2TZVP); all 16 columns are kept.
    "qm8": MoleculeNetSpec(
        "qm8.csv.gz", "04c445ef01a22b6fbe032c10bccd4c73704c3fd96e3c96a675c1b3a7658df877",
        "smiles", None, REGRESSION),
}


def remote_file(name: str) -> sources.RemoteFile:
  """The `RemoteFile` (local path, canonical URL, checksum) of dataset `name`."""
  spec = _spec(name)
  return sources.RemoteFile(f"moleculenet/{spec.file}", _URL + spec.file, spec.sha256)


def load_moleculenet(name: str, data_dir: str | os.PathLike | None = None,
                     limit: int | None = None, use_cache: bool = True) -> GraphDataset:
  """Loads a MoleculeNet dataset as Hu et al. molecular graphs.

  Args:
    name: one of `DATASETS` (case-insensitive).
    data_dir: data root holding `moleculenet/<file>` (see `gnnjax.data.sources.fetch`).
    limit: read only the first `limit` data rows (quick tests); results are then not cached.
    use_cache: read / write the processed-array cache.

  Returns:
    A graph-level dataset: task type MULTITASK (classification) or REGRESSION, `num_outputs` = T.
    Graphs carry `nodes['x']` int32 `[n, 2]`, `edges['x']` int32 `[e, 2]`, `globals['y']` float32
    `[1, T]` and `globals['y_mask']` bool `[1, T]`.

  Raises:
    ValueError: unknown dataset name.
    DataFormatError: a malformed file (missing column, wrong cell count, non-numeric label).
  """
  key = name.lower()
  spec = _spec(key)
  if limit is not None and limit < 1:
    raise ValueError(f"limit must be a positive number of rows, got {limit}")
  path = sources.fetch(remote_file(key), data_dir)
  checksum = sources.sha256_of(path)
  if checksum != spec.sha256:
    logging.warning("%s: sha256 %s differs from the published %s", path, checksum, spec.sha256)
  cache_path = _cache_path(key, checksum)
  cacheable = use_cache and limit is None
  if cacheable and cache_path.is_file():
    try:
      return _load_cached(key, spec, cache_path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      logging.warning("ignoring unreadable cache %s (%s)", cache_path, e)
  arrays, report = _process(path, spec, limit)
  report.update(source=str(path), sha256=checksum, from_cache=False)
  if cacheable:
    _save_cached(cache_path, arrays, report)
  return _to_dataset(key, spec, arrays, report)


def _spec(name: str) -> MoleculeNetSpec:
  try:
    return DATASETS[name.lower()]
  except KeyError:
    raise ValueError(f"unknown MoleculeNet dataset {name!r}; valid names: "
                     f"{', '.join(sorted(DATASETS))}") from None


# Reading the CSV -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Table:
  """The cells of a MoleculeNet CSV. `lines[i]` is the 1-based file line of data row i."""

  task_names: list[str]
  smiles: list[str]
  labels: list[list[str]]
  lines: list[int]


def _open_text(path: pathlib.Path) -> io.TextIOBase:
  if path.name.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
  return open(path, "rt", encoding="utf-8-sig", newline="")


def _read_table(path: pathlib.Path, spec: MoleculeNetSpec, limit: int | None) -> _Table:
  """Reads the SMILES and label cells of the first `limit` data rows (all when None)."""
  with _open_text(path) as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header:
      raise DataFormatError(f"{path}: line 1: expected a header line, found an empty file")
    smiles_index, task_indices = _column_indices(path, header, spec)
    table = _Table([header[i] for i in task_indices], [], [], [])
    for row in reader:
      if limit is not None and len(table.smiles) >= limit:
        break
      if not row:  # blank line
        continue
      if len(row) != len(header):
        raise DataFormatError(
            f"{path}: line {reader.line_num}: expected {len(header)} cells (one per header "
            f"column), found {len(row)}")
      table.smiles.append(row[smiles_index].strip())
      table.labels.append([row[i] for i in task_indices])
      table.lines.append(reader.line_num)
  if not table.smiles:
    raise DataFormatError(f"{path}: expected at least one data row after the header, found none")
  return table


def _column_indices(path: pathlib.Path, header: list[str], spec: MoleculeNetSpec
                    ) -> tuple[int, list[int]]:
  """Positions of the SMILES column and of the task columns in `header`."""
  names = [h.strip() for h in header]

  def index_of(column: str) -> int:
    if column not in names:
      raise DataFormatError(f"{path}: line 1: expected a column named {column!r}, found "
                            f"{', '.join(repr(n) for n in names)}")
    return names.index(column)

  smiles_index = index_of(spec.smiles_column)
  if spec.task_columns is None:
    task_indices = [i for i in range(len(names)) if i != smiles_index]
  else:
    task_indices = [index_of(c) for c in spec.task_columns]
  if not task_indices:
    raise DataFormatError(f"{path}: line 1: expected label columns besides "
                          f"{spec.smiles_column!r}, found none")
  return smiles_index, task_indices


def _parse_labels(path: pathlib.Path, table: _Table, task_type: str
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Label cells -> (y float32 `[N, T]`, 0 where missing; y_mask bool `[N, T]`)."""
  cells = np.char.strip(np.array(table.labels, dtype=str).reshape(len(table.labels), -1))
  missing = (cells == "") | (np.char.lower(cells) == "nan")
  try:
    values = np.where(missing, "0", cells).astype(np.float64)
  except ValueError:
    values = _parse_cells_slowly(path, table, cells, missing)
  bad = ~np.isfinite(values)
  if task_type == MULTITASK:
    bad |= (values != 0) & (values != 1)
  if bad.any():
    row, column = (int(i) for i in np.argwhere(bad)[0])
    expected = "0 or 1 (or empty)" if task_type == MULTITASK else "a finite number (or empty)"
    raise DataFormatError(f"{path}: line {table.lines[row]}: column {table.task_names[column]} "
                          f"value {str(cells[row, column])!r} is not {expected}")
  return values.astype(np.float32), ~missing


def _parse_cells_slowly(path: pathlib.Path, table: _Table, cells: np.ndarray,
                        missing: np.ndarray) -> np.ndarray:
  """Cell-by-cell float parsing, to name the first cell that is not a number."""
  values = np.zeros(cells.shape, dtype=np.float64)
  for (row, column), cell in np.ndenumerate(cells):
    if missing[row, column]:
      continue
    try:
      values[row, column] = float(cell)
    except ValueError:
      raise DataFormatError(
          f"{path}: line {table.lines[row]}: column {table.task_names[column]} value {str(cell)!r} "
          f"is not a number") from None
  return values


# Featurisation ---------------------------------------------------------------------------------


def _process(path: pathlib.Path, spec: MoleculeNetSpec, limit: int | None
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads and featurises the file into the flat arrays of the cache format (see `_to_graphs`)."""
  table = _read_table(path, spec, limit)
  y, y_mask = _parse_labels(path, table, spec.task_type)
  graphs, rows, skipped, rescued = [], [], [], []
  for row, (smiles, line) in enumerate(zip(table.smiles, table.lines)):
    try:
      mol = parse_smiles(smiles)
      graphs.append(mol_to_graph(mol))
    except MoleculeError as e:
      skipped.append({"row": row, "line": line, "smiles": smiles, "reason": str(e)})
      continue
    rows.append(row)
    if mol.GetBoolProp("gnnjax_rescued"):
      rescued.append(row)
  if not graphs:
    raise DataFormatError(f"{path}: none of the {len(table.smiles)} SMILES could be featurised "
                          f"(first problem: line {skipped[0]['line']}: {skipped[0]['reason']})")
  for entry in skipped:
    logging.info("%s: line %d skipped: %s", path, entry["line"], entry["reason"])
  arrays = _flatten(graphs)
  arrays["y"] = y[rows]
  arrays["y_mask"] = y_mask[rows]
  report = {
      "num_rows": len(table.smiles),
      "tasks": _unique_names(table.task_names),
      "smiles": [table.smiles[r] for r in rows],
      "rows": rows,
      "skipped": skipped,
      "rescued_rows": rescued,
  }
  return arrays, report


def _unique_names(names: Sequence[str]) -> list[str]:
  """Task names with repeats suffixed '.1', '.2', ... (QM8 repeats four names)."""
  seen: dict[str, int] = {}
  unique = []
  for name in names:
    count = seen.get(name, 0)
    unique.append(name if count == 0 else f"{name}.{count}")
    seen[name] = count + 1
  return unique


def _flatten(graphs: list[jraph.GraphsTuple]) -> dict[str, np.ndarray]:
  """Concatenates per-graph arrays; `n_node` / `n_edge` int32 `[G]` give the boundaries."""
  return {
      "node_x": np.concatenate([g.nodes["x"] for g in graphs]),
      "edge_x": np.concatenate([g.edges["x"] for g in graphs]),
      "senders": np.concatenate([g.senders for g in graphs]),
      "receivers": np.concatenate([g.receivers for g in graphs]),
      "n_node": np.concatenate([g.n_node for g in graphs]),
      "n_edge": np.concatenate([g.n_edge for g in graphs]),
  }


def _to_graphs(arrays: dict[str, np.ndarray]) -> list[jraph.GraphsTuple]:
  """Inverse of `_flatten` plus labels: one GraphsTuple per molecule (views, no copies)."""
  node_splits = np.cumsum(arrays["n_node"])[:-1]
  edge_splits = np.cumsum(arrays["n_edge"])[:-1]
  node_x = np.split(arrays["node_x"], node_splits)
  edge_x = np.split(arrays["edge_x"], edge_splits)
  senders = np.split(arrays["senders"], edge_splits)
  receivers = np.split(arrays["receivers"], edge_splits)
  n_node = arrays["n_node"].reshape(-1, 1)
  n_edge = arrays["n_edge"].reshape(-1, 1)
  y = arrays["y"][:, None, :]
  y_mask = arrays["y_mask"][:, None, :]
  return [
      jraph.GraphsTuple(nodes={"x": node_x[i]}, edges={"x": edge_x[i]}, senders=senders[i],
                        receivers=receivers[i], n_node=n_node[i], n_edge=n_edge[i],
                        globals={"y": y[i], "y_mask": y_mask[i]})
      for i in range(len(node_x))
  ]


def _to_dataset(name: str, spec: MoleculeNetSpec, arrays: dict[str, np.ndarray],
                report: dict[str, Any]) -> GraphDataset:
  return GraphDataset(name=name, graphs=_to_graphs(arrays), task_level="graph",
                      task_type=spec.task_type, num_outputs=int(arrays["y"].shape[1]),
                      report=report)


# Processed cache -------------------------------------------------------------------------------


def _cache_path(name: str, checksum: str) -> pathlib.Path:
  return (sources.cache_dir() / "processed" / "moleculenet" /
          f"{name}-{checksum[:16]}-{_CACHE_VERSION}.npz")


def _save_cached(path: pathlib.Path, arrays: dict[str, np.ndarray], report: dict[str, Any]
                 ) -> None:
  """Writes arrays + JSON report atomically (a crash never leaves a half-written cache)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
    np.savez(tmp, report_json=np.array(json.dumps(report)), **arrays)
  os.replace(tmp.name, path)


def _load_cached(name: str, spec: MoleculeNetSpec, path: pathlib.Path) -> GraphDataset:
  with np.load(path, allow_pickle=False) as npz:
    arrays = {k: npz[k] for k in npz.files if k != "report_json"}
    report = json.loads(str(npz["report_json"]))
  report["from_cache"] = True
  report["cache_file"] = str(path)
  return _to_dataset(name, spec, arrays, report)
