"""Tests of gnnjax.data.splits: graph splits, stratified k-fold and transductive node splits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

from gnnjax.data import splits
from gnnjax.data.dataset import GRAPH, MULTICLASS, NODE, GraphDataset, make_graph


def _assert_partition(parts, num_items):
  """The parts are disjoint and together cover range(num_items)."""
  joined = np.concatenate(list(parts))
  assert joined.size == num_items
  np.testing.assert_array_equal(np.sort(joined), np.arange(num_items))


# ----------------------------------------------------------------------------- graph split


@pytest.mark.parametrize("num_graphs,fractions,expected", [
    (10, (0.8, 0.1, 0.1), (8, 1, 1)),
    (256, (0.8, 0.2, 0.0), (204, 52, 0)),  # GraphGym: 204 / 52 synthetic graphs.
    (188, (0.8, 0.1, 0.1), (150, 18, 20)),
    (7, (0.5, 0.0, 0.5), (3, 0, 4)),
    (100, (0.29, 0.71, 0.0), (29, 71, 0)),  # 0.29 * 100 is 28.999999999999996 in floats.
    (0, (0.8, 0.1, 0.1), (0, 0, 0)),
])
def test_random_graph_split_sizes_and_partition(num_graphs, fractions, expected):
  split = splits.random_graph_split(num_graphs, fractions, seed=3)
  assert tuple(split) == splits.SPLIT_KEYS
  assert tuple(split[k].size for k in splits.SPLIT_KEYS) == expected
  _assert_partition(split.values(), num_graphs)
  for part in split.values():
    assert part.dtype == np.int64


def test_split_sizes_rule_against_loop():
  """Floors for all but the last non-zero split, which takes the rest (slow obvious loop)."""
  rng = np.random.default_rng(0)
  for _ in range(200):
    fractions = rng.dirichlet(np.ones(3))
    if rng.random() < 0.3:
      fractions[rng.integers(3)] = 0.0
    fractions = fractions / fractions.sum()
    n = int(rng.integers(0, 500))
    expected, last = [], max(i for i in range(3) if fractions[i] > 0)
    for i in range(3):
      expected.append(int(np.floor(fractions[i] * n + 1e-9)) if fractions[i] > 0 else 0)
    expected[last] = n - sum(expected[:last]) - sum(expected[last + 1:])
    assert splits.split_sizes(n, fractions).tolist() == expected


def test_random_graph_split_seeds():
  a = splits.random_graph_split(100, seed=1)
  b = splits.random_graph_split(100, seed=1)
  c = splits.random_graph_split(100, seed=2)
  for key in splits.SPLIT_KEYS:
    np.testing.assert_array_equal(a[key], b[key])
  assert any(not np.array_equal(a[k], c[k]) for k in splits.SPLIT_KEYS)


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.1, 0.2), (1.2, -0.1, -0.1),
                                       (0.5, 0.5, float("nan"))])
def test_random_graph_split_rejects_bad_fractions(fractions):
  with pytest.raises(ValueError, match="fractions"):
    splits.random_graph_split(10, fractions)


def test_fractions_within_tolerance_accepted():
  split = splits.random_graph_split(10, (0.8, 0.1, 0.1 + 5e-7))
  _assert_partition(split.values(), 10)


# ----------------------------------------------------------------------------- k-fold


def _fold_class_counts(folds, labels):
  classes = np.unique(labels)
  return np.array([[np.sum(labels[test] == c) for c in classes] for _, test in folds])


@pytest.mark.parametrize("seed", [0, 5])
def test_stratified_kfold_partitions_and_matches_sklearn_counts(seed):
  rng = np.random.default_rng(seed)
  labels = rng.choice([-1, 1, 7], size=188, p=[0.6, 0.3, 0.1])
  folds = splits.stratified_kfold(labels, num_folds=10, seed=seed)
  assert len(folds) == 10
  _assert_partition([test for _, test in folds], labels.size)
  for train, test in folds:
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
    assert np.intersect1d(train, test).size == 0
  ours = _fold_class_counts(folds, labels)
  sklearn_folds = StratifiedKFold(10, shuffle=True, random_state=seed).split(
      np.zeros(labels.size), labels)
  np.testing.assert_array_equal(ours, _fold_class_counts(list(sklearn_folds), labels))
  # Stratified: each class is spread over the folds as evenly as possible.
  assert (ours.max(axis=0) - ours.min(axis=0)).max() <= 1
  sizes = [test.size for _, test in folds]
  assert max(sizes) - min(sizes) <= 1


def test_stratified_kfold_seeds():
  labels = np.repeat([0, 1], [60, 40])
  a = splits.stratified_kfold(labels, 5, seed=0)
  b = splits.stratified_kfold(labels, 5, seed=0)
  c = splits.stratified_kfold(labels, 5, seed=1)
  assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
  assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_stratified_kfold_rejects_bad_arguments():
  with pytest.raises(ValueError, match="num_folds"):
    splits.stratified_kfold([0, 1, 0], num_folds=4)
  with pytest.raises(ValueError, match="num_folds"):
    splits.stratified_kfold([0, 1, 0], num_folds=1)
  with pytest.raises(ValueError, match="vector"):
    splits.stratified_kfold(np.zeros((4, 2)), num_folds=2)


# ----------------------------------------------------------------------------- node split


def _node_dataset(sizes, with_label_mask=False, task_level=NODE):
  graphs = []
  for i, n in enumerate(sizes):
    nodes = {"x": np.ones((n, 1), np.float32), "y": np.arange(n, dtype=np.int32) % 3}
    if with_label_mask:
      nodes["label_mask"] = (np.arange(n) + i) % 4 != 0
    graphs.append(make_graph(np.zeros(0), np.zeros(0), n, nodes,
                             graph_features={"y": np.zeros(1, np.int32)}))
  return GraphDataset("toy", graphs, task_level, MULTICLASS, 3)


def _masks(graph):
  return [graph.nodes[f"{k}_mask"] for k in splits.SPLIT_KEYS]


def test_random_node_split_per_graph_is_graphgym_51_13():
  dataset = _node_dataset([64] * 5)
  split = splits.random_node_split(dataset, (0.8, 0.2, 0.0), seed=1)
  for graph in split.graphs:
    train, val, test = _masks(graph)
    assert (train.sum(), val.sum(), test.sum()) == (51, 13, 0)
    assert not (train & val).any()
    assert (train | val).all()
  # Each graph gets its own permutation.
  assert not np.array_equal(split.graphs[0].nodes["train_mask"],
                            split.graphs[1].nodes["train_mask"])
  assert "train_mask" not in dataset.graphs[0].nodes  # The input is left alone.


def test_random_node_split_respects_label_mask():
  dataset = _node_dataset([40, 13, 64], with_label_mask=True)
  split = splits.random_node_split(dataset, (0.6, 0.2, 0.2), seed=0)
  for graph in split.graphs:
    train, val, test = _masks(graph)
    labelled = graph.nodes["label_mask"]
    assert ((train.astype(int) + val + test) <= 1).all()
    np.testing.assert_array_equal(train | val | test, labelled)
    expected = splits.split_sizes(int(labelled.sum()), (0.6, 0.2, 0.2)).tolist()
    assert [int(train.sum()), int(val.sum()), int(test.sum())] == expected


def test_random_node_split_pooled():
  dataset = _node_dataset([10, 20, 30], with_label_mask=True)
  split = splits.random_node_split(dataset, (0.5, 0.25, 0.25), seed=0, per_graph=False)
  totals = np.sum([[m.sum() for m in _masks(g)] for g in split.graphs], axis=0)
  num_labelled = sum(int(g.nodes["label_mask"].sum()) for g in dataset.graphs)
  assert totals.tolist() == splits.split_sizes(num_labelled, (0.5, 0.25, 0.25)).tolist()
  for graph in split.graphs:
    np.testing.assert_array_equal(np.any(_masks(graph), axis=0), graph.nodes["label_mask"])


def test_random_node_split_seeds():
  dataset = _node_dataset([50])
  a = splits.random_node_split(dataset, seed=4).graphs[0].nodes["train_mask"]
  b = splits.random_node_split(dataset, seed=4).graphs[0].nodes["train_mask"]
  c = splits.random_node_split(dataset, seed=5).graphs[0].nodes["train_mask"]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_random_node_split_needs_node_task():
  with pytest.raises(ValueError, match="node-level"):
    splits.random_node_split(_node_dataset([5], task_level=GRAPH))


def test_with_node_split_validates():
  graph = _node_dataset([4]).graphs[0]
  t = np.array([1, 0, 0, 0], bool)
  v = np.array([0, 1, 0, 0], bool)
  s = np.array([0, 0, 1, 1], bool)
  out = splits.with_node_split(graph, t, v, s)
  np.testing.assert_array_equal(out.nodes["test_mask"], s)
  np.testing.assert_array_equal(out.nodes["x"], graph.nodes["x"])
  with pytest.raises(ValueError, match="overlap"):
    splits.with_node_split(graph, t, t, s)
  with pytest.raises(ValueError, match="bool"):
    splits.with_node_split(graph, t.astype(int), v, s)
  with pytest.raises(ValueError, match=r"bool \[4\]"):
    splits.with_node_split(graph, t[:3], v, s)
