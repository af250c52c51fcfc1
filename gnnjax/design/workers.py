"""Run jobs (child processes) side by side, each pinned to one GPU of the host.

A design-space study spends most of its time compiling each task's population programs, and a
process compiles one program at a time on one device. `run_jobs` spreads a list of commands
(e.g. one `python -m experiments.design_space --tasks=<task>` per task) over several worker
processes, worker slot k pinned to GPU `devices[k % len(devices)]`:

    jobs = [Job(task, [sys.executable, "-m", "experiments.design_space", f"--tasks={task}"])
            for task in tasks]
    results = run_jobs(jobs, workers=2, devices=accelerator_ids())

Jobs given one `group` (tasks whose programs have one shape: `data.program_group`) run one
after another in one slot where the slots allow, so the later ones find the first one's
programs in the persistent compilation cache instead of compiling them at the same time.

Each child sees only its GPU (CUDA_VISIBLE_DEVICES) and preallocates a share of its memory
(XLA_PYTHON_CLIENT_MEM_FRACTION = 0.9 / children sharing that GPU), so children sharing one GPU
fit together. Output lines of every child are streamed as they arrive, prefixed with
'[name] '. Nothing here initialises JAX: the parent must not claim the GPUs its children use.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import re
import signal
import subprocess
import threading
import time
from typing import Callable, Mapping, Sequence

TAIL_LINES = 40  # output lines kept per job for JobResult.tail
_MEMORY_SHARE = 0.9  # of one GPU, split between the children sharing it (XLA's default is 0.75)
_TERMINATE_GRACE_S = 5.0  # after SIGTERM, before SIGKILL


def accelerator_ids() -> list[str]:
  """GPU ids visible to child processes, without initialising JAX in this process.

  Returns:
    CUDA_VISIBLE_DEVICES split at commas when it is set (an empty value: []), else '0'..'n-1'
    for the n GPUs `nvidia-smi -L` lists, else [] (a CPU host, or nvidia-smi failed).
  """
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [part.strip() for part in visible.split(",") if part.strip()]
  try:
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  # One 'GPU i: <name> (UUID: ...)' line per GPU; MIG instances are indented lines under it.
  gpus = [line for line in listing.splitlines() if line.startswith("GPU ")]
  return [str(i) for i in range(len(gpus))]


@dataclasses.dataclass(frozen=True)
class Job:
  """One child process to run.

  Attributes:
    name: short label prefixing its output lines, e.g. the task name.
    argv: the full command, e.g. [sys.executable, '-m', 'experiments.design_space', ...].
    group: jobs with one group compile the same programs (e.g. `data.program_group` of their
      tasks); `run_jobs` runs them one after another in one slot where the slots allow
      (`chain_jobs`), so the later ones load the first one's programs from the persistent
      compilation cache instead of compiling them side by side. None: a group of its own.
  """

  name: str
  argv: list[str]
  group: str | None = None


@dataclasses.dataclass(frozen=True)
class JobResult:
  """How a job ended.

  Attributes:
    name: the job's name.
    returncode: the child's exit status (negative: killed by that signal; 127: it could not be
      started, the reason in `tail`).
    seconds: wall-clock time from start to exit.
    tail: its last TAIL_LINES output lines (stdout and stderr together), newline-joined.
  """

  name: str
  returncode: int
  seconds: float
  tail: str


def flag_arguments(flag_values, module: str, exclude: Sequence[str] = ()) -> list[str]:
  """The command-line arguments that recreate `module`'s absl flags at their current values.

  Used to build a worker's command from its parent's flags: lists are re-joined with commas,
  booleans become --name / --noname, unset (None) flags are left out.

  Args:
    flag_values: an absl FlagValues (e.g. absl.flags.FLAGS), parsed.
    module: the defining module's name (`flag_values.find_module_defining_flag(<a flag>)`).
    exclude: flag names the caller sets per worker.
  """
  arguments = []
  for flag in flag_values.get_flags_for_module(module):
    if flag.name in exclude or flag.value is None:
      continue
    if isinstance(flag.value, bool):
      arguments.append(f"--{flag.name}" if flag.value else f"--no{flag.name}")
    elif isinstance(flag.value, (list, tuple)):
      arguments.append(f"--{flag.name}=" + ",".join(str(v) for v in flag.value))
    else:
      arguments.append(f"--{flag.name}={flag.value}")
  return arguments


def folder_names(names: Sequence[str]) -> list[str]:
  """One distinct file-system-safe name per job name, for its output folder or file
  ('generated/sbm/x' -> 'generated_sbm_x'; 'a/b' and 'a_b' get 'a_b' and 'a_b-2')."""
  folders, used = [], set()
  for name in names:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "job"
    folder, k = base, 1
    while folder in used:
      k += 1
      folder = f"{base}-{k}"
    used.add(folder)
    folders.append(folder)
  return folders


def print_failures(results: Sequence[JobResult],
                   print_fn: Callable[[str], None] = print) -> list[JobResult]:
  """Prints each failed job's return code and output tail; returns the failed results."""
  failed = [r for r in results if r.returncode != 0]
  for r in failed:
    print_fn(f"\n--- {r.name} failed (return code {r.returncode}); its last lines:\n{r.tail}")
  return failed


def chain_jobs(groups: Sequence[str | None], slots: int) -> list[list[int]]:
  """The job indices as chains, each run one job after another in one slot.

  Jobs of one group (not None) form one chain, in job order; chains are ordered by their first
  job. While there are fewer chains than `slots` and one is longer than a job, the longest is
  cut in two in its place (first half, then second): an idle slot costs more than compiling a
  group's programs twice at once.

  Example: groups ['a', 'b', 'a', None, 'a'], slots 2 -> [[0, 2, 4], [1], [3]];
  slots 4 -> [[0, 2], [4], [1], [3]].
  """
  if slots < 1:
    raise ValueError(f"slots must be >= 1, got {slots}")
  chains: list[list[int]] = []
  by_group: dict[str, list[int]] = {}
  for index, group in enumerate(groups):
    if group is None:
      chains.append([index])
    elif group in by_group:
      by_group[group].append(index)
    else:
      by_group[group] = [index]
      chains.append(by_group[group])
  while len(chains) < slots:
    longest = max(range(len(chains)), key=lambda k: len(chains[k]), default=None)
    if longest is None or len(chains[longest]) < 2:
      break
    chain = chains[longest]
    half = (len(chain) + 1) // 2
    chains[longest:longest + 1] = [chain[:half], chain[half:]]
  return chains


def slot_environments(workers: int, devices: Sequence[str] | None) -> list[dict[str, str]]:
  """The pinning variables of each of `workers` slots: slot k gets devices[k % len(devices)]
  and an equal share of 0.9 of that device's memory; with no devices, no variables."""
  if workers < 1:
    raise ValueError(f"workers must be >= 1, got {workers}")
  if not devices:
    return [{} for _ in range(workers)]
  pinned = [str(devices[k % len(devices)]) for k in range(workers)]
  sharing = collections.Counter(pinned)
  return [{"CUDA_VISIBLE_DEVICES": device,
           "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{_MEMORY_SHARE / sharing[device]:.3f}"}
          for device in pinned]


class _Runner:
  """Slot threads pulling chains of jobs (`chain_jobs`) from one queue; each runs its chain's
  children one after another and streams their output."""

  def __init__(self, jobs: Sequence[Job], slot_envs: Sequence[Mapping[str, str]],
               print_fn: Callable[[str], None]):
    self._jobs = list(jobs)
    self._slot_envs = slot_envs
    self._print = print_fn
    self._queue: queue.Queue[list[int]] = queue.Queue()
    for chain in chain_jobs([job.group for job in self._jobs], len(slot_envs)):
      self._queue.put(chain)
    self._results: list[JobResult | None] = [None] * len(self._jobs)
    self._lock = threading.Lock()  # guards _running, _stopping and print_fn
    self._running: dict[int, subprocess.Popen] = {}
    self._stopping = False
    self._errors: list[BaseException] = []  # raised in a slot thread (e.g. by print_fn)
    self._threads = [threading.Thread(target=self._slot, args=(k,), daemon=True,
                                      name=f"worker-slot-{k}") for k in range(len(slot_envs))]

  def run(self) -> list[JobResult]:
    # Batch schedulers stop a job with SIGTERM (then SIGKILL): treat it like Ctrl-C, so the
    # children, which live in their own process groups, do not outlive the parent.
    previous = None
    if threading.current_thread() is threading.main_thread():
      previous = signal.signal(signal.SIGTERM, _raise_terminated)
    for thread in self._threads:
      thread.start()
    try:
      for thread in self._threads:
        while thread.is_alive():  # a timed join, so Ctrl-C reaches this thread
          thread.join(timeout=0.2)
    except BaseException:
      self.stop()
      raise
    finally:
      if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    if self._errors:
      raise self._errors[0]
    return list(self._results)  # every slot ended after an empty queue: all filled

  def stop(self) -> None:
    """Starts no more jobs, terminates the running children (their process groups), waits."""
    with self._lock:
      self._stopping = True
      running = list(self._running.values())
    for process in running:
      _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    for process in running:
      try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()
    for thread in self._threads:
      if thread is not threading.current_thread():
        thread.join(timeout=_TERMINATE_GRACE_S)

  def _emit(self, name: str, line: str) -> None:
    with self._lock:  # whole lines, never interleaved mid-line
      self._print(f"[{name}] {line}")

  def _slot(self, slot: int) -> None:
    while True:
      try:
        chain = self._queue.get_nowait()
      except queue.Empty:
        return
      for index in chain:  # a failed job does not stop the rest of its chain
        try:
          self._results[index] = self._run_one(self._jobs[index], self._slot_envs[slot])
        except BaseException as error:  # pylint: disable=broad-except
          self._errors.append(error)  # re-raised by run(); the other slots stop too
          self.stop()
          return

  def _run_one(self, job: Job, slot_env: Mapping[str, str]) -> JobResult:
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    start = time.monotonic()
    with self._lock:
      if self._stopping:
        return JobResult(job.name, -int(signal.SIGTERM), 0.0, "not started: interrupted")
      try:
        # Its own session (process group): a stop kills the child and whatever it started.
        process = subprocess.Popen(job.argv, env={**os.environ, **slot_env},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, errors="replace",
                                   bufsize=1, start_new_session=True)
      except OSError as error:
        message = f"could not start {job.argv!r}: {error}"
        self._print(f"[{job.name}] {message}")
        return JobResult(job.name, 127, time.monotonic() - start, message)
      self._running[id(process)] = process
    try:
      # Read until EOF: the pipe never fills, so the child never blocks on its output.
      for line in process.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        self._emit(job.name, line)
      returncode = process.wait()
    finally:
      if process.poll() is None:  # left early (an error while streaming): do not orphan it
        _signal_group(process, signal.SIGKILL)
        process.wait()
      process.stdout.close()
      with self._lock:
        self._running.pop(id(process), None)
    return JobResult(job.name, returncode, time.monotonic() - start, "\n".join(tail))


def _raise_terminated(signum, frame) -> None:
  del frame
  raise SystemExit(128 + signum)  # the shell's status for death by that signal


def _signal_group(process: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(process.pid, sig)
  except (ProcessLookupError, PermissionError):
    pass  # already gone


def run_jobs(jobs: Sequence[Job], workers: int, devices: Sequence[str] | None = None,
             print_fn: Callable[[str], None] = print,
             env: Mapping[str, str] | None = None) -> list[JobResult]:
  """Runs `jobs` in at most `workers` concurrent child processes; returns results in job order.

  Args:
    jobs: the commands. Each child inherits this process's environment plus `env`, with
      PYTHONUNBUFFERED=1 (so its lines arrive as printed).
    workers: most children at once; the slots used are min(workers, len(jobs)). Jobs that
      share a `group` run one after another in one slot where that leaves no slot idle
      (`chain_jobs`).
    devices: GPU ids (e.g. `accelerator_ids()`). Slot k runs its jobs with
      CUDA_VISIBLE_DEVICES=devices[k % len(devices)] and XLA_PYTHON_CLIENT_MEM_FRACTION =
      0.9 / (slots on that device), to 3 decimals (these override `env`). None or empty: no
      pinning (a CPU host, or children that share every GPU).
    print_fn: receives every output line of every child as '[name] line', whole lines, as they
      arrive.
    env: extra environment variables for every child.

  Returns:
    One JobResult per job, in the order of `jobs`. A failing job does not stop the others.

  Raises:
    KeyboardInterrupt (or any exception while waiting): after terminating the running children
    (SIGTERM to each child's process group, SIGKILL after a grace period); no new job starts.
    SystemExit(143): the same, when this process gets SIGTERM while waiting (called from the
    main thread), e.g. from a batch scheduler.
  """
  jobs = list(jobs)
  if not jobs:
    if workers < 1:
      raise ValueError(f"workers must be >= 1, got {workers}")
    return []
  common = {**(env or {}), "PYTHONUNBUFFERED": "1"}
  slot_envs = [{**common, **pinning}
               for pinning in slot_environments(min(workers, len(jobs)), devices)]
  return _Runner(jobs, slot_envs, print_fn).run()
