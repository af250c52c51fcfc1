r"""The population engine's per-graph block aggregation, two ways, on one batch of a GraphGym task.

    python -m benchmarks.block_aggregation --data_dir=../shared/datasets --out_dir=benchmarks

A "step" is what one message-passing layer of K population members costs in training: each
member's own linear layer [N, D] -> [N, D], the sum over incoming edges, a scalar loss, and the
gradient with respect to every member's weights and input, under `jax.vmap` over the members
(as in `gnnjax.design.engine`). The aggregation runs three ways:

- `shared`: `gnnjax.nn.blocks.block_sum`, what the engine runs: gathers to and from the
  blocks around an einsum against the shared [G, M, M] adjacency, which vmap batches with the
  member axis as a free dimension of the matmul.
- `member_batched`: the same gathers, but the matmul keeps the member axis a batch dimension:
  under vmap, a `jax.custom_batching.custom_vmap` rule broadcasts the adjacency to
  [K, G, M, M] and runs one [K * G]-batched matmul (a `jax.custom_vjp` makes the backward pass
  the same matmul against the transposed adjacency). This is the A/B of the hypothesis, from an
  H200 profile, that XLA's transposes of the [K, G, M, D] activations around the shared-
  adjacency matmul are a large part of a population step; it is not in the library, because
  it measured no faster (RESULTS.md, 2026-12-02).
- `scatter`: gather the messages and segment-sum them onto the receivers (no blocks).

With --aggregation=max the aggregation is the max over incoming edges, three ways:

- `pallas` (GPUs only): `gnnjax.nn.blocks.block_max` with the Pallas kernels of
  `gnnjax.nn.block_kernels`, what the engine runs on CUDA GPUs
  (`engine.block_extremes_by_default`, kernel 'auto').
- `blocks`: the same with kernel='xla': one fused XLA reduction over the blocks per pass, what
  the engine runs on other accelerators (and ran on GPUs before the kernels).
- `scatter`: gather the messages and segment-max them onto the receivers.

Every variant's output and gradients are checked against `scatter` before they are timed.
Ratios (sum) are shared / member_batched (above 1: the member-batched matmul is faster);
(max) scatter / blocks and blocks / pallas (above 1: the second is faster).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from gnnjax import batching
from gnnjax import data as data_lib
from gnnjax import graph as graph_lib
from gnnjax.nn import aggregate as agg_lib
from gnnjax.nn import blocks as blocks_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Data root with graphgym_synthetic/ (default: the "
                    "generated task, no files needed).")
flags.DEFINE_string("task", "smallworld/clustering/onehot", "Graph task whose first batch is "
                    "used (with --data_dir; otherwise generated/<task>).")
flags.DEFINE_integer("batch_size", 32, "Graphs per batch (GraphGym's protocol: 32).")
flags.DEFINE_enum("aggregation", "sum", ["sum", "max"], "Aggregation compared: the sum "
                  "(blocks with a shared or member-batched matmul, scatter) or the max "
                  "(blocks, scatter); results/block_aggregation[_max].json.")
flags.DEFINE_list("members", ["8", "32"], "Population sizes K.")
flags.DEFINE_list("widths", ["64", "256"], "Hidden widths D.")
flags.DEFINE_integer("iters", 20, "Timed iterations per measurement (median reported).")
flags.DEFINE_string("out_dir", "benchmarks", "Where results/block_aggregation.json and "
                    "RESULTS.md go.")


def first_batch():
  name = FLAGS.task if FLAGS.data_dir else f"generated/{FLAGS.task}"
  dataset = data_lib.load_dataset(name, FLAGS.data_dir)
  packed = batching.PackedGraphs.from_graphs(dataset.graphs)
  batch = next(batching.iterate_batches(packed, FLAGS.batch_size))
  max_nodes = int(np.max(packed.n_node))
  return batch, max_nodes


def _plain_matmul(adjacency, values):
  return jnp.einsum("gij,gjd->gid", adjacency, values, precision=jax.lax.Precision.HIGHEST)


@jax.custom_batching.custom_vmap
def _member_batched_matmul(adjacency, values):
  return _plain_matmul(adjacency, values)


@_member_batched_matmul.def_vmap
def _member_batched_rule(axis_size, in_batched, adjacency, values):
  # Broadcast whichever operand is unbatched, fold the vmapped axis into the graph axis, and
  # recurse, so that an enclosing vmap gets the same rule.
  adjacency_batched, values_batched = in_batched
  if not adjacency_batched:
    adjacency = jnp.broadcast_to(adjacency, (axis_size,) + adjacency.shape)
  if not values_batched:
    values = jnp.broadcast_to(values, (axis_size,) + values.shape)
  k, g, m = adjacency.shape[:3]
  out = _member_batched_matmul(adjacency.reshape(k * g, m, m),
                               values.reshape((k * g,) + values.shape[2:]))
  return out.reshape(values.shape[:3] + out.shape[2:]), True


@jax.custom_vjp
def member_batched_matmul(adjacency, values):
  """[G, M, M] x [G, M, D] -> [G, M, D]; under vmap the member axis is a batch dimension."""
  return _member_batched_matmul(adjacency, values)


member_batched_matmul.defvjp(
    lambda adjacency, values: (_member_batched_matmul(adjacency, values), adjacency),
    lambda adjacency, cotangent: (
        None, _member_batched_matmul(jnp.swapaxes(adjacency, -1, -2), cotangent)))


def member_batched_block_sum(blocks, values):
  summed = member_batched_matmul(blocks.adjacency, blocks_lib.to_blocks(blocks, values))
  return blocks_lib.from_blocks(blocks, summed)


def scatter_sum(graph, values):
  return agg_lib.segment_sum(values[graph.senders], graph.receivers, values.shape[0],
                             graph_lib.edge_mask(graph))


def make_step(aggregate, graph, max_nodes):
  """jit(vmap over members of grad of one layer's loss) for one aggregation variant."""

  def member_loss(weight, x):
    blocks = blocks_lib.graph_blocks(graph, max_nodes)  # unbatched: built once
    h = jnp.matmul(x, weight, precision=jax.lax.Precision.HIGHEST)  # no TF32: exact checks
    out = aggregate(graph, blocks, h)
    return jnp.sum(jnp.tanh(out))

  grads = jax.vmap(jax.value_and_grad(member_loss, argnums=(0, 1)))
  return jax.jit(grads)


def scatter_max(graph, values):
  return agg_lib.segment_max(values[graph.senders], graph.receivers, values.shape[0],
                             graph_lib.edge_mask(graph))


VARIANTS = {
    "sum": {
        "member_batched": lambda graph, blocks, h: member_batched_block_sum(blocks, h),
        "shared": lambda graph, blocks, h: blocks_lib.block_sum(blocks, h),
        "scatter": lambda graph, blocks, h: scatter_sum(graph, h),
    },
    "max": {
        "pallas": lambda graph, blocks, h: blocks_lib.block_max(blocks, h, kernel="pallas"),
        "blocks": lambda graph, blocks, h: blocks_lib.block_max(blocks, h, kernel="xla"),
        "scatter": lambda graph, blocks, h: scatter_max(graph, h),
    },
}
# The ratios reported per aggregation: (numerator, denominator) variants.
RATIOS = {"sum": [("shared", "member_batched")],
          "max": [("scatter", "blocks"), ("blocks", "pallas")]}


def variants_here() -> dict:
  """The variants of --aggregation this backend runs (the Pallas kernels compile for GPUs)."""
  variants = dict(VARIANTS[FLAGS.aggregation])
  if jax.default_backend() != "gpu":
    variants.pop("pallas", None)
  return variants


def measure(graph, max_nodes: int, k: int, d: int) -> dict[str, float]:
  """Median ms per step of every variant at K members and width D, after checking that each
  gives the scatter's outputs and gradients."""
  n = int(graph_lib.num_nodes(graph))
  rng = np.random.default_rng(k * 1000 + d)
  weight = jnp.asarray(rng.normal(size=(k, d, d)) / np.sqrt(d), jnp.float32)
  x = jnp.asarray(rng.normal(size=(k, n, d)), jnp.float32)
  times, results = {}, {}
  for name, aggregate in variants_here().items():
    step = make_step(aggregate, graph, max_nodes)
    results[name] = jax.block_until_ready(step(weight, x))
    times[name] = common.time_call(lambda: step(weight, x), jax.block_until_ready,
                                   iters=FLAGS.iters)
  for name in set(results) - {"scatter"}:  # same function, same gradients
    for got, want in zip(jax.tree.leaves(results[name]), jax.tree.leaves(results["scatter"])):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-3)
  return times


def main(argv):
  del argv
  graph, max_nodes = first_batch()
  graph = jax.device_put(graph)
  n = int(graph_lib.num_nodes(graph))
  print(f"device: {common.device_description()}")
  print(f"batch: {int(np.asarray(graph.n_node).shape[0])} graph slots, {n} nodes, "
        f"{int(graph.senders.shape[0])} edges, blocks of M = {max_nodes} nodes")
  variants = list(variants_here())
  ratios = [(top, bottom) for top, bottom in RATIOS[FLAGS.aggregation]
            if top in variants and bottom in variants]
  print(f"{'K':>4} {'D':>5} " + " ".join(f"{v:>15}" for v in variants)
        + "".join(f" {top + '/' + bottom:>16}" for top, bottom in ratios))
  rows, metrics, stopped = [], {}, ""
  configs = list(itertools.product([int(k) for k in FLAGS.members],
                                   [int(d) for d in FLAGS.widths]))
  for k, d in configs:
    try:
      times = measure(graph, max_nodes, k, d)
    except KeyboardInterrupt:  # a time-limited job (timeout -s INT) keeps what it measured
      stopped = f" Interrupted at K = {k}, D = {d}: {len(rows)} of {len(configs)} measured."
      print(stopped.strip())
      break
    values = [times[top] / times[bottom] for top, bottom in ratios]
    print(f"{k:>4} {d:>5} " + " ".join(f"{times[v]:>12.3f} ms" for v in variants)
          + "".join(f" {r:>15.2f}x" for r in values))
    metrics[f"K{k}_D{d}"] = {**{f"{v}_ms": times[v] for v in variants},
                             **{f"{t}_over_{b}": r for (t, b), r in zip(ratios, values)}}
    rows.append(f"| {k} | {d} | " + " | ".join(f"{times[v]:.3f}" for v in variants)
                + "".join(f" | {r:.2f}x" for r in values) + " |")
  table = ("| K | D | " + " | ".join(f"{v} ms" for v in variants)
           + "".join(f" | {t} / {b}" for t, b in ratios) + " |\n"
           + "|---" * (len(variants) + len(ratios) + 2) + "|\n" + "\n".join(rows))
  notes = (f"Task {FLAGS.task}, first batch of {FLAGS.batch_size} graphs ({n} padded nodes, "
           f"M = {max_nodes}); one layer's forward and backward per step, vmapped over K "
           f"members; median of {FLAGS.iters} steps; aggregation {FLAGS.aggregation}.{stopped}")
  name = "block_aggregation" + ("_max" if FLAGS.aggregation == "max" else "")
  path = common.write_results(name, metrics, {}, FLAGS.out_dir, table, notes)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
