"""Tests for design distributions and the transferred design prior (gnnjax.tasks.prior)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from gnnjax.design import bank as bank_lib
from gnnjax.design import spaces
from gnnjax.design.design import Design
from gnnjax.design.trial import TrialKey, TrialResult
from gnnjax.tasks import anchors
from gnnjax.tasks import prior as prior_lib
from gnnjax.tasks.prior import Prior

SPACE = spaces.AUTOTRANSFER


def make_result(task: str, design: Design, seed: int, val: float, test: float | None = None,
                metric: str = "accuracy", status: str = "ok") -> TrialResult:
  """A stored trial with a given best validation (and test) metric and a 2-point curve."""
  best = {"val": {metric: val, "loss": 1.0 - val}}
  if test is not None:
    best["test"] = {metric: test}
  first = {"epoch": 0, "val_" + metric: val / 2}
  last = {"epoch": design.epochs - 1, "val_" + metric: val}
  if test is not None:
    first["test_" + metric] = test / 2
    last["test_" + metric] = test
  return TrialResult(key=TrialKey(task, design.design_id, seed), design=design.to_dict(),
                     num_params=100, status=status, history=[first, last], final=best, best=best)


def fill_bank(bank: bank_lib.Bank, task: str, designs, scores, seeds=(1,), tests=None,
              metric: str = "accuracy") -> None:
  for i, (design, score) in enumerate(zip(designs, scores)):
    for seed in seeds:
      test = None if tests is None else tests[i]
      bank.add(make_result(task, design, seed, score + 0.001 * seed, test, metric))


# ----------------------------------------------------------------------------------------------
# Top-K design distributions.


def test_top_k_frequencies_from_a_bank(tmp_path):
  designs = SPACE.sample(0, 20)
  scores = np.linspace(0.3, 0.9, 20)  # design i has score scores[i]; the top 4 are 16..19
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    fill_bank(bank, "t", designs, scores, seeds=(1, 2))
    # Left out: a failed trial with a huge score, a diverged one, and an anchor outside the space.
    bank.add(make_result("t", designs[0].replace(layers_mp=6) if designs[0].layers_mp != 6
                         else designs[0].replace(layers_mp=8), 1, 0.99, status="failed"))
    bank.add(make_result("t", anchors.AUTOTRANSFER_ANCHORS[0], 1, 0.999))
    prior = prior_lib.bank_distributions(bank, SPACE, k=4)["t"]
  expected = {d: np.zeros(len(c)) for d, c in SPACE.dims.items()}
  for design in designs[16:]:
    for dim, index in zip(SPACE.dim_names, prior_lib.choice_vector(SPACE, design)):
      expected[dim][index] += 0.25
  for dim in SPACE.dim_names:
    np.testing.assert_allclose(prior.probs[dim], expected[dim])
    assert prior.probs[dim].sum() == pytest.approx(1.0)
  assert prior.info["designs_scored"] == 20
  assert prior.info["trials_left_out"] == 1  # the anchor (failed trials are not queried)
  assert prior.info["metric"] == "best_val_accuracy"


def test_top_k_follows_metric_direction_and_uses_all_designs_below_k():
  designs = SPACE.sample(1, 6)
  results = [make_result("r", d, 1, v, metric="mae") for d, v in
             zip(designs, [0.5, 0.1, 0.9, 0.2, 0.7, 0.3])]
  prior = prior_lib.task_distribution(results, SPACE, k=2)
  assert prior.info["metric"] == "best_val_mae"
  expected = Prior.from_designs(SPACE, [designs[1], designs[3]])  # the two smallest errors
  for dim in SPACE.dim_names:
    np.testing.assert_allclose(prior.probs[dim], expected.probs[dim])
  everything = prior_lib.task_distribution(results, SPACE, k=16)
  assert everything.info["designs_used"] == 6


def test_choice_vector_ignores_resolved_budget_width():
  space = spaces.GRAPHGYM_ROUND2  # dim_inner None (budget-matched) is fixed, not a dimension
  design = space.design_at(17)
  trained = design.replace(dim_inner=137).to_dict()
  np.testing.assert_array_equal(prior_lib.choice_vector(space, trained),
                                prior_lib.choice_vector(space, design))
  assert prior_lib.choice_vector(space, design.replace(layers_mp=3)) is None


# ----------------------------------------------------------------------------------------------
# Inverse-distance weighting, threshold and fallback.


def test_idw_weights_and_selection():
  distances = {"a": 0.1, "b": 0.2, "c": 0.4, "d": 0.9}
  np.testing.assert_allclose(prior_lib.idw_weights([0.1, 0.2, 0.4]), [4 / 7, 2 / 7, 1 / 7])
  assert prior_lib.select_tasks(distances) == (["a", "b", "c"], "nearest", False)
  assert prior_lib.select_tasks(distances, k=1) == (["a"], "nearest", False)
  assert prior_lib.select_tasks(distances, d_thres=0.25) == (["a", "b"], "threshold", False)
  assert prior_lib.select_tasks(distances, d_thres=0.05, k=2) == (["a", "b"], "nearest", True)
  # A task at distance 0 takes all the weight (the limit of 1/d); two such tasks share it.
  np.testing.assert_allclose(prior_lib.idw_weights([0.0, 0.3]), [1.0, 0.0])
  np.testing.assert_allclose(prior_lib.idw_weights([0.0, 0.0, 0.3]), [0.5, 0.5, 0.0])
  with pytest.raises(ValueError, match="finite and >= 0"):
    prior_lib.idw_weights([0.1, -0.2])


def test_transferred_prior_is_the_weighted_mixture():
  rng = np.random.default_rng(0)
  distributions = {}
  for task in "abcd":
    probs = {d: rng.dirichlet(np.ones(len(c))) for d, c in SPACE.dims.items()}
    distributions[task] = Prior(SPACE, probs)
  distances = {"a": 0.1, "b": 0.2, "c": 0.4, "d": 0.9, "no_distribution": 0.01}
  transfer = prior_lib.transfer_prior(distributions, distances, d_thres=0.25)
  assert transfer.rule == "threshold" and not transfer.fallback
  assert transfer.ignored == ["no_distribution"]
  assert transfer.weights == pytest.approx({"a": 2 / 3, "b": 1 / 3})
  for dim in SPACE.dim_names:
    expected = (2 / 3) * distributions["a"].probs[dim] + (1 / 3) * distributions["b"].probs[dim]
    np.testing.assert_allclose(transfer.prior.probs[dim], expected)
    assert transfer.prior.probs[dim].sum() == pytest.approx(1.0)
  nearest = prior_lib.transfer_prior(distributions, distances)  # code's rule: 3 nearest
  assert list(nearest.weights) == ["a", "b", "c"]
  assert sum(nearest.weights.values()) == pytest.approx(1.0)
  fallback = prior_lib.transfer_prior(distributions, distances, d_thres=0.01, k=2)
  assert fallback.fallback and list(fallback.weights) == ["a", "b"]
  with pytest.raises(ValueError, match="both a distance and a design distribution"):
    prior_lib.transfer_prior(distributions, {"zzz": 0.1})


# ----------------------------------------------------------------------------------------------
# The Prior object.


def test_prior_validation_serialisation_and_smoothing(tmp_path):
  uniform = Prior.uniform(SPACE)
  assert uniform.support_size() == SPACE.size
  assert uniform.entropy() == pytest.approx(math.log(SPACE.size))
  probs = {d: np.eye(len(c))[0] for d, c in SPACE.dims.items()}
  point = Prior(SPACE, probs, {"note": "first choices"})
  assert point.support_size() == 1
  assert point.log_prob(SPACE.design_at(0)) == 0.0
  assert point.log_prob(SPACE.design_at(1)) == -math.inf
  path = tmp_path / "prior.json"
  point.save(str(path))
  loaded = Prior.from_json(SPACE, path.read_text())
  for dim in SPACE.dim_names:
    np.testing.assert_array_equal(loaded.probs[dim], point.probs[dim])
  assert loaded.info == {"note": "first choices"}
  record = json.loads(path.read_text())
  record["dims"]["aggregation"]["choices"] = ["add", "mean", "min"]
  with pytest.raises(ValueError, match="differ from the space"):
    Prior.from_dict(SPACE, record)
  with pytest.raises(ValueError, match="sum to"):
    Prior(SPACE, {**probs, "aggregation": [0.5, 0.2, 0.2]})
  with pytest.raises(ValueError, match="expected 3 probabilities"):
    Prior(SPACE, {**probs, "aggregation": [0.5, 0.5]})
  with pytest.raises(ValueError, match="missing"):
    Prior(SPACE, {"aggregation": [1, 0, 0]})
  smooth = point.smoothed(0.3)
  assert smooth.support_size() == SPACE.size
  np.testing.assert_allclose(smooth.probs["aggregation"], [0.8, 0.1, 0.1])


def test_sampling_frequencies_converge_to_the_prior():
  rng = np.random.default_rng(3)
  probs = {d: rng.dirichlet(np.ones(len(c))) for d, c in SPACE.dims.items()}
  probs["layers_mp"] = np.array([0.7, 0.0, 0.1, 0.2])  # a zero choice must never be drawn
  prior = Prior(SPACE, probs)
  n = 20000
  vectors = prior.sample_vectors(np.random.default_rng(0), n)
  assert vectors.shape == (n, len(SPACE.dim_names))
  for w, dim in enumerate(SPACE.dim_names):
    p = prior.probs[dim]
    counts = np.bincount(vectors[:, w], minlength=p.size)
    assert counts[p == 0].sum() == 0
    expected = n * p[p > 0]
    chi2 = float(np.sum((counts[p > 0] - expected) ** 2 / expected))
    # 99.9% quantile: a correct sampler fails this for one fixed seed with probability 1e-3.
    assert chi2 < stats.chi2.ppf(0.999, df=int((p > 0).sum()) - 1), (dim, counts, expected)
  designs = prior.sample(np.random.default_rng(0), 5)
  assert all(d in SPACE for d in designs)
  assert [d.design_id for d in designs] == [d.design_id for d in
                                            prior.sample(np.random.default_rng(0), 5)]
