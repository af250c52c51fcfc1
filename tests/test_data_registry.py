"""The name-based dataset registry, split protocols, and the offline / download paths."""

import urllib.error

import numpy as np
import pytest

from gnnjax import data as data_lib
from gnnjax.data import sources


def test_unknown_dataset_names_the_valid_ones():
  with pytest.raises(ValueError, match="unknown dataset 'coraa'.*cora, citeseer"):
    data_lib.load_dataset("coraa")


def test_offline_without_local_copy_says_where_to_put_files(monkeypatch, tmp_path):
  def no_network(url, timeout=60.0):
    raise urllib.error.URLError("network unreachable")

  monkeypatch.setattr(sources, "_download", no_network)
  monkeypatch.delenv(sources.ENV_DATA, raising=False)
  with pytest.raises(sources.DatasetUnavailableError,
                     match=r"planetoid/ind\.cora\..*--data_dir"):
    data_lib.load_dataset("cora", data_dir=tmp_path / "empty")


def test_download_goes_to_cache_and_checksum_is_verified(monkeypatch, data_dir):
  payloads = {}

  def fake_download(url, timeout=60.0):
    name = url.rsplit("/", 1)[-1]
    payloads[name] = url
    return (data_dir / "planetoid" / name).read_bytes()

  monkeypatch.setattr(sources, "_download", fake_download)
  monkeypatch.delenv(sources.ENV_DATA, raising=False)
  cora = data_lib.load_dataset("cora")  # nothing local: every file comes through the cache
  assert cora.graphs[0].n_node[0] == 2708
  assert all(url.startswith("https://github.com/kimiyoung/planetoid/") for url in payloads.values())
  assert (sources.cache_dir() / "planetoid" / "ind.cora.x").is_file()

  monkeypatch.setattr(sources, "_download", lambda url, timeout=60.0: b"tampered")
  (sources.cache_dir() / "planetoid" / "ind.citeseer.x").unlink(missing_ok=True)
  with pytest.raises(sources.DatasetChecksumError, match="checksum mismatch"):
    data_lib.load_dataset("citeseer")
  assert not (sources.cache_dir() / "planetoid" / "ind.citeseer.x").exists()


def test_environment_variable_is_a_data_root(monkeypatch, data_dir):
  monkeypatch.setenv(sources.ENV_DATA, str(data_dir))
  assert len(data_lib.load_dataset("MUTAG")) == 188


def test_split_protocols(data_dir):
  cora = data_lib.load_dataset("cora", data_dir)
  public, none = data_lib.apply_split(cora)
  assert none is None and public.report["split_sizes"] == {"train": 140, "val": 500, "test": 1000}
  random_a, _ = data_lib.apply_split(cora, "random", seed=1)
  random_b, _ = data_lib.apply_split(cora, "random", seed=2)
  assert not np.array_equal(random_a.graphs[0].nodes["train_mask"],
                            random_b.graphs[0].nodes["train_mask"])
  with pytest.raises(ValueError, match="scaffold"):
    data_lib.apply_split(cora, "scaffold")

  mutag = data_lib.load_dataset("MUTAG", data_dir)
  _, graph_splits = data_lib.apply_split(mutag, "default", seed=0)
  assert {k: len(v) for k, v in graph_splits.items()} == {"train": 150, "val": 18, "test": 20}
  with pytest.raises(ValueError, match="scaffold split needs SMILES"):
    data_lib.apply_split(mutag, "scaffold")
  with pytest.raises(ValueError, match="unknown split"):
    data_lib.apply_split(mutag, "stratified")


def test_registry_reaches_every_collection(data_dir):
  assert data_lib.load_dataset("tu/PROTEINS", data_dir).num_outputs == 2
  bbbp = data_lib.load_dataset("bbbp", data_dir, limit=50)
  _, graph_splits = data_lib.apply_split(bbbp)  # scaffold by default
  assert sum(len(v) for v in graph_splits.values()) == len(bbbp)
  syn = data_lib.load_dataset("smallworld/clustering/onehot", data_dir)
  assert syn.task_level == "node" and len(syn) == 256
  syn_split, _ = data_lib.apply_split(syn)  # GraphGym: 80/20 of each graph's nodes
  g = syn_split.graphs[0]
  assert (g.nodes["train_mask"].sum(), g.nodes["val_mask"].sum()) == (51, 13)


def test_molecule_names_match_the_loader():
  from gnnjax.data import moleculenet
  assert set(data_lib.MOLECULENET_NAMES) == set(moleculenet.DATASETS)


def test_task_groups_expand_to_registered_names():
  groups = data_lib.TASK_GROUPS
  assert len(groups["synthetic"]) == 20 and "smallworld/clustering/onehot" in groups["synthetic"]
  assert groups["moleculenet_classification"] == data_lib.MOLECULENET_CLASSIFICATION
  assert set(data_lib.MOLECULENET_CLASSIFICATION) <= set(data_lib.MOLECULENET_NAMES)
  from gnnjax.data import tu
  assert set(groups["tu"]) == set(tu.SHIPPED_NAMES)
  bank = groups["autotransfer_bank"]
  assert len(bank) == len(set(bank)) == 35
  assert {"cora", "citeseer", "MUTAG", "NCI109", "bace", "toxcast"} <= set(bank)
  # In order, each task once, plain names kept.
  assert data_lib.expand_task_names(["MUTAG", "@tu", "cora"]) == [
      "MUTAG", "BZR", "PROTEINS", "DHFR", "NCI109", "cora"]
  with pytest.raises(ValueError, match="unknown task group '@nope'; groups: @synthetic"):
    data_lib.expand_task_names(["@nope"])


def test_every_bank_task_loads(data_dir):
  # Every name of @autotransfer_bank resolves to its files (molecules: the first 20 rows).
  for name in data_lib.TASK_GROUPS["autotransfer_bank"]:
    dataset = data_lib.load_dataset(name, data_dir, limit=20)
    assert len(dataset) > 0, name


def test_program_groups_hold_tasks_whose_arrays_have_one_shape(data_dir):
  # The key's claim, checked on the data: within a group every task has the same graphs,
  # input width, class count and task level, so its padded arrays have one shape.
  synthetic_tasks = data_lib.TASK_GROUPS["synthetic"]
  groups: dict[str, list[str]] = {}
  for task in synthetic_tasks:
    groups.setdefault(data_lib.program_group(task), []).append(task)
  assert sorted(groups) == ["scalefree/graph", "scalefree/node", "smallworld/graph",
                            "smallworld/node"]
  assert sorted(len(tasks) for tasks in groups.values()) == [4, 4, 6, 6]

  def signature(task):
    dataset = data_lib.load_dataset(task, data_dir)
    return (dataset.num_outputs, dataset.task_level,
            tuple((int(g.n_node[0]), int(g.n_edge[0]), g.nodes["x"].shape)
                  for g in dataset.graphs))

  signatures = {group: {signature(task) for task in tasks} for group, tasks in groups.items()}
  assert all(len(found) == 1 for found in signatures.values()), signatures.keys()
  assert len({next(iter(found)) for found in signatures.values()}) == 4  # groups differ
  # Everything else is its own group: ID-GNN's ba/ws labels tie into fewer classes.
  for name in ("cora", "MUTAG", "ba/clustering/const", "generated/smallworld/clustering/onehot"):
    assert data_lib.program_group(name) == name
