"""Tests of the Hu et al. molecule featuriser and the MoleculeNet CSV loaders."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from rdkit import Chem

from gnnjax.data import moleculenet, sources
from gnnjax.data.dataset import MULTITASK, REGRESSION, DataFormatError
from gnnjax.data.featurize import (MASK_ATOM, MASK_BOND, NUM_ATOM_TYPES, NUM_BOND_DIRECTIONS,
                                   NUM_BOND_TYPES, NUM_CHIRALITY, SELF_LOOP_BOND, MoleculeError,
                                   mol_to_graph, parse_smiles, smiles_to_graph)
from gnnjax.data.moleculenet import load_moleculenet

# A hyper-valent Al complex from HIV that RDKit 2019 parsed and RDKit >= 2023 rejects.
AL_COMPLEX = "O=C1O[Al]23(OC1=O)(OC(=O)C(=O)O2)OC(=O)C(=O)O3"


@pytest.fixture(scope="module")
def load(request):
  """Loads each shipped dataset once per module (without the processed cache)."""
  root = request.getfixturevalue("data_dir")
  loaded = {}

  def get(name, limit=None):
    if (name, limit) not in loaded:
      loaded[name, limit] = load_moleculenet(name, root, limit=limit, use_cache=False)
    return loaded[name, limit]
  return get


# Featurisation ---------------------------------------------------------------------------------


def _graph(smiles):
  return mol_to_graph(parse_smiles(smiles))


def test_vocabulary_constants():
  assert (NUM_ATOM_TYPES, MASK_ATOM, NUM_CHIRALITY) == (120, 119, 3)
  assert (NUM_BOND_TYPES, SELF_LOOP_BOND, MASK_BOND, NUM_BOND_DIRECTIONS) == (6, 4, 5, 3)


def test_ethanol_nodes_edges_and_dtypes():
  g = _graph("CCO")
  np.testing.assert_array_equal(g.nodes["x"], [[5, 0], [5, 0], [7, 0]])
  np.testing.assert_array_equal(g.senders, [0, 1, 1, 2])
  np.testing.assert_array_equal(g.receivers, [1, 0, 2, 1])
  np.testing.assert_array_equal(g.edges["x"], [[0, 0]] * 4)
  assert g.nodes["x"].dtype == g.edges["x"].dtype == g.senders.dtype == np.int32
  np.testing.assert_array_equal(g.n_node, [3])
  np.testing.assert_array_equal(g.n_edge, [4])


def test_cis_trans_bond_directions():
  # '/' on both sides: ENDUPRIGHT (1) on the two single bonds; the double bond has no direction.
  trans = _graph("C/C=C/C")
  np.testing.assert_array_equal(trans.edges["x"], [[0, 1], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1]])
  cis = _graph("C/C=C\\C")  # '\' is ENDDOWNRIGHT (2)
  np.testing.assert_array_equal(cis.edges["x"][4:], [[0, 2], [0, 2]])


def test_chirality_index():
  # RDKit stores the tag relative to bond order: '[C@H](F)(Cl)Br' is CW, its mirror image CCW.
  assert _graph("[C@H](F)(Cl)Br").nodes["x"][0, 1] == 1
  assert _graph("[C@@H](F)(Cl)Br").nodes["x"][0, 1] == 2
  np.testing.assert_array_equal(_graph("[C@H](F)(Cl)Br").nodes["x"][:, 0], [5, 8, 16, 34])
  np.testing.assert_array_equal(_graph("C(F)(Cl)Br").nodes["x"][:, 1], [0, 0, 0, 0])


def test_benzene_is_aromatic_ring():
  g = _graph("c1ccccc1")
  np.testing.assert_array_equal(g.edges["x"], [[3, 0]] * 12)
  np.testing.assert_array_equal(g.senders, [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 0])
  np.testing.assert_array_equal(g.receivers, [1, 0, 2, 1, 3, 2, 4, 3, 5, 4, 0, 5])


def test_molecule_without_bonds():
  g = _graph("[Na+]")
  np.testing.assert_array_equal(g.nodes["x"], [[10, 0]])
  assert g.senders.shape == g.receivers.shape == (0,)
  assert g.edges["x"].shape == (0, 2) and g.edges["x"].dtype == np.int32
  np.testing.assert_array_equal(g.n_edge, [0])


def test_triple_bond_and_kept_hydrogen():
  g = _graph("[2H]C#N")  # RDKit removes plain [H] atoms but keeps isotopes
  np.testing.assert_array_equal(g.nodes["x"][:, 0], [0, 5, 6])
  np.testing.assert_array_equal(g.edges["x"][:, 0], [0, 0, 2, 2])


def test_dative_bond_is_single():
  g = _graph("[NH3]->[Cu+2]")
  np.testing.assert_array_equal(g.edges["x"], [[0, 0], [0, 0]])


@pytest.mark.parametrize("smiles, reason", [
    ("*C(=O)O", "atomic number 0"),
    ("C$C", "QUADRUPLE"),
    ("F[Si@SP1](F)(Cl)Cl", "CHI_SQUAREPLANAR"),
])
def test_outside_vocabulary_is_rejected(smiles, reason):
  with pytest.raises(MoleculeError, match=reason):
    _graph(smiles)
  assert smiles_to_graph(smiles) is None


def test_chi_other_is_rejected():
  mol = Chem.MolFromSmiles("CC(F)Cl")
  mol.GetAtomWithIdx(1).SetChiralTag(Chem.ChiralType.CHI_OTHER)
  with pytest.raises(MoleculeError, match="CHI_OTHER"):
    mol_to_graph(mol)


@pytest.mark.parametrize("smiles, reason", [
    ("C1CC", "syntax error"), ("c1cccc1", "kekulize"), ("", "no atoms"), ("CC(", "syntax")])
def test_unparseable_smiles(smiles, reason):
  assert smiles_to_graph(smiles) is None
  with pytest.raises(MoleculeError, match=reason):
    parse_smiles(smiles)


def test_hypervalent_molecule_is_rescued():
  assert Chem.MolFromSmiles(AL_COMPLEX) is None  # what modern RDKit does by default
  mol = parse_smiles(AL_COMPLEX)
  assert mol.GetBoolProp("gnnjax_rescued")
  assert not parse_smiles("CCO").GetBoolProp("gnnjax_rescued")
  g = mol_to_graph(mol)
  assert g.nodes["x"].shape == (19, 2) and g.nodes["x"][3, 0] == 12  # Al
  assert g.senders.shape == (2 * 21,)


def _reference_graph(smiles):
  """Hu et al.'s `mol_to_graph_data_obj_simple`, the slow obvious way (list.index lookups)."""
  chiralities = [Chem.ChiralType.CHI_UNSPECIFIED, Chem.ChiralType.CHI_TETRAHEDRAL_CW,
                 Chem.ChiralType.CHI_TETRAHEDRAL_CCW]
  bond_types = [Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE,
                Chem.BondType.AROMATIC]
  directions = [Chem.BondDir.NONE, Chem.BondDir.ENDUPRIGHT, Chem.BondDir.ENDDOWNRIGHT]
  mol = Chem.MolFromSmiles(smiles)
  atoms = [[list(range(1, 119)).index(a.GetAtomicNum()), chiralities.index(a.GetChiralTag())]
           for a in mol.GetAtoms()]
  edges, features = [], []
  for bond in mol.GetBonds():
    i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
    feature = [bond_types.index(bond.GetBondType()), directions.index(bond.GetBondDir())]
    edges += [(i, j), (j, i)]
    features += [feature, feature]
  return atoms, edges, features


@pytest.mark.parametrize("name", ["bbbp", "tox21", "bace"])
def test_featurisation_matches_reference_on_real_molecules(load, name):
  dataset = load(name)
  for k in range(0, len(dataset), len(dataset) // 300):  # ~300 molecules keep this fast
    smiles = dataset.report["smiles"][k]
    if Chem.MolFromSmiles(smiles) is None:  # rescued: the reference cannot parse it
      continue
    atoms, edges, features = _reference_graph(smiles)
    g = dataset.graphs[k]
    np.testing.assert_array_equal(g.nodes["x"], atoms, err_msg=smiles)
    np.testing.assert_array_equal(np.stack([g.senders, g.receivers], 1).reshape(-1, 2),
                                  np.array(edges).reshape(-1, 2), err_msg=smiles)
    np.testing.assert_array_equal(g.edges["x"], np.array(features).reshape(-1, 2),
                                  err_msg=smiles)


# Loading the shipped files ---------------------------------------------------------------------

# name: (rows in file, molecules kept, tasks, task type). Paper counts differ only where the
# chemprop copy was cleaned (ToxCast 8576 vs 8575) or a dummy atom is dropped (ClinTox 1477).
FACTS = {
    "bbbp": (2039, 2039, 1, MULTITASK),
    "bace": (1513, 1513, 1, MULTITASK),
    "clintox": (1478, 1477, 2, MULTITASK),
    "sider": (1427, 1427, 27, MULTITASK),
    "tox21": (7831, 7831, 12, MULTITASK),
    "toxcast": (8576, 8576, 617, MULTITASK),
    "esol": (1128, 1128, 1, REGRESSION),
    "freesolv": (642, 642, 1, REGRESSION),
    "lipophilicity": (4200, 4200, 1, REGRESSION),
}


@pytest.mark.parametrize("name", sorted(FACTS))
def test_shipped_counts(load, name):
  rows, kept, tasks, task_type = FACTS[name]
  dataset = load(name)
  assert (dataset.report["num_rows"], len(dataset), dataset.num_outputs) == (rows, kept, tasks)
  assert len(dataset.report["skipped"]) == rows - kept
  assert len(dataset.report["smiles"]) == len(dataset.report["rows"]) == kept
  assert dataset.task_type == task_type and dataset.task_level == "graph"
  assert len(dataset.report["tasks"]) == tasks
  g = dataset.graphs[0]
  assert g.globals["y"].shape == (1, tasks) and g.globals["y"].dtype == np.float32
  assert g.globals["y_mask"].shape == (1, tasks) and g.globals["y_mask"].dtype == bool
  assert dataset.node_features_categorical and dataset.num_node_features == 2
  assert dataset.num_edge_features == 2


@pytest.mark.parametrize("name, tasks", [("hiv", 1), ("muv", 17), ("qm8", 16)])
def test_large_sets_with_limit(load, name, tasks):
  dataset = load(name, limit=300)
  assert len(dataset) == dataset.report["num_rows"] == 300
  assert dataset.num_outputs == tasks


def test_task_columns(load):
  assert load("tox21").report["tasks"] == list(moleculenet.TOX21_TASKS)
  assert load("clintox").report["tasks"] == ["FDA_APPROVED", "CT_TOX"]
  assert load("bace").report["tasks"] == ["Class"]
  assert load("muv", limit=300).report["tasks"] == list(moleculenet.MUV_TASKS)
  sider_tasks = load("sider").report["tasks"]
  assert sider_tasks[10] == "Neoplasms benign, malignant and unspecified (incl cysts and polyps)"
  qm8_tasks = load("qm8", limit=300).report["tasks"]
  assert qm8_tasks[4:12] == ["E1-PBE0", "E2-PBE0", "f1-PBE0", "f2-PBE0",
                             "E1-PBE0.1", "E2-PBE0.1", "f1-PBE0.1", "f2-PBE0.1"]


def test_clintox_dummy_atom_is_skipped(load):
  dataset = load("clintox")
  (skipped,) = dataset.report["skipped"]
  assert (skipped["row"], skipped["line"]) == (0, 2)
  assert skipped["smiles"].startswith("*C(=O)[C@H](CCCCNC(=O)OCCOC)")
  assert "atomic number 0" in skipped["reason"]
  assert dataset.report["rows"][:2] == [1, 2]


def test_tox21_rescued_molecules(load):
  assert load("tox21").report["rescued_rows"] == [1322, 2290, 2297, 3558, 4565, 4649, 5538, 6723]


def _plain_labels(path, smiles_column, opener=open):
  """(smiles, labels, present) read by splitting lines on ',' (files without quoted cells)."""
  with opener(path, "rt") as f:
    header, *lines = [line.rstrip("\n").split(",") for line in f]
  smiles_at = header.index(smiles_column)
  smiles = [cells[smiles_at] for cells in lines]
  cells = [[c for k, c in enumerate(row) if k != smiles_at] for row in lines]
  present = np.array([[c != "" for c in row] for row in cells])
  labels = np.array([[float(c) if c else 0.0 for c in row] for row in cells])
  return smiles, labels, present


@pytest.mark.parametrize("name, file, opener", [
    ("tox21", "tox21.csv", open), ("toxcast", "toxcast.csv.gz", gzip.open),
    ("esol", "delaney.csv", open)])
def test_labels_match_plain_reading(load, data_dir, name, file, opener):
  smiles, labels, present = _plain_labels(data_dir / "moleculenet" / file, "smiles", opener)
  dataset = load(name)
  rows = dataset.report["rows"]
  assert dataset.report["smiles"] == [smiles[r] for r in rows]
  y = np.concatenate([g.globals["y"] for g in dataset.graphs])
  mask = np.concatenate([g.globals["y_mask"] for g in dataset.graphs])
  np.testing.assert_array_equal(mask, present[rows])
  np.testing.assert_allclose(y, labels[rows], rtol=1e-6)
  if dataset.task_type == MULTITASK:
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_tox21_missing_label_fraction(load):
  mask = np.concatenate([g.globals["y_mask"] for g in load("tox21").graphs])
  assert mask.sum() == 77946  # 7831 x 12 cells minus the empty ones (counted by hand with awk)


def test_processed_cache_round_trip(data_dir):
  first = load_moleculenet("bace", data_dir)
  assert not first.report["from_cache"]
  cached = list((sources.cache_dir() / "processed" / "moleculenet").glob("bace-*-v1.npz"))
  assert [p.name for p in cached] == ["bace-847be1e38d3798c6-v1.npz"]
  second = load_moleculenet("BACE", data_dir)
  assert second.report["from_cache"]
  assert second.report["smiles"] == first.report["smiles"]
  assert len(second) == len(first) and second.num_outputs == first.num_outputs
  for a, b in zip(first.graphs, second.graphs):
    for leaf_a, leaf_b in zip(_leaves(a), _leaves(b)):
      assert leaf_a.dtype == leaf_b.dtype
      np.testing.assert_array_equal(leaf_a, leaf_b)


def _leaves(graph):
  return [graph.nodes["x"], graph.edges["x"], graph.senders, graph.receivers, graph.n_node,
          graph.n_edge, graph.globals["y"], graph.globals["y_mask"]]


def test_limit_is_not_cached(data_dir):
  load_moleculenet("bbbp", data_dir, limit=10)
  assert not (sources.cache_dir() / "processed").exists()


def test_unknown_name():
  with pytest.raises(ValueError, match="unknown MoleculeNet dataset 'zinc'.*bbbp.*tox21"):
    load_moleculenet("zinc")


def test_missing_file_says_where_to_put_it(tmp_path):
  with pytest.raises(sources.DatasetUnavailableError, match="moleculenet/bbbp.csv"):
    load_moleculenet("bbbp", tmp_path / "empty")


# Malformed files -------------------------------------------------------------------------------


def _write(tmp_path, file, text):
  folder = tmp_path / "root" / "moleculenet"
  folder.mkdir(parents=True, exist_ok=True)
  (folder / file).write_text(text)
  return tmp_path / "root"


def _bbbp_lines(count):
  return ["smiles,p_np"] + [f"{'C' * (k + 1)}O,{k % 2}" for k in range(count)]


def test_good_hand_written_file(tmp_path):
  root = _write(tmp_path, "bbbp.csv", "\n".join(_bbbp_lines(5) + ["C1CC,1", "c1ccccc1,", ""]))
  dataset = load_moleculenet("bbbp", root, use_cache=False)
  assert len(dataset) == 6 and dataset.report["num_rows"] == 7
  reason = "RDKit cannot parse SMILES 'C1CC' (syntax error)"
  assert dataset.report["skipped"] == [{"row": 5, "line": 7, "smiles": "C1CC", "reason": reason}]
  np.testing.assert_array_equal(dataset.graph_labels[:, 0], [0, 1, 0, 1, 0, 0])
  assert not dataset.graphs[-1].globals["y_mask"][0, 0]


def test_missing_smiles_column(tmp_path):
  root = _write(tmp_path, "bbbp.csv", "name,p_np\nCCO,1\n")
  expected = r"bbbp.csv: line 1: expected a column named 'smiles', found 'name', 'p_np'"
  with pytest.raises(DataFormatError, match=expected):
    load_moleculenet("bbbp", root)


def test_missing_task_column(tmp_path):
  root = _write(tmp_path, "clintox.csv", "smiles,FDA_APPROVED\nCCO,1\n")
  with pytest.raises(DataFormatError, match="expected a column named 'CT_TOX'"):
    load_moleculenet("clintox", root)


def test_non_numeric_label(tmp_path):
  lines = _bbbp_lines(20)
  lines[16] = "CCN,abc"
  root = _write(tmp_path, "bbbp.csv", "\n".join(lines))
  with pytest.raises(DataFormatError,
                     match=r"bbbp.csv: line 17: column p_np value 'abc' is not a number"):
    load_moleculenet("bbbp", root)


def test_label_outside_zero_one(tmp_path):
  lines = _bbbp_lines(4)
  lines[3] = "CCN,2"
  root = _write(tmp_path, "bbbp.csv", "\n".join(lines))
  with pytest.raises(DataFormatError, match=r"line 4: column p_np value '2' is not 0 or 1"):
    load_moleculenet("bbbp", root)


def test_infinite_regression_target(tmp_path):
  root = _write(tmp_path, "freesolv.csv", "smiles,freesolv\nCCO,-1.5\nCCN,inf\n")
  with pytest.raises(DataFormatError, match=r"line 3: column freesolv value 'inf' is not a finite"):
    load_moleculenet("freesolv", root)


def test_wrong_number_of_cells(tmp_path):
  lines = _bbbp_lines(6)
  lines[5] = "CCN,1,extra"
  root = _write(tmp_path, "bbbp.csv", "\n".join(lines))
  with pytest.raises(DataFormatError, match=r"line 6: expected 2 cells .*, found 3"):
    load_moleculenet("bbbp", root)


def test_empty_file(tmp_path):
  root = _write(tmp_path, "bbbp.csv", "")
  with pytest.raises(DataFormatError, match="line 1: expected a header line"):
    load_moleculenet("bbbp", root)


def test_header_only(tmp_path):
  root = _write(tmp_path, "bbbp.csv", "smiles,p_np\n")
  with pytest.raises(DataFormatError, match="expected at least one data row"):
    load_moleculenet("bbbp", root)


def test_no_valid_molecule(tmp_path):
  root = _write(tmp_path, "bbbp.csv", "smiles,p_np\nC1CC,1\n*C,0\n")
  with pytest.raises(DataFormatError, match="none of the 2 SMILES.*line 2"):
    load_moleculenet("bbbp", root)
