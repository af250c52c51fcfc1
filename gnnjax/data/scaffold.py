"""Bemis-Murcko scaffold splits, exactly as Hu et al. (2020) `chem/splitters.py`.

Molecules are grouped by the SMILES of their Murcko scaffold (with chirality); acyclic molecules
share the scaffold ''. `scaffold_split` is deterministic: biggest groups first, so the training set
gets the common scaffolds and validation / test get rare ones. `random_scaffold_split` shuffles the
groups with a seed instead.

SMILES are parsed like the featuriser (`gnnjax.data.featurize.parse_smiles`), so molecules that
modern RDKit only accepts with the lenient parse still get a scaffold (computed, like the parse,
without the valence check RDKit 2019 did not apply to them). A molecule whose scaffold cannot be
computed at all (the original code would crash) becomes a group of its own and is logged as a
warning; `scaffold_groups` returns their indices.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem.Scaffolds import MurckoScaffold

from gnnjax.data.featurize import MoleculeError, parse_smiles

SPLIT_NAMES = ("train", "val", "test")


def murcko_scaffold(smiles: str, include_chirality: bool = True) -> str:
  """SMILES of the Bemis-Murcko scaffold of `smiles` ('' for acyclic molecules).

  Raises:
    MoleculeError: if the SMILES cannot be parsed or RDKit fails to compute the scaffold.
  """
  mol = parse_smiles(smiles)
  with rdBase.BlockLogs():
    try:
      return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=include_chirality)
    except (RuntimeError, ValueError):  # RDKit sanitisation errors derive from these
      pass
    try:
      return _lenient_scaffold(mol, include_chirality)
    except (RuntimeError, ValueError) as e:
      raise MoleculeError(f"RDKit cannot compute the scaffold of {smiles!r}: {e}") from None


def _lenient_scaffold(mol: Chem.Mol, include_chirality: bool) -> str:
  """`MurckoScaffoldSmiles` without its valence check, for the leniently parsed molecules."""
  scaffold = Chem.MurckoDecompose(mol)
  scaffold.ClearComputedProps()
  scaffold.UpdatePropertyCache(strict=False)
  Chem.GetSymmSSSR(scaffold)
  return Chem.MolToSmiles(scaffold, isomericSmiles=include_chirality)


def scaffold_groups(smiles_list: Sequence[str], include_chirality: bool = True
                    ) -> tuple[list[list[int]], list[int]]:
  """Groups molecule indices by scaffold.

  Returns:
    groups: lists of ascending indices, one per scaffold, in order of first appearance; a
      molecule without a computable scaffold is a group of its own at its position.
    failed: indices of the molecules without a computable scaffold.
  """
  groups: list[list[int]] = []
  by_scaffold: dict[str, list[int]] = {}
  failed: list[int] = []
  for index, smiles in enumerate(smiles_list):
    try:
      scaffold = murcko_scaffold(smiles, include_chirality)
    except MoleculeError as e:
      logging.warning("molecule %d gets a scaffold group of its own: %s", index, e)
      failed.append(index)
      groups.append([index])
      continue
    if scaffold not in by_scaffold:
      by_scaffold[scaffold] = []
      groups.append(by_scaffold[scaffold])
    by_scaffold[scaffold].append(index)
  return groups, failed


def _check_fractions(fractions: Sequence[float], num_molecules: int) -> tuple[float, float, float]:
  if num_molecules == 0:
    raise ValueError("cannot split an empty list of molecules")
  if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
    raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing "
                     f"to 1, got {tuple(fractions)}")
  return tuple(float(f) for f in fractions)


def _as_split(train: list[int], val: list[int], test: list[int]) -> dict[str, np.ndarray]:
  return {name: np.asarray(part, dtype=np.int64) for name, part in zip(SPLIT_NAMES,
                                                                       (train, val, test))}


def scaffold_split(smiles_list: Sequence[str],
                   fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
  """Deterministic scaffold split (Hu et al. `scaffold_split`).

  Groups are ordered by (size, smallest index), descending. Walking them, a group goes to train
  unless that would push train past `fractions[0] * N`; then to val unless train + val would pass
  `(fractions[0] + fractions[1]) * N`; else to test. A later, smaller group can still go to train.

  Args:
    smiles_list: one SMILES per molecule (N of them).
    fractions: (train, val, test) fractions summing to 1.

  Returns:
    {'train', 'val', 'test'}: int64 index arrays into `smiles_list`, disjoint and covering
    0..N-1, each in the order the groups were assigned (ascending within a group).
  """
  frac_train, frac_val, _ = _check_fractions(fractions, len(smiles_list))
  groups, _ = scaffold_groups(smiles_list)
  groups.sort(key=lambda group: (len(group), group[0]), reverse=True)
  train_cutoff = frac_train * len(smiles_list)
  val_cutoff = (frac_train + frac_val) * len(smiles_list)
  train, val, test = [], [], []
  for group in groups:
    if len(train) + len(group) <= train_cutoff:
      train.extend(group)
    elif len(train) + len(val) + len(group) <= val_cutoff:
      val.extend(group)
    else:
      test.extend(group)
  return _as_split(train, val, test)


def random_scaffold_split(smiles_list: Sequence[str],
                          fractions: Sequence[float] = (0.8, 0.1, 0.1),
                          seed: int = 0) -> dict[str, np.ndarray]:
  """Scaffold split with shuffled groups (Hu et al. `random_scaffold_split`).

  `np.random.RandomState(seed)` permutes the groups (in order of first appearance); each group
  goes to val while val stays within floor(fractions[1] * N), else to test while test stays within
  floor(fractions[2] * N), else to train.

  Returns:
    {'train', 'val', 'test'}: int64 index arrays, disjoint and covering 0..N-1.
  """
  _, frac_val, frac_test = _check_fractions(fractions, len(smiles_list))
  groups, _ = scaffold_groups(smiles_list)
  # Same draws as the original's rng.permutation(list_of_groups): shuffling an object array of
  # k groups and shuffling arange(k) consume the generator identically.
  order = np.random.RandomState(seed).permutation(len(groups))
  max_val = int(np.floor(frac_val * len(smiles_list)))
  max_test = int(np.floor(frac_test * len(smiles_list)))
  train, val, test = [], [], []
  for position in order:
    group = groups[position]
    if len(val) + len(group) <= max_val:
      val.extend(group)
    elif len(test) + len(group) <= max_test:
      test.extend(group)
    else:
      train.extend(group)
  return _as_split(train, val, test)
