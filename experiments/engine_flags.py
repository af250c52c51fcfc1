"""The population engine's policies as command-line flags, shared by every script that trains
populations (`experiments.design_space`, `benchmarks.design_throughput`).

Each policy is an auto|on|off flag (some also adaptive or overlap) named like the keyword of
`gnnjax.design.engine.train_population` it sets; auto leaves the engine's own default, which
depends on the platform (see the `*_by_default` functions in `gnnjax.design.engine`).
"""

from __future__ import annotations

from absl import flags

from gnnjax.design import engine

FLAGS = flags.FLAGS

flags.DEFINE_enum("scan_layers", "auto", ["auto", "on", "off"], "Run the message-passing "
                  "layers of population programs as one lax.scan (auto: on).")
flags.DEFINE_enum("block_aggregation", "auto", ["auto", "on", "off"], "Add/mean aggregation "
                  "and GCN's and GAT's as dense per-graph matmuls where the graphs are small "
                  "(auto: the engine's default, on).")
flags.DEFINE_enum("block_extremes", "auto", ["auto", "on", "off"], "With block aggregation, "
                  "max/min as a fused reduction over the same per-graph blocks instead of a "
                  "scatter of messages (auto: the engine's default, off on CPU, on elsewhere).")
flags.DEFINE_enum("split_aggregations", "auto", ["auto", "on", "off"], "GeneralConv designs "
                  "with max/min aggregation in population programs of their own (auto: the "
                  "engine's default, on).")
flags.DEFINE_enum("split_stages", "auto", ["auto", "on", "off", "adaptive"], "Population "
                  "programs of their own for skipconcat designs, whose stage buffer is "
                  "(layers_mp + 1) x wider: cheaper steps for the others, more compilations; "
                  "adaptive: only where both parts keep engine.MIN_MEMBERS_TO_SPLIT designs "
                  "(auto: on on CPU, adaptive elsewhere).")
flags.DEFINE_enum("split_depths", "auto", ["auto", "on", "off", "adaptive"], "Population "
                  "programs of their own for designs with more than engine.SHALLOW_LAYERS_MP "
                  "message-passing layers, so shallower ones do not run the deep ones' layers "
                  "as identities; adaptive as for --split_stages (auto: on on CPU, adaptive "
                  "elsewhere).")
flags.DEFINE_enum("epoch_scan", "auto", ["auto", "on", "off"], "Population programs that "
                  "aggregate only by per-graph blocks train a whole epoch per jitted call (a "
                  "lax.scan over its steps) instead of one call per step (auto: the engine's "
                  "default, off).")
flags.DEFINE_enum("precompile", "auto", ["auto", "on", "off", "overlap"], "Compile every "
                  "population program before training (on), in background threads while the "
                  "first chunks train (overlap), or as each chunk starts (off) (auto: the "
                  "engine's default, on).")

flags.DEFINE_enum("one_batch_shape", "auto", ["auto", "on", "off", "adaptive"], "Pad every "
                  "batch of a population program to the largest shape its run uses, so its "
                  "train step and predict compile once instead of once per rung of the budget "
                  "ladder; adaptive: only where that adds at most "
                  "engine.ONE_SHAPE_MAX_PADDING of the node + edge slots (auto: adaptive).")

flags.DEFINE_integer("width_multiple", 0, "Round population programs' hidden and head widths "
                     "up to a multiple of this (exact: padded channels stay zero; aligned rows "
                     "for GPU loads and GEMM tiles); 0: the engine's default (1 on CPU, "
                     "engine.ACCELERATOR_WIDTH_MULTIPLE = 4 elsewhere).", lower_bound=0)

POLICY_FLAGS = ("scan_layers", "block_aggregation", "block_extremes", "split_aggregations",
                "split_stages", "split_depths", "epoch_scan", "precompile", "one_batch_shape")


def engine_policies() -> dict[str, bool | str | None]:
  """The policy keywords of `engine.train_population` from the flags (None: its default)."""
  policies = {name: engine.policy_from_flag(getattr(FLAGS, name)) for name in POLICY_FLAGS}
  return {**policies, "width_multiple": FLAGS.width_multiple or None}


def flag_values() -> dict[str, str]:
  """The flags as given (auto|on|off|..., width_multiple 0 for auto), e.g. to record beside
  results."""
  return {**{name: getattr(FLAGS, name) for name in POLICY_FLAGS},
          "width_multiple": FLAGS.width_multiple}
