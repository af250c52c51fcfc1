"""RDKit molecule -> graph, exactly as Hu et al. (2020) `mol_to_graph_data_obj_simple`.

Every atom becomes a node with two categorical features and every bond two directed edges with
two categorical features (the vocabularies of "Strategies for Pre-training GNNs"):

* `nodes['x']` int32 `[n, 2]`: (atomic number - 1, chirality index), where the chirality index
  is 0 CHI_UNSPECIFIED, 1 CHI_TETRAHEDRAL_CW, 2 CHI_TETRAHEDRAL_CCW. Nodes follow RDKit atom order.
* `edges['x']` int32 `[e, 2]`: (bond type, bond direction) with bond type 0 SINGLE, 1 DOUBLE,
  2 TRIPLE, 3 AROMATIC and direction 0 NONE, 1 ENDUPRIGHT, 2 ENDDOWNRIGHT (the `/` `\\` marks).
* Bond k (RDKit bond order) between begin atom i and end atom j is stored as edge 2k = i -> j
  and edge 2k + 1 = j -> i (`senders[2k] = i`, `receivers[2k] = j`). A molecule with no bonds
  gets zero-length edge arrays (`senders` int32 `[0]`, `edges['x']` int32 `[0, 2]`).
* No self-loops: the models append them with bond type SELF_LOOP_BOND.

Parsing follows the 2019 RDKit that the paper used as closely as modern RDKit allows: default
sanitisation first; if that fails (hyper-valent Al/B/Ge organometallics in Tox21 and HIV that
RDKit 2019 accepted), the molecule is re-parsed without sanitisation, its implicit valences are
computed leniently, and every sanitisation step except the valence check is run ("rescued").

Deviations from the original code, which raised on anything outside its vocabulary:
* DATIVE bonds (produced by RDKit >= 2023 organometallic clean-up where RDKit 2019 had SINGLE)
  are encoded as SINGLE.
* A molecule with a dummy atom (`*`, atomic number 0), a chirality other than unspecified /
  tetrahedral CW / CCW (e.g. CHI_OTHER), or any other bond type or direction is rejected with
  `MoleculeError` saying why; dataset loaders skip it and record the reason. (The alternative,
  mapping a dummy atom to the never-used atom row 118, would change the molecule's meaning.)
"""

from __future__ import annotations

import jraph
import numpy as np
from rdkit import Chem, rdBase

from gnnjax.data.dataset import make_graph

# Vocabulary sizes of the model embedding tables (Hu et al. `chem/model.py`).
NUM_ATOM_TYPES = 120  # rows 0..117 = atomic numbers 1..118; row 118 unused; 119 = mask
MASK_ATOM = 119
NUM_CHIRALITY = 3
NUM_BOND_TYPES = 6  # 0..3 real bond types; 4 = self-loop; 5 = mask
SELF_LOOP_BOND = 4
MASK_BOND = 5
NUM_BOND_DIRECTIONS = 3

MAX_ATOMIC_NUMBER = 118

_CHIRALITY_INDEX = {
    Chem.ChiralType.CHI_UNSPECIFIED: 0,
    Chem.ChiralType.CHI_TETRAHEDRAL_CW: 1,
    Chem.ChiralType.CHI_TETRAHEDRAL_CCW: 2,
}
_BOND_TYPE_INDEX = {
    Chem.BondType.SINGLE: 0,
    Chem.BondType.DOUBLE: 1,
    Chem.BondType.TRIPLE: 2,
    Chem.BondType.AROMATIC: 3,
    Chem.BondType.DATIVE: 0,  # SINGLE in RDKit 2019, which the paper used
}
_BOND_DIRECTION_INDEX = {
    Chem.BondDir.NONE: 0,
    Chem.BondDir.ENDUPRIGHT: 1,
    Chem.BondDir.ENDDOWNRIGHT: 2,
}


def _lookup_table(enum_type, index: dict) -> np.ndarray:
  """int32 array mapping every integer value of an RDKit enum to its index, -1 if unsupported."""
  table = np.full(max(int(v) for v in enum_type.values.values()) + 1, -1, dtype=np.int32)
  for value, position in index.items():
    table[int(value)] = position
  return table


# Indexed by the integer value of the RDKit enum: one vectorised lookup per molecule.
_CHIRALITY_TABLE = _lookup_table(Chem.ChiralType, _CHIRALITY_INDEX)
_BOND_TYPE_TABLE = _lookup_table(Chem.BondType, _BOND_TYPE_INDEX)
_BOND_DIRECTION_TABLE = _lookup_table(Chem.BondDir, _BOND_DIRECTION_INDEX)

_SANITIZE_ALL_BUT_VALENCE = Chem.SanitizeFlags.SANITIZE_ALL ^ Chem.SanitizeFlags.SANITIZE_PROPERTIES


class MoleculeError(ValueError):
  """A SMILES string cannot be parsed, or its molecule is outside the featurisation vocabulary."""


def parse_smiles(smiles: str) -> Chem.Mol:
  """Parses `smiles` with default sanitisation, rescuing molecules only the valence check rejects.

  Returns:
    The sanitised RDKit molecule. `mol.GetBoolProp('gnnjax_rescued')` is True when the
    lenient second parse was needed.

  Raises:
    MoleculeError: if the SMILES is empty, syntactically invalid, or fails sanitisation even
      without the valence check. The message says why.
  """
  with rdBase.BlockLogs():
    mol = Chem.MolFromSmiles(smiles)
    if mol is not None:
      mol.SetBoolProp("gnnjax_rescued", False)
    else:
      mol = _rescue(smiles)
  if mol.GetNumAtoms() == 0:  # '' parses to an empty molecule
    raise MoleculeError(f"SMILES {smiles!r} has no atoms")
  return mol


def _rescue(smiles: str) -> Chem.Mol:
  """The lenient parse: no valence check, every other sanitisation step."""
  mol = Chem.MolFromSmiles(smiles, sanitize=False)
  if mol is None:
    raise MoleculeError(f"RDKit cannot parse SMILES {smiles!r} (syntax error)")
  problems = "; ".join(p.Message() for p in Chem.DetectChemistryProblems(mol))
  mol.UpdatePropertyCache(strict=False)
  failed_step = Chem.SanitizeMol(mol, _SANITIZE_ALL_BUT_VALENCE, catchErrors=True)
  if failed_step != Chem.SanitizeFlags.SANITIZE_NONE:
    raise MoleculeError(f"RDKit cannot sanitise SMILES {smiles!r} ({problems or failed_step})")
  mol.SetBoolProp("gnnjax_rescued", True)
  return mol


def atom_features(mol: Chem.Mol) -> np.ndarray:
  """int32 `[n, 2]`: (atomic number - 1, chirality index) per atom, in RDKit atom order.

  Raises:
    MoleculeError: if an atomic number is outside 1..118 or a chirality is not in the vocabulary.
  """
  raw = np.array([(a.GetAtomicNum(), int(a.GetChiralTag())) for a in mol.GetAtoms()],
                 dtype=np.int32).reshape(-1, 2)
  atomic_numbers, chiral_tags = raw[:, 0], raw[:, 1]
  bad = np.flatnonzero((atomic_numbers < 1) | (atomic_numbers > MAX_ATOMIC_NUMBER))
  if bad.size:
    atom = mol.GetAtomWithIdx(int(bad[0]))
    raise MoleculeError(f"atom {atom.GetIdx()} ({atom.GetSymbol()}, atomic number "
                        f"{atom.GetAtomicNum()}) is not in the vocabulary (1..{MAX_ATOMIC_NUMBER})")
  chirality = _CHIRALITY_TABLE[chiral_tags]
  bad = np.flatnonzero(chirality < 0)
  if bad.size:
    atom = mol.GetAtomWithIdx(int(bad[0]))
    raise MoleculeError(f"atom {atom.GetIdx()} ({atom.GetSymbol()}) has chirality "
                        f"{atom.GetChiralTag()}, not in the vocabulary "
                        f"({', '.join(str(t) for t in _CHIRALITY_INDEX)})")
  return np.stack([atomic_numbers - 1, chirality], axis=1)


def bond_features(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Directed edges of `mol`, two per bond (i -> j, then j -> i), in RDKit bond order.

  Returns:
    senders int32 `[2b]`, receivers int32 `[2b]`, features int32 `[2b, 2]` (bond type, direction).

  Raises:
    MoleculeError: if a bond type or direction is not in the vocabulary.
  """
  raw = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), int(b.GetBondType()),
                   int(b.GetBondDir())) for b in mol.GetBonds()], dtype=np.int32).reshape(-1, 4)
  features = np.stack([_BOND_TYPE_TABLE[raw[:, 2]], _BOND_DIRECTION_TABLE[raw[:, 3]]], axis=1)
  bad = np.flatnonzero((features < 0).any(axis=1))
  if bad.size:
    bond = mol.GetBondWithIdx(int(bad[0]))
    raise MoleculeError(f"bond {bond.GetIdx()} has type {bond.GetBondType()} and direction "
                        f"{bond.GetBondDir()}; the vocabulary has types "
                        f"{', '.join(str(t) for t in _BOND_TYPE_INDEX)} and directions "
                        f"{', '.join(str(d) for d in _BOND_DIRECTION_INDEX)}")
  ends = raw[:, :2]
  senders = ends.reshape(-1)
  receivers = ends[:, ::-1].reshape(-1)
  return senders, receivers, np.repeat(features, 2, axis=0)


def mol_to_graph(mol: Chem.Mol) -> jraph.GraphsTuple:
  """Featurises an RDKit molecule (conventions in the module docstring).

  Raises:
    MoleculeError: if an atom, chirality, bond type or bond direction is outside the vocabulary.
  """
  nodes = atom_features(mol)
  senders, receivers, edges = bond_features(mol)
  return make_graph(senders, receivers, nodes.shape[0], {"x": nodes}, {"x": edges})


def smiles_to_graph(smiles: str) -> jraph.GraphsTuple | None:
  """Parses and featurises `smiles`; None if it cannot be parsed or is outside the vocabulary.

  Use `parse_smiles` and `mol_to_graph` directly to learn why a molecule was rejected.
  """
  try:
    return mol_to_graph(parse_smiles(smiles))
  except MoleculeError:
    return None
