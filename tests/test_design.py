"""Tests of Design, design spaces and GraphGym compute-budget matching."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from gnnjax.data.dataset import DataFormatError
from gnnjax.design import budget as budget_lib
from gnnjax.design.design import (DESIGN_V1, DESIGN_V2, FIELDS, Design, fit_config, optim_config,
                                  validate_field)
from gnnjax.design.spaces import (AUTOTRANSFER, GRAPHGYM_ROUND1, GRAPHGYM_ROUND2, DesignSpace,
                                  get_space, load_space)
from gnnjax.training import optim

# ----------------------------------------------------------------------------------------------
# Design validation


@pytest.mark.parametrize("field,bad,valid", [
    ("stage_type", "skipcat", "skipconcat"),
    ("activation", "gelu", "prelu"),
    ("aggregation", "sum", "mean"),
    ("conv_type", "gatconv", "generalconv"),
    ("conv_variant", "concat", "release"),
    ("graph_pooling", "min", "add"),
    ("optimizer", "rmsprop", "adamw"),
    ("batch_norm", "yes", "True"),
    ("l2norm", 1, "False"),
])
def test_unknown_choice_names_field_value_and_choices(field, bad, valid):
  with pytest.raises(ValueError, match=rf"Design\.{field}: invalid value {bad!r}.*{valid}"):
    Design(**{field: bad})


@pytest.mark.parametrize("field,bad", [
    ("layers_pre_mp", 0), ("layers_pre_mp", 4), ("layers_mp", 0), ("layers_mp", 17),
    ("layers_post_mp", 4), ("layers_mp", 2.5), ("layers_mp", True), ("heads", 0),
    ("dropout", 1.0), ("dropout", -0.1), ("learning_rate", 0.0), ("learning_rate", math.nan),
    ("epochs", 0), ("batch_size", "32"), ("weight_decay", -1e-4), ("momentum", 1.0),
    ("dim_inner", 0), ("dim_inner", 64.0),
])
def test_out_of_range_values_are_rejected(field, bad):
  with pytest.raises(ValueError, match=rf"Design\.{field}: invalid value"):
    Design(**{field: bad})


def test_accepts_every_documented_choice():
  for layers_mp in range(1, 17):
    assert Design(layers_mp=layers_mp).layers_mp == layers_mp
  for activation in ("relu", "prelu", "swish", "leaky_relu", "elu"):
    Design(activation=activation)
  for conv in ("generalconv", "gcn", "sage", "gin", "gat"):
    Design(conv_type=conv)


def test_numbers_are_canonicalised():
  a = Design(learning_rate=1, layers_mp=np.int64(4), dropout=0, dim_inner=np.int32(64))
  b = Design(learning_rate=1.0, layers_mp=4, dropout=0.0, dim_inner=64)
  assert a == b and a.design_id == b.design_id
  assert type(a.learning_rate) is float and type(a.layers_mp) is int
  assert type(a.dim_inner) is int


def test_validate_field_rejects_unknown_field():
  with pytest.raises(ValueError, match="unknown Design field 'depth'"):
    validate_field("depth", 3)


# ----------------------------------------------------------------------------------------------
# Serialisation and ids


def test_json_round_trip_for_designs_of_every_space():
  designs = ([Design(), DESIGN_V1, DESIGN_V2] + GRAPHGYM_ROUND1.sample(0, 20)
             + AUTOTRANSFER.sample(0, 20))
  for design in designs:
    assert Design.from_json(design.to_json()) == design
    assert Design.from_json(design.to_json(indent=2)) == design
    assert Design.from_dict(design.to_dict()) == design
  assert set(Design().to_dict()) == set(FIELDS)


def test_from_dict_rejects_unknown_keys_and_uses_defaults():
  with pytest.raises(ValueError, match=r"unknown Design field\(s\) \['depth', 'width'\]"):
    Design.from_dict({"depth": 3, "width": 4, "layers_mp": 2})
  with pytest.raises(ValueError, match="Design.stage_type"):
    Design.from_json('{"stage_type": "dense"}')
  assert Design.from_dict({"layers_mp": 6}) == Design(layers_mp=6)


def test_design_id_is_stable_and_distinguishes_designs():
  # Pinned: changing Design's fields or the canonical JSON changes every stored id (bank rows).
  assert DESIGN_V1.design_id == "9c6cadd32e4c"
  assert Design(dim_inner=256, batch_size=128).design_id == DESIGN_V1.design_id
  ids = {design.design_id for design in GRAPHGYM_ROUND2}
  assert len(ids) == 96
  for field, value in (("dropout", 0.3), ("epochs", 101), ("dim_inner", 255)):
    assert DESIGN_V1.replace(**{field: value}).design_id != DESIGN_V1.design_id
  assert len(DESIGN_V1.design_id) == 12 and int(DESIGN_V1.design_id, 16) >= 0


def test_design_id_is_identical_in_another_process():
  designs = GRAPHGYM_ROUND1.sample(3, 5)
  script = ("import json, sys\nfrom gnnjax.design.design import Design\n"
            "print(json.dumps([Design.from_json(s).design_id for s in json.load(sys.stdin)]))")
  result = subprocess.run([sys.executable, "-c", script], input=json.dumps(
      [d.to_json() for d in designs]), capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": "12345"})
  assert json.loads(result.stdout) == [d.design_id for d in designs]


def test_optim_and_fit_config():
  design = Design(optimizer="sgd", learning_rate=0.1, epochs=40, weight_decay=1e-3)
  config = optim_config(design)
  assert (config.optimizer, config.learning_rate, config.weight_decay, config.momentum,
          config.schedule, config.epochs) == ("sgd", 0.1, 1e-3, 0.9, "cosine", 40)
  schedule = optim.epoch_schedule(config, steps_per_epoch=3)
  for epoch in (0, 10, 39):
    expected = 0.1 * (1 + math.cos(math.pi * epoch / 40)) / 2
    for step in range(3 * epoch, 3 * epoch + 3):  # constant within an epoch
      assert float(schedule(step)) == pytest.approx(expected, abs=1e-7)  # float32
  fit = fit_config(design, seed=2)
  assert (fit.epochs, fit.seed, fit.eval_every) == (40, 2, 20)


# ----------------------------------------------------------------------------------------------
# Design spaces


def test_builtin_space_sizes_and_choices():
  assert GRAPHGYM_ROUND1.size == 314_928 == 2 * 3 * 3 * 3 * 3 * 3 * 4 * 3 * 3 * 3 * 2 * 3
  assert GRAPHGYM_ROUND2.size == 96
  assert AUTOTRANSFER.size == 7 * 3 * 4 * 2 * 3 * 2 * 4 * 2 * 2 * 3 == 48_384
  assert GRAPHGYM_ROUND1.dims["learning_rate"] == (0.1, 0.01, 0.001)
  assert GRAPHGYM_ROUND1.dims["layers_mp"] == (2, 4, 6, 8)
  assert GRAPHGYM_ROUND1.fixed["conv_variant"] == "release"
  assert GRAPHGYM_ROUND1.fixed["dim_inner"] is None
  assert AUTOTRANSFER.fixed["conv_variant"] == "self"
  assert get_space("graphgym_round2") is GRAPHGYM_ROUND2
  with pytest.raises(ValueError, match="unknown design space 'round3'.*graphgym_round1"):
    get_space("round3")


def test_round2_enumeration_is_the_full_grid():
  designs = list(GRAPHGYM_ROUND2)
  assert len(designs) == 96
  keys = {(d.layers_pre_mp, d.layers_mp, d.layers_post_mp, d.stage_type, d.aggregation)
          for d in designs}
  assert len(keys) == 96
  assert all(d.activation == "prelu" and d.epochs == 400 and d.batch_size == 32 for d in designs)
  for index, design in enumerate(designs):
    assert GRAPHGYM_ROUND2.design_at(index) == design
    assert GRAPHGYM_ROUND2.index_of(design) == index


def test_sampling_is_seeded_distinct_and_in_space():
  first = GRAPHGYM_ROUND1.sample(42, 200)
  assert first == GRAPHGYM_ROUND1.sample(np.random.default_rng(42), 200)
  assert first != GRAPHGYM_ROUND1.sample(43, 200)
  assert len({d.design_id for d in first}) == 200
  assert all(d in GRAPHGYM_ROUND1 for d in first)
  everything = GRAPHGYM_ROUND2.sample(0, 96)
  assert set(everything) == set(GRAPHGYM_ROUND2)
  with pytest.raises(ValueError, match="cannot sample 97 distinct designs"):
    GRAPHGYM_ROUND2.sample(0, 97)


def test_sampling_is_uniform_per_dimension():
  designs = GRAPHGYM_ROUND1.sample(1, 3000)
  for dim, choices in GRAPHGYM_ROUND1.dims.items():
    counts = np.array([sum(getattr(d, dim) == c for d in designs) for c in choices])
    expected = 3000 / len(choices)
    # 5 standard deviations of a binomial count: fails only if sampling is biased.
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected)), (dim, counts)


def test_vary_changes_exactly_one_dimension():
  base = GRAPHGYM_ROUND1.sample(5, 1)[0]
  variants = GRAPHGYM_ROUND1.vary(base, "layers_mp")
  assert [v.layers_mp for v in variants] == [2, 4, 6, 8]
  assert base in variants
  for variant in variants:
    assert {k for k, v in variant.to_dict().items() if base.to_dict()[k] != v} <= {"layers_mp"}
  joint = AUTOTRANSFER.vary(AUTOTRANSFER.design_at(0), "conv")
  assert [(v.conv_type, v.heads) for v in joint] == [
      ("generalconv", 1), ("gcn", 1), ("sage", 1), ("gin", 1), ("gat", 1), ("gat", 2),
      ("gat", 4)]
  with pytest.raises(ValueError, match="unknown dimension 'depth'"):
    GRAPHGYM_ROUND1.vary(base, "depth")


def test_membership_respects_fixed_and_default_fields():
  design = GRAPHGYM_ROUND2.design_at(5)
  assert design in GRAPHGYM_ROUND2
  assert design.replace(activation="relu") not in GRAPHGYM_ROUND2  # fixed to prelu
  assert design.replace(layers_mp=3) not in GRAPHGYM_ROUND2  # not a choice
  assert design.replace(dim_inner=64) not in GRAPHGYM_ROUND2  # fixed to None (budget)
  with pytest.raises(ValueError, match="fixes it to 'prelu'"):
    GRAPHGYM_ROUND2.index_of(design.replace(activation="relu"))


@pytest.mark.parametrize("dims,fixed,message", [
    ({"layers_mp": []}, {}, "choices must be a non-empty list"),
    ({"layers_mp": [2, 2]}, {}, "duplicate choice"),
    ({"layers_mp": [2, 99]}, {}, r"Design\.layers_mp: invalid value 99"),
    ({"layers_mp": [2, 4]}, {"layers_mp": 2}, "set by both 'fixed' and dimension 'layers_mp'"),
    ({"depth": [2, 4]}, {}, "joint dimension whose choices are non-empty mappings"),
    ({"conv": [{"conv_type": "gcn"}, {"conv_type": "gat", "heads": 2}]}, {},
     "every choice must set the same fields"),
    ({"conv": [{"conv_type": "gcn", "heads": 1}], "heads": [1, 2]}, {},
     "field 'heads' is set by both 'conv' and dimension 'heads'"),
    ({"stage_type": ["stack"]}, {"width": 3}, "unknown Design field 'width'"),
])
def test_space_construction_errors(dims, fixed, message):
  with pytest.raises(ValueError, match=message):
    DesignSpace(dims, fixed)


# ----------------------------------------------------------------------------------------------
# load_space


def _write(tmp_path, text, name="space.json"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_load_space_round_trip(tmp_path):
  for space in (GRAPHGYM_ROUND1, GRAPHGYM_ROUND2, AUTOTRANSFER):
    path = str(tmp_path / f"{space.name}.json")
    space.save(path)
    loaded = load_space(path)
    assert loaded.name == space.name and loaded.dims == space.dims
    assert loaded.fixed == space.fixed and loaded.size == space.size
    assert loaded.sample(9, 10) == space.sample(9, 10)


def test_load_space_simple_file(tmp_path):
  path = _write(tmp_path, """{
  "name": "tiny",
  "dims": {"stage_type": ["skipsum", "skipconcat"], "layers_mp": [2, 4, 6]},
  "fixed": {"activation": "prelu", "epochs": 400}
}""")
  space = load_space(path)
  assert space.size == 6 and space.name == "tiny"
  assert all(d.activation == "prelu" and d.epochs == 400 for d in space)


@pytest.mark.parametrize("text,message", [
    ('{"dims": {"layers_mp": [2, 4]},\n "fixed": {"epochs": 10,}}',
     r"line 2: invalid JSON"),
    ('{"dims": {"layers_mp": [2]}, "dims": {"layers_mp": [4]}}', "duplicate key 'dims'"),
    ('["layers_mp"]', "expected a JSON object"),
    ('{"dims": {"layers_mp": [2]},\n "grid": 3}', r"line 2: unknown key\(s\) \['grid'\]"),
    ('{"fixed": {"epochs": 10}}', 'missing "dims"'),
    ('{"dims": [["layers_mp", 2]]}', '"dims" must be an object'),
    ('{"dims": {"layers_mp": [2]}, "fixed": [1]}', '"fixed" must be an object'),
    ('{\n "dims": {\n  "layers_mp": [2, 4],\n  "activation": ["relu", "gelu"]\n }\n}',
     r"line 4: Design\.activation: invalid value 'gelu'"),
    ('{\n "dims": {\n  "depht": [2, 4]\n }\n}', r"line 3: dimension 'depht' is not a Design"),
    ('{\n "dims": {"layers_mp": 4}\n}', "line 2: dimension 'layers_mp': choices must be a"),
    ('{"dims": {"layers_mp": [2]},\n "fixed": {\n  "dropout": 1.5}}',
     r"line 3: fixed Design\.dropout: invalid value 1\.5"),
    ('{"dims": {"layers_mp": [2]},\n "fixed": {"layers_mp": 2}}',
     "set by both 'fixed' and dimension 'layers_mp'"),
])
def test_load_space_errors(tmp_path, text, message):
  path = _write(tmp_path, text)
  with pytest.raises(DataFormatError, match=message) as info:
    load_space(path)
  assert path in str(info.value)


# ----------------------------------------------------------------------------------------------
# Budget matching

# Brief section 3: matched d for F = 1 with batch norm. Rows: (stage, l_mp); columns: l_pre/l_post
# = 1/1, 1/2, 1/3, 2/1, 2/2, 2/3, 3/1, 3/2, 3/3.
BUDGET_TABLE = {
    ("stack", 2): [256, 209, 181, 209, 181, 162, 181, 162, 148],
    ("stack", 4): [181, 162, 148, 162, 148, 137, 148, 137, 128],
    ("stack", 6): [148, 137, 128, 137, 128, 121, 128, 121, 115],
    ("stack", 8): [128, 121, 115, 121, 115, 109, 115, 109, 105],
    ("skipconcat", 2): [209, 105, 80, 181, 101, 78, 162, 97, 76],
    ("skipconcat", 4): [115, 62, 47, 110, 61, 47, 105, 60, 47],
    ("skipconcat", 6): [80, 44, 34, 78, 44, 34, 76, 43, 33],
    ("skipconcat", 8): [61, 34, 26, 60, 34, 26, 59, 34, 26],
}
PRE_POST = [(pre, post) for pre in (1, 2, 3) for post in (1, 2, 3)]


def _brief_formula(design, d, f, c):
  """The brief's closed form for GeneralConv 'release', written out independently."""
  beta = 2 if design.batch_norm else 1
  l_pre, l_mp, l_post = design.layers_pre_mp, design.layers_mp, design.layers_post_mp
  h = (l_mp + 1) * d if design.stage_type == "skipconcat" else d
  if design.stage_type == "skipconcat":
    mp = d * d * l_mp * (l_mp + 1) // 2 + l_mp * beta * d
  else:
    mp = l_mp * (d * d + beta * d)
  pre = f * d + beta * d + (l_pre - 1) * (d * d + beta * d)
  post = (l_post - 1) * (h * h + beta * h) + h * c + c
  return pre + mp + post + (design.activation == "prelu")


def test_reference_budgets():
  assert budget_lib.reference_budget() == 133_121 == 768 + 2 * (65_536 + 512) + 257
  assert budget_lib.reference_budget(DESIGN_V2) == 133_122  # PReLU's shared slope
  assert budget_lib.reference_budget(DESIGN_V1.replace(conv_variant="self")) == 264_193


@pytest.mark.parametrize("stage,layers_mp", list(BUDGET_TABLE))
def test_budget_table(stage, layers_mp):
  budget = budget_lib.reference_budget()
  for stage_alias in ((stage, "skipsum") if stage == "stack" else (stage,)):
    for (pre, post), expected in zip(PRE_POST, BUDGET_TABLE[(stage, layers_mp)]):
      design = Design(stage_type=stage_alias, layers_mp=layers_mp, layers_pre_mp=pre,
                      layers_post_mp=post)
      assert budget_lib.match_dim_inner(design, budget) == expected, (stage_alias, pre, post)
      # PReLU's +1 never changes d.
      assert budget_lib.match_dim_inner(design.replace(activation="prelu"), budget) == expected


def test_budget_named_checks():
  budget = budget_lib.reference_budget()
  match = lambda **kw: budget_lib.match_dim_inner(Design(**kw), budget)
  assert match(layers_pre_mp=1, layers_mp=2, layers_post_mp=1) == 256
  assert match(layers_pre_mp=3, layers_mp=8, layers_post_mp=3) == 105
  assert match(stage_type="skipconcat", layers_pre_mp=1, layers_mp=8, layers_post_mp=3) == 26
  # Synthetic tasks: proxy F = 11.
  assert budget_lib.match_dim_inner(Design(), budget, proxy_dim_in=11) == 254
  assert budget_lib.match_dim_inner(Design(batch_norm=False), budget, proxy_dim_in=11) == 255


def test_real_parameter_count_from_the_results_csv():
  """AmazonComputers (767 -> 10), 2/2/1 skipconcat, no BN: 278,289 with PReLU, 278,288 ReLU."""
  budget = budget_lib.reference_budget()
  for activation, expected in (("prelu", 278_289), ("relu", 278_288)):
    design = Design(stage_type="skipconcat", layers_pre_mp=2, layers_mp=2, layers_post_mp=1,
                    batch_norm=False, activation=activation)
    d = budget_lib.match_dim_inner(design, budget)
    assert budget_lib.param_count(design, 767, 10, d) == expected


def test_closed_form_equals_brief_formula_for_release_conv():
  for design in GRAPHGYM_ROUND1.sample(11, 300):
    for d, f, c in ((1, 1, 1), (37, 11, 1), (256, 1433, 7)):
      assert budget_lib.param_count(design, f, c, d) == _brief_formula(design, d, f, c)


def test_two_phase_search_finds_the_crossing_point():
  budget = budget_lib.reference_budget()
  designs = GRAPHGYM_ROUND1.sample(2, 40) + AUTOTRANSFER.sample(2, 40)
  for design in designs:
    for f in (1, 11):
      count = lambda d: budget_lib.proxy_param_count(design, d, f)
      upper = budget_lib.match_dim_inner(design, budget, f)
      assert count(upper) >= budget and (upper == 1 or count(upper - 1) < budget)
      lower = budget_lib.match_dim_inner(design, budget, f, match_upper=False)
      # GraphGym steps past an exact hit reached by phase 1 when rounding down (its only mode
      # is match_upper), hence >= rather than >.
      assert count(lower) <= budget <= count(lower + 1)
      for start in (1, 40, 1000):
        assert budget_lib.match_dim_inner(design, budget, f, start=start) == upper
  # An exact hit stops there; a tiny budget floors at d = 1 (or fails when rounding down).
  assert budget_lib.match_dim_inner(Design(), 133_121) == 256
  assert budget_lib.match_dim_inner(Design(), 10) == 1
  with pytest.raises(ValueError, match="below the smallest model"):
    budget_lib.match_dim_inner(Design(), 10, match_upper=False)


def test_proxy_dim_in_detection():
  assert budget_lib.proxy_dim_in("smallworld/clustering") == 11
  assert budget_lib.proxy_dim_in("ScaleFree/pagerank") == 11
  assert budget_lib.proxy_dim_in("cora") == 1
  assert budget_lib.proxy_dim_in("cora", synthetic=True) == 11
  assert budget_lib.proxy_dim_in("smallworld", synthetic=False) == 1
  with pytest.raises(ValueError, match="dim_inner is None"):
    budget_lib.param_count(Design(), 1, 1)
