"""Tests of the Hu et al. scaffold splits (sizes from the reproduction brief, section 6)."""

from __future__ import annotations


import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdMolDescriptors
from rdkit.Chem.Scaffolds import MurckoScaffold

from gnnjax.data.featurize import MoleculeError
from gnnjax.data.moleculenet import load_moleculenet
from gnnjax.data.scaffold import (murcko_scaffold, random_scaffold_split, scaffold_groups,
                                  scaffold_split)

# (train, val, test) of the deterministic 80/10/10 scaffold split. ClinTox: the brief's
# 1182/148/148 keeps the dummy-atom molecule (1478); we drop it (1477), so train has one fewer.
SPLIT_SIZES = {
    "bbbp": (1631, 204, 204),
    "bace": (1210, 151, 152),
    "clintox": (1181, 148, 148),
    "tox21": (6264, 783, 784),
    "sider": (1141, 143, 143),
}


@pytest.fixture(scope="module")
def smiles_of(request):
  """The kept SMILES of each shipped dataset, loaded once per module."""
  root = request.getfixturevalue("data_dir")
  loaded = {}

  def get(name):
    if name not in loaded:
      loaded[name] = load_moleculenet(name, root, use_cache=False).report["smiles"]
    return loaded[name]
  return get


def _assert_partition(split, n):
  assert set(split) == {"train", "val", "test"}
  everything = np.concatenate([split["train"], split["val"], split["test"]])
  assert everything.dtype == np.int64
  np.testing.assert_array_equal(np.sort(everything), np.arange(n))


# murcko_scaffold -------------------------------------------------------------------------------


@pytest.mark.parametrize("smiles, scaffold", [
    ("CCO", ""),
    ("CCc1ccccc1", "c1ccccc1"),
    ("Cc1ccncc1", "c1ccncc1"),
    ("OCC1CCCCC1c1ccccc1", "c1ccc(C2CCCCC2)cc1"),
    ("C[C@H]1CC[C@@H]2CCCC[C@H]2C1", "C1CC[C@H]2CCCC[C@@H]2C1"),  # trans-decalin keeps stereo
])
def test_murcko_scaffold(smiles, scaffold):
  assert murcko_scaffold(smiles) == scaffold


def test_murcko_scaffold_without_chirality():
  decalin = murcko_scaffold("C[C@H]1CC[C@@H]2CCCC[C@H]2C1", include_chirality=False)
  assert decalin == "C1CCC2CCCCC2C1"


def test_scaffold_of_rescued_molecule():
  # Hyper-valent Al complex from HIV: modern RDKit's MurckoScaffoldSmiles rejects it.
  smiles = "CC(c1ccccn1)=[N+]1[N-]C(N)=[S+][AlH3-]12[OH+]B(c1ccccc1)[OH+]2"
  assert Chem.MolFromSmiles(smiles) is None
  assert murcko_scaffold(smiles) == "C1=[S+][AlH3-]2([OH+]B(c3ccccc3)[OH+]2)[N+](=Cc2ccccn2)[N-]1"


def test_murcko_scaffold_of_invalid_smiles():
  with pytest.raises(MoleculeError, match="syntax error"):
    murcko_scaffold("C1CC")


# Hand-built split ------------------------------------------------------------------------------

# 20 molecules: benzene scaffold x10, cyclohexane x5, pyridine x3, cyclopentane (index 3) and
# naphthalene (index 12) once each.
TOY = ["c1ccccc1", "C1CCCCC1", "Cc1ccccc1", "CC1CCCC1", "Cc1ccncc1", "CCc1ccccc1", "CC1CCCCC1",
       "CCCc1ccccc1", "CCc1ccncc1", "CCCCc1ccccc1", "CCC1CCCCC1", "OCc1ccccc1",
       "Cc1ccc2ccccc2c1", "NCc1ccccc1", "CCCC1CCCCC1", "Clc1ccccc1", "CCCc1ccncc1",
       "Brc1ccccc1", "CCCCC1CCCCC1", "Fc1ccccc1"]


def test_toy_scaffold_split_walk():
  # Cutoffs 16 and 18. Benzene (10) and cyclohexane (5) fill train to 15; pyridine (3) would
  # pass 16 and goes to val (18); of the two singletons the one with the larger smallest index
  # (naphthalene, 12) comes first and still fits into train; cyclopentane (3) goes to test.
  split = scaffold_split(TOY)
  benzene = [0, 2, 5, 7, 9, 11, 13, 15, 17, 19]
  cyclohexane = [1, 6, 10, 14, 18]
  np.testing.assert_array_equal(split["train"], benzene + cyclohexane + [12])
  np.testing.assert_array_equal(split["val"], [4, 8, 16])
  np.testing.assert_array_equal(split["test"], [3])


def test_scaffold_groups_with_a_failure():
  groups, failed = scaffold_groups(["CCO", "C1CC", "CC", "c1ccccc1C", "c1ccccc1"])
  assert groups == [[0, 2], [1], [3, 4]]
  assert failed == [1]
  _assert_partition(scaffold_split(["CCO", "C1CC", "CC", "c1ccccc1C", "c1ccccc1"]), 5)


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1)])
def test_bad_fractions(fractions):
  with pytest.raises(ValueError, match="fractions"):
    scaffold_split(TOY, fractions)
  with pytest.raises(ValueError, match="fractions"):
    random_scaffold_split(TOY, fractions)


def test_empty_list():
  with pytest.raises(ValueError, match="empty"):
    scaffold_split([])


# Shipped datasets ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPLIT_SIZES))
def test_scaffold_split_sizes(smiles_of, name):
  smiles = smiles_of(name)
  split = scaffold_split(smiles)
  _assert_partition(split, len(smiles))
  assert tuple(len(split[k]) for k in ("train", "val", "test")) == SPLIT_SIZES[name]


@pytest.fixture(scope="module")
def bbbp_scaffolds(smiles_of):
  """RDKit's own MurckoScaffoldSmiles (the original call) for every BBBP molecule."""
  return [MurckoScaffold.MurckoScaffoldSmiles(smiles=s, includeChirality=True)
          for s in smiles_of("bbbp")]


def test_murcko_scaffold_matches_rdkit_on_bbbp(smiles_of, bbbp_scaffolds):
  assert [murcko_scaffold(s) for s in smiles_of("bbbp")] == bbbp_scaffolds


def test_no_scaffold_crosses_splits(smiles_of, bbbp_scaffolds):
  split = scaffold_split(smiles_of("bbbp"))
  scaffolds = {k: {bbbp_scaffolds[i] for i in split[k]} for k in split}
  assert not scaffolds["train"] & scaffolds["test"]
  assert not scaffolds["train"] & scaffolds["val"]
  assert not scaffolds["val"] & scaffolds["test"]


def test_largest_scaffold_groups(smiles_of, bbbp_scaffolds):
  # Brief section 6: benzene is the largest group of BBBP (137), '' (acyclic) of SIDER (154).
  groups, failed = scaffold_groups(smiles_of("bbbp"))
  largest = max(groups, key=len)
  assert (bbbp_scaffolds[largest[0]], len(largest), failed) == ("c1ccccc1", 137, [])
  assert max(bbbp_scaffolds.count(s) for s in set(bbbp_scaffolds)) == 137
  ring_counts = [rdMolDescriptors.CalcNumRings(Chem.MolFromSmiles(s)) for s in smiles_of("sider")]
  assert ring_counts.count(0) == 154


def _reference_random_scaffold_split(smiles, seed):
  """Hu et al.'s `random_scaffold_split` on an object array of groups, as old NumPy built it."""
  groups, _ = scaffold_groups(smiles)
  scaffold_sets = np.empty(len(groups), dtype=object)
  scaffold_sets[:] = groups
  scaffold_sets = np.random.RandomState(seed).permutation(scaffold_sets)
  n_valid, n_test = int(np.floor(0.1 * len(smiles))), int(np.floor(0.1 * len(smiles)))
  train, valid, test = [], [], []
  for scaffold_set in scaffold_sets:
    if len(valid) + len(scaffold_set) <= n_valid:
      valid.extend(scaffold_set)
    elif len(test) + len(scaffold_set) <= n_test:
      test.extend(scaffold_set)
    else:
      train.extend(scaffold_set)
  return train, valid, test


def test_random_scaffold_split(smiles_of):
  smiles = smiles_of("bace")[:500]
  for seed in (0, 42):
    split = random_scaffold_split(smiles, seed=seed)
    _assert_partition(split, len(smiles))
    train, valid, test = _reference_random_scaffold_split(smiles, seed)
    np.testing.assert_array_equal(split["train"], train)
    np.testing.assert_array_equal(split["val"], valid)
    np.testing.assert_array_equal(split["test"], test)
    assert len(split["val"]) <= 50 and len(split["test"]) <= 50
  assert not np.array_equal(random_scaffold_split(smiles, seed=0)["test"],
                            random_scaffold_split(smiles, seed=1)["test"])
