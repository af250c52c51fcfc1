"""Tests of gnnjax.data.transforms.one_hot_node_features and of GraphGym designs on molecules.

The encoding is checked against arrays written out by hand; the end-to-end tests train tiny
GraphGym designs on the first 40 BACE molecules (categorical atom features) with the population
engine and compare a member with `reference.train_design` (loop.fit) of the same design.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gnnjax import data as data_lib
from gnnjax.data import dataset as ds
from gnnjax.data import transforms
from gnnjax.design import Design, checkpoints, engine, reference
from gnnjax.design import trial as trial_lib
from gnnjax.models import graphgym
from gnnjax.search import evaluate
from gnnjax.tasks import fisher

TOLERANCE = 1e-4  # population member vs. the design trained alone (float reassociation only)


def categorical_dataset() -> ds.GraphDataset:
  """Two small graphs with int32 node features (atom type, chirality) and int edge features."""
  g0 = ds.make_graph(
      [0, 1, 1, 2], [1, 0, 2, 1], 3,
      {"x": np.array([[5, 0], [7, 2], [5, 0]], np.int32),
       "label_mask": np.array([True, False, True])},
      edge_features={"x": np.array([[0, 0], [0, 0], [1, 0], [1, 0]], np.int32)},
      graph_features={"y": np.array([[1.0, 0.0]], np.float32),
                      "y_mask": np.array([[True, False]])})
  g1 = ds.make_graph(
      [0, 1], [1, 0], 2,
      {"x": np.array([[0, 0], [7, 0]], np.int32),
       "label_mask": np.array([True, True])},
      edge_features={"x": np.array([[3, 1], [3, 1]], np.int32)},
      graph_features={"y": np.array([[0.0, 1.0]], np.float32),
                      "y_mask": np.array([[True, True]])})
  return ds.GraphDataset("cat", [g0, g1], ds.GRAPH, ds.MULTITASK, 2, report={"source": "hand"})


# Observed values: column 0 {0, 5, 7}, column 1 {0, 2}; blocks [0 5 7 | 0 2].
EXPECTED_X = [
    np.array([[0, 1, 0, 1, 0],    # (5, 0)
              [0, 0, 1, 0, 1],    # (7, 2)
              [0, 1, 0, 1, 0]],   # (5, 0)
             np.float32),
    np.array([[1, 0, 0, 1, 0],    # (0, 0)
              [0, 0, 1, 1, 0]],   # (7, 0)
             np.float32),
]


def test_one_hot_matches_hand_built_arrays():
  data = categorical_dataset()
  encoded = transforms.one_hot_node_features(data)
  assert encoded is not data and not encoded.node_features_categorical
  for graph, want in zip(encoded.graphs, EXPECTED_X):
    assert graph.nodes["x"].dtype == np.float32
    np.testing.assert_array_equal(graph.nodes["x"], want)
  assert encoded.report["one_hot_vocab"] == [[0, 5, 7], [0, 2]]
  assert encoded.report["source"] == "hand" and "one_hot_vocab" not in data.report
  assert encoded.num_node_features == 5
  assert (encoded.name, encoded.task_level, encoded.task_type, encoded.num_outputs) == (
      data.name, data.task_level, data.task_type, data.num_outputs)
  # The input is left as it was.
  np.testing.assert_array_equal(data.graphs[0].nodes["x"], [[5, 0], [7, 2], [5, 0]])


def test_one_hot_keeps_labels_masks_edges_and_globals():
  data = categorical_dataset()
  encoded = transforms.one_hot_node_features(data)
  for before, after in zip(data.graphs, encoded.graphs):
    assert after.nodes["label_mask"] is before.nodes["label_mask"]
    assert after.edges is before.edges and after.globals is before.globals
    for field in ("senders", "receivers", "n_node", "n_edge"):
      assert getattr(after, field) is getattr(before, field)
  np.testing.assert_array_equal(encoded.graph_labels, data.graph_labels)


def test_float_features_pass_through_as_the_same_object():
  data = transforms.one_hot_node_features(categorical_dataset())
  assert transforms.one_hot_node_features(data) is data
  assert data_lib.one_hot_node_features is transforms.one_hot_node_features


def test_one_column_vector_features():
  graph = ds.make_graph([], [], 3, {"x": np.array([4, 2, 4], np.int64)})
  encoded = transforms.one_hot_node_features(
      ds.GraphDataset("vec", [graph], ds.NODE, ds.MULTICLASS, 2))
  np.testing.assert_array_equal(encoded.graphs[0].nodes["x"], [[0, 1], [1, 0], [0, 1]])
  assert encoded.report["one_hot_vocab"] == [[2, 4]]


def test_linear_layer_on_one_hot_is_a_sum_of_embedding_rows():
  # The docstring's claim (AtomEncoder): W x + b = E_0[x_0] + E_1[x_1] + b, E_k = W's block k.
  data = categorical_dataset()
  encoded = transforms.one_hot_node_features(data)
  rng = np.random.default_rng(0)
  weight, bias = rng.normal(size=(5, 4)), rng.normal(size=4)
  tables = [weight[:3], weight[3:]]  # blocks of column 0 (3 values) and column 1 (2 values)
  vocab = encoded.report["one_hot_vocab"]
  for before, after in zip(data.graphs, encoded.graphs):
    embedded = bias + sum(tables[k][[vocab[k].index(v) for v in before.nodes["x"][:, k]]]
                          for k in range(2))
    np.testing.assert_allclose(after.nodes["x"] @ weight + bias, embedded, rtol=1e-12)


def test_build_model_still_rejects_categorical_features_and_names_the_fix():
  with pytest.raises(ValueError, match="one_hot_node_features"):
    graphgym.build_model(Design(dim_inner=4), categorical_dataset())


def test_fisher_task_encodes_categorical_features():
  data = ds.GraphDataset("cat10", categorical_dataset().graphs * 10, ds.GRAPH, ds.MULTITASK, 2)
  config = fisher.FisherConfig(num_seeds=1, batch_size=4)
  got = fisher.prepare_task(data, config)
  want = fisher.prepare_task(transforms.one_hot_node_features(data), config)
  assert got.train.nodes["x"].dtype == np.float32
  np.testing.assert_array_equal(got.train.nodes["x"], want.train.nodes["x"])
  np.testing.assert_array_equal(got.val.nodes["x"], want.val.nodes["x"])


def test_training_evaluator_hands_its_trainer_encoded_features():
  seen = []

  def fake_trainer(designs, dataset, seeds, **kwargs):
    seen.append(dataset)
    return [trial_lib.TrialResult(key=trial_lib.TrialKey("cat", d.design_id, s),
                                  design=d.to_dict(), num_params=1,
                                  best={"val": {"roc_auc": 0.5}}) for d in designs for s in seeds]

  evaluator = evaluate.TrainingEvaluator(categorical_dataset(), "cat", trainer=fake_trainer)
  assert evaluator(Design(dim_inner=4)).value == 0.5
  assert seen[0] is evaluator.dataset and not seen[0].node_features_categorical


# ----------------------------------------------------------------------------------------------
# End to end on molecules.

DESIGNS = [
    Design(dim_inner=8, layers_mp=1, epochs=2, batch_size=8),
    Design(dim_inner=6, layers_mp=2, stage_type="skipsum", aggregation="mean",
           activation="prelu", epochs=2, batch_size=8),
]
SEED = 1


@pytest.fixture(scope="module")
def bace(data_dir):
  """40 BACE molecules: 20 of each class (the CSV lists all 101 actives of its first 200 rows
  first, so its first 40 rows alone have one class and AUCs of NaN)."""
  pytest.importorskip("rdkit")
  head = data_lib.load_dataset("bace", data_dir, limit=200)
  labels = head.graph_labels[:, 0]
  chosen = np.concatenate([np.nonzero(labels == 1)[0][:20], np.nonzero(labels == 0)[0][:20]])
  subset = head.subset(chosen)
  subset.report = {**head.report, "smiles": [head.report["smiles"][i] for i in chosen]}
  return subset


@pytest.fixture(scope="module")
def population(bace):
  return engine.train_population(DESIGNS, bace, [SEED], eval_every=1)


def _finite(record: dict) -> bool:
  return all(math.isfinite(v) for metrics in record.values() for v in metrics.values())


def test_population_trains_graphgym_designs_on_molecules(bace, population):
  assert bace.node_features_categorical  # the raw loader output went in
  assert [r.status for r in population] == [trial_lib.OK] * 2
  for result in population:
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert _finite(result.final) and _finite(result.best)
    assert set(result.final) == {"train", "val"} and "roc_auc" in result.final["val"]


def test_population_member_matches_the_design_trained_alone(bace, population):
  alone = reference.train_design(DESIGNS[1], bace, SEED, eval_every=1)
  got = population[1]
  assert got.key == alone.key and got.num_params == alone.num_params
  for split in ("train", "val"):
    for name, value in alone.final[split].items():
      assert got.final[split][name] == pytest.approx(value, abs=TOLERANCE), (split, name)
  assert got.history[-1]["epoch_loss"] == pytest.approx(alone.history[-1]["epoch_loss"],
                                                        abs=TOLERANCE)


def test_checkpoint_of_an_encoded_dataset_resumes_from_the_raw_one(bace, population,
                                                                   tmp_path):
  # The engine fingerprints the dataset after encoding it, so a checkpoint written for the
  # encoded dataset is found again when the raw (categorical) dataset is passed.
  encoded = transforms.one_hot_node_features(bace)
  assert checkpoints.dataset_fingerprint(encoded) == checkpoints.dataset_fingerprint(
      transforms.one_hot_node_features(bace))
  stream = engine.iter_population(DESIGNS, encoded, [SEED], eval_every=1,
                                  checkpoint_dir=tmp_path, checkpoint_every=1)
  first = [next(stream) for _ in DESIGNS]  # the chunk's results; its checkpoint is kept...
  stream.close()  # ...because the generator is not resumed after them
  calls = []
  resumed = engine.train_population(DESIGNS, bace, [SEED], eval_every=1,
                                    checkpoint_dir=tmp_path, checkpoint_every=1,
                                    progress=lambda done, total, info: calls.append(info))
  assert {info.get("resumed_at") for info in calls} == {1}
  by_id = {r.key.design_id: r for r in first}
  for got, want in zip(resumed, population):
    assert got.final == by_id[got.key.design_id].final
    assert got.final["val"]["roc_auc"] == pytest.approx(want.final["val"]["roc_auc"],
                                                        abs=TOLERANCE)
