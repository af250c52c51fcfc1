"""Shared benchmark plumbing: timing, device description, and the results files.

Every benchmark writes `<out_dir>/results/<name>.json` =
{"benchmark", "device", "date", "commit", "metrics": {...}, "targets": {name: {"value",
"target", "met"}}} and appends a markdown section to `<out_dir>/RESULTS.md`.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import statistics
import subprocess
import time
from typing import Any, Callable

REPO = pathlib.Path(__file__).resolve().parents[1]


def commit() -> str:
  """The commit benchmarked: $GNNJAX_COMMIT (set when the tree travels without .git), or git's."""
  if os.environ.get("GNNJAX_COMMIT"):
    return os.environ["GNNJAX_COMMIT"]
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def device_description() -> str:
  import jax
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  return f"{len(jax.devices())}x {kind} ({device.platform}), jax {jax.__version__}"


def time_call(fn: Callable[[], Any], sync: Callable[[Any], Any], warmup: int = 3,
              iters: int = 10) -> float:
  """Median wall time of fn() in milliseconds; `sync` blocks until fn's result is ready."""
  for _ in range(warmup):
    sync(fn())
  samples = []
  for _ in range(iters):
    start = time.perf_counter()
    sync(fn())
    samples.append((time.perf_counter() - start) * 1e3)
  return statistics.median(samples)


def target(value: float, goal: float, higher_is_better: bool = True) -> dict[str, Any]:
  met = value >= goal if higher_is_better else value <= goal
  return {"value": value, "target": goal, "met": bool(met)}


def write_record(name: str, metrics: dict, targets: dict, out_dir: str | os.PathLike,
                 provenance: dict | None = None) -> tuple[pathlib.Path, dict]:
  """Writes results/<name>.json alone (no RESULTS.md section): what `write_results` records,
  also usable mid-run, so that a benchmark stopped by a time limit keeps what it finished.
  Returns the path and the record."""
  record = {"benchmark": name, "device": device_description(),
            "date": datetime.date.today().isoformat(), "commit": commit(), **(provenance or {}),
            "metrics": metrics, "targets": targets}
  path = pathlib.Path(out_dir) / "results" / f"{name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)  # names may hold folders (ab/<name>)
  path.write_text(json.dumps(record, indent=1) + "\n")
  return path, record


def write_results(name: str, metrics: dict, targets: dict, out_dir: str | os.PathLike,
                  table_md: str, notes: str = "", provenance: dict | None = None
                  ) -> pathlib.Path:
  """Writes results/<name>.json and appends a dated section with `table_md` to RESULTS.md.

  `provenance` ({'device', 'date', 'commit'}) overrides this process's own, for results merged
  from runs made elsewhere (e.g. one sweep split over several GPU calls).
  """
  out = pathlib.Path(out_dir)
  path, record = write_record(name, metrics, targets, out, provenance)
  met = ", ".join(f"{k}: {'met' if v['met'] else 'NOT met'}" for k, v in targets.items())
  with open(out / "RESULTS.md", "a") as f:
    f.write(f"\n## {name} — {record['date']}, {record['device']}, commit {record['commit']}\n\n"
            f"{table_md}\n\n{('Targets: ' + met) if met else ''}\n{notes}\n")
  return path
