"""Task space: anchors, Kendall similarity, FIM task features, the task embedding.

The Fisher diagonal is checked against a brute-force Python loop of per-example gradients; the
vmapped-over-seeds program against runs of one seed each; Kendall tau against scipy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from gnnjax.data import dataset as ds
from gnnjax.design import spaces
from gnnjax.design import trial as trial_lib
from gnnjax.models import graphgym
from gnnjax.tasks import anchors, embedding, fisher, similarity

# ----------------------------------------------------------------------------------------------
# Tiny data.


def tiny_dataset(level: str, num_graphs: int = 6, num_nodes: int = 10, seed: int = 0,
                 task_type: str = ds.MULTICLASS) -> ds.GraphDataset:
  """Circulant graphs with random features; 3 classes (or one binary logit)."""
  rng = np.random.default_rng(seed)
  nodes = np.arange(num_nodes)
  graphs = []
  classes = 3 if task_type == ds.MULTICLASS else 2
  for g in range(num_graphs):
    k = 2 + g % 3
    senders = np.tile(nodes, 3)
    receivers = np.concatenate([(nodes + 1) % num_nodes, (nodes - 1) % num_nodes,
                                (nodes + k) % num_nodes])
    x = rng.normal(size=(num_nodes, 3)).astype(np.float32)
    if level == ds.NODE:
      y = rng.integers(0, classes, num_nodes).astype(np.int32)
      graphs.append(ds.make_graph(senders, receivers, num_nodes, {"x": x, "y": y}))
    else:
      graphs.append(ds.make_graph(senders, receivers, num_nodes, {"x": x},
                                  graph_features={"y": np.array([g % classes], np.int32)}))
  outputs = 3 if task_type == ds.MULTICLASS else 1
  return ds.GraphDataset(f"tiny/{level}", graphs, level, task_type, outputs)


TINY_ANCHOR = anchors.ANCHOR_BASE.replace(dim_inner=4, layers_pre_mp=1, layers_mp=2,
                                          layers_post_mp=2, stage_type="skipconcat",
                                          aggregation="mean")

# ----------------------------------------------------------------------------------------------
# Anchors.


def test_autotransfer_anchors_match_the_table():
  a = anchors.AUTOTRANSFER_ANCHORS
  assert len(a) == 12 and len({d.design_id for d in a}) == 12
  assert (a[0].layers_pre_mp, a[0].layers_mp, a[0].layers_post_mp, a[0].stage_type,
          a[0].aggregation) == (1, 8, 2, "skipsum", "add")
  assert (a[8].layers_pre_mp, a[8].layers_mp, a[8].stage_type, a[8].aggregation) == (
      2, 6, "skipconcat", "mean")
  for d in a:
    assert (d.conv_type, d.conv_variant, d.dim_inner, d.activation, d.batch_norm) == (
        "generalconv", "self", 256, "prelu", True)
    # Every anchor lies in GraphGym's round-2 grid (structure dims), with AutoTransfer's conv.
    round2 = spaces.GRAPHGYM_ROUND2
    assert d.layers_mp in round2.dims["layers_mp"] and d.stage_type in round2.dims["stage_type"]


def test_evenly_spaced_picks_worst_and_best():
  np.testing.assert_array_equal(anchors.evenly_spaced(100, 12),
                                [0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99])
  np.testing.assert_array_equal(anchors.evenly_spaced(5, 5), np.arange(5))
  with pytest.raises(ValueError, match="cannot pick"):
    anchors.evenly_spaced(3, 4)


def test_select_anchors_sorts_and_spaces():
  """A fake trainer scores designs by layers_mp + aggregation; anchors come out worst->best."""
  agg_score = {"add": 0.2, "mean": 0.1, "max": 0.0}

  def fake_train(designs, dataset, seeds):
    out = []
    for d in designs:
      for s in seeds:
        value = d.layers_mp + agg_score[d.aggregation] + 0.01 * s
        out.append(trial_lib.TrialResult(
            key=trial_lib.TrialKey("t", d.design_id, s), design=d.to_dict(), num_params=1,
            final={"val": {"accuracy": value}}))
    return out

  chosen, scores = anchors.select_anchors(None, num_sampled=40, num_anchors=5, seeds=(1, 2),
                                          train_fn=fake_train)
  assert len(chosen) == 5 and np.all(np.diff(scores) >= 0)
  all_designs = spaces.GRAPHGYM_ROUND2.sample(0, 40)
  all_scores = sorted(d.layers_mp + agg_score[d.aggregation] + 0.015 for d in all_designs)
  assert scores[0] == pytest.approx(all_scores[0]) and scores[-1] == pytest.approx(
      all_scores[-1])


# ----------------------------------------------------------------------------------------------
# Similarity.


def test_kendall_tau_matches_scipy_with_ties():
  rng = np.random.default_rng(0)
  for trial in range(20):
    n = int(rng.integers(3, 15))
    x = rng.integers(0, 4 if trial % 2 else 100, n).astype(float)
    y = rng.integers(0, 4, n).astype(float) if trial % 3 else rng.normal(size=n)
    expected = scipy.stats.kendalltau(x, y).statistic
    got = similarity.kendall_tau(x, y)
    if np.isnan(expected):
      assert np.isnan(got)
    else:
      assert got == pytest.approx(expected, abs=1e-12)
  with pytest.raises(ValueError, match="equal length"):
    similarity.kendall_tau([1, 2], [1, 2, 3])


def test_similarity_matrix_symmetric_unit_diagonal(tmp_path):
  rng = np.random.default_rng(1)
  perf = {f"task{i}": rng.normal(size=12) for i in range(5)}
  names, matrix = similarity.similarity_matrix(perf)
  assert names == list(perf)
  np.testing.assert_allclose(matrix, matrix.T)
  np.testing.assert_allclose(np.diag(matrix), 1.0)
  assert matrix[0, 3] == pytest.approx(scipy.stats.kendalltau(perf["task0"],
                                                              perf["task3"]).statistic)
  path = similarity.plot_heatmap(names, matrix, str(tmp_path / "heat.png"))
  assert (tmp_path / "heat.png").stat().st_size > 1000 and path.endswith("heat.png")
  with pytest.raises(ValueError, match="different lengths"):
    similarity.similarity_matrix({"a": [1, 2, 3], "b": [1, 2]})


def test_anchor_performance_from_bank(tmp_path):
  from gnnjax.design import bank as bank_lib
  anchor_set = anchors.AUTOTRANSFER_ANCHORS[:4]
  with bank_lib.Bank(str(tmp_path / "bank.sqlite")) as bank:
    # "molecule" reports ROC-AUC, not accuracy (MoleculeNet): it is scored by ROC-AUC.
    for task, sign, metric in (("up", 1.0, "accuracy"), ("down", -1.0, "accuracy"),
                               ("molecule", 1.0, "roc_auc")):
      for u, d in enumerate(anchor_set):
        for seed in (1, 2):
          bank.add(trial_lib.TrialResult(
              key=trial_lib.TrialKey(task, d.design_id, seed), design=d.to_dict(),
              num_params=1, final={"val": {metric: 0.5 + sign * 0.1 * u + 0.01 * seed,
                                           "loss": 1.0 - 0.1 * u}}))
    perf = similarity.anchor_performance_from_bank(bank, anchor_set)
    np.testing.assert_allclose(perf["molecule"], perf["up"])
    # Asked for accuracy it has none: every anchor gets the same fill, no ranking at all.
    by_accuracy = similarity.anchor_performance_from_bank(bank, anchor_set, tasks=["molecule"],
                                                          metric="val_accuracy")
    assert len(set(np.asarray(by_accuracy["molecule"]).tolist())) == 1
    with pytest.raises(ValueError, match="no trials of anchor"):
      similarity.anchor_performance_from_bank(bank, anchors.AUTOTRANSFER_ANCHORS[:5],
                                              tasks=["up"])
  np.testing.assert_allclose(perf["up"], [0.515, 0.615, 0.715, 0.815])
  names, matrix = similarity.similarity_matrix({t: perf[t] for t in ("up", "down")})
  assert matrix[names.index("up"), names.index("down")] == pytest.approx(-1.0)


# ----------------------------------------------------------------------------------------------
# Fisher.


def test_alpha_hand_made_and_scale_invariant():
  f = jnp.array([1.0, 2.0, 3.0, 4.0])
  assert float(fisher.alpha(f)) == pytest.approx(7.5 / 6.25)
  assert float(fisher.alpha(jnp.ones(7))) == pytest.approx(1.0)
  assert float(fisher.alpha(37.0 * f)) == pytest.approx(float(fisher.alpha(f)), rel=1e-6)


def test_alpha_is_finite_where_float32_moments_are_not():
  """The plain ratio of float32 moments is NaN for these scales (F^2 under- or overflows);
  alpha is computed on F / max(F), so it keeps the exact value 7.5 / 6.25."""
  f = jnp.array([1.0, 2.0, 3.0, 4.0], jnp.float32)
  for c in (1e-30, 1e21, 1e35):
    scaled = jnp.float32(c) * f
    assert not np.isfinite(float(jnp.mean(scaled * scaled) / jnp.mean(scaled) ** 2))
    assert float(fisher.alpha(scaled)) == pytest.approx(7.5 / 6.25, rel=1e-6)
  batched = jax.jit(jax.vmap(fisher.alpha))(jnp.stack([f, 1e21 * f, jnp.zeros(4)]))
  np.testing.assert_allclose(np.asarray(batched), [1.2, 1.2, 1.0], rtol=1e-6)


def test_alpha_of_a_zero_fisher_is_one_and_nans_propagate():
  assert float(fisher.alpha(jnp.zeros(5))) == 1.0
  assert np.isnan(float(fisher.alpha(jnp.array([1.0, jnp.nan, 2.0]))))


def test_task_feature_is_finite_on_constant_features():
  """Constant node features: train-mode batch norm over identical rows has a Jacobian of ~1/sqrt
  (eps) per layer, so a deep max-aggregation anchor's Fisher overflows float32 moments (the raw
  m2 is inf, as on GraphGym's */const tasks on the GPU); the feature must stay finite."""
  data = tiny_dataset(ds.GRAPH, num_graphs=20)
  data.graphs = [g._replace(nodes={**g.nodes, "x": np.ones_like(g.nodes["x"])})
                 for g in data.graphs]
  anchor = TINY_ANCHOR.replace(aggregation="max", stage_type="skipsum", layers_pre_mp=2,
                               layers_mp=6, dim_inner=32)
  config = fisher.FisherConfig(num_seeds=2, head_epochs=5, batch_size=4, chunk_size=8)
  result = fisher.task_feature(data, [anchor], config)
  assert not np.all(np.isfinite(result.m2))  # the case the scaled alpha exists for
  assert np.all(np.isfinite(result.alphas)) and np.all(result.alphas >= 1.0)
  assert np.all(np.isfinite(result.feature))


def _tiny_forward(level, task_type=ds.MULTICLASS):
  data = tiny_dataset(level, task_type=task_type)
  from gnnjax import batching
  packed = batching.PackedGraphs.from_graphs(data.graphs)
  batch = packed.gather(np.arange(len(data)), batching.Budget(72, 256, len(data) + 1))
  model = graphgym.GraphGymGNN(TINY_ANCHOR, data.num_outputs, level)
  variables = model.init(jax.random.key(3), batch)
  params = variables["params"]
  paths = fisher.message_weight_paths(params)
  selected, rest = fisher._split_params(params, paths)

  def outputs_fn(sel):
    out, _ = model.apply({"params": fisher._merge_params(sel, rest),
                          "batch_stats": variables["batch_stats"]}, batch, train=True,
                         mutable=["batch_stats"])
    return out

  return data, batch, selected, outputs_fn


@pytest.mark.parametrize("level,task_type", [(ds.NODE, ds.MULTICLASS),
                                             (ds.GRAPH, ds.MULTICLASS),
                                             (ds.GRAPH, ds.BINARY)])
def test_fisher_diagonal_matches_brute_force_loop(level, task_type):
  """Sum over examples of squared per-example gradients (one jax.grad per example, in a Python
  loop) equals the vmapped-VJP Fisher, with the same sampled labels; padding rows excluded."""
  data, batch, selected, outputs_fn = _tiny_forward(level, task_type)
  rows = np.array([0, 3, 5, 7, 11, 2, 4] if level == ds.NODE else [0, 1, 2, 4, 5],
                  np.int32)
  weights = np.ones(len(rows), np.float32)
  weights[-1] = 0.0  # a padding entry
  weights[0] = 2.0  # a subsampling weight: counts the example twice
  key = jax.random.key(7)
  got, targets = fisher.fisher_diagonal(outputs_fn, selected, jnp.asarray(rows),
                                        jnp.asarray(weights), key, task_type, chunk_size=3)
  assert set(got) == {"mp_0/conv/lin/kernel", "mp_1/conv/lin/kernel"}
  expected = jax.tree.map(jnp.zeros_like, selected)
  entry = jnp.ones((data.num_outputs,), bool)
  # One full forward and backward per example (jitted once, the row is an argument).
  example_grad = jax.jit(jax.grad(lambda p, row: fisher.example_nll(
      outputs_fn(p)[row], targets[row], entry, task_type)))
  for row, weight in zip(rows[:-1], weights[:-1]):
    grad = example_grad(selected, int(row))
    expected = jax.tree.map(lambda e, g: e + weight * g * g, expected, grad)
  for name in expected:
    assert float(jnp.abs(expected[name]).max()) > 0
    np.testing.assert_allclose(got[name], expected[name], rtol=2e-4, atol=1e-9)
  # Labels come from the model: categorical / Bernoulli draws, not the true labels.
  if task_type == ds.BINARY:
    assert targets.shape == (batch.n_node.shape[0], 1)


def test_probe_estimator_averages_to_the_exact_fisher():
  """Over all 2^(K-1) sign patterns (v and -v give the same square) the random-sign estimate
  equals the exact per-example sum; a few random probes are in the right range."""
  import itertools
  _, _, selected, outputs_fn = _tiny_forward(ds.GRAPH)
  rows = jnp.array([0, 1, 2, 3, 4], jnp.int32)
  weights = jnp.array([1.0, 1.0, 2.0, 1.0, 0.0])
  key = jax.random.key(11)
  exact, _ = fisher.fisher_diagonal(outputs_fn, selected, rows, weights, key, ds.MULTICLASS)
  signs = jnp.array([(1.0,) + p for p in itertools.product((1.0, -1.0), repeat=4)])
  probed, _ = fisher.fisher_diagonal(outputs_fn, selected, rows, weights, key, ds.MULTICLASS,
                                     chunk_size=5, signs=signs)
  for name in exact:
    np.testing.assert_allclose(probed[name], exact[name], rtol=2e-4, atol=1e-9)
  random, _ = fisher.fisher_diagonal(outputs_fn, selected, rows, weights, key, ds.MULTICLASS,
                                     num_probes=64)
  total = lambda f: sum(float(jnp.sum(v)) for v in f.values())
  assert 0.5 < total(random) / total(exact) < 2.0


def test_sampled_labels_follow_the_predictive_distribution():
  outputs = jnp.log(jnp.array([[0.7, 0.2, 0.1]] * 20000))
  labels = fisher.sample_targets(jax.random.key(0), outputs, ds.MULTICLASS)
  np.testing.assert_allclose(np.bincount(np.asarray(labels), minlength=3) / 20000,
                             [0.7, 0.2, 0.1], atol=0.015)
  binary = fisher.sample_targets(jax.random.key(1), jnp.full((20000, 1), np.log(3.0)), ds.BINARY)
  assert float(binary.mean()) == pytest.approx(0.75, abs=0.015)


def test_head_fit_plateau_stop():
  """A learning rate too small to improve the loss by 1e-4 relative stops after 1 + 11 epochs;
  a useful one improves the loss."""
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.normal(size=(2, 16, 5)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, (2, 16)), jnp.int32)
  masks = jnp.ones((2, 16), bool)
  head = {"kernel": jnp.zeros((5, 3)), "bias": jnp.zeros(3)}
  config = fisher.FisherConfig(head_lr=1e-9)
  _, epochs, _ = fisher.fit_head(head, inputs, labels, masks, ds.MULTICLASS, config)
  assert int(epochs) == 1 + config.patience + 1
  config = fisher.FisherConfig(head_epochs=30)
  fitted, epochs, last = fisher.fit_head(head, inputs, labels, masks, ds.MULTICLASS, config)
  assert int(epochs) == 30 and float(last) < 2 * np.log(3) - 0.1


@pytest.mark.parametrize("level", [ds.NODE, ds.GRAPH])
def test_task_feature_vmapped_seeds_equal_single_seed_runs(level):
  data = tiny_dataset(level, num_graphs=8 if level == ds.NODE else 20)
  config = fisher.FisherConfig(num_seeds=2, head_epochs=5, batch_size=4, chunk_size=8)
  both = fisher.task_feature(data, [TINY_ANCHOR], config)
  assert both.alphas.shape == (1, 2) and np.all(both.alphas >= 1.0)
  assert np.linalg.norm(both.feature) == pytest.approx(1.0)
  # Seeds give different splits / inits, hence different alphas.
  assert both.alphas[0, 0] != pytest.approx(both.alphas[0, 1], rel=1e-3)
  single = fisher.task_feature(data, [TINY_ANCHOR], config.__class__(
      num_seeds=1, first_seed=1, head_epochs=5, batch_size=4, chunk_size=8))
  assert single.alphas[0, 0] == pytest.approx(both.alphas[0, 1], rel=1e-4)


def test_task_features_are_l2_normalised():
  z = fisher.normalize_feature(np.array([3.0, 4.0, 12.0]))
  np.testing.assert_allclose(z, [3 / 13, 4 / 13, 12 / 13])
  with pytest.raises(ValueError, match="cannot normalise"):
    fisher.normalize_feature(np.zeros(3))


# ----------------------------------------------------------------------------------------------
# Embedding.


def _latent_tasks(num_tasks: int = 12, num_anchors: int = 12, seed: int = 0, noise: float = 0.05):
  """Tasks on a circle: anchor performance and FIM-like features both depend on the task's
  angle, so the features predict GraphGym's similarity (through a nonlinear map)."""
  rng = np.random.default_rng(seed)
  theta = np.sort(rng.uniform(0, 2 * np.pi, num_tasks))
  phi = np.linspace(0, 2 * np.pi, num_anchors, endpoint=False)
  perf = np.cos(theta[:, None] - phi[None, :]) + noise * rng.normal(size=(num_tasks, num_anchors))
  psi = phi + 0.3
  raw = np.exp(1.5 * np.cos(theta[:, None] - psi[None, :]))
  features = raw / np.linalg.norm(raw, axis=1, keepdims=True)
  _, sim = similarity.similarity_matrix({i: p for i, p in enumerate(perf)})
  return features, sim


def test_embedding_training_lowers_loss_and_is_unit_norm():
  features, sim = _latent_tasks()
  key = jax.random.key(0)
  params0 = embedding.init_projection(jax.random.split(key)[0], features.shape[1])
  before = float(embedding.evaluation_loss(params0, features, sim))
  params, history = embedding.train_projection(key, features, sim)
  after = float(embedding.evaluation_loss(params, features, sim))
  assert history.shape == (1000,)
  assert after < 0.5 * before
  z = embedding.project(params, jnp.asarray(features, jnp.float32))
  assert z.shape == (12, 16)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=1), 1.0, rtol=1e-5)


def test_triplet_loss_hand_computed():
  z = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  sim = jnp.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.1], [0.2, 0.1, 1.0]])
  # (0, 1, 2): 1 is closer to 0, scores 0.6 - 0 = 0.6 -> max(0, -0.6 + 0.1) = 0.
  # (0, 2, 1): y = -1, scores 0 - 0.6 -> max(0, -0.6 + 0.1) = 0.
  # (1, 2, 0): S[1,2]=0.1 < S[1,0]=0.5 -> y=-1; scores 0.8 - 0.6 = 0.2 -> max(0, 0.2+0.1)=0.3.
  # (0, 1, 1): tie, left out.
  triplets = jnp.array([[0, 1, 2], [0, 2, 1], [1, 2, 0], [0, 1, 1]])
  assert float(embedding.triplet_loss(z, sim, triplets, 0.1)) == pytest.approx(0.1)


def test_leave_one_out_on_predictive_features_is_high_and_random_is_not():
  features, sim = _latent_tasks()
  result = embedding.leave_one_out(features, sim, runs=2)
  summary = result.summary()
  assert result.embedding_tau.shape == (2, 12)
  assert summary["feature_mean"] > 0.5
  assert summary["embedding_mean"] > 0.5
  noise = np.abs(np.random.default_rng(5).normal(size=features.shape))
  noise /= np.linalg.norm(noise, axis=1, keepdims=True)
  random = embedding.leave_one_out(noise, sim, runs=2).summary()
  assert abs(random["feature_mean"]) < 0.3 and abs(random["embedding_mean"]) < 0.3


def test_leave_one_out_does_not_depend_on_task_order():
  features, sim = _latent_tasks()
  names = [f"task{i:02d}" for i in range(len(features))]
  perm = np.random.default_rng(3).permutation(len(names))
  forward = embedding.leave_one_out(dict(zip(names, features)), sim, runs=2)
  shuffled = embedding.leave_one_out({names[i]: features[i] for i in perm},
                                     np.asarray(sim)[np.ix_(perm, perm)], runs=2)
  assert forward.tasks == shuffled.tasks == sorted(names)
  np.testing.assert_array_equal(forward.feature_tau, shuffled.feature_tau)
  np.testing.assert_allclose(forward.embedding_tau, shuffled.embedding_tau, atol=1e-6)
