"""Tests for gnnjax.design.workers and `experiments.design_space --workers`.

The run_jobs tests use tiny `python -c` children; the end-to-end test runs a two-task study in
two CPU worker processes into one bank, then again with a task that cannot load.
"""

from __future__ import annotations

import ast
import collections
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from gnnjax.design import workers

REPO = pathlib.Path(__file__).resolve().parents[1]


def _python(code: str) -> list[str]:
  return [sys.executable, "-c", textwrap.dedent(code)]


class _Lines:
  """A thread-safe print_fn keeping every line."""

  def __init__(self):
    self.lines: list[str] = []
    self._lock = threading.Lock()

  def __call__(self, line: str) -> None:
    with self._lock:
      self.lines.append(line)


# ----------------------------------------------------------------------------------------------
# run_jobs


def test_results_in_job_order_with_prefixed_streamed_output():
  lines = _Lines()
  jobs = [workers.Job("slow", _python("import time; time.sleep(1.0); print('slow done')")),
          workers.Job("fast", _python("print('fast 1'); print('fast 2')"))]
  results = workers.run_jobs(jobs, workers=2, print_fn=lines)
  assert [r.name for r in results] == ["slow", "fast"]  # job order, not finishing order
  assert [r.returncode for r in results] == [0, 0]
  assert results[0].tail == "slow done" and results[1].tail == "fast 1\nfast 2"
  assert results[0].seconds >= 1.0 > results[1].seconds
  # Streamed as they arrive: the fast child's lines come before the slow one finishes.
  assert lines.lines == ["[fast] fast 1", "[fast] fast 2", "[slow] slow done"]


def test_a_failing_job_does_not_stop_the_others():
  lines = _Lines()
  jobs = [workers.Job("bad", _python("import sys; print('about to fail');"
                                     "sys.exit('broken input')")),
          workers.Job("missing", ["/nonexistent/program"]),
          workers.Job("good", _python("print('ok')"))]
  results = workers.run_jobs(jobs, workers=1, print_fn=lines)  # one after another
  bad, missing, good = results
  assert bad.returncode == 1 and bad.tail.splitlines() == ["about to fail", "broken input"]
  assert missing.returncode == 127 and "/nonexistent/program" in missing.tail
  assert good.returncode == 0 and good.tail == "ok"
  assert "[bad] broken input" in lines.lines  # stderr is streamed too
  assert lines.lines[-1] == "[good] ok"


def test_chain_jobs_groups_jobs_and_cuts_chains_for_idle_slots():
  groups = ["a", "b", "a", None, "a"]
  assert workers.chain_jobs(groups, 1) == [[0, 2, 4], [1], [3]]
  assert workers.chain_jobs(groups, 3) == [[0, 2, 4], [1], [3]]  # no slot idle
  assert workers.chain_jobs(groups, 4) == [[0, 2], [4], [1], [3]]
  assert workers.chain_jobs(groups, 9) == [[0], [2], [4], [1], [3]]  # all alone
  assert workers.chain_jobs([None, None], 1) == [[0], [1]]
  assert workers.chain_jobs([], 2) == []
  with pytest.raises(ValueError, match="slots must be >= 1, got 0"):
    workers.chain_jobs(["a"], 0)
  # Every job exactly once, a group's jobs in job order, for many shapes.
  for slots in range(1, 8):
    for groups in (["x"] * 7, ["x", "y"] * 4, ["x", None, "y", "x", None, "z", "x"]):
      chains = workers.chain_jobs(groups, slots)
      assert sorted(sum(chains, [])) == list(range(len(groups)))
      assert all(chain == sorted(chain) and len({groups[i] for i in chain}) == 1
                 for chain in chains)


def test_jobs_of_one_group_run_one_after_another(tmp_path):
  # Each child records when it ran; 'a' jobs must not overlap while 'b' overlaps them. b1 is
  # short, so a plain job queue would start a2 in b1's slot while a1 still runs.
  code = f"""
      import sys, time
      start = time.time(); time.sleep(float(sys.argv[2]))
      open({str(tmp_path)!r} + '/' + sys.argv[1], 'w').write(f'{{start}} {{time.time()}}')
  """
  jobs = [workers.Job(name, _python(code) + [name, seconds], group=group)
          for name, seconds, group in (("a1", "1.0", "a"), ("b1", "0.1", None),
                                       ("a2", "0.1", "a"))]
  results = workers.run_jobs(jobs, workers=2, print_fn=_Lines())
  assert [r.returncode for r in results] == [0, 0, 0]
  spans = {name: [float(v) for v in (tmp_path / name).read_text().split()]
           for name in ("a1", "b1", "a2")}
  assert spans["a2"][0] >= spans["a1"][1]  # chained: a2 started after a1 ended
  assert spans["b1"][0] < spans["a1"][1]  # the other slot ran b1 meanwhile


def test_devices_pin_slots_and_split_memory():
  code = """
      import os, time
      time.sleep(0.3)  # every slot gets one job
      print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'],
            os.environ['PYTHONUNBUFFERED'], os.environ['EXTRA'])
  """
  jobs = [workers.Job(f"job{i}", _python(code)) for i in range(4)]
  results = workers.run_jobs(jobs, workers=4, devices=["0", "1"], print_fn=_Lines(),
                             env={"EXTRA": "x", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.99"})
  seen = [r.tail.split() for r in results]
  assert collections.Counter(device for device, *_ in seen) == {"0": 2, "1": 2}
  assert all(rest == ["0.450", "1", "x"] for _, *rest in seen)


def test_slot_environments():
  three = workers.slot_environments(3, ["4", "7"])  # slots 0 and 2 share GPU 4
  assert [e["CUDA_VISIBLE_DEVICES"] for e in three] == ["4", "7", "4"]
  assert [e["XLA_PYTHON_CLIENT_MEM_FRACTION"] for e in three] == ["0.450", "0.900", "0.450"]
  assert workers.slot_environments(2, []) == [{}, {}]
  assert workers.slot_environments(1, ["0"])[0]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.900"
  with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
    workers.slot_environments(0, ["0"])


def test_without_devices_children_inherit_the_environment(monkeypatch):
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  code = ("import os; print(os.environ['CUDA_VISIBLE_DEVICES'],"
          " os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', 'unset'))")
  [result] = workers.run_jobs([workers.Job("a", _python(code))], workers=2, print_fn=_Lines())
  assert result.tail == "7 unset"


def test_much_output_does_not_block_and_tail_keeps_the_last_lines():
  code = "for i in range(30000): print('line', i, 'x' * 20)"
  lines = _Lines()
  [result] = workers.run_jobs([workers.Job("loud", _python(code))], workers=1, print_fn=lines)
  assert result.returncode == 0 and len(lines.lines) == 30000
  tail = result.tail.splitlines()
  assert len(tail) == workers.TAIL_LINES
  assert tail[0] == f"line {30000 - workers.TAIL_LINES} " + "x" * 20
  assert tail[-1] == "line 29999 " + "x" * 20


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, None), (signal.SIGTERM, 143)])
def test_interrupt_or_sigterm_terminates_the_children(tmp_path, sig, status):
  pid_file = tmp_path / "child.pid"
  child = ("import os, time; open({path!r}, 'w').write(str(os.getpid())); time.sleep(60)"
           .format(path=str(pid_file)))
  # A shell's background jobs inherit SIGINT ignored, and Python then installs no
  # KeyboardInterrupt handler: restore it, as an interactive terminal would have it.
  parent = textwrap.dedent(f"""
      import signal, sys
      signal.signal(signal.SIGINT, signal.default_int_handler)
      from gnnjax.design import workers
      jobs = [workers.Job(n, [sys.executable, '-c', {child!r}]) for n in ('a', 'b')]
      workers.run_jobs(jobs, workers=1)
  """)
  process = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 20
  while not (pid_file.exists() and pid_file.read_text()):
    assert process.poll() is None and time.monotonic() < deadline, process.communicate()
    time.sleep(0.05)
  child_pid = int(pid_file.read_text())
  process.send_signal(sig)
  _, stderr = process.communicate(timeout=20)
  if status is None:
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr
  else:
    assert process.returncode == status, stderr
  with pytest.raises(ProcessLookupError):  # terminated and reaped
    os.kill(child_pid, 0)
  pid_file.unlink()
  time.sleep(0.3)
  assert not pid_file.exists()  # job 'b' never started


# ----------------------------------------------------------------------------------------------
# accelerator_ids


def test_accelerator_ids_from_cuda_visible_devices(monkeypatch):
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
  assert workers.accelerator_ids() == ["2", "3"]
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
  assert workers.accelerator_ids() == []


def test_accelerator_ids_from_nvidia_smi(monkeypatch, tmp_path):
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: a CPU host
  assert workers.accelerator_ids() == []
  fake = tmp_path / "nvidia-smi"
  fake.write_text("#!/bin/sh\n"
                  "echo 'GPU 0: NVIDIA H200 (UUID: GPU-aaaa)'\n"
                  "echo '  MIG 1g.18gb     Device  0: (UUID: MIG-bbbb)'\n"
                  "echo 'GPU 1: NVIDIA H200 (UUID: GPU-cccc)'\n")
  fake.chmod(0o755)
  assert workers.accelerator_ids() == ["0", "1"]
  fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
  assert workers.accelerator_ids() == []


# ----------------------------------------------------------------------------------------------
# experiments.design_space --workers=2, end to end on CPU.

TASKS = ("generated/smallworld/clustering/onehot", "generated/scalefree/pagerank/onehot")


def _design_space(out_dir: pathlib.Path, tasks: list[str], cache: pathlib.Path):
  command = [sys.executable, "-m", "experiments.design_space", f"--tasks={','.join(tasks)}",
             "--num_graphs=8", "--num_designs=1", "--dims=batch_norm", "--epochs_override=2",
             "--workers=2", "--worker_devices=", f"--out_dir={out_dir}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache))
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_design_space_with_two_workers(tmp_path):
  out, cache = tmp_path / "out", tmp_path / "xla"
  done = _design_space(out, list(TASKS), cache)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  # Each task ran in its own worker, prefixing its lines, into its own folder.
  for task, folder in zip(TASKS, ("generated_smallworld_clustering_onehot",
                                  "generated_scalefree_pagerank_onehot")):
    assert f"[{task}] [2/2] 100%" in done.stdout
    assert (out / "tasks" / folder / "ranks.json").exists()
    assert not (out / "tasks" / folder / "checkpoints").exists()  # removed: task complete
  # One bank; the forwarded flags reached the workers (2 designs, epochs capped at 2).
  with sqlite3.connect(out / "bank.sqlite") as connection:
    rows = connection.execute("SELECT task, design_json FROM trials").fetchall()
  assert collections.Counter(task for task, _ in rows) == {TASKS[0]: 2, TASKS[1]: 2}
  assert {json.loads(design)["epochs"] for _, design in rows} == {2}
  # The parent analysed both tasks without training: one setup per task.
  assert "4 trials; 4 already in" in done.stdout
  with open(out / "ranks.json") as f:
    assert json.load(f)["batch_norm"]["num_setups"] == 2
  assert (out / "ranks.png").exists() and (out / "ranks_batch_norm.png").exists()

  # A task that fails: the other is analysed alone (its trials are in the bank), status 1.
  failed = _design_space(out, [TASKS[0], "no_such_task"], cache)
  assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
  assert "unknown dataset 'no_such_task'" in failed.stdout  # the failed worker's tail
  assert "1 of 2 task worker(s) failed: no_such_task" in failed.stderr
  assert f"analysing the 1 of 2 tasks complete in the bank: {TASKS[0]}" in failed.stdout
  with open(out / "ranks.json") as f:
    assert json.load(f)["batch_norm"]["num_setups"] == 1


def test_worker_command_forwards_the_engine_policy_flags():
  # In a child process: parsing the global absl FLAGS here would leak into other tests.
  code = ("from absl import flags; from experiments import design_space; "
          "flags.FLAGS(['prog', '--tasks=a,b', '--precompile=off', '--split_depths=adaptive', "
          "'--epochs_override=7']); print(repr(design_space.worker_argv('a', 'out/a', 'b.db')))")
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  argv = ast.literal_eval(done.stdout.strip().splitlines()[-1])
  assert "--tasks=a" in argv and "--tasks=a,b" not in argv
  for flag in ("--precompile=off", "--split_depths=adaptive", "--scan_layers=auto",
               "--epochs_override=7"):
    assert flag in argv, (flag, argv)


def test_flag_arguments_recreate_the_flag_values():
  from absl import flags as absl_flags
  values = absl_flags.FlagValues()
  absl_flags.DEFINE_list("tasks", None, "", flag_values=values, module_name="m")
  absl_flags.DEFINE_bool("fast", True, "", flag_values=values, module_name="m")
  absl_flags.DEFINE_bool("slow", False, "", flag_values=values, module_name="m")
  absl_flags.DEFINE_integer("epochs", 3, "", flag_values=values, module_name="m")
  absl_flags.DEFINE_string("unset", None, "", flag_values=values, module_name="m")
  absl_flags.DEFINE_integer("other", 1, "", flag_values=values, module_name="elsewhere")
  values(["prog", "--tasks=a,b", "--epochs=7"])
  args = workers.flag_arguments(values, "m")
  assert sorted(args) == sorted(["--tasks=a,b", "--fast", "--noslow", "--epochs=7"])
  assert workers.flag_arguments(values, "m", exclude=("tasks", "fast")) == [
      a for a in args if not a.startswith(("--tasks", "--fast"))]


def test_folder_names_are_safe_and_distinct():
  assert workers.folder_names(["generated/sbm/x", "a/b", "a_b", "..", "cora"]) == [
      "generated_sbm_x", "a_b", "a_b-2", "job", "cora"]


def test_print_failures_prints_the_tails_of_failed_jobs_only():
  lines = []
  results = [workers.JobResult("ok", 0, 1.0, "fine"), workers.JobResult("bad", 3, 1.0, "boom")]
  failed = workers.print_failures(results, lines.append)
  assert [r.name for r in failed] == ["bad"]
  assert len(lines) == 1 and "bad failed (return code 3)" in lines[0] and "boom" in lines[0]
