"""GraphGym compute-budget matching: pick `dim_inner` so every design has ~the same size.

GraphGym (run/configs_gen.py + graphgym/utils/comp_budget.py) counts the parameters of a PROXY
model built with input width F and output width 1: F = 1 for datasets with their own features,
F = 11 for the synthetic smallworld/scalefree tasks (10 augmented dims + the constant 1). The
reference budget P* is the proxy count of design_v1 (1 pre / 2 mp / 1 post, stack, batch norm,
ReLU, d = 256): 133,121. A design's `dim_inner` is then the smallest d whose proxy count reaches
P* (`match_upper`), found by GraphGym's two-phase search.

`param_count` is a closed form of the parameter count of `gnnjax.models.graphgym.GraphGymGNN`
(tests check it against the built model). For GeneralConv 'release' it is the brief's formula:

  P = [F d + b d + (l_pre - 1)(d^2 + b d)] + MP + [(l_post - 1)(h^2 + b h) + h C + C] + [1 if prelu]

with b = 2 with batch norm (scale, bias) and 1 without (the core's bias), h = d or
(l_mp + 1) d for skipconcat, MP = l_mp (d^2 + b d) for stack/skipsum and
d^2 l_mp (l_mp + 1) / 2 + l_mp b d for skipconcat.
"""

from __future__ import annotations

import math

from gnnjax.design.design import DESIGN_V1, Design

SYNTHETIC_PREFIXES = ("smallworld", "scalefree")
SYNTHETIC_PROXY_DIM_IN = 11  # 10 sinusoidal augmented dims + the constant node feature
REAL_PROXY_DIM_IN = 1
START_DIM = 256  # GraphGym starts the search from design_v1's dim_inner
_MAX_PHASE1_STEPS = 100


def _norm_or_bias(design: Design, width: int) -> int:
  """BN scale + shift (2 per unit) when batch norm is on, else the core layer's bias."""
  return 2 * width if design.batch_norm else width


def linear_layer_params(design: Design, d_in: int, d_out: int) -> int:
  """A Linear GeneralLayer: weight + (BN or bias)."""
  return d_in * d_out + _norm_or_bias(design, d_out)


def conv_layer_params(design: Design, d_in: int, d_out: int) -> int:
  """A message-passing GeneralLayer: the conv's own parameters + BN (or the conv bias).

  Mirrors the convs `gnnjax.models.graphgym` builds: GeneralConv (W, plus W_self for 'self'),
  GCNConv (W), SAGEConv (W_l with an always-on bias, W_r), GINConv (a biased 2-layer MLP
  d_in -> d_out -> d_out, eps fixed), GATConv (heads x W, two attention vectors per head,
  heads averaged).
  """
  heads = design.heads
  own = {
      "generalconv": (2 if design.conv_variant == "self" else 1) * d_in * d_out,
      "gcn": d_in * d_out,
      "gat": heads * d_in * d_out + 2 * heads * d_out,
  }
  if design.conv_type in own:
    return own[design.conv_type] + _norm_or_bias(design, d_out)
  # SAGE and GIN carry their own biases whether or not batch norm follows.
  bn = 2 * d_out if design.batch_norm else 0
  if design.conv_type == "sage":
    return 2 * d_in * d_out + d_out + bn
  if design.conv_type == "gin":
    return d_in * d_out + d_out + d_out * d_out + d_out + bn
  raise ValueError(f"no parameter count for conv_type {design.conv_type!r}")


def head_input_dim(design: Design, dim_inner: int) -> int:
  """Width h of the stage output (the head's input and hidden width)."""
  if design.stage_type == "skipconcat":
    return (design.layers_mp + 1) * dim_inner
  return dim_inner


def param_count(design: Design, dim_in: int, dim_out: int, dim_inner: int | None = None) -> int:
  """Number of parameters of GraphGymGNN(design) with input width `dim_in` and `dim_out` outputs.

  Args:
    design: the design; its dim_inner is used unless `dim_inner` is given.
    dim_in: node feature width F (the proxy uses 1 or 11).
    dim_out: output width C (the proxy uses 1).
    dim_inner: hidden width d overriding design.dim_inner.

  Returns:
    The exact count of trainable scalars (batch-norm running statistics excluded).
  """
  d = design.dim_inner if dim_inner is None else dim_inner
  if d is None:
    raise ValueError("param_count needs a hidden width: design.dim_inner is None and no "
                     "dim_inner was given")
  pre = linear_layer_params(design, dim_in, d)
  pre += (design.layers_pre_mp - 1) * linear_layer_params(design, d, d)
  mp = 0
  for i in range(design.layers_mp):
    d_in = (i + 1) * d if design.stage_type == "skipconcat" else d
    mp += conv_layer_params(design, d_in, d)
  h = head_input_dim(design, d)
  head = (design.layers_post_mp - 1) * linear_layer_params(design, h, h) + h * dim_out + dim_out
  prelu = 1 if design.activation == "prelu" else 0
  return pre + mp + head + prelu


def proxy_param_count(design: Design, dim_inner: int | None = None,
                      proxy_dim_in: int = REAL_PROXY_DIM_IN) -> int:
  """GraphGym's proxy count: the model with dim_in = `proxy_dim_in` (1 or 11) and dim_out = 1."""
  return param_count(design, proxy_dim_in, 1, dim_inner)


def reference_budget(reference: Design = DESIGN_V1, proxy_dim_in: int = REAL_PROXY_DIM_IN) -> int:
  """P*: the proxy count of the reference design (design_v1: 133,121; design_v2: 133,122)."""
  return proxy_param_count(reference, proxy_dim_in=proxy_dim_in)


def proxy_dim_in(dataset_name: str, synthetic: bool | None = None) -> int:
  """Proxy input width F: 11 for GraphGym's synthetic tasks, 1 otherwise.

  Args:
    dataset_name: e.g. 'smallworld/clustering' or 'cora'; names starting with 'smallworld' or
      'scalefree' (any case) count as synthetic.
    synthetic: overrides the name-based detection when given.
  """
  if synthetic is None:
    synthetic = dataset_name.lower().startswith(SYNTHETIC_PREFIXES)
  return SYNTHETIC_PROXY_DIM_IN if synthetic else REAL_PROXY_DIM_IN


def match_dim_inner(design: Design, budget: int, proxy_dim_in: int = REAL_PROXY_DIM_IN,
                    match_upper: bool = True, start: int = START_DIM) -> int:
  """GraphGym's two-phase search for the hidden width that matches `budget` parameters.

  Phase 1 rescales d <- round(d sqrt(P* / P(d))) until a step moves d by at most 1; phase 2
  walks one unit at a time towards P* and stops where P(d) crosses it or hits it exactly.
  Because P grows with d, the result is the smallest d with P(d) >= P* when `match_upper`
  (GraphGym's setting). Otherwise it is the largest d with P(d) <= P*, except that, as in
  GraphGym's code, an exact hit at the end of phase 1 is stepped past (P(d + 1) = P* then).

  Args:
    design: the design to size (its dim_inner is ignored).
    budget: P*, usually `reference_budget()`.
    proxy_dim_in: F of the proxy model (1 or 11, see `proxy_dim_in`).
    match_upper: round up (True) or down (False) to the budget.
    start: initial d (the result does not depend on it).

  Returns:
    The matched dim_inner (>= 1).

  Raises:
    ValueError: with match_upper=False, if even d = 1 exceeds the budget.
  """
  count = lambda d: proxy_param_count(design, d, proxy_dim_in)
  d = max(int(start), 1)
  params = count(d)
  if params == budget:
    return d
  for _ in range(_MAX_PHASE1_STEPS):
    # Python's round (half to even), as GraphGym.
    step = int(round(d * math.sqrt(budget / params))) - d
    d = max(d + step, 1)
    params = count(d)
    if abs(step) <= 1:
      break
  direction = 1 if params < budget else -1
  while True:
    if d + direction < 1:
      if match_upper:
        return 1
      raise ValueError(f"budget {budget} is below the smallest model ({count(1)} parameters at "
                       f"dim_inner 1) of {design.summary()}")
    d += direction
    params = count(d)
    if params == budget:
      return d
    side = 1 if params < budget else -1
    if side != direction:
      # Crossed P*: keep the side that match_upper asks for.
      overshoot = side > 0 if match_upper else side < 0
      return d - direction if overshoot else d
