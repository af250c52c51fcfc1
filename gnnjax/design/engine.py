"""The population engine: many (design, seed) trials of one task trained as one program.

    results = train_population(designs, dataset, seeds=[1, 2, 3])   # one TrialResult each

Approach: a superset program (`gnnjax.models.superset`). The designs of a group share one
parameter layout padded to the group's maxima (widths with zero channels, extra layers as the
identity, choices selected per design with `jnp.where`), and one jitted step, vmapped over the
population axis, trains them all. Per member, the step reads its own arrays: the design's spec,
optimizer code, learning rate, weight decay, momentum and epoch count, its PRNG key and which
seed's batch stream it follows. A member is frozen (its update dropped with `where`) once past
its own epoch count or once its epoch loss is non-finite; nothing in the step reduces over the
population axis, so a member never affects another.

Exactness. A member reproduces `gnnjax.design.reference.train_design` of the same (design, seed)
up to float reassociation: the same initial parameters (the design's own GraphGymGNN.init
values, drawn inside the program with loop.init_state's keys), the same batches (the reference
pipelines of each seed, re-padded to a common budget: padding never reaches a real value), the
same dropout masks (flax's per-layer keys, the design's own draw read out of a flat one), and
optax's arithmetic with per-member hyperparameters (Adam and AdamW share one moment state;
SGD's momentum trace exists only when some member uses SGD). Evaluation mirrors `loop.evaluate`
(host metrics on the same rows) at the same epochs, and divergence is detected as loop.fit does
(non-finite mean loss of an epoch; the host reads the losses back only at evaluations, and
takes the first non-finite epoch among those read). Caveat: a gradient that is zero only by
symmetry (e.g. a batch-norm shift under max pooling and a batch-normalised head) is rounding
noise, which Adam scales to full steps; such trajectories differ between any two programs,
including two runs of the reference on a GPU (scatter-adds are not ordered there).

Grouping and compilation. Members are grouped by (conv type, GAT heads, batch size): the conv
type decides which modules exist and the batch size the steps per epoch. Designs with max/min
aggregation also form groups of their own (`split_aggregations_by_default`): a member computes
every aggregation present in its program, and add and mean, on small graphs, are one matmul
against per-graph dense blocks (`block_nodes_for`, `gnnjax.nn.blocks`) where max/min are a
masked reduction over the same blocks on accelerators (`block_extremes_by_default`) or a
scatter of [E, D] messages on CPUs; programs that
aggregate by blocks only pad every batch to one shape, and can train an epoch per jitted call
(`epoch_scan`, a `lax.scan` over its steps). On CPU, skipconcat designs,
whose stage buffer is (l_mp + 1) d wide, form programs of their own too
(`split_stages_by_default`), and so do designs deeper than SHALLOW_LAYERS_MP message-passing
layers (`split_depths_by_default`); on accelerators both splits happen only where both parts
keep MIN_MEMBERS_TO_SPLIT members (a step's fixed cost would otherwise eat the saving). The
message-passing layers of a program run as one `lax.scan`
(`scan_layers_by_default`; `superset.Layout.scan_mp`): fewer ops to compile (measured on CPU
and GPU in those functions' docstrings). A group has one layout and one padded chunk size, so
it compiles once (per batch shape of the budget ladder: a handful, or one where padding every
batch to the largest costs little, `one_batch_shape_by_default`) however many designs and
chunks it has; batch sizes that give the same batches (`stream_batch_size`: full-batch node
tasks) share a group. Programs compile up front in threads, `precompile_window` at a time,
and a group's programs are released after its last chunk (XLA:CPU's memory mappings). On
GPUs they compile without XLA's Triton GEMM emitter (`compiler_options_for`: half the
compilation time at the same step times). Chunks are filled in order of (epochs, width), so a
chunk's members finish at similar epochs.

Devices. The population axis of every per-member array is sharded over the devices
(`NamedSharding(make_mesh((n,), ('pop',)), P('pop'))`); batches are replicated. A chunk is padded
to a multiple of the device count with frozen copies of its last member, dropped afterwards.
On several devices the programs are `shard_map`ped over that axis (`_jit_per_device`): members
never interact, so each device runs its own as a one-device program, with no collectives.
Nothing changes between 1 CPU, 1 GPU and 8 GPUs.

Checkpoints and streaming. `iter_population` yields each chunk's results when the chunk ends
(`train_population` collects them in input order). With `checkpoint_dir`, a chunk saves its
state every `checkpoint_every` epochs (`gnnjax.design.checkpoints`: orbax, atomic), and a
later call asked for all of a saved chunk's trials rebuilds that chunk with its saved program
and continues it from the last save with the same batches and dropout keys, so its results are
those of an uninterrupted run (bit for bit on CPU).

Memory. `estimate_member_bytes` is an upper bound of a member's bytes in a training step (3-7x
above XLA's memory analysis). If the whole group fits MEMORY_FRACTION of the smallest device's
limit by it, the group is one chunk (on CPU, whose devices report no limit, half the host's
RAM is the limit: a group is one chunk and no probe is compiled); otherwise the engine compiles
a step with one member per device and sizes chunks from XLA's `memory_analysis()`.
`max_parallel` overrides both. A chunk that still runs out of memory is split in two; a
single member that does not fit is trained alone with loop.fit (`reference.train_design`,
unpadded), else reported 'failed'.

Measured (2026-11-21, one H200, jax 0.11.2): 32 designs sampled from GRAPHGYM_ROUND1 (batch
32, 40 epochs, eval every 20) on GraphGym's smallworld clustering/pagerank task (256 graphs,
8 steps per epoch), seed 1:

  superset, one program (this module)   61.7 s for all 32: 40.0 s to the end of the first epoch
                                        (init + compile), then 0.55 s per epoch for all 32;
                                        1.9 s per design
  alone with loop.fit (reference.py)    15.9, 3.1, 7.7 s for 3 of the designs
  grouped by exact signature            19.1, 7.9, 14.1 s for the same 3 (this engine, one
  (one program per distinct structure)  design per call: a compile each)

At GraphGym's 400 epochs the superset needs about (40 + 400 x 0.55) / 32 = 8 s per design.
Grouping by signature compiles once per design in practice: 32 of 32 (and 99 of 100) sampled
round-1 designs have distinct structures. On the 2-core CPU, 4 structurally different tiny
designs x 2 seeds train in 17 s together against 2-9 s each alone. Memory of that 32-design
layout (D 181, H 550, 3/8/3 layers) on the H200: estimate 1.53 GB per member, XLA's analysis
0.23 GB (289 members fit 60% of its 112 GB limit); on CPU the estimate was 2.6-5.4x XLA's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from absl import logging

from gnnjax import batching
from gnnjax import metrics as metrics_lib
from gnnjax.data import dataset as ds
from gnnjax.data import transforms
from gnnjax.design import budget as budget_lib
from gnnjax.design import checkpoints as checkpoints_lib
from gnnjax.design import reference
from gnnjax.design import trial as trial_lib
from gnnjax.design.design import Design
from gnnjax.models import graphgym
from gnnjax.models import superset
from gnnjax.training import loop, losses

ProgressFn = Callable[[int, int, dict], None]

POP_AXIS = "pop"
_POP = jax.sharding.PartitionSpec(POP_AXIS)  # an array with one row per member
_ALL = jax.sharding.PartitionSpec()  # the same for every member (batches, the step)
# (state, mask, spec, batches, step, active) of a train step or epoch.
_STEP_SPECS = (_POP, _POP, _POP, _ALL, _ALL, _POP)


def _host_memory_bytes(fallback: int = 2 * 2**30) -> int:
  try:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):
    return fallback


# CPU devices report no limit: half the host's RAM. With the upper estimate of a member's bytes
# this makes a group one chunk on CPU (no memory-probe compilation; chunks of a group are run
# one after the other anyway, so on CPU more chunks only add per-chunk overhead).
DEFAULT_CPU_MEMORY = _host_memory_bytes() // 2
EXTREMAL_AGGREGATIONS = ("max", "min")
MEMORY_FRACTION = 0.6  # of the device's limit, left for a chunk's members (XLA needs headroom)
ADAM_FAMILY = ("adam", "adamw")

# Number of times each jitted population function was traced (tests count compilations).
TRACE_COUNTS: collections.Counter = collections.Counter()


# ----------------------------------------------------------------------------------------------
# Members and chunk planning.


@dataclasses.dataclass
class _Member:
  """One (design, seed) trial: its place in the output, the planned and resolved design."""

  index: int
  design: Design
  resolved: Design
  seed: int
  model: graphgym.GraphGymGNN


def stream_batch_size(dataset: ds.GraphDataset, batch_size: int) -> int:
  """The batch size that decides a design's batches: node and edge tasks train on all their
  graphs at once from a batch size of len(dataset) up (`NodeTaskPipeline`), so on Cora or
  CiteSeer (one graph) every batch size gives the same full-batch stream and one program."""
  if dataset.task_level in (ds.NODE, ds.EDGE):
    return min(batch_size, len(dataset))
  return batch_size


def _group_key(design: Design, dataset: ds.GraphDataset, split_aggregations: bool,
               split_stages: bool = False, split_depths: bool = False) -> tuple:
  """The program a (resolved) design belongs to: conv type, stream batch size on `dataset`
  (`stream_batch_size`), and the forced splits."""
  key = superset.conv_key(design) + (stream_batch_size(dataset, design.batch_size),)
  if split_aggregations:  # max/min apart from the sum that add and mean share (GeneralConv)
    key += (is_extremal(design),)
  if split_stages:  # skipconcat's (l_mp + 1) d stage buffer apart from the d of the others
    key += (is_skipconcat(design),)
  if split_depths:  # shallow designs apart from deep ones, which the scan would make them run
    key += (is_deep(design),)
  return key


def _forced_key(design: Design, dataset: ds.GraphDataset, split_aggregations: bool,
                split_stages: bool | str, split_depths: bool | str) -> tuple:
  """`_group_key` under split policies: only the forced (True) splits are in the key; an
  ADAPTIVE split is decided afterwards on a group's members (`_group_members`)."""
  return _group_key(design, dataset, split_aggregations, split_stages is True,
                    split_depths is True)


# With split_depths, designs with at most this many message-passing layers form programs apart
# from deeper ones (GraphGym's spaces draw l_mp from 2, 4, 6, 8).
SHALLOW_LAYERS_MP = 4


# The designs the grouping splits apart (`_group_key`, `_group_members`; public for tools that
# pick one group's designs, e.g. benchmarks/population_profile.py).


def is_extremal(design: Design) -> bool:
  """Max/min aggregation in a conv that reads it (`superset.reads_aggregation`; splitting
  the others by a choice they ignore would only double their programs)."""
  return (superset.reads_aggregation(design.conv_type)
          and design.aggregation in EXTREMAL_AGGREGATIONS)


def is_skipconcat(design: Design) -> bool:
  return design.stage_type == "skipconcat"


def is_deep(design: Design) -> bool:
  return design.layers_mp > SHALLOW_LAYERS_MP


# A split policy: True (always), False (never) or ADAPTIVE: split a group only where every part
# keeps at least MIN_MEMBERS_TO_SPLIT members. Measured on one H200 (2026-12-02): a population
# step costs ~3 ms however few its members (a 1-member chunk: 3.05 ms) plus 0.4-1.1 ms per
# member, and programs cost compilation: splitting 128 designs 23 ways (chunks of 1-14) doubled
# it (106 -> 205 s) and left small chunks at 7-26x their floor, while the members' own step
# time fell 2-3x. So a split pays only where its parts fill chunks.
ADAPTIVE = "adaptive"
MIN_MEMBERS_TO_SPLIT = 32
# With one_batch_shape ADAPTIVE, a group pads every batch to the largest shape its run uses
# where that adds at most this fraction of node + edge slots (see one_batch_shape_by_default).
ONE_SHAPE_MAX_PADDING = 0.25
OVERLAP = "overlap"  # a precompile policy: compile in the background while chunks train
OVERLAP_THREADS = 2  # compilation threads with OVERLAP
# Programs compiled ahead at a time with precompile True: the next window's programs compile
# (in threads) when the run reaches the first of them, and a group's programs are released
# after its last chunk. XLA:CPU maps every compiled kernel into memory, ~1,300-2,900 mappings
# for a population program's functions, and Linux allows 65,530 per process by default: 200
# AutoTransfer designs of Cora on the CPU (50 programs compiled up front) ended in "LLVM
# compilation error: Cannot allocate memory" and a segmentation fault (2026-12-02).
CPU_PRECOMPILE_WINDOW = 8
ACCELERATOR_PRECOMPILE_WINDOW = 16


def _group_members(members: Sequence[_Member], dataset: ds.GraphDataset,
                   split_aggregations: bool, split_stages: bool | str, split_depths: bool | str,
                   min_members: int = MIN_MEMBERS_TO_SPLIT) -> list[list[_Member]]:
  """Members grouped into programs, in first-seen order: by `_group_key` (batch sizes that
  give the same stream of `dataset` together, `stream_batch_size`) with the forced (True)
  splits, then each ADAPTIVE split (stages first: skipconcat's buffer is the larger padding)
  applied to a group only where each of its parts has at least `min_members`."""
  by_key: dict[tuple, list[_Member]] = collections.defaultdict(list)
  for member in members:
    by_key[_forced_key(member.resolved, dataset, split_aggregations, split_stages,
                       split_depths)].append(member)
  groups = list(by_key.values())
  for policy, part_of in ((split_stages, is_skipconcat), (split_depths, is_deep)):
    if policy != ADAPTIVE:
      continue
    refined = []
    for group in groups:
      parts: dict[bool, list[_Member]] = collections.defaultdict(list)
      for member in group:
        parts[part_of(member.resolved)].append(member)
      if len(parts) > 1 and min(len(p) for p in parts.values()) >= min_members:
        refined.extend(parts.values())
      else:
        refined.append(group)
    groups = refined
  return groups


def policy_from_flag(value: str) -> bool | str | None:
  """The engine keyword of an auto|on|off|adaptive|overlap command-line flag (auto: None, the
  engine's default policy)."""
  return {"auto": None, "on": True, "off": False, ADAPTIVE: ADAPTIVE, OVERLAP: OVERLAP}[value]


def _all_cpu(devices: Sequence[jax.Device]) -> bool:
  return all(d.platform == "cpu" for d in devices)


def split_aggregations_by_default(devices: Sequence[jax.Device]) -> bool:
  """The grouping policy: designs with max/min aggregation get their own programs, since every
  member of a program computes every aggregation present, and max/min gather and scatter [E, D]
  messages (or reduce the blocks cell by cell, `block_extremes`) where add/mean are a
  per-graph matmul (blocks) or one shared sum. Measured (scatter max): on CPU
  2x fewer seconds per epoch for one more compilation per batch size; on one H200 (32 round-1
  designs x 20 epochs, smallworld, per-graph blocks) 15,273 -> 18,723 designs per hour
  without compilation, for 86 -> 117 s of compilation. On every platform."""
  del devices
  return True


def scan_layers_by_default(devices: Sequence[jax.Device]) -> bool:
  """The scan policy: message-passing layers as one `lax.scan`. Measured for GeneralConv on a
  2-core CPU (12 GraphGym round-1 designs x 6 epochs on smallworld graphs: compilation + first
  epoch 53.7 -> 45.3 s, epochs 17-20 -> 12-15 s) and on one H200 (32 designs, per-graph blocks,
  split aggregations: compilation 117 -> 92 s, 9% slower steps). For the other conv types on
  the 2-core CPU (2026-12-02, 12 AutoTransfer designs with 2-8 layers on MUTAG, compilation +
  2 epochs, the same results): GAT with 2 heads 89.3 -> 66.3 s, GCN 21.3 -> 20.2 s; not yet
  measured on a GPU. On every platform."""
  del devices
  return True


# Per-graph dense aggregation (`superset.Layout.block_nodes`) when every graph has at most
# BLOCK_MAX_NODES nodes and the largest batch's blocks hold at most BLOCK_CELLS_PER_EDGE cells
# per edge slot (a block cell costs a multiply-add, an edge a gathered and scattered row).
BLOCK_MAX_NODES = 128
BLOCK_CELLS_PER_EDGE = 16


def block_nodes_for(dataset: ds.GraphDataset, budget: tuple[int, int, int]) -> int:
  """M for `superset.Layout.block_nodes`: the dataset's largest graph when per-graph blocks
  pay (see BLOCK_MAX_NODES, BLOCK_CELLS_PER_EDGE) for batches up to `budget` (n_node, n_edge,
  n_graph); else 0 (scatter)."""
  largest = max(int(np.sum(g.n_node)) for g in dataset.graphs)
  _, n_edge, n_graph = budget
  if largest > BLOCK_MAX_NODES or n_graph * largest ** 2 > BLOCK_CELLS_PER_EDGE * n_edge:
    return 0
  return largest


def split_stages_by_default(devices: Sequence[jax.Device]) -> bool | str:
  """The stage policy: skipconcat designs get their own programs on CPU, where it was measured
  (the default `experiments.design_space` run on the 2-core CPU: 3 m 33 s -> 2 m 34 s, 6 -> 9
  programs, compiled in 33.1 -> 36.8 s); on accelerators ADAPTIVE (see MIN_MEMBERS_TO_SPLIT):
  no split for the 128-design benchmark's groups of 8-32, a split for populations whose parts
  fill chunks."""
  return True if _all_cpu(devices) else ADAPTIVE


def split_depths_by_default(devices: Sequence[jax.Device]) -> bool | str:
  """The depth policy. Every member of a program runs the program's deepest message-passing
  stack (layers past a design's count are identities, but they are computed), so splitting
  l_mp <= SHALLOW_LAYERS_MP from deeper designs roughly halves the shallow ones' work, for
  more programs to compile. On CPU always, where it was measured (the default
  `experiments.design_space` run on a 2-core CPU, 2026-12-02: 296 -> 274 s, 9 -> 12 programs
  compiled in 26 -> 65 s, the same rank tables); on accelerators ADAPTIVE (see
  MIN_MEMBERS_TO_SPLIT)."""
  return True if _all_cpu(devices) else ADAPTIVE


def epoch_scan_by_default(devices: Sequence[jax.Device]) -> bool:
  """The epoch policy: one jitted call per epoch (a scan over its steps) for programs whose
  batches all have one shape, against a GPU step's ~3 ms of fixed cost, had that been host
  dispatch. Off everywhere, as measured: on a 2-core CPU the default
  `experiments.design_space` run went 274 -> 282 s (the same rank tables); on one H200
  (2026-12-02, the 128-design benchmark) steps were 5-8% slower (a 32-member chunk 33.7 ->
  36.0 ms): a profile shows the device busy for the whole step, so there is no dispatch gap
  to close."""
  del devices
  return False


def one_batch_shape_by_default(devices: Sequence[jax.Device]) -> bool | str:
  """The batch-shape policy: ADAPTIVE on every platform (one padded batch shape per program
  where it adds at most ONE_SHAPE_MAX_PADDING of the slots; see `_streams_for_layout`).

  A program compiles its train step and predict once per batch shape, and on the budget
  ladder a run of GraphGym's graph tasks uses two rungs (MUTAG, BZR, DHFR and the synthetic
  graphs at batch 32; PROTEINS, with its long tail of graph sizes, 5-6 and 30-150% more slots
  if padded to one). Compilation is what a population of short trainings is bound by: on one
  H200 (2026-12-02), 200 designs of AutoTransfer's space on MUTAG compiled 14 programs x 5
  functions in 368 s before any trained (2 of the 5 are the second rung's). On the 2-core CPU
  (2026-12-02), the README's default study: 211.6 -> 183.5 s wall (compilation 76.9 -> 48.2
  s), the same rank tables."""
  del devices
  return ADAPTIVE


def precompile_by_default(devices: Sequence[jax.Device]) -> bool | str:
  """The compilation policy: True (every program, all at once in threads, before training)
  on every platform. OVERLAP (in the background, OVERLAP_THREADS at a time, while the first
  chunks train) did not pay on one H200 (2026-12-02, the 128-design benchmark): the first
  chunk started at 50 s instead of 83 s, but the background tracing (GIL) and autotuning
  slowed the chunks training meanwhile by 5-12 s each, so the run took 245 s against 238 s.
  On CPU, compilation and training would share the same few cores."""
  del devices
  return True


def precompile_window(devices: Sequence[jax.Device]) -> int:
  """How many programs precompile at once (see CPU_PRECOMPILE_WINDOW): on a CPU the threads
  share a few cores anyway; on accelerators the window covers the populations measured (6
  programs for the 128-design benchmark, 14 for 200 AutoTransfer designs of a task)."""
  return CPU_PRECOMPILE_WINDOW if _all_cpu(devices) else ACCELERATOR_PRECOMPILE_WINDOW


def block_aggregation_by_default(devices: Sequence[jax.Device]) -> bool:
  """The block policy: per-graph dense add/mean aggregation wherever the data allows
  (`block_nodes_for`). Measured on the smallworld task: 2-core CPU, 8 round-1 designs x 6
  epochs, 776 -> 986 designs per hour without compilation (a 32-member add step 62.8 -> 39.8
  ms); one H200, 100 epochs, 2,185 designs per hour without compilation for 64 designs before
  (scatter), 3,274 for 128 designs with blocks, split groups and scanned layers. GAT layouts
  attend on the same blocks (`blocks.block_attention`, since 2026-12-04): on the 2-core CPU
  (one MUTAG design alone, 4 GAT layers) the same seconds per epoch as the edge path (0.16 s
  at 1 head and D 64; 1.1 against 1.0 s at 4 heads and D 256, beside another process), since
  GAT's heads x D projection is the cost there; on GPUs not measured yet. GCN layouts sum on
  them too (`blocks.block_gcn`, since 2026-12-05): on the 2-core CPU 1.5x faster per epoch on
  smallworld at D 256, 1.25x slower on MUTAG (sparser, past the break-even but within
  BLOCK_CELLS_PER_EDGE), and a whole MUTAG study round within the noise of all-scatter
  (`benchmarks.study_round --variants=own_layouts,own_scatter`); on GPUs not measured yet."""
  del devices
  return True


def stable_programs_by_default(devices: Sequence[jax.Device]) -> bool:
  """The policy for a search's populations (`layout_cover`, `size_buckets`; the
  `TrainingEvaluator`'s cover): on for accelerators, off on CPUs. Measured (2026-12-04): on one
  H200 a round of the real-training study compiled for 24-80 s without a cover against 8-14 s
  of training, and needed 0.8-1.6 s for its programs with one; on the 2-core CPU a study round
  of 20 MUTAG designs x 5 epochs took 139.1 s in the designs' own layouts against 212.8 s
  under the cover (`benchmarks/results/study_round_MUTAG_cpu.json`): a CPU is compute-bound,
  so each member paying its group's widest layout costs more than compiling each round."""
  return not _all_cpu(devices)


def block_extremes_by_default(devices: Sequence[jax.Device]) -> bool:
  """The policy for max/min on blocks (`blocks.block_max`): on for accelerators, off on CPUs.

  Measured on the smallworld task (2026-12-03; benchmarks/results/ab/profile_max_*.json): one
  H200, max groups of GraphGym round-1 designs, 79.5 -> 64.3 ms per step (39 members, batch
  64, D 255) and 33.2 -> 26.5 ms (30 members, batch 32, 8 layers), for ~20 s more compilation
  per program; the 2-core CPU, gradient of one member (batch of 32 graphs, D 128), 18 ms by
  scatter against 147 ms on blocks (the masked reduction over G M^2 D cells is slow there)."""
  return not _all_cpu(devices)


# Width multiple of population layouts on accelerators (`superset.Layout.width_multiple`):
# GraphGym's budget-matched widths are often odd (79, 147, 181, 255, 553 ...), which leaves
# the rows of every [N, D] array off the 16-byte alignment of the GPU's vectorised loads.
# Measured on one H200 (2026-12-04, benchmarks.population_profile, smallworld, GraphGym
# round-1 groups; ms per step, multiple 1 -> 4 -> 32): 73 members D 255, 27.7 -> 23.9 (256
# either way); 41 skipconcat members D/H 79/553, 31.4 -> 26.3 -> 25.9; 31 skipconcat members
# 181/575 at batch 64, 38.1 -> 29.7 -> 30.2; 39 max members 255, 42.0 -> 36.0 (256); 39 max
# members 147, 47.3 -> 46.6. A width already a multiple of 4 gains nothing from more: 75
# members at D 148 ran 24.4-24.7 ms, 25.6 at 152 and at 160. So 4, the smallest that aligns.
ACCELERATOR_WIDTH_MULTIPLE = 4


def width_multiple_by_default(devices: Sequence[jax.Device]) -> int:
  """The multiple population layouts round their widths up to: 1 on CPUs,
  ACCELERATOR_WIDTH_MULTIPLE elsewhere. On the 2-core CPU (2026-12-04, population_profile,
  12 members, D 255 against 256, two runs each) steps took 2,184 and 2,254 against 2,133
  and 2,296 ms: no difference, so CPUs keep the designs' own widths."""
  return 1 if _all_cpu(devices) else ACCELERATOR_WIDTH_MULTIPLE


# XLA options of the population programs on GPUs: no Triton GEMM emitter. XLA autotunes
# every matmul shape of a program among Triton tilings at compile time; with cuBLAS alone the
# 32 designs x 20 epochs of `benchmarks.design_throughput` compiled in 42.7 s instead of
# 84.2 s on one H200 (2026-12-02, commit fcf22b4), at the same step times (chunks within
# -2..+4%). An `xla_gpu_enable_triton_gemm` in the XLA_FLAGS environment variable wins.
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def compiler_options_for(devices: Sequence[jax.Device]) -> dict[str, Any] | None:
  """The XLA compiler options of programs on `devices`: GPU_COMPILER_OPTIONS on GPUs (unless
  XLA_FLAGS names the option), none elsewhere."""
  if any(d.platform != "gpu" for d in devices):
    return None
  named = {flag.split("=")[0].lstrip("-") for flag in os.environ.get("XLA_FLAGS", "").split()}
  options = {k: v for k, v in GPU_COMPILER_OPTIONS.items() if k not in named}
  return options or None


def _fill_order(member: _Member) -> tuple:
  d = member.resolved
  return (d.epochs, budget_lib.head_input_dim(d, d.dim_inner), d.dim_inner, d.layers_mp,
          member.index)


def _optimizers(designs: Sequence[Design]) -> tuple[str, ...]:
  return tuple(sorted({d.optimizer for d in designs}))


def estimate_member_bytes(layout: superset.Layout, optimizers: Sequence[str],
                          budget: tuple[int, int, int]) -> int:
  """An upper estimate of the device bytes one member needs during a training step.

  Counts the padded parameters with their gradient, new value, update mask and optimizer
  state, the member's copy of the batch, and, per layer, a few float32 arrays of the layer's
  width over the batch's rows (nodes, or graphs in a graph task's head) and edges (messages).
  XLA fuses and reuses much of this, so the true peak is 2-5x lower (checked against
  `memory_analysis()` in the tests and on GPU); the engine measures it when this bound says a
  group does not fit in one chunk.

  Args:
    layout: the chunk's superset layout.
    optimizers: optimizers present in the chunk ('adam', 'adamw', 'sgd').
    budget: the largest padded batch (n_node, n_edge, n_graph).

  Returns:
    Bytes per member.
  """
  n_node, n_edge, n_graph = budget
  params = _layout_param_count(layout)
  heads = layout.conv[1]  # GAT's messages and states are heads x D wide
  # GAT's attention logits and weights per head: one per edge, or per block cell [G, M, M].
  logits = n_edge
  # Per-graph block sums need no [E, D] messages; max/min still gather them.
  if layout.blocks_only:
    n_edge = n_graph * layout.block_nodes  # the blocks' [G, M, D] states stand in for them
    logits = n_graph * layout.block_nodes ** 2
  attention = logits if layout.conv_type == "gat" else 0
  state_copies = 3 + (2 if set(optimizers) & set(ADAM_FAMILY) else 0) + ("sgd" in optimizers)
  param_bytes = params * (4 * state_copies + 1)
  rows_head = n_node if layout.task_level == ds.NODE else n_graph
  floats = (layout.layers_pre * n_node * layout.dim * _PER_LAYER
            + layout.layers_mp * ((n_edge * layout.dim + attention) * heads
                                  * _PER_MESSAGE_LAYER
                                  + n_node * layout.dim * _PER_LAYER
                                  + n_node * layout.head_dim * _PER_STAGE
                                  * len(layout.stages))
            + (layout.layers_post - 1) * rows_head * layout.head_dim * _PER_LAYER
            + n_node * (layout.dim_in + 4) + 3 * n_edge)
  return int(param_bytes + 4 * floats)


# Float arrays of a layer's width counted per layer by estimate_member_bytes.
_PER_LAYER = 8
_PER_MESSAGE_LAYER = 4
_PER_STAGE = 3


def _layout_param_count(layout: superset.Layout) -> int:
  """Padded parameters of one member, from the layout's widths (no tracing)."""
  template = layout.conv_template().replace(batch_norm=True)
  d, h = layout.dim, layout.head_dim
  layer = lambda d_in, d_out: d_in * d_out + 3 * d_out  # weight + bias + BN scale/shift
  count = layer(layout.dim_in, d) + (layout.layers_pre - 1) * layer(d, d)
  for d_in in layout.mp_in_dims:
    count += budget_lib.conv_layer_params(template, d_in, d) + d
  count += (layout.layers_post - 1) * layer(h, h) + h * layout.num_outputs + layout.num_outputs
  return count + 1


def device_memory_bytes(device: jax.Device) -> int:
  """The device's memory limit (GPU: memory_stats()['bytes_limit']; CPU: DEFAULT_CPU_MEMORY)."""
  try:
    stats = device.memory_stats()
  except Exception:  # some backends do not implement memory_stats
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return DEFAULT_CPU_MEMORY


def members_per_chunk(member_bytes: int, num_devices: int, memory_per_device: int) -> int:
  """Members that fit MEMORY_FRACTION of every device's memory (at least one per device)."""
  per_device = max(1, int(MEMORY_FRACTION * memory_per_device // max(member_bytes, 1)))
  return per_device * num_devices


def _plan_chunks(members: list[_Member], capacity: int) -> list[list[_Member]]:
  """Members in fill order, cut into equal chunks of at most `capacity` (one shape: one
  compilation for all chunks of a group)."""
  ordered = sorted(members, key=_fill_order)
  num_chunks = -(-len(ordered) // capacity)
  size = -(-len(ordered) // num_chunks)
  return [ordered[i:i + size] for i in range(0, len(ordered), size)]


# ----------------------------------------------------------------------------------------------
# Batches: one stream per seed, stacked on a leading seed axis with a common padded budget.


def _repad(graph: jraph.GraphsTuple, n_node: int, n_edge: int) -> jraph.GraphsTuple:
  """Pads a padded batch further: the padding graph (the last with nodes, as jraph counts it)
  takes the extra nodes (zeros) and edges (self-loops on its first node)."""
  nodes_now = int(jax.tree.leaves(graph.nodes)[0].shape[0])
  edges_now = int(graph.senders.shape[0])
  extra_nodes, extra_edges = n_node - nodes_now, n_edge - edges_now
  if not (extra_nodes or extra_edges):
    return graph
  n_node_arr, n_edge_arr = np.array(graph.n_node), np.array(graph.n_edge)
  pad_graph = int(np.nonzero(n_node_arr)[0][-1])
  first_pad_node = nodes_now - int(n_node_arr[pad_graph])
  grow = lambda x, extra: np.concatenate([x, np.zeros((extra,) + x.shape[1:], x.dtype)])
  n_node_arr[pad_graph] += extra_nodes
  n_edge_arr[pad_graph] += extra_edges
  loops = np.full(extra_edges, first_pad_node, graph.senders.dtype)
  return graph._replace(
      nodes=jax.tree.map(lambda x: grow(np.asarray(x), extra_nodes), graph.nodes),
      edges=jax.tree.map(lambda x: grow(np.asarray(x), extra_edges), graph.edges),
      senders=np.concatenate([graph.senders, loops]),
      receivers=np.concatenate([graph.receivers, loops]),
      n_node=n_node_arr, n_edge=n_edge_arr)


def _stack(graphs: Sequence[jraph.GraphsTuple], at_least: tuple[int, int] = (0, 0)
           ) -> jraph.GraphsTuple:
  """[S, ...] stack of padded batches, all re-padded to the largest one's node/edge counts
  (or to `at_least` = (n_node, n_edge) where that is larger)."""
  n_graph = {int(np.shape(g.n_node)[0]) for g in graphs}
  if len(n_graph) != 1:
    raise ValueError(f"batches to stack have different graph slot counts {sorted(n_graph)}")
  n_node = max([at_least[0]] + [int(jax.tree.leaves(g.nodes)[0].shape[0]) for g in graphs])
  n_edge = max([at_least[1]] + [int(g.senders.shape[0]) for g in graphs])
  padded = [_repad(g, n_node, n_edge) for g in graphs]
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *padded)


def _abstract_batch(example: jraph.GraphsTuple, n_node: int, n_edge: int) -> jraph.GraphsTuple:
  """`example`, a stacked batch of ShapeDtypeStructs ([S, ...] leaves), with n_node node and
  n_edge edge slots (graph slots unchanged)."""
  def resized(tree, size):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct((a.shape[0], size) + a.shape[2:],
                                                       a.dtype, sharding=a.sharding), tree)

  return example._replace(nodes=resized(example.nodes, n_node),
                          edges=resized(example.edges, n_edge),
                          senders=resized(example.senders, n_edge),
                          receivers=resized(example.receivers, n_edge))


def _stack_steps(batches: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
  """[steps, ...] stack of an epoch's batches, which must share one shape."""
  shapes = {str(jax.tree.map(np.shape, b)) for b in batches}
  if len(shapes) != 1:
    raise ValueError(f"an epoch scan needs batches of one shape, got {len(shapes)} shapes")
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


class _SeedStreams:
  """The pipelines of the reference protocol for each seed of a batch-size group."""

  def __init__(self, dataset: ds.GraphDataset, seeds: Sequence[int], batch_size: int):
    self.pad_to = (0, 0)  # (n_node, n_edge) every stacked batch is padded to at least
    self.seeds = sorted(set(int(s) for s in seeds))
    self.splits, self.pipelines = [], []
    for seed in self.seeds:
      data, pipe = reference.split_for_seed(dataset, seed, batch_size)
      self.splits.append(data)
      self.pipelines.append(pipe)
    steps = {p.steps_per_epoch() for p in self.pipelines}
    if len(steps) != 1:
      raise ValueError(f"seeds give different steps per epoch {sorted(steps)}")
    self.steps_per_epoch = steps.pop()
    self.split_names = self.pipelines[0].split_names
    # Full-batch tasks train on the same batches every epoch: stacked once (not once per
    # epoch or chunk), and a chunk puts them on the device once (`_ChunkRun._epoch_inputs`).
    self.static_train = all(p.static_train for p in self.pipelines)
    self._eval = self._train = None
    self._padded: dict[tuple[int, int], _SeedStreams] = {}

  def seed_index(self, seed: int) -> int:
    return self.seeds.index(int(seed))

  def padded(self, pad_to: tuple[int, int]) -> "_SeedStreams":
    """The same streams with every stacked batch padded to at least `pad_to` = (n_node,
    n_edge). One copy per shape, shared by every group that asks (its eval cache)."""
    pad_to = (int(pad_to[0]), int(pad_to[1]))
    if pad_to == self.pad_to:
      return self
    if pad_to not in self._padded:
      copy_ = copy.copy(self)
      copy_.pad_to, copy_._eval, copy_._train, copy_._padded = pad_to, None, None, self._padded
      self._padded[pad_to] = copy_
    return self._padded[pad_to]

  def one_shape(self) -> "_SeedStreams":
    """The same streams with every batch padded to the largest budget: one batch shape, so
    one train-step and one predict compilation instead of one per rung of the ladder. For
    programs whose cost does not grow with the edge slots (per-graph blocks without max/min
    aggregation: the edges only fill the adjacency)."""
    return self.padded(self.largest_budget()[:2])

  def _stacked_shape(self, budgets: Sequence[batching.Budget]) -> tuple[int, int]:
    """(n_node, n_edge) of the stacked batch of one batch per seed with these budgets."""
    return (max([self.pad_to[0]] + [b.n_node for b in budgets]),
            max([self.pad_to[1]] + [b.n_edge for b in budgets]))

  def _train_step_shapes(self, epochs: int) -> Iterator[tuple[int, int]]:
    """(n_node, n_edge) of each stacked training batch of epochs 0..epochs-1, in order, from
    the pipelines' budgets (no batch is built)."""
    for epoch in range(epochs):
      for budgets in zip(*(p.train_budgets(epoch) for p in self.pipelines), strict=True):
        yield self._stacked_shape(budgets)

  def largest_used_shape(self, epochs: int) -> tuple[int, int]:
    """The smallest (n_node, n_edge) that holds every training batch of epochs 0..epochs-1
    and every evaluation batch: padded to it, a program sees one batch shape."""
    shapes = list(self.train_shapes(epochs))
    shapes += [self._stacked_shape(budgets)
               for budgets in zip(*(p.eval_budgets() for p in self.pipelines), strict=True)]
    return max(n for n, _ in shapes), max(e for _, e in shapes)

  def padding_overhead(self, pad_to: tuple[int, int], epochs: int) -> float:
    """The fraction of node + edge slots that padding every training batch of epochs
    0..epochs-1 to `pad_to` adds to the ladder's (0: none; 0.2: 20% more rows to process)."""
    used = padded = 0
    for n_node, n_edge in self._train_step_shapes(epochs):
      used += n_node + n_edge
      padded += max(n_node, pad_to[0]) + max(n_edge, pad_to[1])
    return padded / used - 1.0 if used else 0.0

  def largest_budget(self) -> tuple[int, int, int]:
    top = [p.ladder[-1] for p in self.pipelines]
    return (max(b.n_node for b in top), max(b.n_edge for b in top), max(b.n_graph for b in top))

  def train_batches(self, epoch: int) -> Iterator[jraph.GraphsTuple]:
    """The stacked training batches of `epoch` (with `static_train`, the same objects for
    every epoch)."""
    if self._train is not None:
      return iter(self._train)
    stacked = (_stack(batches, self.pad_to) for batches in
               zip(*(p.train_batches(epoch) for p in self.pipelines), strict=True))
    if not self.static_train:
      return stacked
    self._train = list(stacked)
    return iter(self._train)

  def train_shapes(self, epochs: int) -> set[tuple[int, int]]:
    """(n_node, n_edge) of every stacked training batch of epochs 0..epochs-1, from the
    pipelines' budgets (no batch is built): the train-step shapes a run will compile."""
    top = self.largest_budget()
    if self.pad_to[0] >= top[0] and self.pad_to[1] >= top[1]:  # every batch fits: one shape
      return {self.pad_to}
    return set(self._train_step_shapes(epochs))

  def eval_batches(self) -> list[tuple[jraph.GraphsTuple, tuple[str, ...]]]:
    """(stacked batch, splits it scores) covering every split once, as loop.evaluate."""
    if self._eval is None:
      self._eval = []
      for pairs in zip(*(list(p.eval_batches()) for p in self.pipelines), strict=True):
        splits = {s for _, s in pairs}
        if len(splits) != 1:
          raise ValueError(f"seeds evaluate different splits per batch: {splits}")
        self._eval.append((_stack([b for b, _ in pairs], self.pad_to), pairs[0][1]))
    return self._eval


# ----------------------------------------------------------------------------------------------
# The jitted population functions.


@dataclasses.dataclass(frozen=True)
class _Program:
  """Everything static about a group's jitted functions (hashable: their cache key)."""

  layout: superset.Layout
  optimizers: tuple[str, ...]
  task_type: str
  steps_per_epoch: int


def _member_batch(batches: jraph.GraphsTuple, seed_index: jax.Array) -> jraph.GraphsTuple:
  """A member's batch out of the [S, ...] stack. With one seed it is the same batch for every
  member, taken statically: under vmap it then stays unbatched, so its indices (senders,
  receivers, the per-graph blocks) are shared by all members instead of gathered per member."""
  if jax.tree.leaves(batches)[0].shape[0] == 1:
    return jax.tree.map(lambda a: a[0], batches)
  return jax.tree.map(lambda a: a[seed_index], batches)


def _cosine_rate(spec: Mapping[str, jax.Array], steps_per_epoch: int) -> Callable:
  """optim.epoch_schedule's cosine, with the member's rate and horizon as arrays (same ops)."""

  def schedule(count):
    epoch = count // steps_per_epoch
    return spec["lr_half"] * (1.0 + jnp.cos(math.pi * epoch / spec["epochs"]))

  return schedule


def _tree_where(condition, a, b):
  return jax.tree.map(lambda x, y: jnp.where(condition, x, y), a, b)


def _optimizer_update(program: _Program, grads, opt_state, params, spec, step):
  """The member's optimizer step (optim.make_optimizer's chain, hyperparameters as arrays)."""
  names = program.optimizers
  code = spec["optimizer"]
  is_opt = lambda name: code == names.index(name)
  decay = optax.add_decayed_weights(spec["weight_decay"])
  coupled, _ = decay.update(grads, optax.EmptyState(), params)  # torch's L2: g + wd p
  candidates, new_state = {}, {}
  if set(names) & set(ADAM_FAMILY):
    adam_input = coupled
    if "adamw" in names:
      adam_input = _tree_where(is_opt("adamw"), grads, coupled) if "adam" in names else grads
    scaled, new_state["adam"] = optax.scale_by_adam().update(adam_input, opt_state["adam"])
    candidates["adam"] = scaled
    if "adamw" in names:  # decoupled decay, after the Adam scaling
      candidates["adamw"] = decay.update(scaled, optax.EmptyState(), params)[0]
  if "sgd" in names:
    candidates["sgd"], new_state["trace"] = optax.trace(decay=spec["momentum"]).update(
        coupled, opt_state["trace"])
  updates = superset.select(code, [candidates[name] for name in names])
  rate = optax.scale_by_learning_rate(_cosine_rate(spec, program.steps_per_epoch))
  updates, _ = rate.update(updates, optax.ScaleByScheduleState(count=step))
  return optax.apply_updates(params, updates), new_state


def _population_step_fn(program: _Program) -> Callable:
  """The training step of every member at once, (state, mask, spec, batches, step, active) ->
  (state, loss [size]): one member's step vmapped over the population axis (batches and step
  are shared)."""
  layout = program.layout

  def member_step(state, mask, spec, batches, step, active):
    batch = _member_batch(batches, spec["seed_index"])
    dropout_key = jax.random.fold_in(jax.random.fold_in(state["key"], 2), step)
    keys = superset.dropout_keys(layout, dropout_key) if layout.dropout else None

    def loss_fn(params):
      outputs, stats = superset.apply(layout, params, state["batch_stats"], spec, batch,
                                      train=True, dropout_keys_by_layer=keys)
      labels, label_mask = losses.targets_and_mask(batch, layout.task_level,
                                                   program.task_type, "train")
      loss, _ = losses.masked_loss(outputs, labels, label_mask, program.task_type)
      return loss, stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    params, opt = _optimizer_update(program, grads, state["opt"], state["params"], spec, step)
    params = _tree_where_masked(mask, params, state["params"])
    new_state = dict(state, params=params, batch_stats=stats, opt=opt)
    return _tree_where(active, new_state, state), loss

  return jax.vmap(member_step, in_axes=(0, 0, 0, None, None, 0))


def _jit_per_device(name: str, fn: Callable, mesh: jax.sharding.Mesh, in_specs, out_specs,
                    compiler_options=None, donate_argnums=()) -> Callable:
  """`jax.jit` of `fn`, a function of population arrays laid out over `mesh` as the
  PartitionSpecs `in_specs`/`out_specs` say, counting its traces in TRACE_COUNTS[name].

  Where the mesh has several devices, `fn` runs on each device for its own members
  (`jax.shard_map`). Members never interact, so every device's slice is a one-device program:
  no partitioner decisions to go wrong, no collectives, and the Pallas block max kernels (which
  XLA's SPMD partitioner cannot split) run sharded too. On one device, `fn` itself."""
  if mesh.size > 1:
    fn = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

  def traced(*args):
    TRACE_COUNTS[name] += 1
    return fn(*args)

  def named(specs):  # a PartitionSpec, or a tuple of them
    if isinstance(specs, jax.sharding.PartitionSpec):
      return jax.sharding.NamedSharding(mesh, specs)
    return tuple(jax.sharding.NamedSharding(mesh, spec) for spec in specs)

  return jax.jit(traced, in_shardings=named(in_specs), out_shardings=named(out_specs),
                 donate_argnums=donate_argnums, compiler_options=compiler_options)


def _make_train_step(program: _Program, mesh: jax.sharding.Mesh,
                     compiler_options=None) -> Callable:
  return _jit_per_device("train_step", _population_step_fn(program), mesh, _STEP_SPECS,
                         (_POP, _POP), compiler_options, donate_argnums=0)


def _make_train_epoch(program: _Program, mesh: jax.sharding.Mesh,
                      compiler_options=None) -> Callable:
  """A whole epoch as one call: `lax.scan` of the population step over the epoch's batches
  stacked on a leading [steps] axis (every batch of the epoch has one shape). Returns the
  state and the [steps, size] losses; step k of the epoch is global step first_step + k."""
  population_step = _population_step_fn(program)

  def epoch(state, mask, spec, epoch_batches, first_step, active):
    def body(state, inputs):
      batches, offset = inputs
      return population_step(state, mask, spec, batches, first_step + offset, active)

    steps = jax.tree.leaves(epoch_batches)[0].shape[0]
    return jax.lax.scan(body, state, (epoch_batches, jnp.arange(steps, dtype=jnp.int32)))

  return _jit_per_device("train_epoch", epoch, mesh, _STEP_SPECS,
                         (_POP, jax.sharding.PartitionSpec(None, POP_AXIS)), compiler_options,
                         donate_argnums=0)


def _tree_where_masked(mask, new, old):
  return jax.tree.map(lambda m, x, y: jnp.where(m, x, y), mask, new, old)


def _make_predict(program: _Program, mesh: jax.sharding.Mesh,
                  compiler_options=None) -> Callable:
  layout = program.layout

  def member_predict(params, batch_stats, spec, batches):
    batch = _member_batch(batches, spec["seed_index"])
    outputs, _ = superset.apply(layout, params, batch_stats, spec, batch, train=False)
    return outputs

  return _jit_per_device("predict", jax.vmap(member_predict, in_axes=(0, 0, 0, None)), mesh,
                         (_POP, _POP, _POP, _ALL), _POP, compiler_options)


def _make_init(program: _Program, mesh: jax.sharding.Mesh, compiler_options=None) -> Callable:
  return _jit_per_device("init", jax.vmap(lambda spec, key: _init_state(program, spec, key)),
                         mesh, (_POP, _POP), _POP, compiler_options)


@dataclasses.dataclass(frozen=True)
class _Functions:
  init: Callable
  train_step: Callable
  train_epoch: Callable
  predict: Callable


# With size_buckets, the smallest padded chunk: on accelerators a step of a few small members
# costs its fixed ~3 ms whatever their number (see ADAPTIVE above), so 1, 2 and 3 members run
# as 4 and need no programs of their own; on CPUs every member costs its share.
ACCELERATOR_SIZE_BUCKET_FLOOR = 4


def size_bucket_floor(devices) -> int:
  return 1 if _all_cpu(list(devices)) else ACCELERATOR_SIZE_BUCKET_FLOOR


# Programs whose jitted functions (with their compilations) are kept, most recent first. On
# CPUs the kept executables count against the process's memory mappings (see
# CPU_PRECOMPILE_WINDOW); on accelerators more are kept, so that a search, whose every round
# is a population of the same few programs (`layout_cover`, `size_buckets`), compiles each once.
CPU_KEPT_PROGRAMS = 8
ACCELERATOR_KEPT_PROGRAMS = 64
_KEPT: collections.OrderedDict = collections.OrderedDict()


def _compiled(program: _Program, mesh: jax.sharding.Mesh) -> _Functions:
  """The jitted functions of a program on a mesh (the recent ones are kept with their
  compilations, so a repeated population does not compile again)."""
  key = (program, mesh)
  if key in _KEPT:
    _KEPT.move_to_end(key)
    return _KEPT[key]
  options = compiler_options_for(mesh.devices.flat)
  functions = _Functions(_make_init(program, mesh, options),
                         _make_train_step(program, mesh, options),
                         _make_train_epoch(program, mesh, options),
                         _make_predict(program, mesh, options))
  _KEPT[key] = functions
  limit = CPU_KEPT_PROGRAMS if _all_cpu(list(mesh.devices.flat)) else ACCELERATOR_KEPT_PROGRAMS
  while len(_KEPT) > limit:
    _KEPT.popitem(last=False)
  return functions


# ----------------------------------------------------------------------------------------------
# Chunk state.


def _training_spec(program: _Program, design: Design, seed_index: int) -> dict[str, np.ndarray]:
  return {
      "optimizer": np.int32(program.optimizers.index(design.optimizer)),
      "lr_half": np.float32(design.learning_rate * 0.5),
      "epochs": np.int32(design.epochs),
      "weight_decay": np.float32(design.weight_decay),
      "momentum": np.float32(design.momentum),
      "seed_index": np.int32(seed_index),
  }


def _stack_trees(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _init_state(program: _Program, init_spec, key):
  """A member's initial train state: variables as its own GraphGymGNN.init makes them with
  loop.init_state's keys, and zero optimizer state."""
  params, batch_stats, mask = superset.init_variables(program.layout, init_spec,
                                                      jax.random.fold_in(key, 0))
  state = {"params": params, "batch_stats": batch_stats, "opt": _init_opt_state(program, params),
           "key": key}
  return state, mask


def _init_opt_state(program: _Program, params):
  state = {}
  if set(program.optimizers) & set(ADAM_FAMILY):
    state["adam"] = optax.scale_by_adam().init(params)
  if "sgd" in program.optimizers:
    state["trace"] = optax.trace(decay=0.0).init(params)
  return state


# ----------------------------------------------------------------------------------------------
# Evaluation (mirrors loop.evaluate) and results.


def _host_loss(outputs: np.ndarray, labels: np.ndarray, mask: np.ndarray, task_type: str
               ) -> float:
  """losses.masked_loss in NumPy (float64): eager jnp would compile every new row count."""
  outputs = outputs.astype(np.float64)
  if task_type == ds.MULTICLASS:
    shifted = outputs - outputs.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    per = log_z - np.take_along_axis(shifted, labels.astype(np.int64)[:, None], -1)[:, 0]
  elif task_type in (ds.BINARY, ds.MULTITASK):
    logits = outputs.reshape(labels.shape) if task_type == ds.BINARY else outputs
    targets = labels.astype(np.float64)
    per = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
  elif task_type == ds.REGRESSION:
    per = (outputs.reshape(labels.shape) - labels) ** 2
  else:
    raise ValueError(f"unknown task type {task_type!r}")
  mask = np.broadcast_to(mask, per.shape)
  return float(np.where(mask, per, 0.0).sum() / max(int(mask.sum()), 1))


def _score(parts: Mapping[str, list], task_type: str, metric_names: Sequence[str]
           ) -> dict[str, dict[str, float]]:
  """Per split: loss and metrics of the concatenated kept rows (as loop.evaluate)."""
  results = {}
  for split, rows in parts.items():
    outputs, labels, mask = (np.concatenate(p, axis=0) for p in zip(*rows))
    results[split] = {"loss": _host_loss(outputs, labels, mask, task_type)}
    for name in metric_names:
      results[split][name] = metrics_lib.evaluate_metric(name, outputs, labels, mask)
  return results




@dataclasses.dataclass
class _Tracker:
  """A member's running record: history, best evaluation, status."""

  history: list = dataclasses.field(default_factory=list)
  best_value: float | None = None
  best: dict = dataclasses.field(default_factory=dict)
  status: str = trial_lib.OK
  diverged_epoch: int | None = None


# ----------------------------------------------------------------------------------------------
# Groups and chunks.


def _streams_for_layout(streams: _SeedStreams, layout: superset.Layout, epochs: int,
                        one_batch_shape: bool | str = False) -> _SeedStreams:
  """The batch shapes a group's program runs on.

  Layouts that aggregate only by per-graph blocks pad every batch to the ladder's top (their
  steps cost the same for any edge count). Others keep the budget ladder, unless
  `one_batch_shape` is True, or ADAPTIVE and padding every batch to the largest shape the run
  uses adds at most ONE_SHAPE_MAX_PADDING of node + edge slots: then one train-step and one
  predict compilation instead of one per rung used.
  """
  if layout.blocks_only:
    return streams.one_shape()
  if one_batch_shape is False:
    return streams
  target = streams.largest_used_shape(epochs)
  if (one_batch_shape is True
      or streams.padding_overhead(target, epochs) <= ONE_SHAPE_MAX_PADDING):
    return streams.padded(target)
  return streams


class _Group:
  """Members sharing a conv type and a batch size: one layout, one set of jitted functions.

  Every chunk of a group uses the group's layout and the same padded size, so the group
  compiles once (per batch shape) however many chunks it has.
  """

  def __init__(self, members: list[_Member], dataset: ds.GraphDataset, streams: _SeedStreams,
               mesh: jax.sharding.Mesh, max_parallel: int | None,
               saved: tuple[_Program, int, tuple[int, int] | None] | None = None,
               scan_layers: bool = False, block_aggregation: bool = False,
               block_extremes: bool = False, epoch_scan: bool = False,
               one_batch_shape: bool | str = False, width_multiple: int = 1,
               cover: Sequence[Design] = (), size_buckets: bool = False):
    """`saved`: (program, padded size, batch padding or None) of a checkpointed chunk holding
    exactly `members` in this order; the group is then that one chunk, with the saved program
    and batch shapes. `epoch_scan`: train an epoch per call where every batch has one shape
    (block-only programs). `one_batch_shape`: see `_streams_for_layout`. `cover`: resolved
    designs the layout holds besides the members' (`train_population`'s layout_cover).
    `size_buckets`: pad chunks to a power of two members (at least `size_bucket_floor`)."""
    self.members = members
    self.streams = streams
    self.mesh = mesh
    self.num_devices = mesh.devices.size
    self.member_bytes = None  # measured by XLA, when the estimate says one chunk is too small
    epochs = max(m.resolved.epochs for m in members)
    if saved is not None:
      self.program, self.size, pad_to = saved
      self.streams = (streams.padded(pad_to) if pad_to is not None  # as the run that saved it
                      else _streams_for_layout(streams, self.program.layout, epochs))
      self.functions = _compiled(self.program, mesh)
      self.chunks = [list(members)]
      self.epoch_scan = epoch_scan and self.program.layout.blocks_only
      return
    designs = [m.resolved for m in members] + list(cover)
    dim_in = self.streams.splits[0].num_node_features
    block_nodes = (block_nodes_for(dataset, self.streams.largest_budget())
                   if block_aggregation else 0)
    layout = superset.Layout.from_designs(designs, dim_in, dataset.num_outputs,
                                          dataset.task_level, scan_mp=scan_layers,
                                          block_nodes=block_nodes,
                                          block_extremes=block_extremes,
                                          width_multiple=width_multiple)
    self.streams = _streams_for_layout(streams, layout, epochs, one_batch_shape)
    self.program = _Program(layout, _optimizers(designs), dataset.task_type,
                            self.streams.steps_per_epoch)
    self.functions = _compiled(self.program, mesh)
    self.epoch_scan = epoch_scan and layout.blocks_only  # one-shape streams (see above)
    self.chunks = _plan_chunks(members, max_parallel or self._capacity(dataset))
    # Padded with frozen copies to a multiple of the device count, the same for every chunk
    # (and with size_buckets to a power of two: a program per bucket, not per count).
    largest = max(len(c) for c in self.chunks)
    if size_buckets:
      largest = max(1 << (largest - 1).bit_length(), size_bucket_floor(self.mesh.devices.flat))
    self.size = self.round_up(largest)

  def round_up(self, count: int) -> int:
    """`count` rounded up to a multiple of the device count."""
    return -(-count // self.num_devices) * self.num_devices

  def _capacity(self, dataset: ds.GraphDataset) -> int:
    """Members per chunk from device memory: the upper estimate when the whole group fits by
    it, else XLA's memory analysis of a step with one member per device."""
    memory = min(device_memory_bytes(d) for d in self.mesh.devices.flat)
    estimate = estimate_member_bytes(self.program.layout, self.program.optimizers,
                                     self.streams.largest_budget())
    capacity = members_per_chunk(estimate, self.num_devices, memory)
    if capacity >= len(self.members):
      return capacity
    probe = _ChunkRun(self, self.members[:1], dataset, eval_every=1, size=self.num_devices)
    self.member_bytes = probe.measure_step_bytes() // self.num_devices
    return members_per_chunk(self.member_bytes, self.num_devices, memory)


class _ChunkRun:
  """Trains one chunk of a group's members to their own epoch counts."""

  def __init__(self, group: _Group, members: list[_Member], dataset: ds.GraphDataset,
               eval_every: int, size: int | None = None):
    self.group, self.members, self.eval_every = group, members, eval_every
    self.streams, self.program, self.functions = group.streams, group.program, group.functions
    self.task_name = dataset.name
    self.task_level, self.task_type = dataset.task_level, dataset.task_type
    self.metric = metrics_lib.default_metric(self.task_type)
    self.metric_names = metrics_lib.metrics_for(self.task_type)
    if self.metric not in self.metric_names:
      self.metric_names = [self.metric] + self.metric_names
    self.selection_split = "val" if "val" in self.streams.split_names else "train"
    self.size = size or group.size
    self.pop = jax.sharding.NamedSharding(group.mesh, _POP)
    self.replicated = jax.sharding.NamedSharding(group.mesh, _ALL)
    self.epochs = np.array([m.resolved.epochs for m in members]
                           + [0] * (self.size - len(members)))
    self.trackers = [_Tracker() for _ in members]
    self._static_input: list | None = None  # a full-batch task's epoch input, on the device
    # id(stacked eval batch) -> (the batch, kept so the id stays its own; on the device;
    # per seed, split -> (labels, mask)).
    self._eval_cache: dict[int, tuple] = {}

  def _padded(self, items: list) -> list:
    return items + [items[-1]] * (self.size - len(items))

  def _initial_state(self):
    layout = self.program.layout
    dim_in = self.streams.splits[0].num_node_features
    init_specs, specs, keys, self.num_params = [], [], [], []
    shapes_by_design = {}
    for member in self.members:
      if member.resolved not in shapes_by_design:
        shapes_by_design[member.resolved] = superset.design_variable_shapes(member.model, dim_in)
      shapes = shapes_by_design[member.resolved]
      init_specs.append(superset.init_spec(layout, *shapes))
      self.num_params.append(reference.count_params(shapes[0]))
      specs.append({**superset.design_spec(layout, member.resolved),
                    **_training_spec(self.program, member.resolved,
                                     self.streams.seed_index(member.seed))})
      keys.append(np.asarray(jax.random.PRNGKey(member.seed)))
    put = lambda items: jax.device_put(_stack_trees(self._padded(items)), self.pop)
    state, mask = self.functions.init(put(init_specs), put(keys))
    return state, mask, put(specs)

  def precompile(self) -> int:
    """Compiles the chunk's init, train step (every batch shape of its epochs) and predict
    (every eval batch shape) from abstract arguments, filling the jit caches the run
    then hits. Thread-safe, so the engine compiles every group's programs concurrently (XLA's
    backend compile releases the GIL). Returns the number of programs compiled."""
    layout, member = self.program.layout, self.members[0]
    dim_in = self.streams.splits[0].num_node_features
    one_init = superset.init_spec(layout, *superset.design_variable_shapes(member.model, dim_in))
    one_spec = {**superset.design_spec(layout, member.resolved),
                **_training_spec(self.program, member.resolved, 0)}

    def stacked(tree):
      return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
          (self.size,) + np.shape(a), np.asarray(a).dtype, sharding=self.pop), tree)

    def replicated(tree):
      return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
          np.shape(a), np.asarray(a).dtype, sharding=self.replicated), tree)

    def with_pop(tree):
      return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                         sharding=self.pop), tree)

    init_args = (stacked(one_init), stacked(np.asarray(jax.random.PRNGKey(0))))
    compiled = 1
    self.functions.init.lower(*init_args).compile()
    state, mask = (with_pop(t) for t in jax.eval_shape(self.functions.init, *init_args))
    spec = stacked(one_spec)
    step = jax.ShapeDtypeStruct((), np.int32)  # a host scalar at run time (no mesh)
    active = jax.ShapeDtypeStruct((self.size,), np.bool_, sharding=self.pop)
    def distinct(batches):  # one abstract batch per shape of the budget ladder
      shapes = {}
      for batch in batches:
        abstract = replicated(batch)
        shapes[str(jax.tree.map(lambda a: a.shape, abstract))] = abstract
      return shapes.values()

    if self.group.epoch_scan:
      epoch_batches = replicated(_stack_steps(list(self.streams.train_batches(0))))
      self.functions.train_epoch.lower(state, mask, spec, epoch_batches, step, active).compile()
      compiled += 1
    else:  # every shape of every epoch: a shape first met mid-run would stall it to compile
      example = replicated(next(iter(self.streams.train_batches(0))))
      epochs = max(m.resolved.epochs for m in self.members)
      for n_node, n_edge in sorted(self.streams.train_shapes(epochs)):
        abstract = _abstract_batch(example, n_node, n_edge)
        self.functions.train_step.lower(state, mask, spec, abstract, step, active).compile()
        compiled += 1
    for abstract in distinct(batch for batch, _ in self.streams.eval_batches()):
      self.functions.predict.lower(state["params"], state["batch_stats"], spec,
                                   abstract).compile()
      compiled += 1
    return compiled

  def measure_step_bytes(self) -> int:
    """Device bytes of a training step on the largest batch (XLA's memory analysis), all
    members of the chunk together."""
    state, mask, spec = self._initial_state()
    batch = next(iter(self.streams.one_shape().train_batches(0)))  # the largest budget
    active = jax.device_put(np.zeros(self.size, bool), self.pop)
    compiled = self.functions.train_step.lower(
        state, mask, spec, jax.device_put(batch, self.replicated), np.int32(0),
        active).compile()
    stats = compiled.memory_analysis()
    return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes
               + stats.output_size_in_bytes - stats.alias_size_in_bytes)

  def run(self, on_epoch: Callable[[int, int], None] | None = None,
          checkpoint: checkpoints_lib.ChunkCheckpoint | None = None,
          checkpoint_every: int = 0, read_every_epoch: bool = False
          ) -> list[trial_lib.TrialResult]:
    """Trains the chunk; with `checkpoint`, resumes from its last save and saves every
    `checkpoint_every` epochs (not after the last: the results are about to be committed);
    `read_every_epoch`: see `train_population`."""
    started = time.time()
    state, mask, spec = self._initial_state()
    diverged = np.zeros(self.size, bool)
    epochs = int(self.epochs.max())
    step, start_epoch, spent_before = 0, 0, 0.0
    if checkpoint is not None and checkpoint.latest_epoch() is not None:
      state, meta = checkpoint.restore(state)
      start_epoch, step = int(meta["epochs_done"]), int(meta["step"])
      diverged = np.asarray(meta["diverged"], bool)
      spent_before = float(meta["seconds"])
      self.trackers = [_Tracker(**t) for t in meta["trackers"]]
      logging.info("resumed a chunk of %d members at epoch %d from %s", len(self.members),
                   start_epoch, checkpoint.path)
    # Losses stay on the device until an epoch needs the host (an evaluation, a checkpoint,
    # the end): reading them back every epoch would stall the device while the host
    # dispatches the next one. A member that diverges trains on (NaN, alone in its slice of
    # the population) until then; its status and epoch come from the first non-finite loss.
    unread: list[tuple[int, np.ndarray, Any]] = []  # (epoch, active, device losses)
    for epoch in range(start_epoch, epochs):
      active = (epoch < self.epochs) & ~diverged
      if not active.any():
        break
      active_on_device = jax.device_put(active, self.pop)
      inputs = self._epoch_inputs(epoch)
      if self.group.epoch_scan:  # one call for the epoch's steps
        (epoch_batches,) = inputs
        state, step_losses = self.functions.train_epoch(
            state, mask, spec, epoch_batches, np.int32(step), active_on_device)
        step += self.streams.steps_per_epoch
      else:
        step_losses = []
        for batch in inputs:
          state, loss = self.functions.train_step(state, mask, spec, batch, np.int32(step),
                                                  active_on_device)
          step_losses.append(loss)
          step += 1
      unread.append((epoch, active, step_losses))
      save = (checkpoint is not None and checkpoint_every and (epoch + 1) % checkpoint_every == 0
              and epoch + 1 < epochs)
      if (read_every_epoch or save or epoch + 1 == epochs
          or (active & self._evaluated_after(epoch)).any()):
        to_evaluate, epoch_losses = self._read_back(unread, diverged)
        if to_evaluate:
          self._evaluate(epoch, state, spec, to_evaluate, epoch_losses)
      if save:
        checkpoint.save(epoch + 1, state, {
            "epochs_done": epoch + 1, "step": step, "diverged": diverged.tolist(),
            "seconds": spent_before + time.time() - started,
            "trackers": [dataclasses.asdict(t) for t in self.trackers]})
      if on_epoch is not None:
        on_epoch(epoch, epochs)
    seconds = (spent_before + time.time() - started) / len(self.members)
    return [self._result(m, t, n, seconds)
            for m, t, n in zip(self.members, self.trackers, self.num_params)]

  def _epoch_inputs(self, epoch: int) -> list | Iterator:
    """The epoch's training input on the device: [[steps, ...] stacked batches] for an epoch
    scan, else its batches (put one by one as the steps run). A full-batch task's input is the
    same every epoch, so it is put once per chunk."""
    if self._static_input is not None:
      return self._static_input
    if self.group.epoch_scan:
      inputs = [jax.device_put(_stack_steps(list(self.streams.train_batches(epoch))),
                               self.replicated)]
    else:
      inputs = (jax.device_put(batch, self.replicated)
                for batch in self.streams.train_batches(epoch))
    if self.streams.static_train:
      self._static_input = list(inputs)
      return self._static_input
    return inputs

  def _read_back(self, unread: list, diverged: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Reads the unread epochs' losses in order, marking divergences (`_after_epoch`), and
    empties `unread`; returns the members to evaluate after the last of them and its
    [steps, size] losses."""
    to_evaluate, epoch_losses = [], None
    for epoch, active, device_losses in unread:
      epoch_losses = np.asarray(jax.device_get(device_losses), np.float32)
      # A member that diverged at an earlier unread epoch is not active any more.
      to_evaluate = self._after_epoch(epoch, active & ~diverged, epoch_losses, diverged)
    unread.clear()
    return to_evaluate, epoch_losses

  def _evaluated_after(self, epoch: int) -> np.ndarray:
    """[size] bool: the members evaluated after `epoch` if active: the first epoch, every
    eval_every-th, and each member's last (as loop.fit)."""
    if epoch == 0 or (epoch + 1) % self.eval_every == 0:
      return np.ones(self.size, bool)
    return self.epochs == epoch + 1

  def _after_epoch(self, epoch: int, active: np.ndarray, epoch_losses: np.ndarray,
                   diverged: np.ndarray) -> list[int]:
    """Marks members whose epoch loss is non-finite as diverged (loop.fit stops them there);
    returns the members to evaluate at this epoch."""
    to_evaluate, due = [], self._evaluated_after(epoch)
    for i, tracker in enumerate(self.trackers):
      if not active[i]:
        continue
      if not math.isfinite(_epoch_loss(epoch_losses, i)):
        diverged[i] = True
        tracker.status, tracker.diverged_epoch = trial_lib.DIVERGED, epoch
        continue
      if due[i]:
        to_evaluate.append(i)
    return to_evaluate

  def _evaluate(self, epoch: int, state, spec, members: list[int],
                epoch_losses: np.ndarray) -> None:
    parts: list[dict[str, list]] = [{} for _ in members]
    chosen = np.asarray(members)
    for stacked, splits in self.streams.eval_batches():
      on_device, targets = self._eval_batch(stacked, splits)
      outputs = self.functions.predict(state["params"], state["batch_stats"], spec, on_device)
      outputs = np.asarray(jax.device_get(outputs[chosen]))
      for row, i in enumerate(members):
        seed_index = self.streams.seed_index(self.members[i].seed)
        for split, (labels, mask) in targets[seed_index].items():
          rows = mask if mask.ndim == 1 else mask.any(axis=1)
          parts[row].setdefault(split, []).append((outputs[row][rows], labels[rows], mask[rows]))
    for row, i in enumerate(members):
      results = _score(parts[row], self.task_type, self.metric_names)
      tracker = self.trackers[i]
      tracker.history.append({"epoch": epoch, "epoch_loss": _epoch_loss(epoch_losses, i),
                              **{f"{s}_{k}": v for s, r in results.items() for k, v in r.items()}})
      value = results[self.selection_split][self.metric]
      if tracker.best_value is None or metrics_lib.is_better(self.metric, value,
                                                             tracker.best_value):
        tracker.best_value, tracker.best = value, results

  def _eval_batch(self, stacked: jraph.GraphsTuple, splits: tuple[str, ...]
                  ) -> tuple[jraph.GraphsTuple, list[dict]]:
    """A stacked eval batch on the device, and per seed its split -> (labels, mask); both
    made once per chunk (the streams hand out the same eval batches every time)."""
    key = id(stacked)
    if key not in self._eval_cache:
      targets = [
          {split: tuple(np.asarray(a) for a in losses.targets_and_mask(
              jax.tree.map(lambda a, s=s: a[s], stacked), self.task_level, self.task_type,
              split)) for split in splits}
          for s in range(len(self.streams.seeds))]
      self._eval_cache[key] = (stacked, jax.device_put(stacked, self.replicated), targets)
    return self._eval_cache[key][1:]

  def _result(self, member: _Member, tracker: _Tracker, num_params: int,
              seconds: float) -> trial_lib.TrialResult:
    return trial_lib.TrialResult(
        key=trial_lib.TrialKey(task=self.task_name, design_id=member.design.design_id,
                               seed=member.seed),
        design=member.resolved.to_dict(), num_params=num_params, status=tracker.status,
        history=tracker.history,
        final=loop.split_record(tracker.history[-1]) if tracker.history else {},
        best=tracker.best, diverged_epoch=tracker.diverged_epoch, seconds=seconds)


def _epoch_loss(epoch_losses: np.ndarray, member: int) -> float:
  """loop.fit's epoch loss: the float32 mean of the epoch's step losses."""
  return float(np.mean(np.ascontiguousarray(epoch_losses[:, member])))


def _is_out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)


# ----------------------------------------------------------------------------------------------
# Public entry point.


def train_population(designs: Sequence[Design], dataset: ds.GraphDataset, seeds: Sequence[int],
                     *, eval_every: int = 20, max_parallel: int | None = None,
                     devices: Sequence[jax.Device] | None = None,
                     progress: ProgressFn | None = None,
                     checkpoint_dir: str | os.PathLike | None = None,
                     checkpoint_every: int = 50,
                     split_aggregations: bool | None = None,
                     split_stages: bool | str | None = None,
                     split_depths: bool | str | None = None,
                     precompile: bool | str | None = None,
                     scan_layers: bool | None = None,
                     block_aggregation: bool | None = None,
                     block_extremes: bool | None = None,
                     epoch_scan: bool | None = None,
                     one_batch_shape: bool | str | None = None,
                     width_multiple: int | None = None,
                     layout_cover: Sequence[Design] | None = None,
                     size_buckets: bool = False,
                     read_every_epoch: bool = False) -> list[trial_lib.TrialResult]:
  """Trains every (design, seed) with GraphGym's protocol, many at once.

  Args:
    designs: the designs as planned (dim_inner None: budget-matched per dataset).
    dataset: the task (split per seed with protocol 'graphgym', as reference.train_design);
      integer (categorical) node features are one-hot encoded first
      (`gnnjax.data.one_hot_node_features`).
    seeds: seeds; every design is trained once per seed.
    eval_every: evaluate every k epochs (and after the first and each member's last epoch).
    max_parallel: members per chunk (rounded up to a multiple of the device count with frozen
      padding members); default: as many as fit MEMORY_FRACTION of the devices' memory
      (`members_per_chunk`).
    devices: devices the population axis is sharded over (default: all local devices).
    progress: called as progress(done, total, info) after every epoch of every chunk and when
      a chunk finishes; `done` counts finished trials; info holds 'chunk', 'chunks',
      'members', 'size' (padded), 'program' (layout, optimizers, steps per epoch), 'budget'
      (largest batch: nodes, edges, graphs), 'seconds' and, per epoch, 'epoch' (1-based) and
      'epochs'; a chunk resumed from a checkpoint adds 'resumed_at' (epochs it had done).
    checkpoint_dir: if set, every chunk saves its state here every `checkpoint_every` epochs,
      and a chunk saved by an earlier call whose trials are all asked for again continues
      from its last save (`gnnjax.design.checkpoints`). A chunk's folder is deleted once its
      results are handed over.
    checkpoint_every: epochs between saves (with checkpoint_dir).
    split_aggregations: give designs with max/min aggregation their own programs (default:
      `split_aggregations_by_default`: on).
    split_stages: give skipconcat designs their own programs, so the others do not carry its
      (l_mp + 1) d wide stage buffer (more compilations): True, False, or ADAPTIVE (only
      where both parts keep MIN_MEMBERS_TO_SPLIT members); default: `split_stages_by_default`
      (CPU: True; accelerators: ADAPTIVE).
    split_depths: the same for designs with more than SHALLOW_LAYERS_MP message-passing layers
      apart from shallower ones, which would otherwise compute the deep ones' layers as
      identities; default: `split_depths_by_default` (CPU: True; accelerators: ADAPTIVE).
    precompile: True: compile the programs of the groups (every batch shape their epochs
      use) concurrently in threads before training starts, `precompile_window` of them at a
      time (the next window when the run reaches it); OVERLAP: the same compilations
      in background threads while training runs, each chunk waiting only for its own
      program; False: each program compiles when its chunk first calls it (default:
      `precompile_by_default`). Only with more than one group.
    scan_layers: run the message-passing layers as one `lax.scan` (default:
      `scan_layers_by_default`: on); the same results up to float reassociation.
    block_aggregation: aggregate add/mean (and GCN's and GAT's) over dense per-graph blocks
      where the graphs are small (`block_nodes_for`; default: `block_aggregation_by_default`);
      the same results up to float reassociation.
    block_extremes: with block_aggregation, max/min over the same blocks too (a fused masked
      reduction instead of a scatter of messages; default: `block_extremes_by_default`); the
      same results, gradients included.
    epoch_scan: where every batch of an epoch has one shape (programs that aggregate by
      blocks only), train a whole epoch per jitted call, a `lax.scan` over its steps, instead
      of one call per step (default: `epoch_scan_by_default`); the same results up to float
      reassociation.
    one_batch_shape: pad every batch of a group to the largest shape its run uses, so that
      its train step and predict compile once instead of once per rung of the budget ladder:
      True, False, or ADAPTIVE (where that adds at most ONE_SHAPE_MAX_PADDING of the node +
      edge slots); default: `one_batch_shape_by_default`. Programs that aggregate by blocks
      only always run on one shape. The same results up to float reassociation.
    width_multiple: round each program's hidden, head and layer-input widths up to a
      multiple of this (`superset.Layout.width_multiple`; default:
      `width_multiple_by_default`); the padded channels are exact zeros, so the same results
      up to float reassociation.
    layout_cover: designs (as planned) that every program's layout also holds where they
      would join its group, e.g. a whole design space: a program then depends on which
      groups the population has, not on which of their designs it trains, so the repeated
      small populations of a search (`gnnjax.search.TrainingEvaluator`) compile each
      program once instead of every round. Wider layouts change no result (padded channels
      and layers are exact zeros and identities) and cost the members their extra width.
    size_buckets: pad every chunk with frozen members to a power of two (at least
      `size_bucket_floor`: 4 on accelerators; then to a multiple of the device count), so
      that populations of varying size share programs.
    read_every_epoch: read every epoch's losses back before the next epoch starts, so that
      an epoch `progress` reports has run on the device (timing and profiling windows,
      `benchmarks/population_profile.py`). By default they are read at evaluations,
      checkpoints and the end, and between those the host dispatches ahead of the device
      (progress then reports epochs dispatched). The same results either way.

  Returns:
    One TrialResult per (design, seed), designs outer and seeds inner, as
    reference.train_design returns it (up to float reassociation).
  """
  results: list[trial_lib.TrialResult | None] = [None] * (len(designs) * len(seeds))
  for index, result in _train(
      designs, dataset, seeds, eval_every=eval_every, max_parallel=max_parallel,
      devices=devices, progress=progress, checkpoint_dir=checkpoint_dir,
      checkpoint_every=checkpoint_every, split_aggregations=split_aggregations,
      split_stages=split_stages, split_depths=split_depths,
      precompile=precompile, scan_layers=scan_layers, block_aggregation=block_aggregation,
      block_extremes=block_extremes, epoch_scan=epoch_scan, one_batch_shape=one_batch_shape,
      width_multiple=width_multiple, layout_cover=layout_cover, size_buckets=size_buckets,
      read_every_epoch=read_every_epoch):
    results[index] = result
  return results


def iter_population(designs: Sequence[Design], dataset: ds.GraphDataset, seeds: Sequence[int],
                    **kwargs: Any) -> Iterator[trial_lib.TrialResult]:
  """`train_population`, yielding each chunk's results as soon as the chunk finishes (in
  completion order; keys say which trial each is), so a caller can commit them at once.

  A chunk's checkpoint is deleted when the generator is resumed after its last result, i.e.
  after the caller has processed (committed) them."""
  for _, result in _train(designs, dataset, seeds, **kwargs):
    yield result


def _train(designs: Sequence[Design], dataset: ds.GraphDataset, seeds: Sequence[int], *,
           eval_every: int = 20, max_parallel: int | None = None,
           devices: Sequence[jax.Device] | None = None, progress: ProgressFn | None = None,
           checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 50,
           split_aggregations: bool | None = None, split_stages: bool | str | None = None,
           split_depths: bool | str | None = None, precompile: bool | str | None = None,
           scan_layers: bool | None = None, block_aggregation: bool | None = None,
           block_extremes: bool | None = None, epoch_scan: bool | None = None,
           one_batch_shape: bool | str | None = None, width_multiple: int | None = None,
           layout_cover: Sequence[Design] | None = None, size_buckets: bool = False,
           read_every_epoch: bool = False) -> Iterator[tuple[int, trial_lib.TrialResult]]:
  """(member index, result) for every member, chunk by chunk (arguments: `train_population`;
  an unknown keyword is a TypeError here, as it would be there)."""
  if eval_every < 1:
    raise ValueError(f"eval_every must be >= 1, got {eval_every}")
  if max_parallel is not None and max_parallel < 1:
    raise ValueError(f"max_parallel must be >= 1 or None, got {max_parallel}")
  if checkpoint_dir is not None and checkpoint_every < 1:
    raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
  seeds = [int(s) for s in seeds]
  if not designs or not seeds:
    return
  # Before anything reads the data, the checkpoint fingerprint included: a resumed call sees
  # the same encoded features (the encoding is a deterministic function of the dataset).
  dataset = transforms.one_hot_node_features(dataset)
  devices = list(devices) if devices is not None else jax.local_devices()
  mesh = jax.make_mesh((len(devices),), (POP_AXIS,), (jax.sharding.AxisType.Auto,),
                       devices=devices)
  members = _resolve_members(designs, dataset, seeds)
  streams: dict[int, _SeedStreams] = {}

  def streams_for(batch_size: int) -> _SeedStreams:
    batch_size = stream_batch_size(dataset, batch_size)  # one build per distinct stream
    if batch_size not in streams:
      streams[batch_size] = _SeedStreams(dataset, seeds, batch_size)
    return streams[batch_size]

  if epoch_scan is None:
    epoch_scan = epoch_scan_by_default(devices)
  pending = []  # (group, chunk, padded size, checkpoint or None)
  fingerprint = None
  if checkpoint_dir is not None:
    fingerprint = checkpoints_lib.dataset_fingerprint(dataset)
    pending, members_left = _resumable_chunks(members, dataset, streams_for, mesh,
                                              checkpoint_dir, fingerprint, eval_every,
                                              epoch_scan)
  else:
    members_left = members
  if split_aggregations is None:
    split_aggregations = split_aggregations_by_default(devices)
  if scan_layers is None:
    scan_layers = scan_layers_by_default(devices)
  if block_aggregation is None:
    block_aggregation = block_aggregation_by_default(devices)
  if block_extremes is None:
    block_extremes = block_extremes_by_default(devices)
  if split_stages is None:
    split_stages = split_stages_by_default(devices)
  if split_depths is None:
    split_depths = split_depths_by_default(devices)
  if one_batch_shape is None:
    one_batch_shape = one_batch_shape_by_default(devices)
  if width_multiple is None:
    width_multiple = width_multiple_by_default(devices)
  cover = _cover_by_key(layout_cover or (), dataset, split_aggregations, split_stages,
                        split_depths)
  for group_members in _group_members(members_left, dataset, split_aggregations, split_stages,
                                      split_depths):
    key = _forced_key(group_members[0].resolved, dataset, split_aggregations, split_stages,
                      split_depths)
    group = _Group(group_members, dataset, streams_for(group_members[0].resolved.batch_size),
                   mesh, max_parallel, scan_layers=scan_layers,
                   block_aggregation=block_aggregation, block_extremes=block_extremes,
                   epoch_scan=epoch_scan, one_batch_shape=one_batch_shape,
                   width_multiple=width_multiple, cover=cover.get(key, ()),
                   size_buckets=size_buckets)
    pending.extend((group, chunk, group.size, None) for chunk in group.chunks)

  if precompile is None:
    precompile = precompile_by_default(devices)
  compiling = (_precompile_all(pending, dataset, eval_every, wait=False)
               if precompile == OVERLAP else {})
  window = precompile_window(devices) if precompile is True else None
  try:
    yield from _run_chunks(pending, len(members), dataset, eval_every, progress,
                           checkpoint_dir, checkpoint_every, fingerprint, compiling, window,
                           read_every_epoch)
  finally:
    for future in compiling.values():
      future.cancel()  # the rest, if the caller stopped early (compilations under way finish)


def _run_chunks(pending: list, total: int, dataset: ds.GraphDataset,
                eval_every: int, progress: ProgressFn | None,
                checkpoint_dir: str | os.PathLike | None, checkpoint_every: int,
                fingerprint: str | None, compiling: dict[tuple[int, int], Any],
                window: int | None = None, read_every_epoch: bool = False
                ) -> Iterator[tuple[int, trial_lib.TrialResult]]:
  """Trains the pending (group, chunk, size, checkpoint) in order, `total` trials in all
  (see `_train`). `compiling`: the futures of programs compiling in the background; with a
  `window`, a chunk whose program has not been precompiled first compiles it and the next
  window - 1 programs of the run (in threads; see `precompile_window`)."""
  done, started, chunk_index = 0, time.time(), 0
  attempted = set(compiling)  # programs precompiled, or left to compile when they run
  while pending:
    group, chunk, size, checkpoint = pending.pop(0)
    chunk_index += 1
    if window is not None and (id(group), size) not in attempted:
      compiling.update(_precompile_all([(group, chunk, size, checkpoint)] + pending, dataset,
                                       eval_every, wait=True, limit=window, skip=attempted))
      attempted.update(compiling)
      attempted.add((id(group), size))  # a window of one is not precompiled
    if (id(group), size) in compiling:
      _wait_for_compilation(compiling[id(group), size])
    if checkpoint_dir is not None and checkpoint is None:
      checkpoint = checkpoints_lib.ChunkCheckpoint(checkpoint_dir, _describe(
          dataset, fingerprint, eval_every, chunk, group, size))
    resumed_at = checkpoint.latest_epoch() if checkpoint is not None else None
    info = {"chunk": chunk_index, "chunks": chunk_index + len(pending), "members": len(chunk),
            "size": size, "program": group.program, "budget": group.streams.largest_budget()}
    if resumed_at:
      info["resumed_at"] = resumed_at

    def on_epoch(epoch: int, epochs: int) -> None:
      if progress is not None:
        progress(done, total, {**info, "epoch": epoch + 1, "epochs": epochs,
                                      "seconds": time.time() - started})

    try:
      chunk_results = _ChunkRun(group, chunk, dataset, eval_every, size).run(
          on_epoch, checkpoint, checkpoint_every, read_every_epoch)
    except Exception as error:  # a chunk that does not fit is split; other errors propagate
      if not _is_out_of_memory(error):
        raise
      if checkpoint is not None:
        checkpoint.remove()
      if len(chunk) > 1:
        logging.warning("a chunk of %d members ran out of memory; splitting it", len(chunk))
        halves = chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]
        half_size = group.round_up(len(halves[1]))  # a smaller program: one more compilation
        pending[:0] = [(group, half, half_size, None) for half in halves]
        chunk_index -= 1
        continue
      checkpoint = None
      chunk_results = [_train_alone(chunk[0], dataset, eval_every)]
    done += len(chunk)
    if progress is not None:
      progress(done, total, {**info, "seconds": time.time() - started})
    if not any(other is group for other, *_ in pending):
      group.functions = None  # its executables go once no cache or run holds them (see window)
    for member, result in zip(chunk, chunk_results):
      yield member.index, result
    if checkpoint is not None:
      checkpoint.remove()  # after the caller has taken (committed) every result


def _precompile_all(pending: list, dataset: ds.GraphDataset, eval_every: int, wait: bool,
                    limit: int | None = None, skip: Collection[tuple[int, int]] = ()
                    ) -> dict[tuple[int, int], concurrent.futures.Future]:
  """Compiles the programs of the first `limit` (default: every) distinct (group, padded
  size) not in `skip` in threads, in run order (one compilation per group is otherwise paid
  chunk after chunk): with `wait`, all before returning; else in the background. Returns the
  future of each (id(group), size)."""
  runs = {}
  for group, chunk, size, _ in pending:
    key = (id(group), size)
    if key not in runs and key not in skip:
      if limit is not None and len(runs) == limit:
        break
      runs[key] = _ChunkRun(group, chunk, dataset, eval_every, size)
  if len(runs) < 2:
    return {}  # nothing to overlap
  started = time.time()

  def compile_one(run: _ChunkRun) -> None:
    programs = run.precompile()
    logging.info("compiled %d programs of a %d-member chunk at %.1f s", programs, run.size,
                 time.time() - started)

  # In the background, few threads in run order: the first chunk's program, wanted first, does
  # not share the GIL (tracing) and the device (XLA's autotuning) with every other group's.
  threads = min(len(runs), os.cpu_count() or 1)
  if not wait:
    threads = min(threads, OVERLAP_THREADS)
  pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="gnnjax-compile")
  futures = {key: pool.submit(compile_one, run) for key, run in runs.items()}
  pool.shutdown(wait=False)  # the threads end with their work
  if wait:
    for future in futures.values():
      _wait_for_compilation(future)
    logging.info("compiled %d population programs in %.1f s", len(runs), time.time() - started)
  return futures


def _wait_for_compilation(future: concurrent.futures.Future) -> None:
  """Waits for a program's precompilation. A failure is only logged: the chunk then compiles
  (or fails) when it runs."""
  try:
    future.result()
  except concurrent.futures.CancelledError:
    pass
  except Exception as error:  # pylint: disable=broad-except
    logging.warning("precompiling a population program failed (%s); it compiles when it runs",
                    str(error)[:500])


def _json_design(design: Design) -> dict[str, Any]:
  return json.loads(json.dumps(design.to_dict()))


def _describe(dataset: ds.GraphDataset, fingerprint: str, eval_every: int,
              chunk: list[_Member], group: _Group, size: int) -> dict[str, Any]:
  return checkpoints_lib.manifest(
      task=dataset.name, fingerprint=fingerprint, eval_every=eval_every,
      members=[(m.design.design_id, m.seed, _json_design(m.resolved)) for m in chunk],
      program=group.program, size=size, num_devices=group.num_devices,
      pad_to=group.streams.pad_to)


# Layout fields that manifests of earlier versions hold and that no longer exist. They chose an
# implementation, not a shape, so a chunk saved with them resumes as it is.
_RETIRED_LAYOUT_FIELDS = ("block_kernel",)  # 2026-12-03: block max is 'auto' everywhere


def _program_from_json(payload: Mapping[str, Any]) -> _Program:
  layout = superset.Layout(**{k: checkpoints_lib.tuples(v)
                              for k, v in payload["layout"].items()
                              if k not in _RETIRED_LAYOUT_FIELDS})
  return _Program(layout, tuple(payload["optimizers"]), payload["task_type"],
                  int(payload["steps_per_epoch"]))


def _resumable_chunks(members: list[_Member], dataset: ds.GraphDataset,
                      streams_for: Callable[[int], _SeedStreams], mesh: jax.sharding.Mesh,
                      checkpoint_dir: str | os.PathLike, fingerprint: str, eval_every: int,
                      epoch_scan: bool = False):
  """Chunks saved by an earlier call whose members are all asked for again, rebuilt with their
  saved programs: ([(group, chunk, size, checkpoint)], the members they do not cover)."""
  by_key = {(m.design.design_id, m.seed): m for m in members}
  found = checkpoints_lib.find_resumable(
      checkpoint_dir, task=dataset.name, fingerprint=fingerprint, eval_every=eval_every,
      num_devices=mesh.devices.size,
      available={key: _json_design(m.resolved) for key, m in by_key.items()})
  chunks, taken = [], set()
  for checkpoint in found:
    description = checkpoint.description
    chunk = [by_key[(d, int(s))] for d, s, _ in description["members"]]
    program = _program_from_json(description["program"])
    streams = streams_for(chunk[0].resolved.batch_size)
    if program.steps_per_epoch != streams.steps_per_epoch:
      continue
    pad_to = description.get("pad_to")  # absent in manifests written before it was recorded
    group = _Group(chunk, dataset, streams, mesh, None,
                   saved=(program, description["size"], tuple(pad_to) if pad_to else None),
                   epoch_scan=epoch_scan)
    chunks.append((group, chunk, group.size, checkpoint))
    taken.update(id(m) for m in chunk)
  return chunks, [m for m in members if id(m) not in taken]


def _cover_by_key(designs: Sequence[Design], dataset: ds.GraphDataset,
                  split_aggregations: bool, split_stages: bool | str,
                  split_depths: bool | str) -> dict[tuple, list[Design]]:
  """`train_population`'s layout_cover, resolved for `dataset` and grouped by the key of the
  forced splits (`_forced_key`). An ADAPTIVE split of a group leaves both parts the whole
  key's cover: wider than needed, the same for every call."""
  cover: dict[tuple, list[Design]] = collections.defaultdict(list)
  for design in designs:
    _, resolved = graphgym.build_model(design, dataset)
    cover[_forced_key(resolved, dataset, split_aggregations, split_stages,
                      split_depths)].append(resolved)
  return cover


def _resolve_members(designs: Sequence[Design], dataset: ds.GraphDataset,
                     seeds: Sequence[int]) -> list[_Member]:
  members = []
  for design in designs:
    model, resolved = graphgym.build_model(design, dataset)
    for seed in seeds:
      members.append(_Member(len(members), design, resolved, seed, model))
  return members


def _train_alone(member: _Member, dataset: ds.GraphDataset,
                 eval_every: int) -> trial_lib.TrialResult:
  """A member whose padded program does not fit: trained alone and unpadded (loop.fit), or
  reported 'failed' if that does not fit either."""
  logging.warning("%s (seed %d) does not fit in a population; training it alone",
                  member.resolved.summary(), member.seed)
  try:
    return reference.train_design(member.design, dataset, member.seed, eval_every)
  except Exception as error:
    if not _is_out_of_memory(error):
      raise
    return _failed(member, dataset, str(error))


def _failed(member: _Member, dataset: ds.GraphDataset, message: str) -> trial_lib.TrialResult:
  return trial_lib.TrialResult(
      key=trial_lib.TrialKey(task=dataset.name, design_id=member.design.design_id,
                             seed=member.seed),
      design=member.resolved.to_dict(), num_params=0, status=trial_lib.FAILED,
      message=message[:2000])
