"""Design spaces: an ordered set of dimensions with choices, plus fixed settings.

A dimension is either

* a Design field with a list of values, e.g. `"layers_mp": [2, 4, 6, 8]`, or
* a joint dimension whose name is not a field and whose choices are dicts over the same
  fields, e.g. `"conv": [{"conv_type": "gcn", "heads": 1}, {"conv_type": "gat", "heads": 4}]`,
  for choices that only make sense together (GAT heads), so that no two choices build the same
  model.

Fields in neither the dimensions nor `fixed` keep the Design defaults. Designs are indexed in
mixed radix with the last dimension varying fastest (itertools.product order), so uniform
sampling without replacement is sampling distinct indices.

Built-in spaces: GRAPHGYM_ROUND1 (the 12 dimensions of You et al. 2020, 314,928 designs),
GRAPHGYM_ROUND2 (their condensed space, 96 designs) and AUTOTRANSFER (Table 3 of Cao et al.
2023, 48,384 designs). `load_space` reads a user space from JSON:

    {"name": "mine",
     "dims": {"stage_type": ["skipsum", "skipconcat"], "layers_mp": [2, 4]},
     "fixed": {"activation": "prelu", "epochs": 400}}
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from gnnjax.data.dataset import DataFormatError
from gnnjax.design.design import FIELDS, Design, validate_field

Assignment = dict  # field name -> canonical value


def _parse_dim(name: str, choices: Any) -> tuple[Assignment, ...]:
  """Validates one dimension; returns one field assignment per choice."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"dimension names must be non-empty strings, got {name!r}")
  if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or not choices:
    raise ValueError(f"dimension {name!r}: choices must be a non-empty list, got {choices!r}")
  if name in FIELDS:
    assignments = []
    for value in choices:
      if isinstance(value, Mapping):
        raise ValueError(f"dimension {name!r} is a Design field, so its choices are values, "
                         f"not mappings (got {value!r})")
      assignments.append({name: validate_field(name, value)})
  else:
    assignments = [_parse_joint_choice(name, choice) for choice in choices]
    keys = set(assignments[0])
    for choice in assignments[1:]:
      if set(choice) != keys:
        raise ValueError(f"joint dimension {name!r}: every choice must set the same fields; "
                         f"{sorted(keys)} vs {sorted(choice)}")
  seen = set()
  for assignment in assignments:
    key = json.dumps(assignment, sort_keys=True)
    if key in seen:
      raise ValueError(f"dimension {name!r}: duplicate choice {assignment}")
    seen.add(key)
  return tuple(assignments)


def _parse_joint_choice(name: str, choice: Any) -> Assignment:
  if not isinstance(choice, Mapping) or not choice:
    raise ValueError(f"dimension {name!r} is not a Design field, so it must be a joint dimension "
                     f"whose choices are non-empty mappings of Design fields; got {choice!r} "
                     f"(Design fields: {list(FIELDS)})")
  return {field: validate_field(field, value) for field, value in choice.items()}


def _parse_fixed(fixed: Mapping[str, Any]) -> Assignment:
  if not isinstance(fixed, Mapping):
    raise ValueError(f"fixed settings must be a mapping of Design fields, got {fixed!r}")
  return {field: validate_field(field, value) for field, value in fixed.items()}


def _check_disjoint(dims: Mapping[str, tuple[Assignment, ...]], fixed: Assignment) -> None:
  """Every field is set by at most one dimension or by `fixed`."""
  owner = {field: "fixed" for field in fixed}
  for name, assignments in dims.items():
    for field in assignments[0]:
      if field in owner:
        raise ValueError(f"field {field!r} is set by both {owner[field]!r} and dimension "
                         f"{name!r}")
      owner[field] = name


class DesignSpace:
  """An ordered mapping dimension -> choices, plus fixed settings.

  Attributes:
    name: a label for logs and files.
    dims: dimension name -> tuple of choices (values, or dicts for joint dimensions).
    fixed: field -> value shared by every design of the space.
  """

  def __init__(self, dims: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None = None,
               name: str = "custom"):
    if not isinstance(dims, Mapping):
      raise ValueError(f"dims must be a mapping of dimension -> choices, got {dims!r}")
    self.name = name
    self._assignments = {dim: _parse_dim(dim, choices) for dim, choices in dims.items()}
    self.fixed = _parse_fixed(fixed or {})
    _check_disjoint(self._assignments, self.fixed)
    self.dims = {dim: tuple(self._choice_value(dim, a) for a in assignments)
                 for dim, assignments in self._assignments.items()}
    self._radix = [len(a) for a in self._assignments.values()]
    self.design_at(0)  # surfaces a fixed/choice combination that Design rejects

  def _choice_value(self, dim: str, assignment: Assignment) -> Any:
    return assignment[dim] if dim in FIELDS else dict(assignment)

  @property
  def dim_names(self) -> tuple[str, ...]:
    return tuple(self._assignments)

  @property
  def size(self) -> int:
    """Number of designs (product of the choice counts)."""
    return math.prod(self._radix)

  def __len__(self) -> int:
    return self.size

  def __repr__(self) -> str:
    dims = ", ".join(f"{d}: {len(c)}" for d, c in self.dims.items())
    return f"DesignSpace({self.name!r}, {self.size} designs; {dims})"

  # -- indexing --------------------------------------------------------------------------------

  def _design(self, choice_indices: Sequence[int]) -> Design:
    values = dict(self.fixed)
    for assignments, i in zip(self._assignments.values(), choice_indices):
      values.update(assignments[i])
    return Design(**values)

  def _digits(self, index: int) -> list[int]:
    digits = []
    for radix in reversed(self._radix):
      index, digit = divmod(index, radix)
      digits.append(digit)
    return digits[::-1]

  def design_at(self, index: int) -> Design:
    """The design at `index` in [0, size), last dimension fastest."""
    index = int(index)
    if not 0 <= index < self.size:
      raise IndexError(f"design index {index} out of range [0, {self.size})")
    return self._design(self._digits(index))

  def choice_indices(self, design: Design) -> list[int]:
    """Per dimension, the index of the design's choice.

    Raises:
      ValueError: the design is not in the space (naming the first mismatch).
    """
    values = design.to_dict()
    for field, value in self.fixed.items():
      if values[field] != value:
        raise ValueError(f"design has {field}={values[field]!r}, but space {self.name!r} fixes "
                         f"it to {value!r}")
    indices = []
    for dim, assignments in self._assignments.items():
      matches = [i for i, a in enumerate(assignments)
                 if all(values[field] == value for field, value in a.items())]
      if not matches:
        current = {field: values[field] for field in assignments[0]}
        raise ValueError(f"design has {current} for dimension {dim!r}, which is not among its "
                         f"choices {list(self.dims[dim])}")
      indices.append(matches[0])
    return indices

  def index_of(self, design: Design) -> int:
    index = 0
    for radix, digit in zip(self._radix, self.choice_indices(design)):
      index = index * radix + digit
    return index

  def __contains__(self, design: object) -> bool:
    if not isinstance(design, Design):
      return False
    try:
      self.choice_indices(design)
    except ValueError:
      return False
    # Fields outside dims and fixed must keep their defaults, or the design is a different one.
    return self.design_at(self.index_of(design)) == design

  def __iter__(self) -> Iterator[Design]:
    for choice_indices in itertools.product(*(range(r) for r in self._radix)):
      yield self._design(choice_indices)

  # -- sampling --------------------------------------------------------------------------------

  def sample(self, rng: np.random.Generator | int, n: int) -> list[Design]:
    """`n` distinct designs drawn uniformly without replacement.

    Args:
      rng: a NumPy Generator, or an int seed (same seed -> same designs, in the same order).
      n: how many designs, at most `size`.
    """
    if n < 0 or n > self.size:
      raise ValueError(f"cannot sample {n} distinct designs from space {self.name!r} of size "
                       f"{self.size}")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    indices = rng.choice(self.size, size=n, replace=False)
    return [self.design_at(i) for i in indices]

  def vary(self, design: Design, dim: str) -> list[Design]:
    """The design with dimension `dim` set to each of its choices in turn (everything else held),
    the unit of GraphGym's controlled random search."""
    if dim not in self._assignments:
      raise ValueError(f"unknown dimension {dim!r}; space {self.name!r} has {list(self.dims)}")
    return [design.replace(**assignment) for assignment in self._assignments[dim]]

  # -- serialisation ---------------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return {"name": self.name, "dims": {d: list(c) for d, c in self.dims.items()},
            "fixed": dict(self.fixed)}

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump(self.to_dict(), f, indent=2)
      f.write("\n")


# ----------------------------------------------------------------------------------------------
# Loading a user space from JSON.

_TOP_LEVEL_KEYS = ("name", "description", "dims", "fixed")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  seen: dict[str, Any] = {}
  for key, value in pairs:
    if key in seen:
      raise ValueError(f"duplicate key {key!r}")
    seen[key] = value
  return seen


def _line_of(text: str, key: str) -> int | None:
  """1-based line of the first occurrence of `"key"` (to point at the offending entry)."""
  needle = json.dumps(key)
  for number, line in enumerate(text.splitlines(), start=1):
    if needle in line:
      return number
  return None


def _where(path: str, text: str, key: str) -> str:
  line = _line_of(text, key)
  return f"{path}, line {line}" if line else str(path)


def load_space(path: str) -> DesignSpace:
  """Reads a design space from a JSON file (format in the module docstring).

  Raises:
    DataFormatError: invalid JSON (with the line), duplicate or unknown keys, a missing or
      malformed "dims", or a dimension / fixed value that Design rejects (with its line).
  """
  with open(path) as f:
    text = f.read()
  try:
    config = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
  except json.JSONDecodeError as e:
    raise DataFormatError(f"{path}, line {e.lineno}: invalid JSON ({e.msg}); expected an object "
                          'with "dims" and optional "fixed" and "name"') from None
  except ValueError as e:  # duplicate key
    raise DataFormatError(f"{path}: {e}; every key may appear once per object") from None
  if not isinstance(config, dict):
    raise DataFormatError(f"{path}: expected a JSON object with \"dims\", got "
                          f"{type(config).__name__}")
  unknown = sorted(set(config) - set(_TOP_LEVEL_KEYS))
  if unknown:
    raise DataFormatError(f"{_where(path, text, unknown[0])}: unknown key(s) {unknown}; "
                          f"expected {list(_TOP_LEVEL_KEYS)}")
  if "dims" not in config:
    raise DataFormatError(f"{path}: missing \"dims\" (an object of dimension -> list of choices)")
  dims, fixed = config["dims"], config.get("fixed", {})
  for key, value, kind in (("dims", dims, "dimension -> list of choices"),
                           ("fixed", fixed, "field -> value")):
    if not isinstance(value, dict):
      raise DataFormatError(f"{_where(path, text, key)}: \"{key}\" must be an object of {kind}, "
                            f"got {value!r}")
  for dim, choices in dims.items():
    try:
      _parse_dim(dim, choices)
    except ValueError as e:
      raise DataFormatError(f"{_where(path, text, dim)}: {e}") from None
  for field, value in fixed.items():
    try:
      _parse_fixed({field: value})
    except ValueError as e:
      raise DataFormatError(f"{_where(path, text, field)}: fixed {e}") from None
  try:
    return DesignSpace(dims, fixed, name=str(config.get("name", path)))
  except ValueError as e:
    raise DataFormatError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Built-in spaces.

# You et al. 2020, run/grids/design/round1.txt, dimensions in GraphGym's sampling order
# (run/configs_gen.py); fixed settings from design_v1.yaml. dim_inner is budget-matched.
GRAPHGYM_ROUND1 = DesignSpace(
    name="graphgym_round1",
    dims={
        "activation": ["relu", "prelu", "swish"],
        "batch_norm": [True, False],
        "dropout": [0.0, 0.3, 0.6],
        "aggregation": ["add", "mean", "max"],
        "layers_mp": [2, 4, 6, 8],
        "layers_pre_mp": [1, 2, 3],
        "layers_post_mp": [1, 2, 3],
        "stage_type": ["stack", "skipsum", "skipconcat"],
        "batch_size": [16, 32, 64],
        "learning_rate": [0.1, 0.01, 0.001],
        "optimizer": ["adam", "sgd"],
        "epochs": [100, 200, 400],
    },
    fixed={"conv_type": "generalconv", "conv_variant": "release", "heads": 1, "dim_inner": None,
           "graph_pooling": "add", "l2norm": True, "weight_decay": 5e-4, "momentum": 0.9},
)

# The condensed round-2 space (round2.txt) with design_v2.yaml's fixed winners.
GRAPHGYM_ROUND2 = DesignSpace(
    name="graphgym_round2",
    dims={
        "layers_pre_mp": [1, 2],
        "layers_mp": [2, 4, 6, 8],
        "layers_post_mp": [2, 3],
        "stage_type": ["skipsum", "skipconcat"],
        "aggregation": ["add", "mean", "max"],
    },
    fixed={"conv_type": "generalconv", "conv_variant": "release", "heads": 1, "dim_inner": None,
           "batch_norm": True, "dropout": 0.0, "activation": "prelu", "graph_pooling": "add",
           "l2norm": True, "batch_size": 32, "optimizer": "adam", "learning_rate": 0.01,
           "epochs": 400, "weight_decay": 5e-4, "momentum": 0.9},
)

# Cao et al. 2023 (AutoTransfer), Table 3. GAT heads are folded into one joint "conv" dimension
# (gatconv / 2-head / 4-head in their code), so no two designs build the same model. The trials
# use GraphGym HEAD's GeneralConv with a self weight and run/configs/example.yaml's fixed values.
AUTOTRANSFER = DesignSpace(
    name="autotransfer",
    dims={
        "conv": [{"conv_type": "generalconv", "heads": 1}, {"conv_type": "gcn", "heads": 1},
                 {"conv_type": "sage", "heads": 1}, {"conv_type": "gin", "heads": 1},
                 {"conv_type": "gat", "heads": 1}, {"conv_type": "gat", "heads": 2},
                 {"conv_type": "gat", "heads": 4}],
        "aggregation": ["add", "mean", "max"],
        "activation": ["relu", "prelu", "leaky_relu", "elu"],
        "dim_inner": [64, 256],
        "stage_type": ["stack", "skipsum", "skipconcat"],
        "layers_pre_mp": [1, 2],
        "layers_mp": [2, 4, 6, 8],
        "layers_post_mp": [2, 3],
        "learning_rate": [0.1, 0.001],
        "epochs": [200, 800, 1600],
    },
    fixed={"conv_variant": "self", "batch_norm": True, "dropout": 0.0, "graph_pooling": "add",
           "l2norm": True, "batch_size": 32, "optimizer": "adam", "weight_decay": 5e-4,
           "momentum": 0.9},
)

SPACES: dict[str, DesignSpace] = {
    space.name: space for space in (GRAPHGYM_ROUND1, GRAPHGYM_ROUND2, AUTOTRANSFER)}


def get_space(name: str) -> DesignSpace:
  """A built-in space by name."""
  try:
    return SPACES[name]
  except KeyError:
    raise ValueError(f"unknown design space {name!r}; choose from {sorted(SPACES)}") from None


def pin_dimensions(space: DesignSpace, pairs: Sequence[str]) -> DesignSpace:
  """`space` with each 'field=value' of `pairs` removed from its dimensions and fixed.

  A pinned value need not be one of the dimension's choices (e.g. `epochs=50` in AutoTransfer's
  space, whose epochs are 200-1600): the result is a smaller space of its own, named after the
  pins, whose designs are exactly those of the pinned settings.

  Args:
    space: the space to pin.
    pairs: 'field=value' strings; values are JSON (true, 0.01, "relu") or plain strings.
  """
  if not pairs:
    return space
  pinned = {}
  for pair in pairs:
    field, sep, text = pair.partition("=")
    if not sep or not field:
      raise ValueError(f"pins are field=value pairs, got {pair!r}")
    try:
      pinned[field] = json.loads(text)
    except ValueError:
      pinned[field] = text
  dims = {name: choices for name, choices in space.dims.items() if name not in pinned}
  fixed = {**space.fixed, **pinned}
  label = ",".join(f"{k}={v}" for k, v in pinned.items())
  return DesignSpace(dims, fixed, name=f"{space.name}[{label}]")


def resolve_space(name_or_path: str, pins: Sequence[str] = ()) -> DesignSpace:
  """A built-in space by name, else a space JSON file, with `pins` applied (`pin_dimensions`).

  Experiments that must agree on a space (the one that fills the bank and the one that searches
  it) resolve the same --space and --fix through this function.
  """
  if name_or_path not in SPACES and os.path.exists(name_or_path):
    space = load_space(name_or_path)
  else:
    space = get_space(name_or_path)
  return pin_dimensions(space, pins)
