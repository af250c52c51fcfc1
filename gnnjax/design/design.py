"""`Design`: one point of the GraphGym design space, as a frozen, validated, JSON-able record.

A design fixes every architectural and training choice of a GraphGym GNN (You et al., 2020):
the layer counts of the three stages (pre-message-passing MLP, message passing, post-MP head),
the stage connectivity, the intra-layer choices (batch norm, dropout, activation, aggregation,
conv type) and the training recipe (batch size, optimizer, learning rate, epochs).
`dim_inner=None` means "set the hidden width by compute-budget matching" (see
`gnnjax.design.budget`); `gnnjax.models.graphgym.build_model` resolves it.

Every field is validated (and numbers normalised to int / float) on construction, so two equal
designs serialise to the same canonical JSON and get the same `design_id` in every process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from typing import Any, Callable, Mapping

from gnnjax.training import optim

STAGE_TYPES = ("stack", "skipsum", "skipconcat")
ACTIVATIONS = ("relu", "prelu", "swish", "leaky_relu", "elu")
AGGREGATIONS = ("add", "mean", "max")
CONV_TYPES = ("generalconv", "gcn", "sage", "gin", "gat")
CONV_VARIANTS = ("release", "self")
POOLINGS = ("add", "mean", "max")
OPTIMIZERS = ("adam", "sgd", "adamw")

# ----------------------------------------------------------------------------------------------
# Per-field validators: each returns the canonical value or raises ValueError naming the field.


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], Any]:
  def check(field: str, value: Any) -> Any:
    if not isinstance(value, str) or value not in options:
      raise ValueError(f"Design.{field}: invalid value {value!r}; valid choices: {list(options)}")
    return value
  return check


def _boolean(field: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise ValueError(f"Design.{field}: invalid value {value!r}; valid choices: [True, False]")
  return value


def _integer(low: int, high: int | None = None) -> Callable[[str, Any], int]:
  def check(field: str, value: Any) -> int:
    valid = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if valid and low <= value and (high is None or value <= high):
      return int(value)
    span = f"[{low}, {high}]" if high is not None else f">= {low}"
    raise ValueError(f"Design.{field}: invalid value {value!r}; expected an integer {span}")
  return check


def _real(low: float, high: float | None = None, low_open: bool = False,
          high_open: bool = False) -> Callable[[str, Any], float]:
  def check(field: str, value: Any) -> float:
    valid = (isinstance(value, numbers.Real) and not isinstance(value, bool)
             and math.isfinite(value))
    if valid:
      above = value > low if low_open else value >= low
      below = high is None or (value < high if high_open else value <= high)
      if above and below:
        return float(value)
    left = "(" if low_open else "["
    right = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
    raise ValueError(f"Design.{field}: invalid value {value!r}; expected a number in "
                     f"{left}{low}, {right}")
  return check


def _optional_integer(low: int) -> Callable[[str, Any], int | None]:
  integer = _integer(low)

  def check(field: str, value: Any) -> int | None:
    if value is None:
      return None
    try:
      return integer(field, value)
    except ValueError:
      raise ValueError(f"Design.{field}: invalid value {value!r}; expected None (budget-matched) "
                       f"or an integer >= {low}") from None
  return check


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "layers_pre_mp": _integer(1, 3),
    "layers_mp": _integer(1, 16),
    "layers_post_mp": _integer(1, 3),
    "stage_type": _choice(STAGE_TYPES),
    "batch_norm": _boolean,
    "dropout": _real(0.0, 1.0, high_open=True),
    "activation": _choice(ACTIVATIONS),
    "aggregation": _choice(AGGREGATIONS),
    "conv_type": _choice(CONV_TYPES),
    "conv_variant": _choice(CONV_VARIANTS),
    "heads": _integer(1, 64),
    "dim_inner": _optional_integer(1),
    "graph_pooling": _choice(POOLINGS),
    "l2norm": _boolean,
    "batch_size": _integer(1),
    "optimizer": _choice(OPTIMIZERS),
    "learning_rate": _real(0.0, low_open=True),
    "epochs": _integer(1),
    "weight_decay": _real(0.0),
    "momentum": _real(0.0, 1.0, high_open=True),
}


def validate_field(name: str, value: Any) -> Any:
  """The canonical value of Design field `name` (ints as int, rates as float).

  Raises:
    ValueError: unknown field, or a value outside the field's choices / range.
  """
  try:
    validator = _VALIDATORS[name]
  except KeyError:
    raise ValueError(f"unknown Design field {name!r}; valid fields: {list(_VALIDATORS)}") from None
  return validator(name, value)


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Design:
  """One GraphGym GNN design (architecture + training recipe).

  Attributes:
    layers_pre_mp: Linear GeneralLayers before message passing (1-3).
    layers_mp: message-passing layers (GraphGym uses 2, 4, 6, 8; any of 1-16 accepted).
    layers_post_mp: head layers: (layers_post_mp - 1) GeneralLayers + one output Linear (1-3).
    stage_type: 'stack', 'skipsum' or 'skipconcat'.
    batch_norm: batch norm after every core layer (the core then has no bias).
    dropout: dropout rate after batch norm, before the activation, in [0, 1).
    activation: 'relu', 'prelu' (one slope shared by the whole model), 'swish', 'leaky_relu'
      (slope 0.01), 'elu'.
    aggregation: neighbourhood aggregation of GeneralConv: 'add', 'mean', 'max'. The other conv
      types keep their own aggregation (as in GraphGym / AutoTransfer).
    conv_type: 'generalconv', 'gcn', 'sage', 'gin' or 'gat'.
    conv_variant: GeneralConv variant: 'release' (one weight, GraphGym paper) or 'self' (adds a
      self weight, AutoTransfer). Ignored by the other conv types.
    heads: attention heads (averaged) when conv_type is 'gat'; ignored otherwise.
    dim_inner: hidden width, or None to match the compute budget (see gnnjax.design.budget).
    graph_pooling: readout for graph tasks: 'add', 'mean', 'max'.
    l2norm: L2-normalise node embeddings after message passing.
    batch_size: graphs per mini-batch.
    optimizer: 'adam' / 'sgd' (coupled L2 weight decay, as torch) or 'adamw' (decoupled).
    learning_rate: base learning rate (cosine-annealed per epoch to 0).
    epochs: training epochs (also the cosine horizon).
    weight_decay: weight decay coefficient (GraphGym: 5e-4 on every parameter).
    momentum: SGD momentum.
  """

  layers_pre_mp: int = 1
  layers_mp: int = 2
  layers_post_mp: int = 1
  stage_type: str = "stack"
  batch_norm: bool = True
  dropout: float = 0.0
  activation: str = "relu"
  aggregation: str = "add"
  conv_type: str = "generalconv"
  conv_variant: str = "release"
  heads: int = 1
  dim_inner: int | None = None
  graph_pooling: str = "add"
  l2norm: bool = True
  batch_size: int = 32
  optimizer: str = "adam"
  learning_rate: float = 0.01
  epochs: int = 100
  weight_decay: float = 5e-4
  momentum: float = 0.9

  def __post_init__(self):
    for field in dataclasses.fields(self):
      # Canonical types keep JSON (and so design_id) identical for 1 and 1.0, np.int64(2) and 2.
      object.__setattr__(self, field.name, validate_field(field.name, getattr(self, field.name)))

  # -- serialisation ---------------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "Design":
    """Builds a design from a field -> value mapping; missing fields take their defaults.

    Raises:
      ValueError: unknown keys (listed, with the valid fields) or invalid values.
    """
    if not isinstance(values, Mapping):
      raise ValueError(f"a Design is built from a mapping of fields, got {type(values).__name__}")
    unknown = sorted(set(values) - set(_VALIDATORS))
    if unknown:
      raise ValueError(f"unknown Design field(s) {unknown}; valid fields: {list(_VALIDATORS)}")
    return cls(**values)

  def to_json(self, indent: int | None = None) -> str:
    return json.dumps(self.to_dict(), indent=indent)

  @classmethod
  def from_json(cls, text: str) -> "Design":
    values = json.loads(text)
    return cls.from_dict(values)

  def canonical_json(self) -> str:
    """Sorted-key, whitespace-free JSON: the input of `design_id`."""
    return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

  @property
  def design_id(self) -> str:
    """12 hex digits of SHA-256 of the canonical JSON; equal designs have equal ids everywhere."""
    return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:12]

  def replace(self, **changes: Any) -> "Design":
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)

  def summary(self) -> str:
    """One line for logs, e.g. 'skipsum 1/4/2 generalconv-release add prelu bn d=181 ...'."""
    conv = {"generalconv": f"generalconv-{self.conv_variant}",
            "gat": f"gat-{self.heads}h"}.get(self.conv_type, self.conv_type)
    d = "budget" if self.dim_inner is None else str(self.dim_inner)
    return (f"{self.stage_type} {self.layers_pre_mp}/{self.layers_mp}/{self.layers_post_mp} "
            f"{conv} {self.aggregation} {self.activation} {'bn' if self.batch_norm else 'nobn'} "
            f"drop={self.dropout:g} d={d} {self.optimizer} lr={self.learning_rate:g} "
            f"batch={self.batch_size} epochs={self.epochs}")


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Design))

# GraphGym's run/configs/design/design_v1.yaml: the round-1 base and the compute-budget reference.
DESIGN_V1 = Design(dim_inner=256, batch_size=128)
# design_v2.yaml: the round-2 base (condensed space winners; same layers, hence PReLU's +1 budget).
DESIGN_V2 = Design(dim_inner=256, activation="prelu", batch_size=32, epochs=400)


def optim_config(design: Design) -> optim.OptimConfig:
  """The GraphGym optimizer of a design: coupled L2 (adam/sgd), cosine per epoch to 0."""
  return optim.OptimConfig(optimizer=design.optimizer, learning_rate=design.learning_rate,
                           weight_decay=design.weight_decay, momentum=design.momentum,
                           schedule="cosine", epochs=design.epochs)


def fit_config(design: Design, seed: int = 0, eval_every: int = 20, **overrides: Any):
  """A `gnnjax.training.loop.FitConfig` running `design.epochs` epochs, evaluating as GraphGym
  (first epoch, every `eval_every` epochs, last epoch); `overrides` set other FitConfig fields."""
  from gnnjax.training import loop  # deferred: the loop pulls in orbax, designs should not
  return loop.FitConfig(epochs=design.epochs, eval_every=eval_every, seed=seed, **overrides)
