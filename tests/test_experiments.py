"""The experiment entry points run end to end from the command line."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def run_module(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_train_baseline_writes_results_json(tmp_path, data_dir):
  out = tmp_path / "res.json"
  proc = run_module("experiments.train", "--dataset=MUTAG", f"--data_dir={data_dir}",
                    "--model=gin", "--epochs=3", "--seeds=0,1", "--hidden=8", "--num_layers=3",
                    f"--results_json={out}", f"--metrics_dir={tmp_path / 'logs'}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads(out.read_text())
  assert [r["seed"] for r in results["runs"]] == [0, 1]
  assert results["best_val"]["test_accuracy"]["n"] == 2
  assert 0.0 <= results["best_val"]["test_accuracy"]["mean"] <= 1.0
  assert (tmp_path / "logs" / "metrics.seed1.jsonl").read_text().count("\n") == 3


def test_train_graphgym_design_on_generated_task(tmp_path):
  design = {"layers_mp": 2, "stage_type": "skipsum", "dim_inner": 8, "epochs": 2,
            "batch_size": 8, "activation": "prelu"}
  out = tmp_path / "res.json"
  proc = run_module("experiments.train", f"--design={json.dumps(design)}", "--eval_every=1",
                    f"--results_json={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads(out.read_text())
  assert results["design"]["stage_type"] == "skipsum"
  assert results["runs"][0]["status"] == "ok"


def test_unknown_dataset_fails_with_the_valid_names():
  proc = run_module("experiments.train", "--dataset=nope", "--epochs=1")
  assert proc.returncode != 0
  assert "unknown dataset 'nope'" in proc.stderr


def test_task_groups_on_the_command_line(tmp_path):
  # An unknown @group is a flags error that names the groups, before anything trains.
  for module in ("experiments.design_space", "experiments.task_space",
                 "experiments.autotransfer"):
    proc = run_module(module, "--tasks=@nope", f"--db={tmp_path / 'bank.sqlite'}",
                      f"--out_dir={tmp_path}")
    assert proc.returncode != 0, module
    assert "unknown task group '@nope'; groups: @synthetic" in proc.stderr, module
