"""Several hosts on one study: `jax.distributed` for who is who, a trial partition, shard banks.

Trials are independent trainings, so hosts need no collectives: after
`jax.distributed.initialize` each process knows its index k of n, trains every n-th (task,
design) pair of the plan on its own local devices (the population axis is sharded over them as
on one host) and writes into its own SQLite shard (`shard_path`; SQLite's locking is not
trusted on network file systems, so hosts never share a file). When a host is done it drops a
marker file; host 0 waits for every marker, merges the shards into the study's bank
(`Bank.merge_from`, which never overwrites a row) and analyses. The bank, the shards and the
markers must live on a file system every host sees (the usual cluster home or scratch).

    python -m experiments.design_space ... --distributed            # on each host (SLURM etc.:
                                                                    # auto-detected), or with
        --coordinator_address=host0:1234 --num_processes=2 --process_id=<k>
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence, TypeVar

from gnnjax import files

T = TypeVar("T")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> tuple[int, int]:
  """`jax.distributed.initialize` (arguments None: detected from the cluster environment, e.g.
  SLURM, Open MPI or a TPU pod) and this process's (index, count)."""
  import jax  # deferred: the parent of worker processes must not touch devices
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return jax.process_index(), jax.process_count()


def share(items: Sequence[T], index: int, count: int) -> list[T]:
  """The items host `index` of `count` takes: every count-th, starting at index."""
  if not 0 <= index < count:
    raise ValueError(f"host index {index} is not in [0, {count})")
  return list(items[index::count])


def shard_path(db: str, index: int, count: int) -> str:
  """Host `index`'s own bank file next to `db` (`db` itself on a single host)."""
  if count == 1:
    return db
  stem, ext = os.path.splitext(db)
  return f"{stem}.host{index}of{count}{ext or '.sqlite'}"


def _marker(folder: str, index: int, count: int) -> str:
  return os.path.join(folder, f"host{index}of{count}.done")


def mark_done(folder: str, index: int, count: int) -> None:
  """Records (atomically) that host `index` has written all its trials."""
  files.write_atomic(_marker(folder, index, count), f"{time.time()}\n")


def clear_marks(folder: str, index: int, count: int) -> None:
  """Removes host `index`'s marker (a rerun starts undone)."""
  try:
    os.remove(_marker(folder, index, count))
  except FileNotFoundError:
    pass


def wait_for_hosts(folder: str, count: int, timeout_s: float = 24 * 3600.0,
                   poll_s: float = 5.0, print_fn: Callable[[str], None] = print) -> None:
  """Blocks until every host's marker exists.

  Raises:
    TimeoutError: naming the hosts still missing after `timeout_s`.
  """
  deadline = time.monotonic() + timeout_s
  reported = None
  while True:
    missing = [k for k in range(count) if not os.path.exists(_marker(folder, k, count))]
    if not missing:
      return
    if missing != reported:
      print_fn(f"waiting for host(s) {missing} of {count} to finish")
      reported = missing
    if time.monotonic() > deadline:
      raise TimeoutError(f"hosts {missing} of {count} did not finish within {timeout_s:.0f} s "
                         f"(markers in {folder})")
    time.sleep(poll_s)
