"""Tests for prior-driven design search (gnnjax.search) and experiments/autotransfer.py."""

from __future__ import annotations

import ast
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from gnnjax import search
from gnnjax.design import bank as bank_lib
from gnnjax.design import spaces
from gnnjax.search import efficiency, tpe
from gnnjax.search.base import CandidatePool, PendingResults, run_search, run_searches
from gnnjax.search.evaluate import BankLookup
from gnnjax.tasks import prior as prior_lib
from gnnjax.tasks.prior import Prior, choice_vector
from tests.test_prior import fill_bank

REPO = pathlib.Path(__file__).resolve().parents[1]
ALGORITHMS = sorted(search.ALGORITHMS)
BIG = spaces.AUTOTRANSFER
SMALL = spaces.DesignSpace(
    {"layers_mp": [2, 4, 6, 8], "stage_type": ["stack", "skipsum", "skipconcat"],
     "aggregation": ["add", "mean", "max"], "activation": ["relu", "prelu"]},
    name="small")  # 72 designs


def matching_objective(space, optimum):
  """Fraction of dimensions on which a design agrees with `optimum` (1.0 only there)."""
  target = choice_vector(space, optimum)

  def evaluate(design, budget_epochs):
    return float(np.mean(choice_vector(space, design) == target))
  return evaluate


def concentrated_prior(space, optimum, mass):
  target = choice_vector(space, optimum)
  probs = {}
  for w, (dim, choices) in enumerate(space.dims.items()):
    p = np.full(len(choices), (1 - mass) / (len(choices) - 1))
    p[target[w]] = mass
    probs[dim] = p
  return Prior(space, probs)


# ----------------------------------------------------------------------------------------------
# Interface: valid designs, budget, determinism.


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_searchers_respect_space_budget_and_seed(algorithm):
  evaluate = matching_objective(SMALL, SMALL.design_at(40))

  def run(seed):
    searcher = search.make_searcher(algorithm, SMALL, seed=seed)
    return run_search(searcher, evaluate, budget=25, batch_size=3)

  result = run(0)
  assert len(result.trials) == 25
  assert all(t.design in SMALL for t in result.trials)
  keys = [(t.design.design_id, t.budget_epochs) for t in result.trials]
  assert len(set(keys)) == len(keys)  # nothing evaluated twice (HyperBand: at another budget)
  if algorithm != "hyperband":
    assert len({t.design.design_id for t in result.trials}) == 25
  values = [t.value for t in result.trials]
  np.testing.assert_allclose(result.best_so_far, np.maximum.accumulate(values))
  assert [t.design.design_id for t in run(0).trials] == [k[0] for k in keys]
  assert [t.design.design_id for t in run(1).trials] != [k[0] for k in keys]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_searchers_stop_when_a_pool_is_exhausted(algorithm):
  pool = CandidatePool(SMALL, SMALL.sample(2, 7))
  searcher = search.make_searcher(algorithm, SMALL, seed=0, pool=pool)
  result = run_search(searcher, matching_objective(SMALL, SMALL.design_at(3)), budget=30,
                      batch_size=2)
  designs = {t.design.design_id for t in result.trials}
  assert designs <= {d.design_id for d in SMALL.sample(2, 7)}
  if algorithm != "hyperband":
    assert len(result.trials) == 7 and len(designs) == 7


def test_driver_negates_losses_and_validates():
  evaluate = matching_objective(SMALL, SMALL.design_at(5))
  result = run_search(search.RandomSearcher(SMALL, seed=0), lambda d, b: -evaluate(d, b), 10,
                      higher_is_better=False)
  values = np.array([t.value for t in result.trials])
  np.testing.assert_allclose(result.best_so_far, np.minimum.accumulate(values))
  assert result.best_trial.value == values.min()
  with pytest.raises(ValueError, match="budget"):
    run_search(search.RandomSearcher(SMALL), evaluate, 0)
  with pytest.raises(ValueError, match="unknown search algorithm"):
    search.make_searcher("grid", SMALL)
  hb = search.HyperBandSearcher(SMALL, max_resource=9, eta=3)
  hb.ask(9)  # the whole first rung
  with pytest.raises(PendingResults):
    hb.ask(1)


def test_lockstep_searches_match_searches_run_alone_with_one_batch_per_round():
  """run_searches: independent searches (every algorithm, with and without a prior, one that
  exhausts its pool early) give each the trials and curves it gets alone, and each round's
  suggestions of all of them reach ONE evaluate_batch call."""
  optimum = SMALL.design_at(40)
  evaluate = matching_objective(SMALL, optimum)
  prior = concentrated_prior(SMALL, optimum, 0.6)
  pool = CandidatePool(SMALL, SMALL.sample(2, 7))

  def make():
    return ([search.make_searcher(a, SMALL, p, seed=s) for a in ALGORITHMS
             for p in (None, prior) for s in (0, 1)]
            + [search.make_searcher("tpe", SMALL, seed=3, pool=pool)])

  calls = []

  def evaluate_batch(designs, budgets):
    calls.append(len(designs))
    return [evaluate(d, b) for d, b in zip(designs, budgets)]

  alone = [run_search(searcher, evaluate, 12, batch_size=2) for searcher in make()]
  together = run_searches(make(), None, 12, batch_size=2, evaluate_batch=evaluate_batch)
  assert len(together) == len(alone) == 4 * 2 * 2 + 1
  for got, want in zip(together, alone):
    assert got.searcher == want.searcher
    assert ([(t.design.design_id, t.budget_epochs, t.value) for t in got.trials]
            == [(t.design.design_id, t.budget_epochs, t.value) for t in want.trials])
    for name in ("best_so_far", "report_best_so_far", "report_at_best", "epochs_so_far"):
      np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
  assert len(together[-1].trials) == 7  # the pool's 7 designs, then exhausted
  # Rounds: 6 of 2 suggestions for most searches (HyperBand's rungs may hand out fewer), and
  # every round one call; the total is every search's trials.
  assert sum(calls) == sum(len(r.trials) for r in together)
  assert len(calls) < sum(len(r.trials) for r in together) / 10
  assert calls[0] == 2 * len(together)
  with pytest.raises(ValueError, match="returned 1 results"):
    run_searches(make()[:2], None, 3, evaluate_batch=lambda designs, budgets: [0.5])


# ----------------------------------------------------------------------------------------------
# The prior pays off: fewer trials to the optimum.


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_concentrated_prior_finds_the_optimum_sooner(algorithm):
  optimum = BIG.design_at(31337)
  evaluate = matching_objective(BIG, optimum)
  budget, seeds = 30, range(6)
  kwargs = {"hyperband": {"max_resource": 9, "eta": 3}}.get(algorithm, {})

  def trials_to_optimum(prior):
    out = []
    for seed in seeds:
      searcher = search.make_searcher(algorithm, BIG, prior, seed=seed, **kwargs)
      result = run_search(searcher, evaluate, budget)
      hits = [t.trial for t in result.trials if t.value == 1.0]
      out.append(hits[0] if hits else budget + 1)
    return np.mean(out)

  with_prior = trials_to_optimum(concentrated_prior(BIG, optimum, 0.85))
  uniform = trials_to_optimum(None)
  # Measured (seeds 0-5): 7-11 trials with the prior, 28-31 (31 = not found) without.
  assert with_prior < 15 and with_prior + 10 < uniform, (with_prior, uniform)


# ----------------------------------------------------------------------------------------------
# Algorithm details.


def test_tpe_densities_match_a_hand_computation():
  # One dimension with 3 choices, prior [0.5, 0.25, 0.25] -> pseudo-counts [1.5, 0.75, 0.75].
  choices = [0, 2, 1, 2, 0]
  values = [0.3, 0.9, 0.5, 0.8, 0.1]
  # N = 5: n_good = ceil(0.25 sqrt(5)) = 1, the trial with 0.9 (choice 2).
  good, bad = tpe.categorical_densities(choices, values, 3, [1.5, 0.75, 0.75])
  np.testing.assert_allclose(good, np.array([1.5, 0.75, 1.75]) / 4.0)
  # Bad: choices 0, 1, 2, 0 -> counts [2, 1, 1] + pseudo-counts.
  np.testing.assert_allclose(bad, np.array([3.5, 1.75, 1.75]) / 7.0)
  # N = 17: n_good = ceil(0.25 sqrt(17)) = 2.
  assert tpe.split_good_bad(list(range(17)))[0].tolist() == [15, 16]
  # Linear forgetting: 27 trials, lf 25 -> the oldest 2 ramp from 1/27 to 1.
  np.testing.assert_allclose(tpe.linear_forgetting_weights(27)[:3], [1 / 27, 1.0, 1.0])
  # The searcher's densities use the prior's pseudo-counts per dimension.
  prior = Prior(SMALL, {**Prior.uniform(SMALL).probs, "aggregation": [0.5, 0.25, 0.25]})
  searcher = search.TPESearcher(SMALL, prior)
  w = SMALL.dim_names.index("aggregation")
  records = []
  for c, v in zip(choices, values):
    vector = [0] * len(SMALL.dim_names)
    vector[w] = c
    records.append((tuple(vector), v))
  g, b = searcher.densities(records)[w]
  np.testing.assert_allclose(g, good)
  np.testing.assert_allclose(b, bad)
  g0, _ = searcher.densities(records)[0]  # uniform prior on layers_mp: pseudo-count 1 each
  np.testing.assert_allclose(g0, np.array([2, 1, 1, 1]) / 5.0)


def test_tpe_scores_choices_both_densities_rule_out_as_worst():
  # Dimension 0: choice 0 has zero probability under both densities (0/0); choice 1 is
  # neutral; dimension 1 is neutral. The 0/0 candidate must lose, not win argmax as a NaN.
  densities = [(np.array([0.0, 1.0]), np.array([0.0, 1.0])), (np.array([1.0]), np.array([1.0]))]
  scores = tpe.log_ratio_scores(densities, [(0, 0), (1, 0)])
  np.testing.assert_array_equal(scores, [-np.inf, 0.0])
  assert int(np.argmax(scores)) == 1
  # g > 0 = b is the best a candidate can score; g = 0 < b the worst.
  densities = [(np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5]))]
  np.testing.assert_array_equal(tpe.log_ratio_scores(densities, [(0,), (1,), (2,)]),
                                [np.inf, 0.0, -np.inf])


def test_tpe_and_evolution_never_leave_the_prior_support():
  prior = Prior(SMALL, {**Prior.uniform(SMALL).probs, "layers_mp": [0, 0, 0, 1.0]})
  evaluate = matching_objective(SMALL, SMALL.design_at(0))  # optimum has layers_mp = 2
  for algorithm in ("tpe", "evolution", "random"):
    searcher = search.make_searcher(algorithm, SMALL, prior, seed=0)
    result = run_search(searcher, evaluate, 16)  # the prior's support has 18 designs
    assert {t.design.layers_mp for t in result.trials} == {8}, algorithm
  # With the uniform prior TPE's pseudo-counts keep other layer counts possible.
  result = run_search(search.TPESearcher(SMALL, seed=0), evaluate, 18)
  assert len({t.design.layers_mp for t in result.trials}) > 1


def test_evolution_mutates_one_dimension_of_a_member():
  evaluate = matching_objective(BIG, BIG.design_at(100))
  searcher = search.EvolutionSearcher(BIG, seed=0, population_size=4)
  result = run_search(searcher, evaluate, 20)
  assert [t.info["kind"] for t in result.trials[:4]] == ["initial"] * 4
  seen = [choice_vector(BIG, t.design) for t in result.trials[:4]]
  for t in result.trials[4:]:
    assert t.info["kind"] == "mutation"
    child = choice_vector(BIG, t.design)
    assert min(int(np.sum(child != v)) for v in seen) == 1
    seen.append(child)


def test_hyperband_schedule_matches_the_standard_formula():
  # Li et al. (2018), Table 1: R = 81, eta = 3.
  expected = [[(81, 1), (27, 3), (9, 9), (3, 27), (1, 81)],
              [(34, 3), (11, 9), (3, 27), (1, 81)],
              [(15, 9), (5, 27), (1, 81)],
              [(8, 27), (2, 81)],
              [(5, 81)]]
  schedule = search.bracket_schedule(81, 3)
  assert [[(r.configs, round(r.resource, 9)) for r in b] for b in schedule] == expected
  # NNI's defaults R = 60, eta = 3: s_max = 3, n = ceil(4 / (s + 1) * 3^s), r = 60 / 3^s.
  schedule = search.bracket_schedule(60, 3)
  assert [b[0].configs for b in schedule] == [27, 12, 6, 4]
  np.testing.assert_allclose([b[0].resource for b in schedule], [60 / 27, 60 / 9, 20, 60])
  assert [r.configs for r in schedule[0]] == [27, 9, 3, 1]
  # The searcher follows it: 9 new configs at 1/9 of their epochs, then the best 3 at 1/3.
  searcher = search.HyperBandSearcher(SMALL, max_resource=9, eta=3, seed=0)
  evaluate = matching_objective(SMALL, SMALL.design_at(7))
  result = run_search(searcher, evaluate, 13)
  first, second = result.trials[:9], result.trials[9:12]
  assert {t.budget_epochs for t in first} == {round(100 / 9)}
  assert {t.budget_epochs for t in second} == {round(100 / 3)}
  top3 = sorted(first, key=lambda t: (-t.value, t.trial))[:3]
  assert [t.design for t in second] == [t.design for t in top3]
  assert result.trials[12].budget_epochs == 100
  # The reference code's HyperBand: same schedule, but every evaluation trains fully.
  searcher = search.HyperBandSearcher(SMALL, max_resource=9, eta=3, seed=0, ignore_budget=True)
  full = run_search(searcher, evaluate, 13)
  assert [t.design for t in full.trials] == [t.design for t in result.trials]
  assert {t.budget_epochs for t in full.trials} == {100}
  np.testing.assert_array_equal(full.epochs_so_far, 100 * np.arange(1, 14))


# ----------------------------------------------------------------------------------------------
# Tabular benchmark over a bank, the study and the experiment script.


def build_fake_bank(path, tasks: dict[str, int], designs_per_task: int = 60,
                    shared_designs: bool = False):
  """Tasks of two families that prefer different designs; score = agreement with the family's
  preferred design (+ a per-task jitter). shared_designs: every task holds the same designs
  (as `design_space --plan=random` draws them), else each its own sample."""
  preferred = {0: BIG.design_at(1234), 1: BIG.design_at(40000)}
  with bank_lib.Bank(path) as bank:
    for i, (task, family) in enumerate(tasks.items()):
      designs = BIG.sample(100 + (0 if shared_designs else i), designs_per_task)
      target = choice_vector(BIG, preferred[family])
      rng = np.random.default_rng(i)
      scores = [float(np.mean(choice_vector(BIG, d) == target)) + 0.01 * rng.random()
                for d in designs]
      fill_bank(bank, task, designs, scores, tests=[s - 0.02 for s in scores])
  return preferred


def test_bank_lookup_and_search_efficiency_study(tmp_path):
  tasks = {"a1": 0, "a2": 0, "a3": 0, "b1": 1, "b2": 1}
  build_fake_bank(tmp_path / "bank.sqlite", tasks)
  distances = {h: {t: (0.1 if tasks[t] == tasks[h] else 0.9) for t in tasks if t != h}
               for h in tasks}
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    lookup = BankLookup(bank, "a1", BIG)
    assert len(lookup) == 60 and lookup.has_report and lookup.metric == "accuracy"
    design = BIG.sample(100, 60)[0]  # a1's first design
    full = lookup(design)
    assert full.report == pytest.approx(full.value - 0.021)  # val has +0.001 per seed
    early = lookup(design, budget_epochs=1)  # the curve's first evaluation: half the score
    assert early.value == pytest.approx(full.value / 2)
    with pytest.raises(ValueError, match="not in the bank's pool"):
      lookup(BIG.design_at(5))
    config = efficiency.StudyConfig(runs=3, trials=10)
    result = efficiency.search_efficiency(bank, BIG, ["a1", "b1"], distances, config,
                                          print_fn=None)
  assert result.curves["report"].shape == (2, 4, 2, 3, 10)
  assert result.transfers[0]["tasks"] == ["a2", "a3", "b1"]
  # The transferred prior helps on this bank: the mean best-after-3 beats the uniform prior.
  for ti in range(2):
    for algorithm in config.algorithms:
      transferred = result.mean_curve(ti, algorithm, "transferred")
      uniform = result.mean_curve(ti, algorithm, "uniform")
      assert transferred[2] > uniform[2], (ti, algorithm)
      assert np.all(np.diff(transferred) >= 0)
  rows = efficiency.summary_rows(result)
  assert len(rows) == 16 and {"t1", "t3", "t5", "t10", "trials_to_reference"} <= set(rows[0])
  paths = efficiency.save(result, str(tmp_path / "study"))
  assert all((tmp_path / "study" / name).exists() for name in
             ("search_efficiency.json", "search_efficiency.txt", "search_efficiency.png"))
  assert json.loads((tmp_path / "study" / "search_efficiency.json").read_text())["tasks"] == \
      ["a1", "b1"]
  assert len(paths) == 3


def test_training_study_trains_each_round_as_one_population_and_resumes_from_its_bank(
    tmp_path):
  """With real training (TrainingEvaluator) an algorithm's priors x runs searches advance in
  lock step: every round's suggestions reach the trainer as one population, a design two runs
  propose is trained once, the curves are those of the same objective read from a table, and
  a rerun against the same candidate bank trains nothing."""
  from gnnjax.search.evaluate import TrainingEvaluator
  from tests.test_engine import tiny_dataset
  from tests.test_prior import make_result
  sources = {"a1": 0, "a2": 0, "b1": 1}
  preferred = build_fake_bank(tmp_path / "bank.sqlite", sources)
  target = choice_vector(BIG, preferred[0])
  objective = lambda design: float(np.mean(choice_vector(BIG, design) == target))
  calls = []

  def trainer(designs, dataset, seeds, **kwargs):
    calls.append(len(designs))
    return [make_result("held", d, s, objective(d), objective(d) - 0.02)
            for d in designs for s in seeds]

  config = efficiency.StudyConfig(algorithms=("random", "tpe"), runs=3, trials=4)
  distances = {"held": {"a1": 0.1, "a2": 0.1, "b1": 0.9}}
  dataset = tiny_dataset()

  lines = []

  def study(make_evaluator):
    with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
      return efficiency.search_efficiency(bank, BIG, ["held"], distances, config,
                                          make_evaluator, print_fn=lines.append)

  def trained(candidates):
    evaluator = TrainingEvaluator(dataset, "held", bank=candidates, trainer=trainer)
    return lambda task: (None, evaluator.evaluate_batch, None, True)

  def table(task):
    batch = lambda designs, budgets: [search.Evaluation(objective(d), objective(d) - 0.02)
                                      for d in designs]
    return None, batch, None, True

  with bank_lib.Bank(tmp_path / "study.sqlite") as candidates:
    first = study(trained(candidates))
    stored = len(candidates.query(task="held"))
  # 2 algorithms x 4 rounds, each one population of at most 2 priors x 3 runs designs.
  assert 1 <= len(calls) <= 8 and max(calls) <= 6, calls
  assert sum(calls) == stored  # every design trained once, however many runs proposed it
  # Each round says where the study is: "<algorithm> round k/4: n suggestions, m distinct".
  rounds = [re.match(r"\s+(\w+) round (\d)/4: (\d+) suggestions, (\d+) distinct, ", line)
            for line in lines]
  rounds = [(m[1], int(m[2]), int(m[3]), int(m[4])) for m in rounds if m]
  assert [r[:2] for r in rounds] == [(a, k) for a in ("random", "tpe") for k in (1, 2, 3, 4)]
  assert all(r[2] == 6 and 1 <= r[3] <= 6 for r in rounds), rounds
  expected = study(table)
  for name in ("report", "objective"):
    np.testing.assert_array_equal(first.curves[name], expected.curves[name])
  with bank_lib.Bank(tmp_path / "study.sqlite") as candidates:
    again = study(trained(candidates))
  assert sum(calls) == stored  # the rerun read every result back
  np.testing.assert_array_equal(again.curves["report"], first.curves["report"])


def test_study_rounds_past_the_expected_count_say_so():
  """A searcher that suggests fewer than a full batch makes more rounds than trials / batch;
  their label says how many were expected instead of counting past the total."""
  lines = []
  evaluate = efficiency._reporting_rounds(lambda designs, budgets: [None] * len(designs),
                                          "tpe", 1, lines.append)
  design = BIG.sample(0, 1)[0]
  evaluate([design, design], [None, None])
  evaluate([design], [None])
  assert lines[0].startswith("    tpe round 1/1: 2 suggestions, 1 distinct, ")
  assert lines[1].startswith("    tpe round 2 (1 expected): 1 suggestions, 1 distinct, ")


def test_trials_to_reference_strict_and_within_one_standard_error():
  """Hand-built curves: plain TPE's runs end on 0.8 and 0.9 (mean 0.85, std 0.05, SE
  0.05/sqrt(2)); the prior's mean curve is 0.80, 0.83, 0.84, 0.86."""
  config = efficiency.StudyConfig(algorithms=("tpe",), runs=2, trials=4)
  curves = {name: np.full((2, 1, 2, 2, 4), np.nan)
            for name in ("report", "objective", "report_at_best", "epochs")}
  uniform = np.array([[0.5, 0.6, 0.7, 0.8], [0.5, 0.7, 0.8, 0.9]])
  prior = np.array([[0.80, 0.83, 0.84, 0.86], [0.80, 0.83, 0.84, 0.86]])
  for ti in range(2):
    curves["report"][ti, 0, 0] = uniform if ti == 0 else 1.0 - uniform
    curves["report"][ti, 0, 1] = prior if ti == 0 else 1.0 - prior
  result = efficiency.EfficiencyResult(config=config, tasks=["acc", "loss"], curves=curves,
                                       higher_is_better=[True, False], pool=[{}, {}],
                                       transfers=[{"weights": []}] * 2)
  rows = {(r["task"], r["prior"]): r for r in efficiency.summary_rows(result)}
  se = 0.05 / math.sqrt(2)  # 0.0354: the prior's 0.83 at t=2 is within it of 0.85
  assert 0.85 - se < 0.83 < 0.84 < 0.85
  for task in ("acc", "loss"):  # a loss (lower is better) mirrors an accuracy
    assert rows[task, "transferred"]["trials_to_reference"] == 4
    assert rows[task, "transferred"]["trials_to_reference_se"] == 2
    assert rows[task, "uniform"]["trials_to_reference"] == 4
  assert "TPE with the transferred prior within 5 trials: 2 of 2 tasks (within one SE: 2)" \
      in efficiency.format_table(result)
  assert "\nto TPE@4: first trial whose mean reaches" in efficiency.format_table(result)
  # Every reference run ends on one value (a saturated pool): the SE count is the strict one.
  curves["report"][0, 0, 0] = [[0.5, 0.6, 0.7, 0.9], [0.5, 0.7, 0.8, 0.9]]
  row = [r for r in efficiency.summary_rows(result)
         if r["task"] == "acc" and r["prior"] == "transferred"][0]
  assert row["trials_to_reference"] is None and row["trials_to_reference_se"] is None
  assert "TPE with the transferred prior within 5 trials: 1 of 2 tasks (within one SE: 1)" \
      in efficiency.format_table(result)


def test_in_sample_prior_is_the_tasks_own_top_k(tmp_path):
  """With K = 1 the in-sample prior puts all its mass on the pool's best-val design, so every
  run's first trial is that design; the script's --distance=insample runs the same study."""
  build_fake_bank(tmp_path / "bank.sqlite", {"a1": 0, "b1": 1})
  config = efficiency.StudyConfig(algorithms=("random", "tpe"), runs=3, trials=4, top_k=1)
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    result = efficiency.in_sample_transfer(bank, BIG, ["a1", "b1"], config, print_fn=None)
    own = prior_lib.bank_distributions(bank, BIG, ["a1", "b1"], 1)
    given = efficiency.in_sample_transfer(bank, BIG, ["a1", "b1"], config, print_fn=None,
                                          distributions=own)
  assert [t["tasks"] for t in result.transfers] == [["a1 (in sample)"], ["b1 (in sample)"]]
  for ti in range(2):
    best = result.pool[ti]["best_report"]  # test = val - 0.02: the best-val design's test
    assert result.pool[ti]["size"] == 60
    np.testing.assert_allclose(result.curves["report"][ti, :, 1, :, 0], best)
    assert result.curves["report"][ti, :, 0, :, 0].min() < best  # uniform: not every run
  np.testing.assert_array_equal(given.curves["report"], result.curves["report"])
  out = _script(f"--db={tmp_path / 'bank.sqlite'}", "--mode=study", "--distance=insample",
                "--algorithms=random", "--runs=2", "--trials=3", "--top_k=1",
                f"--out_dir={tmp_path / 'insample'}")
  assert out.returncode == 0, out.stderr[-3000:]
  study = json.loads((tmp_path / "insample" / "search_efficiency.json").read_text())
  assert study["transfers"][0]["tasks"] == ["a1 (in sample)"] and study["tasks"] == ["a1", "b1"]
  out = _script(f"--db={tmp_path / 'bank.sqlite'}", "--dataset=a1", "--distance=insample")
  assert out.returncode != 0 and "use it with --mode=study" in out.stderr


def test_study_leaves_thin_pools_out_of_the_prior(tmp_path):
  tasks = {"a1": 0, "a2": 0, "b1": 1}
  build_fake_bank(tmp_path / "bank.sqlite", tasks)  # 60 designs per task
  distances = {"a1": {"a2": 0.1, "b1": 0.9}}
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    result = efficiency.search_efficiency(
        bank, BIG, ["a1"], distances,
        efficiency.StudyConfig(algorithms=("random",), runs=1, trials=2, nearest=2,
                               min_source_designs=60), print_fn=None)
    assert result.transfers[0]["tasks"] == ["a2", "b1"]
    with pytest.raises(ValueError, match="no task has both a distance and a design distribution"):
      efficiency.search_efficiency(
          bank, BIG, ["a1"], distances,
          efficiency.StudyConfig(algorithms=("random",), runs=1, trials=2,
                                 min_source_designs=61), print_fn=None)


def test_partial_pools_are_named_and_can_be_left_out_of_the_prior(tmp_path):
  # b1's pool never tried two conv choices (as a population stopped after its first program
  # groups); a1 and a2 hold uniform draws.
  tasks = {"a1": 0, "a2": 0, "b1": 1}
  build_fake_bank(tmp_path / "bank.sqlite", tasks)
  conv = BIG.dim_names.index("conv")
  dropped = {0, 1}
  partial = [d for d in BIG.sample(7, 400) if choice_vector(BIG, d)[conv] not in dropped][:60]
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    fill_bank(bank, "b2", partial, [0.5 + 0.001 * i for i in range(60)])
    distributions = prior_lib.bank_distributions(bank, BIG)
    # The untried choices, against a brute-force count over each pool's designs.
    for task, prior in distributions.items():
      designs = partial if task == "b2" else BIG.sample(100 + list(tasks).index(task), 60)
      vectors = np.array([choice_vector(BIG, d) for d in designs])
      want = {dim: [prior_lib._short(c) for i, c in enumerate(BIG.dims[dim])
                    if not (vectors[:, j] == i).any()]
              for j, dim in enumerate(BIG.dim_names)}
      assert prior.info["untried_choices"] == {d: c for d, c in want.items() if c}, task
    assert sorted(distributions["b2"].info["untried_choices"]["conv"]) == sorted(
        prior_lib._short(BIG.dims["conv"][i]) for i in dropped)
    kept, untried = prior_lib.split_by_coverage(distributions)
    assert sorted(kept) == ["a1", "a2", "b1"] and list(untried) == ["b2"]
    assert prior_lib.describe_untried(untried).startswith("b2 (conv: ")
    # Tasks missing the same choices are named once, together.
    same = {"x": {"conv": ["gcn"], "lr": ["0.1"]}, "b": {"conv": ["gcn"], "lr": ["0.1"]},
            "c": {"conv": ["gat"]}}
    assert prior_lib.describe_untried(same) == "b, x (conv: gcn; lr: 0.1); c (conv: gat)"

    distances = {"a1": {"a2": 0.5, "b1": 0.9, "b2": 0.1}}
    lines = []
    for full_coverage, want_tasks in ((False, ["b2", "a2"]), (True, ["a2", "b1"])):
      result = efficiency.search_efficiency(
          bank, BIG, ["a1"], distances,
          efficiency.StudyConfig(algorithms=("random",), runs=1, trials=2, nearest=2,
                                 full_coverage_sources=full_coverage), print_fn=lines.append)
      assert result.transfers[0]["tasks"] == want_tasks, full_coverage
  assert any(line.startswith("prior sources whose pools never tried some choices: b2 (conv")
             for line in lines)
  assert any(line.startswith("not prior sources whose pools never tried some choices: b2")
             for line in lines)


def _brute_force_tau(x, y):
  """Kendall's tau over all pairs (no ties in the data below)."""
  n = len(x)
  signs = [np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i in range(n) for j in range(i)]
  return float(np.sum(signs) / len(signs))


def test_pool_agreement_ranks_shared_designs_and_reaches_the_study_table(tmp_path):
  designs = BIG.sample(7, 40)
  rng = np.random.default_rng(0)
  base = rng.random(40)
  near = base + 0.3 * rng.random(40)  # mostly the same ranking
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    fill_bank(bank, "a", designs, list(base))
    fill_bank(bank, "near", designs, list(near))
    fill_bank(bank, "flipped", designs, list(1.0 - base))
    fill_bank(bank, "few", designs[:5], list(base[:5]))
    lookups = {t: BankLookup(bank, t, BIG) for t in ("a", "near", "flipped", "few")}
    tau, shared = efficiency.pool_agreement(lookups["a"], lookups["near"])
    assert shared == 40
    vectors = [tuple(int(i) for i in choice_vector(BIG, d)) for d in designs]
    mine, theirs = lookups["a"].objectives(), lookups["near"].objectives()
    expected = _brute_force_tau([mine[v] for v in vectors], [theirs[v] for v in vectors])
    assert tau == pytest.approx(expected) and 0.3 < tau < 1.0
    assert efficiency.pool_agreement(lookups["a"], lookups["flipped"])[0] == pytest.approx(-1.0)
    assert math.isnan(efficiency.pool_agreement(lookups["a"], lookups["few"])[0])
    # The oracle distance: 1 - tau, tasks sharing too few designs (and the task itself) left out.
    oracle = efficiency.pool_distances(bank, BIG, "a", ["a", "near", "flipped", "few",
                                                       "not_in_bank"])
    assert set(oracle) == {"near", "flipped"}
    assert oracle["near"] == pytest.approx(1.0 - tau)
    assert oracle["flipped"] == pytest.approx(2.0)
    distances = {"a": {"near": 0.1, "flipped": 0.3, "few": 0.2}}
    result = efficiency.search_efficiency(
        bank, BIG, ["a"], distances, efficiency.StudyConfig(runs=1, trials=3,
                                                            algorithms=("random",)),
        print_fn=None)
  transfer = result.transfers[0]
  taus = dict(zip(transfer["tasks"], transfer["pool_tau"]))
  assert taus["near"] == pytest.approx(tau) and taus["flipped"] == pytest.approx(-1.0)
  assert taus["few"] is None and dict(zip(transfer["tasks"], transfer["pool_shared"]))["few"] == 5
  weights = dict(zip(transfer["tasks"], transfer["weights"]))
  expected_mean = ((weights["near"] * tau - weights["flipped"])
                   / (weights["near"] + weights["flipped"]))
  assert efficiency.prior_agreement(transfer) == pytest.approx(expected_mean)
  assert f"{expected_mean:+.3f}" in efficiency.format_table(result)


def test_seed_agreement_compares_seeds_of_one_task_and_reaches_the_study_table(tmp_path):
  designs = BIG.sample(8, 30)
  rng = np.random.default_rng(1)
  first = rng.random(30)
  second = first + 0.5 * rng.random(30)  # partly the same ranking
  third = rng.random(30)  # unrelated
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    fill_bank(bank, "a", designs, list(first), seeds=(1,))
    fill_bank(bank, "a", designs, list(second - 0.001), seeds=(2,))  # fill_bank adds 0.001/seed
    fill_bank(bank, "a", designs[:20], list(third[:20] - 0.003), seeds=(3,))
    fill_bank(bank, "one_seed", designs, list(first), seeds=(1,))
    fill_bank(bank, "few", designs[:5], list(first[:5]), seeds=(1, 2))
    lookup = BankLookup(bank, "a", BIG)
    tau, most = lookup.seed_agreement()
    assert most == 30  # seeds 1 and 2; seed 3 ran 20 designs
    expected = np.mean([_brute_force_tau(first, second), _brute_force_tau(first[:20], third[:20]),
                        _brute_force_tau(second[:20], third[:20])])
    assert tau == pytest.approx(expected)
    assert lookup.seed_agreement(min_shared=21) == (pytest.approx(
        _brute_force_tau(first, second)), 30)  # pairs with seed 3 share too few designs
    assert math.isnan(BankLookup(bank, "one_seed", BIG).seed_agreement()[0])
    assert BankLookup(bank, "few", BIG).seed_agreement()[1] == 5
    assert math.isnan(BankLookup(bank, "few", BIG).seed_agreement()[0])
    result = efficiency.search_efficiency(
        bank, BIG, ["a", "one_seed"], {"a": {"one_seed": 0.1}, "one_seed": {"a": 0.1}},
        efficiency.StudyConfig(runs=1, trials=2, algorithms=("random",), min_source_designs=10),
        print_fn=None)
  assert result.pool[0]["seed_tau"] == pytest.approx(expected)
  assert result.pool[0]["seed_shared"] == 30 and result.pool[1]["seed_tau"] is None
  footer = efficiency.format_table(result).split("pool: the held-out task")[1].splitlines()
  assert footer[-2].split()[-1] == f"{expected:+.3f}" and footer[-1].split()[-1] == "-"


def test_seed_agreement_averages_designs_that_share_a_pool_entry_and_a_seed(tmp_path):
  designs = BIG.sample(8, 20)
  twin = designs[0].replace(dropout=0.5 if designs[0].dropout != 0.5 else 0.0)  # same vector
  rng = np.random.default_rng(3)
  first, second = rng.random(20), rng.random(20)
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    fill_bank(bank, "a", designs, list(first), seeds=(1,))
    fill_bank(bank, "a", [twin], [first[0] + 0.6], seeds=(1,))
    fill_bank(bank, "a", designs, list(second - 0.001), seeds=(2,))
    lookup = BankLookup(bank, "a", BIG)
  assert len(lookup) == 20
  seed1 = first.copy()
  seed1[0] += 0.3  # the entry's seed-1 objective: the mean of the design and its twin
  assert lookup.seed_agreement()[0] == pytest.approx(_brute_force_tau(seed1, second))


def test_self_transfer_takes_the_prior_from_the_tasks_other_seeds(tmp_path):
  designs = BIG.sample(9, 40)
  target = choice_vector(BIG, BIG.design_at(1234))  # scores: agreement with this design
  base = np.array([np.mean(choice_vector(BIG, d) == target) for d in designs])
  rng = np.random.default_rng(2)
  seed1 = base + 0.01 * rng.random(40)  # two seeds: the same ranking up to a little noise
  seed2 = base + 0.01 * rng.random(40)
  with bank_lib.Bank(tmp_path / "bank.sqlite") as bank:
    fill_bank(bank, "a", designs, list(seed1), seeds=(1,))
    fill_bank(bank, "a", designs[:30], list(seed2[:30] - 0.002), seeds=(2,))
    fill_bank(bank, "one_seed", designs, list(seed1), seeds=(1,))
    # The lookup's filters: one seed, some designs.
    held = BankLookup(bank, "a", BIG, seeds={1}, design_ids={d.design_id for d in designs[:30]})
    assert len(held) == 30
    np.testing.assert_allclose(sorted(held.values()), sorted(seed1[:30] + 0.001))
    with pytest.raises(ValueError, match="among the seeds and designs asked for"):
      BankLookup(bank, "one_seed", BIG, seeds={2})
    config = efficiency.StudyConfig(runs=10, trials=8, algorithms=("random", "tpe"))
    result = efficiency.self_transfer(bank, BIG, ["a"], config, held_seeds=(1,),
                                      print_fn=None)
    with pytest.raises(ValueError, match="no design trained with one of the seeds"):
      efficiency.self_transfer(bank, BIG, ["one_seed"], config, print_fn=None)
  assert result.transfers[0]["tasks"] == ["a seeds 2"]
  assert result.pool[0]["size"] == 30 and result.pool[0]["seed_shared"] == 30
  assert result.pool[0]["seed_tau"] > 0.5  # over both seeds of the 30 designs
  assert result.pool[0]["best_objective"] == pytest.approx(seed1[:30].max() + 0.001)
  # The prior is the top 16 of seed 2, which are seed 1's best too: it finds them sooner.
  for ai in range(2):
    transferred = result.mean_curve(0, config.algorithms[ai], "transferred")
    uniform = result.mean_curve(0, config.algorithms[ai], "uniform")
    assert transferred[0] > uniform[0] and transferred[2] >= uniform[2]
  assert "a seeds 2" not in efficiency.format_table(result)  # sources are not in the table
  assert efficiency.format_table(result).splitlines()[-1].split()[-1] == \
      f"{result.pool[0]['seed_tau']:+.3f}"


def _script(*args):
  return subprocess.run([sys.executable, "-m", "experiments.autotransfer", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_autotransfer_script_search_and_study(tmp_path):
  tasks = {"a1": 0, "a2": 0, "b1": 1, "b2": 1}
  build_fake_bank(tmp_path / "bank.sqlite", tasks, designs_per_task=40)
  distances = tmp_path / "distances.json"
  distances.write_text(json.dumps({"a2": 0.05, "b1": 0.8, "b2": 0.9}))
  out = _script(f"--db={tmp_path / 'bank.sqlite'}", "--dataset=a1", "--distance=file",
                f"--distances_json={distances}", "--evaluator=bank", "--algorithm=tpe",
                "--trials=8", "--batch_size=2", "--nearest=2", f"--out_dir={tmp_path / 'out'}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "a1 is in the bank: left out of it" in out.stdout
  assert "1. a2" in out.stdout and "best design" in out.stdout
  written = json.loads((tmp_path / "out" / "autotransfer_a1_tpe_transferred.json").read_text())
  assert written["transfer"]["tasks"] == ["a2", "b1"]
  assert len(written["search"]["trials"]) == 8
  # Pools of 40 designs are too thin to be prior sources under --min_source_pool=41.
  out = _script(f"--db={tmp_path / 'bank.sqlite'}", "--dataset=a1", "--distance=file",
                f"--distances_json={distances}", "--evaluator=bank", "--trials=2",
                "--min_source_pool=41", f"--out_dir={tmp_path / 'thin'}")
  assert out.returncode != 0
  assert "not prior sources (fewer than --min_source_pool=41 designs): a2, b1, b2" in out.stdout
  assert "no bank task has --min_source_pool=41 designs" in out.stderr
  # A pool that never tried some choices is named, and left out under --full_coverage_sources.
  conv = BIG.dim_names.index("conv")
  covering = tmp_path / "covering.sqlite"
  covering.write_bytes((tmp_path / "bank.sqlite").read_bytes())
  with bank_lib.Bank(covering) as bank:
    fill_bank(bank, "c1", [d for d in BIG.sample(7, 200) if choice_vector(BIG, d)[conv] != 0][:40],
              [0.5] * 40)
  with_c1 = tmp_path / "distances_c1.json"
  with_c1.write_text(json.dumps({"c1": 0.01, "a2": 0.05, "b1": 0.8, "b2": 0.9}))
  out = _script(f"--db={covering}", "--dataset=a1", "--distance=file",
                f"--distances_json={with_c1}", "--evaluator=bank", "--trials=2", "--nearest=1",
                "--full_coverage_sources", f"--out_dir={tmp_path / 'covering'}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "not prior sources whose pools never tried some choices (--full_coverage_sources): c1 (conv: " in out.stdout
  written = json.loads((tmp_path / "covering" / "autotransfer_a1_tpe_transferred.json").read_text())
  assert written["transfer"]["tasks"] == ["a2"]
  # Study mode with raw-feature distances from a feature file (no FIM computation needed).
  features = {"a1": [1.0, 0.1, 0.0], "a2": [0.9, 0.2, 0.0], "b1": [0.0, 0.1, 1.0],
              "b2": [0.1, 0.0, 0.9]}
  (tmp_path / "features.json").write_text(json.dumps(features))
  out = _script(f"--db={tmp_path / 'bank.sqlite'}", "--mode=study", "--distance=feature",
                f"--features={tmp_path / 'features.json'}", "--tasks=a1,b2",
                "--algorithms=random,tpe", "--runs=2", "--trials=5", "--nearest=1",
                f"--out_dir={tmp_path / 'study'}")
  assert out.returncode == 0, out.stderr[-3000:]
  study = json.loads((tmp_path / "study" / "search_efficiency.json").read_text())
  assert [t["tasks"] for t in study["transfers"]] == [["a2"], ["b1"]]
  assert (tmp_path / "study" / "search_efficiency.png").exists()
  assert "to TPE@5" in out.stdout
  # The oracle distance: each held-out task's best-agreeing pool is its nearest. It needs
  # pools of shared designs, and says so when they are not.
  out = _script(f"--db={tmp_path / 'bank.sqlite'}", "--mode=study", "--distance=pool",
                "--tasks=a1", "--algorithms=random", "--runs=1", "--trials=3")
  assert out.returncode != 0 and "shares at least 10 designs with 'a1'" in out.stderr
  build_fake_bank(tmp_path / "shared.sqlite", tasks, designs_per_task=40, shared_designs=True)
  out = _script(f"--db={tmp_path / 'shared.sqlite'}", "--mode=study", "--distance=pool",
                "--tasks=a1,b2", "--algorithms=random", "--runs=1", "--trials=3",
                "--nearest=1", f"--out_dir={tmp_path / 'oracle'}")
  assert out.returncode == 0, out.stderr[-3000:]
  study = json.loads((tmp_path / "oracle" / "search_efficiency.json").read_text())
  assert [t["tasks"] for t in study["transfers"]] == [["a2"], ["b1"]]
  # The self-transfer ceiling needs a second seed, and is a study only.
  out = _script(f"--db={tmp_path / 'shared.sqlite'}", "--mode=study", "--distance=self",
                "--algorithms=random", "--runs=1", "--trials=3")
  assert out.returncode != 0 and "no bank task has trials of one of the seeds [1]" in out.stderr
  with bank_lib.Bank(tmp_path / "shared.sqlite") as bank:
    fill_bank(bank, "b2", BIG.sample(100, 40)[:20], list(np.linspace(0, 1, 20)), seeds=(3,))
  out = _script(f"--db={tmp_path / 'shared.sqlite'}", "--mode=study", "--distance=self",
                "--algorithms=random", "--runs=1", "--trials=3", f"--out_dir={tmp_path / 'self'}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "self-transfer study: 1 task(s), searches see seeds [1]" in out.stdout
  study = json.loads((tmp_path / "self" / "search_efficiency.json").read_text())
  assert study["tasks"] == ["b2"] and study["transfers"][0]["tasks"] == ["b2 seeds 3"]
  assert study["pool"][0]["size"] == 20
  out = _script(f"--db={tmp_path / 'shared.sqlite'}", "--dataset=b2", "--distance=self")
  assert out.returncode != 0 and "use it with --mode=study" in out.stderr


def test_pinned_distances_keep_the_first_runs_and_add_new_tasks(tmp_path):
  """A resumed study gets the distances its first run used (the learned embedding's differ
  between GPU runs), per distance kind; tasks not stored yet are computed and added; a file
  that is not the expected mapping is an error and stays untouched."""
  path = tmp_path / "study.distances.json"
  calls = []

  def compute(offset):
    def distances(task):
      calls.append(task)
      return {"a": 0.1 + offset, "b": 0.7 + offset}
    return distances

  first = efficiency.pinned_distances(path, "embedding", ["cora"], compute(0.0), None)
  again = efficiency.pinned_distances(path, "embedding", ["cora", "MUTAG"], compute(0.05),
                                      None)
  assert calls == ["cora", "MUTAG"]
  assert again["cora"] == first["cora"] == {"a": 0.1, "b": 0.7}
  assert again["MUTAG"] == pytest.approx({"a": 0.15, "b": 0.75})
  other = efficiency.pinned_distances(path, "feature", ["cora"], compute(0.2), None)
  assert other["cora"] == pytest.approx({"a": 0.3, "b": 0.9})
  stored = json.loads(path.read_text())
  assert sorted(stored) == ["embedding", "feature"]
  assert sorted(stored["embedding"]) == ["MUTAG", "cora"]
  path.write_text('{"embedding": {"cora": [0.1, 0.2]}}')
  with pytest.raises(ValueError, match="delete it"):
    efficiency.pinned_distances(path, "embedding", ["cora"], compute(0.0), None)
  assert path.read_text() == '{"embedding": {"cora": [0.1, 0.2]}}'


def test_autotransfer_training_evaluator_takes_the_engine_policy_flags():
  # In a child process: parsing the global absl FLAGS here would leak into other tests.
  code = ("from absl import flags; from experiments import autotransfer as a; "
          "from gnnjax.design import spaces; "
          "flags.FLAGS(['prog', '--db=unused.sqlite', '--split_stages=on', '--epoch_scan=on', "
          "'--split_aggregations=off', '--stable_programs=on']); "
          "space = spaces.resolve_space('autotransfer', ['epochs=50']); "
          "e = a._training_evaluator(a.FLAGS.dataset, None, space); "
          "a.FLAGS.stable_programs = 'auto'; "
          "auto = a._training_evaluator(a.FLAGS.dataset, None, space); "
          "print('auto on cpu covers:', 'layout_cover' in auto.trainer_kwargs); "
          "keys = ('split_stages', 'split_depths', 'split_aggregations', 'epoch_scan', "
          "'size_buckets'); print(repr({k: e.trainer_kwargs[k] for k in keys}), "
          "len(e.trainer_kwargs['layout_cover']))")
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  # --stable_programs=auto: no cover on CPUs (the width costs more than the compilations).
  assert "auto on cpu covers: False" in done.stdout.splitlines()
  kwargs, cover = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
  kwargs = ast.literal_eval(kwargs)
  assert (kwargs["split_stages"], kwargs["epoch_scan"], kwargs["split_aggregations"]) == (
      True, True, False)
  assert kwargs["split_depths"] is None and kwargs["size_buckets"] is True  # engine defaults
  assert int(cover) == len(spaces.resolve_space("autotransfer", ["epochs=50"])) == 16128
