"""Several hosts on one study: trial partition, shard banks merged without overwriting, and
`experiments.design_space --distributed` with two jax.distributed processes on this CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from gnnjax.design import bank as bank_lib
from gnnjax.design import hosts, study
from gnnjax.design.design import Design
from tests.test_bank import REPO, fake_result


def test_share_partitions_every_item_once():
  items = list(range(11))
  shares = [hosts.share(items, k, 3) for k in range(3)]
  assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
  assert sorted(i for s in shares for i in s) == items
  with pytest.raises(ValueError, match="not in"):
    hosts.share(items, 3, 3)


def test_shard_paths_and_markers(tmp_path):
  assert hosts.shard_path("r/bank.sqlite", 0, 1) == "r/bank.sqlite"
  assert hosts.shard_path("r/bank.sqlite", 1, 4) == "r/bank.host1of4.sqlite"
  folder = str(tmp_path / "hosts")
  hosts.mark_done(folder, 1, 2)
  with pytest.raises(TimeoutError, match=r"hosts \[0\] of 2"):
    hosts.wait_for_hosts(folder, 2, timeout_s=0.2, poll_s=0.05, print_fn=lambda _: None)
  hosts.mark_done(folder, 0, 2)
  hosts.wait_for_hosts(folder, 2, timeout_s=1, poll_s=0.05)
  hosts.clear_marks(folder, 0, 2)
  assert not os.path.exists(os.path.join(folder, "host0of2.done"))


def test_merge_copies_missing_trials_and_never_overwrites(tmp_path):
  first, second = Design(layers_mp=2), Design(layers_mp=3)
  with bank_lib.Bank(tmp_path / "main.sqlite") as main:
    main.add(fake_result(first, 1))
    kept = main.get(fake_result(first, 1).key)
  other_result = fake_result(first, 1)
  other_result.final["val"]["accuracy"] = 0.01  # a conflicting row: must not win
  other_result.history[-1]["val_accuracy"] = 0.01
  with bank_lib.Bank(tmp_path / "shard.sqlite") as shard:
    shard.add(other_result)
    shard.add(fake_result(second, 1))
    shard.add(fake_result(second, 2, status="diverged"))
    shard_history = shard.history(fake_result(second, 2).key)
  with bank_lib.Bank(tmp_path / "main.sqlite") as main:
    assert main.merge_from(tmp_path / "shard.sqlite") == 2
    assert main.get(kept.key).final == kept.final
    assert main.history(kept.key) == kept.history
    added = main.get(fake_result(second, 2).key)
    assert added.status == "diverged"
    assert len(shard_history) == 2 and main.history(added.key) == shard_history  # evals came
    assert len(main) == 3
    assert main.merge_from(tmp_path / "shard.sqlite") == 0  # idempotent
    with pytest.raises(ValueError, match="into itself"):
      main.merge_from(tmp_path / "main.sqlite")
    with pytest.raises(FileNotFoundError):
      main.merge_from(tmp_path / "absent.sqlite")


def test_run_study_trains_only_the_hosts_share(tmp_path):
  from gnnjax.design import spaces
  space = spaces.DesignSpace({"batch_norm": [True, False], "layers_mp": [2, 3]}, {},
                             name="tiny")
  plan = study.controlled_random_search(space, ["batch_norm"], 2, 0)
  designs = study.plan_designs(plan)
  tasks = {"a": None, "b": None}
  trained = []

  def trainer(population, dataset, seeds, **_):
    for design in population:
      for seed in seeds:
        trained.append(design.design_id)
        yield fake_result(design, seed, task="?")

  for k in range(2):
    with bank_lib.Bank(tmp_path / f"h{k}.sqlite") as bank:
      result = study.run_study(bank, space, tasks, ["batch_norm"], 2, [1], trainer=trainer,
                               host=(k, 2), analyze=False, print_fn=None)
      assert result.tables == {}
  assert len(trained) == 2 * len(designs)  # every (task, design) once over both hosts
  with bank_lib.Bank(tmp_path / "h0.sqlite") as h0, bank_lib.Bank(tmp_path / "h1.sqlite") as h1:
    keys0 = {r.key for r in h0.query()}
    keys1 = {r.key for r in h1.query()}
  assert not keys0 & keys1 and len(keys0 | keys1) == 2 * len(designs)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_design_space_on_two_jax_distributed_processes(tmp_path):
  out, port = tmp_path / "study", _free_port()
  common = [sys.executable, "-m", "experiments.design_space",
            "--tasks=generated/smallworld/clustering/onehot", "--num_graphs=8",
            "--num_designs=2", "--dims=batch_norm", "--epochs_override=2", "--seeds=1",
            f"--out_dir={out}", "--distributed", f"--coordinator_address=localhost:{port}",
            "--num_processes=2", "--compilation_cache_dir=none"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  processes = [subprocess.Popen(common + [f"--process_id={k}"], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for k in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  for p, text in zip(processes, outputs):
    assert p.returncode == 0, text[-3000:]
  assert "merged 2 trial(s) of host 0" in outputs[0] and "of host 1" in outputs[0]
  with bank_lib.Bank(out / "bank.sqlite") as bank:
    assert len(bank) == 4  # 2 setups x 2 batch-norm choices, one seed
  for k in range(2):
    with bank_lib.Bank(out / f"bank.host{k}of2.sqlite") as shard:
      assert len(shard) == 2
  with open(out / "ranks.json") as f:
    assert "batch_norm" in json.load(f)
