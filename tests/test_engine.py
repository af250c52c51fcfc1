"""The population engine against the trusted path: every member of a population must train as
`reference.train_design` (loop.fit) trains the same design and seed alone.

Data: tiny hand-built circulant graphs (every graph has 12 nodes and 48 directed edges, so a
batch budget ladder has one rung and each program compiles once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gnnjax import graph as graph_lib
from gnnjax.data import dataset as ds
from gnnjax.design import Design, engine, reference
from gnnjax.design import trial as trial_lib
from gnnjax.models import graphgym, superset
from gnnjax.training import loop

TOLERANCE = 1e-4  # absolute, on losses and accuracies (float reassociation only)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_dataset(level: str = ds.NODE, num_graphs: int = 8, num_nodes: int = 12,
                 seed: int = 0) -> ds.GraphDataset:
  """Circulant graphs C_n(1, k): 4 edges per node in both directions; 3 classes."""
  rng = np.random.default_rng(seed)
  nodes = np.arange(num_nodes)
  graphs = []
  for g in range(num_graphs):
    k = 2 + g % 4
    senders = np.tile(nodes, 4)
    receivers = np.concatenate([(nodes + 1) % num_nodes, (nodes - 1) % num_nodes,
                                (nodes + k) % num_nodes, (nodes - k) % num_nodes])
    x = rng.normal(size=(num_nodes, 4)).astype(np.float32)
    if level == ds.NODE:
      score = x[:, 0] + 0.5 * (x[(nodes + 1) % num_nodes, 1] + x[(nodes - 1) % num_nodes, 1])
      y = np.digitize(score, [-0.5, 0.5]).astype(np.int32)
      graphs.append(ds.make_graph(senders, receivers, num_nodes, {"x": x, "y": y}))
    else:
      graphs.append(ds.make_graph(senders, receivers, num_nodes, {"x": x},
                                  graph_features={"y": np.array([g % 3], np.int32)}))
  return ds.GraphDataset(f"tiny/{level}", graphs, level, ds.MULTICLASS, 3)


BASE = Design(dim_inner=6, epochs=4, batch_size=4)
# Structurally different designs: every stage type, activation, aggregation, optimizer, batch
# norm on and off, dropout 0 and > 0, different layer counts, widths, rates and epoch counts.
DESIGNS = [
    BASE,
    BASE.replace(dim_inner=5, stage_type="skipconcat", layers_mp=2, activation="prelu",
                 aggregation="max", dropout=0.3, layers_post_mp=2, optimizer="sgd",
                 learning_rate=0.05, epochs=5),
    BASE.replace(stage_type="skipsum", layers_pre_mp=2, aggregation="mean", batch_norm=False,
                 optimizer="adamw", learning_rate=0.003, epochs=3),
    BASE.replace(conv_variant="self", activation="swish", layers_mp=1, dropout=0.6,
                 learning_rate=0.02),
    BASE.replace(stage_type="skipconcat", layers_mp=1, aggregation="mean", activation="swish"),
    BASE.replace(layers_pre_mp=2, batch_norm=False, aggregation="max", optimizer="sgd"),
    BASE.replace(dim_inner=5, stage_type="skipsum", layers_mp=1, l2norm=False, epochs=2),
    BASE.replace(dim_inner=4, stage_type="skipconcat", layers_post_mp=2, dropout=0.3),
]  # 8 different structures; the first four are compared with runs of their own
DIVERGING = BASE.replace(optimizer="sgd", learning_rate=1e15)  # NaN loss in epoch 1
HARMLESS = BASE.replace(optimizer="sgd", learning_rate=1e-3)  # same structure, converges
SEEDS = [1, 2]
CHUNK = 5  # 18 members -> chunks of 5, 5, 5, 3
REFERENCE_CASES = [(0, 1), (1, 2), (2, 1), (3, 1)]  # (design index, seed)


def _traces(run):
  before = dict(engine.TRACE_COUNTS)
  out = run()
  return out, {k: v - before.get(k, 0) for k, v in engine.TRACE_COUNTS.items()
               if v != before.get(k, 0)}


@pytest.fixture(scope="module")
def node_data():
  return tiny_dataset()


@pytest.fixture(scope="module")
def with_diverging(node_data):
  """The designs and a diverging one, five at a time: (results, traces, progress calls)."""
  calls = []
  results, traces = _traces(lambda: engine.train_population(
      DESIGNS + [DIVERGING], node_data, SEEDS, eval_every=2, max_parallel=CHUNK,
      progress=lambda done, total, info: calls.append((done, total, info)),
      split_aggregations=False, split_stages=False))
  return results, traces, calls


@pytest.fixture(scope="module")
def without_diverging(node_data, with_diverging):
  """The same run with the diverging design replaced by a harmless one of its structure."""
  return _traces(lambda: engine.train_population(DESIGNS + [HARMLESS], node_data, SEEDS,
                                                 eval_every=2, max_parallel=CHUNK,
                                                 split_aggregations=False,
                                                 split_stages=False))


@pytest.fixture(scope="module")
def references(node_data):
  return {(i, seed): reference.train_design(DESIGNS[i], node_data, seed, eval_every=2)
          for i, seed in REFERENCE_CASES}


def _result(results, design_index, seed):
  return results[design_index * len(SEEDS) + SEEDS.index(seed)]


def assert_same_trial(got: trial_lib.TrialResult, want: trial_lib.TrialResult,
                      tolerance: float = TOLERANCE) -> None:
  assert got.key == want.key
  assert got.design == want.design
  assert got.num_params == want.num_params
  assert (got.status, got.diverged_epoch) == (want.status, want.diverged_epoch)
  assert [r["epoch"] for r in got.history] == [r["epoch"] for r in want.history]
  for got_record, want_record in zip(got.history, want.history):
    assert got_record.keys() == want_record.keys()
    for name, value in want_record.items():
      assert got_record[name] == pytest.approx(value, abs=tolerance), (got_record["epoch"], name)
  for which in ("final", "best"):
    got_splits, want_splits = getattr(got, which), getattr(want, which)
    assert got_splits.keys() == want_splits.keys()
    for split, metrics in want_splits.items():
      for name, value in metrics.items():
        assert got_splits[split][name] == pytest.approx(value, abs=tolerance), (which, split)


# ----------------------------------------------------------------------------------------------
# Equivalence with trials trained alone.


@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_member_matches_design_trained_alone(with_diverging, references, case):
  results, _, _ = with_diverging
  got = _result(results, *case)
  assert got.status == trial_lib.OK and len(got.history) >= 3
  assert_same_trial(got, references[case])


def test_results_come_in_input_order(with_diverging, node_data):
  results, _, _ = with_diverging
  designs = DESIGNS + [DIVERGING]
  assert [(r.key.design_id, r.key.seed) for r in results] == [
      (d.design_id, s) for d in designs for s in SEEDS]
  assert all(r.key.task == node_data.name for r in results)


def test_graph_task_matches_designs_trained_alone():
  # Max pooling then batch norm over graphs makes the last conv's batch-norm shift a symmetry
  # whose gradient is zero up to rounding noise, which Adam turns into full steps, so that case
  # keeps l2norm (which breaks the symmetry) to stay comparable.
  data = tiny_dataset(ds.GRAPH, num_graphs=10)
  designs = [BASE.replace(graph_pooling="mean", dropout=0.3, layers_mp=1),
             BASE.replace(graph_pooling="max", layers_post_mp=2, activation="prelu", layers_mp=1)]
  results = engine.train_population(designs, data, [3], eval_every=2)
  assert [r.status for r in results] == [trial_lib.OK] * 2
  assert_same_trial(results[1], reference.train_design(designs[1], data, 3, eval_every=2))


# ----------------------------------------------------------------------------------------------
# Divergence, chunking, compilation, progress.


def test_diverging_member_is_isolated(with_diverging, without_diverging, node_data):
  results, _, _ = with_diverging
  alone = reference.train_design(DIVERGING, node_data, SEEDS[0], eval_every=2)
  for seed in SEEDS:
    diverged = _result(results, len(DESIGNS), seed)
    assert diverged.status == trial_lib.DIVERGED == alone.status
    assert diverged.diverged_epoch == alone.diverged_epoch == 1
    assert [r["epoch"] for r in diverged.history] == [0]
  # Every other member trains exactly as in the run where a harmless design takes its place
  # (same program: no compilation, and bit-identical results).
  harmless, traces = without_diverging
  assert traces == {}
  assert all(r.status == trial_lib.OK for r in harmless)
  for got, want in zip(results[:-len(SEEDS)], harmless):
    assert (got.history, got.final, got.best) == (want.history, want.final, want.best)


def test_losses_are_read_at_evaluations_and_a_divergence_between_keeps_its_epoch(
    node_data, monkeypatch):
  """The host reads the losses back only when an epoch is evaluated (here 0, 2 and the last,
  3), not after every epoch (unless read_every_epoch); a member that diverges at epoch 1,
  between two reads, still gets epoch 1, its history stops there as when trained alone, and
  its neighbour is unaffected."""
  designs = [DIVERGING, DESIGNS[3]]
  device_get = jax.device_get

  def train(read_every_epoch):
    events = []
    monkeypatch.setattr(jax, "device_get", lambda x: events.append("read") or device_get(x))
    results = engine.train_population(
        designs, node_data, [1], eval_every=3, read_every_epoch=read_every_epoch,
        progress=lambda done, total, info: "epoch" in info and events.append(info["epoch"]))
    monkeypatch.undo()
    read_before = {}  # epoch (1-based) -> whether the host read anything before its report
    for previous, event in zip(["start"] + events, events):
      if event != "read":
        read_before[event] = previous == "read"
    return results, read_before

  every, read_before = train(read_every_epoch=True)
  assert read_before == {1: True, 2: True, 3: True, 4: True}
  results, read_before = train(read_every_epoch=False)
  assert read_before == {1: True, 2: False, 3: True, 4: True}
  # The same program and arithmetic either way: the same trials (the diverged one's history
  # holds NaN losses, so its epochs are compared).
  assert [(r.status, r.diverged_epoch, [h["epoch"] for h in r.history]) for r in results] == [
      (r.status, r.diverged_epoch, [h["epoch"] for h in r.history]) for r in every]
  assert (results[1].history, results[1].best) == (every[1].history, every[1].best)
  alone = reference.train_design(DIVERGING, node_data, 1, eval_every=3)
  assert (results[0].status, results[0].diverged_epoch) == (alone.status, alone.diverged_epoch)
  assert (alone.status, alone.diverged_epoch) == (trial_lib.DIVERGED, 1)
  assert [r["epoch"] for r in results[0].history] == [r["epoch"] for r in alone.history] == [0]
  assert_same_trial(results[1], reference.train_design(designs[1], node_data, 1, eval_every=3))


def test_a_full_batch_task_puts_its_batches_on_the_device_once_per_chunk(node_data,
                                                                         monkeypatch):
  """One full batch per seed: the streams hand out the same stacked batch every epoch, and a
  chunk transfers it (and its evaluation batch) once, not once per epoch; results unchanged."""
  full = BASE.replace(batch_size=len(node_data.graphs), layers_mp=1, epochs=5)
  streams = engine._SeedStreams(node_data, [1, 2], full.batch_size)
  assert streams.static_train
  assert next(iter(streams.train_batches(0))) is next(iter(streams.train_batches(3)))
  shuffled = engine._SeedStreams(node_data, [1, 2], 4)
  assert not shuffled.static_train
  assert next(iter(shuffled.train_batches(0))) is not next(iter(shuffled.train_batches(0)))
  puts = []
  device_put = jax.device_put
  monkeypatch.setattr(jax, "device_put", lambda x, *a, **k: (
      puts.append(type(x).__name__), device_put(x, *a, **k))[1])
  results = engine.train_population([full, full.replace(activation="swish")], node_data, [1],
                                    eval_every=2)
  monkeypatch.undo()
  assert puts.count("GraphsTuple") == 2  # one training batch, one evaluation batch
  assert_same_trial(results[1], reference.train_design(full.replace(activation="swish"),
                                                       node_data, 1, eval_every=2))


def test_chunks_compile_once(with_diverging):
  _, traces, calls = with_diverging
  assert [info["members"] for done, _, info in calls if "epoch" not in info] == [5, 5, 5, 3]
  # Four chunks of 9 different designs (8 structures) x 2 seeds: one program, compiled once.
  assert traces == {"init": 1, "train_step": 1, "predict": 1}


def test_progress_reports_every_epoch_and_each_chunk(with_diverging):
  _, _, calls = with_diverging
  total = (len(DESIGNS) + 1) * len(SEEDS)
  assert all(t == total for _, t, _ in calls)
  assert [done for done, _, info in calls if "epoch" not in info] == [5, 10, 15, total]
  first_chunk = [info["epoch"] for _, _, info in calls if info["chunk"] == 1 and "epoch" in info]
  assert first_chunk == list(range(1, len(first_chunk) + 1)) and first_chunk[-1] >= 3


# ----------------------------------------------------------------------------------------------
# Devices.


_SHARDED_SCRIPT = textwrap.dedent("""
    import dataclasses, json, os, sys
    sys.path.insert(0, {repo!r})
    import jax
    from tests import test_engine as t
    from gnnjax.design import engine
    shardings, layouts = [], []
    init = engine._ChunkRun._initial_state
    def spy(self):
      state, mask, spec = init(self)
      shardings.append(len(jax.tree.leaves(state["params"])[0].sharding.device_set))
      layouts.append(self.program.layout.blocks_only and self.program.layout.block_extremes)
      return state, mask, spec
    engine._ChunkRun._initial_state = spy

    class Recorder:  # a jitted function that keeps its first call's abstract arguments
      def __init__(self, fn):
        self.fn, self.args = fn, None
      def __call__(self, *args):
        if self.args is None:
          self.args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
              a.shape, a.dtype, sharding=a.sharding) if isinstance(a, jax.Array) else a, args)
        return self.fn(*args)
      def lower(self, *args):
        return self.fn.lower(*args)
    members = lambda functions: [getattr(functions, f.name)
                                 for f in dataclasses.fields(functions)]
    recorded, compiled = [], engine._compiled
    def spy_compiled(program, mesh):
      functions = compiled(program, mesh)
      if mesh.size > 1:
        functions = engine._Functions(*(Recorder(f) for f in members(functions)))
        recorded.append(functions)
      return functions
    engine._compiled = spy_compiled
    data = t.tiny_dataset()
    base = t.BASE.replace(layers_mp=1, epochs=3)
    # A max design on the blocks too (the accelerators' default): its custom VJP, sharded.
    designs = [base, base.replace(dropout=0.3, optimizer="sgd", learning_rate=0.05),
               base.replace(aggregation="max", activation="prelu")]
    policies = dict(block_extremes=True, split_aggregations=False)
    one = engine.train_population(designs, data, [1, 2], eval_every=2,
                                  devices=jax.devices()[:1], **policies)
    both = engine.train_population(designs, data, [1, 2], eval_every=2, **policies)
    diff = max(abs(a[k] - b[k]) for x, y in zip(one, both) for a, b in zip(x.history, y.history)
               for k in a)
    same_shape = all(len(x.history) == len(y.history) and x.status == y.status
                     for x, y in zip(one, both))
    # Each device runs its own members: the sharded programs communicate nothing.
    lowered = [f.fn.lower(*f.args) for functions in recorded for f in members(functions)
               if f.args is not None]
    collectives = [op for program in lowered
                   for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute")
                   if op in program.compile().as_text()]
    called = len(lowered)
    manual = all(any(m in program.as_text()
                     for m in ("sdy.manual_computation", "SPMDFullToShardShape"))
                 for program in lowered)
    print(json.dumps({{"devices": jax.device_count(), "shardings": shardings, "diff": diff,
                       "same_shape": same_shape, "max_on_blocks": layouts,
                       "collectives": collectives, "sharded_functions_called": called,
                       "manual": manual}}))
""")


def test_population_axis_shards_over_two_devices_with_the_same_results():
  # Two host devices; LLVM's cheaper settings make the two compilations ~30% faster (the test
  # compares device counts, not speed).
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=" ".join(["--xla_force_host_platform_device_count=2",
                                 "--xla_backend_optimization_level=0",
                                 "--xla_llvm_disable_expensive_passes=true"]))
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT.format(repo=REPO)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["devices"] == 2
  assert report["shardings"] == [1, 2]  # the state lives on both devices in the second run
  # Max on the blocks both times; sharded, each device runs its members as a one-device
  # program (so block max's Pallas kernels can run there on GPUs), with no collectives.
  assert report["max_on_blocks"] == [True, True]
  assert report["sharded_functions_called"] >= 3 and report["collectives"] == []
  assert report["manual"]  # shard_map's per-device programs, not the SPMD partitioner's split
  assert report["same_shape"] and report["diff"] < TOLERANCE


def test_chunks_saved_with_a_retired_layout_field_resume():
  """Manifests written between 2026-12-03 12:40 and the field's removal hold the layout's
  block_kernel, which chose an implementation, not a shape: their programs still rebuild."""
  from gnnjax.design import checkpoints as checkpoints_lib
  layout = superset.Layout.from_designs([BASE.replace(dim_inner=8)], 3, 2, ds.NODE)
  program = engine._Program(layout, ("adam",), "classification", 3)
  payload = checkpoints_lib.program_to_json(program)
  assert engine._program_from_json(payload) == program
  payload["layout"]["block_kernel"] = "xla"
  assert engine._program_from_json(payload) == program


# ----------------------------------------------------------------------------------------------
# Memory-aware packing.


def test_memory_estimate_bounds_xla_and_sets_chunks(node_data, monkeypatch):
  mesh = jax.make_mesh((1,), (engine.POP_AXIS,), (jax.sharding.AxisType.Auto,))
  designs = [BASE.replace(epochs=5), BASE.replace(dim_inner=5, epochs=3), BASE,
             BASE.replace(optimizer="sgd", epochs=2)]
  members = engine._resolve_members(designs, node_data, SEEDS)
  streams = engine._SeedStreams(node_data, SEEDS, BASE.batch_size)
  group = engine._Group(members, node_data, streams, mesh, max_parallel=None)
  assert len(group.chunks) == 1 and group.member_bytes is None  # the estimate fits 2 GiB
  estimate = engine.estimate_member_bytes(group.program.layout, group.program.optimizers,
                                          group.streams.largest_budget())
  probe = engine._ChunkRun(group, members[:2], node_data, eval_every=1, size=2)
  measured = probe.measure_step_bytes() / 2
  assert measured < estimate < 20 * measured
  # With memory for three measured members per chunk, the group is cut in three chunks.
  monkeypatch.setattr(engine, "DEFAULT_CPU_MEMORY",
                      int(3.5 * measured / engine.MEMORY_FRACTION))
  monkeypatch.setattr(engine._ChunkRun, "measure_step_bytes", lambda self: int(measured))
  small = engine._Group(members, node_data, streams, mesh, max_parallel=None)
  assert small.member_bytes == int(measured)
  assert [len(c) for c in small.chunks] == [3, 3, 2] and small.size == 3
  # Chunks follow (epochs, width): members with the fewest epochs come first.
  epochs = [m.resolved.epochs for c in small.chunks for m in c]
  assert epochs == sorted(epochs)


def test_cpu_groups_split_extremal_aggregations(node_data):
  members = engine._resolve_members(DESIGNS, node_data, [1])
  assert engine.split_aggregations_by_default(jax.devices("cpu"))
  assert engine.split_stages_by_default(jax.devices("cpu")) is True
  assert engine.split_depths_by_default(jax.devices("cpu")) is True
  keys = {engine._group_key(m.resolved, node_data, True) for m in members}
  assert keys == {("generalconv", 1, 4, False), ("generalconv", 1, 4, True)}
  assert {engine._group_key(m.resolved, node_data, False) for m in members} == {("generalconv", 1, 4)}


def test_batch_sizes_with_one_full_batch_stream_share_a_program(node_data):
  # node_data has 8 graphs: a node task trains on all of them at once from batch size 8 up, so
  # batch sizes 8 and 16 are one program, while 4 (two steps per epoch) is another.
  assert [engine.stream_batch_size(node_data, b) for b in (4, 8, 16)] == [4, 8, 8]
  graph_data = tiny_dataset(ds.GRAPH)
  assert engine.stream_batch_size(graph_data, 16) == 16
  full = [BASE.replace(batch_size=8), BASE.replace(batch_size=16, aggregation="mean",
                                                   learning_rate=0.003)]
  designs = full + [BASE.replace(batch_size=4)]
  members = engine._resolve_members(designs, node_data, [1])
  groups = engine._group_members(members, node_data, False, False, False)
  assert [[m.design.batch_size for m in g] for g in groups] == [[8, 16], [4]]
  results, traces = _traces(lambda: engine.train_population(
      full, node_data, [1], eval_every=2, split_aggregations=False, precompile=False))
  assert traces == {"init": 1, "train_step": 1, "predict": 1}
  for design, got in zip(full, results):
    assert_same_trial(got, reference.train_design(design, node_data, 1, eval_every=2))


def test_split_groups_compile_up_front_once_each_and_match(with_diverging, node_data):
  # An 'add' design and a 'max' design: two programs on CPU, compiled concurrently before the
  # run (one trace each: the run hits the caches), with the same results as in one program.
  results, traces = _traces(lambda: engine.train_population(
      DESIGNS[:2], node_data, [1], eval_every=2, split_aggregations=True, split_stages=False,
      precompile=True))
  assert traces == {"init": 2, "train_step": 2, "predict": 2}
  for index in range(2):
    assert_same_trial(results[index], _result(with_diverging[0], index, 1))


def test_adaptive_splits_only_where_every_part_fills_min_members(node_data):
  stack, concat = BASE, BASE.replace(stage_type="skipconcat")
  deep = BASE.replace(layers_mp=engine.SHALLOW_LAYERS_MP + 2)
  designs = [stack] * 3 + [concat] * 2 + [deep] * 3  # seeds make them distinct trials
  members = engine._resolve_members(designs, node_data, [1])

  def sizes(stages, depths, min_members):
    groups = engine._group_members(members, node_data, False, stages, depths, min_members)
    assert sorted(m.index for g in groups for m in g) == list(range(len(members)))  # a partition
    for group in groups:  # members keep their order within a group
      assert [m.index for m in group] == sorted(m.index for m in group)
    return sorted(len(g) for g in groups)

  adaptive = engine.ADAPTIVE
  assert sizes(False, False, 1) == [8]
  assert sizes(True, True, 99) == [2, 3, 3]  # forced splits ignore min_members
  # skipconcat: 2 of 8; l_mp > 4: 3 of the 6 others.
  assert sizes(adaptive, adaptive, 2) == [2, 3, 3]
  # At 3: no stage split (2 skipconcat members), then the depth split of all 8 (3 deep).
  assert sizes(adaptive, adaptive, 3) == [3, 5]
  assert sizes(False, adaptive, 3) == [3, 5]
  assert sizes(adaptive, False, 2) == [2, 6]
  assert sizes(adaptive, adaptive, 4) == [8]
  assert sizes(True, adaptive, 3) == [2, 3, 3]  # stages forced, then the 6 split at 3 each
  assert sizes(True, adaptive, 4) == [2, 6]


def test_deep_designs_get_their_own_programs_with_split_depths(node_data):
  deep = BASE.replace(layers_mp=engine.SHALLOW_LAYERS_MP + 1, stage_type="skipsum")
  members = engine._resolve_members([DESIGNS[0], deep], node_data, [1])
  assert [engine._group_key(m.resolved, node_data, False, False, True)[-1] for m in members] == [False, True]
  # Two programs, each only as deep as its designs; the same results as one program (which
  # the population-vs-alone tests compare with each design trained alone).
  programs = set()
  split = engine.train_population(
      [DESIGNS[0], deep], node_data, [1], eval_every=2, split_aggregations=False,
      split_stages=False, split_depths=True,
      progress=lambda done, total, info: programs.add(info["program"]))
  assert sorted(p.layout.layers_mp for p in programs) == [DESIGNS[0].layers_mp,
                                                          engine.SHALLOW_LAYERS_MP + 1]
  together = engine.train_population(
      [DESIGNS[0], deep], node_data, [1], eval_every=2, split_aggregations=False,
      split_stages=False, split_depths=False)
  for got, want in zip(split, together):
    assert_same_trial(got, want)


def test_skipconcat_designs_get_their_own_programs_with_split_stages(with_diverging, node_data):
  members = engine._resolve_members(DESIGNS, node_data, [1])
  assert {engine._group_key(m.resolved, node_data, False, True)[-1] for m in members} == {False, True}
  # DESIGNS[0] is stack, DESIGNS[4] skipconcat, both sum-type: two programs, the same
  # results as in one.
  programs = set()
  results = engine.train_population(
      [DESIGNS[0], DESIGNS[4]], node_data, [1], eval_every=2, split_aggregations=False,
      split_stages=True, progress=lambda done, total, info: programs.add(info["program"]))
  assert sorted(p.layout.head_dim for p in programs) == [6, 12]  # d and (1 + 1) d
  for got, index in zip(results, (0, 4)):
    assert_same_trial(got, _result(with_diverging[0], index, 1))


def test_members_per_chunk_uses_the_device_limit():
  assert engine.members_per_chunk(10, 1, 1000) == int(engine.MEMORY_FRACTION * 100)
  assert engine.members_per_chunk(10, 4, 1000) == 4 * int(engine.MEMORY_FRACTION * 100)
  assert engine.members_per_chunk(10**12, 2, 1000) == 2  # at least one per device
  assert engine.device_memory_bytes(jax.devices("cpu")[0]) == engine.DEFAULT_CPU_MEMORY


# ----------------------------------------------------------------------------------------------
# Superset pieces.


def test_dropout_reads_the_designs_own_mask_out_of_a_padded_draw():
  key = jax.random.PRNGKey(4)
  x = jax.random.normal(jax.random.PRNGKey(5), (7, 10))
  width = 6
  want = nn.Dropout(0.3, deterministic=False).apply({}, x[:, :width], rng=key)
  got = superset.dropout(x.at[:, width:].set(0.0), key, np.float32(0.7), np.int32(width))
  np.testing.assert_array_equal(np.asarray(got[:, :width]), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(got[:, width:]), 0.0)


@pytest.mark.parametrize("make_key", [jax.random.PRNGKey, jax.random.key,
                                      lambda seed: jax.random.key(seed, impl="rbg")],
                         ids=["raw", "typed", "rbg"])
def test_uniform_at_equals_a_whole_draw_gathered(make_key):
  # The dropout mask is computed at the design's counters; it must be the draw's values there,
  # also under vmap over members' keys (rbg keys take the draw-and-gather fallback).
  rows, cols, width = 33, 40, 29
  col = jnp.arange(cols)
  index = jnp.where(col[None, :] < width, jnp.arange(rows)[:, None] * width + col[None, :], 0)
  keys = jax.random.split(make_key(7), 3)
  got = jax.jit(jax.vmap(lambda k: superset._uniform_at(k, rows * cols, index)))(keys)
  want = jax.vmap(lambda k: jax.random.uniform(k, (rows * cols,), jnp.float32)[index])(keys)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert len(np.unique(np.asarray(got))) > rows * width // 2  # not a constant or tiled draw


@pytest.mark.parametrize("design", [
    Design(dim_inner=4, conv_type="gat", heads=2, stage_type="skipconcat", layers_mp=2),
    Design(dim_inner=3, conv_type="sage", batch_norm=False, layers_post_mp=2),
], ids=["gat", "sage"])
def test_init_and_forward_match_the_design_model(node_data, design):
  data, pipe = reference.split_for_seed(node_data, 1, 4)
  model, resolved = graphgym.build_model(design, data)
  # A wider design of the same conv shares the layout, so the real one is padded.
  wider = graphgym.build_model(design.replace(dim_inner=5, stage_type="stack"), data)[1]
  layout = superset.Layout.from_designs([resolved, wider], 4, 3, ds.NODE)
  batch = pipe.example_batch()
  state = jax.jit(lambda key: loop.init_state(model, batch, _identity(), key))(
      jax.random.PRNGKey(9))
  spec = superset.init_spec(layout, *superset.design_variable_shapes(model, 4))
  params, stats, mask = jax.jit(lambda s, k: superset.init_variables(layout, s, k))(
      spec, jax.random.fold_in(jax.random.PRNGKey(9), 0))
  flat, real = superset._flatten(params), superset._flatten(state.params)
  for path, value in real.items():
    padded = np.asarray(flat[path])
    view = superset._view_shape(layout, path, padded.shape)
    real_view = superset._view_shape(layout, path, np.shape(value))
    # Bit-equal for uniform draws; the truncated normal's erf_inv may round differently.
    np.testing.assert_allclose(
        padded.reshape(view)[tuple(slice(0, n) for n in real_view)].reshape(np.shape(value)),
        np.asarray(value), rtol=1e-6, atol=1e-7)
  assert sum(int(np.sum(m)) for m in jax.tree.leaves(mask)) == reference.count_params(real)
  want = jax.jit(model.apply)({"params": state.params, "batch_stats": state.batch_stats}, batch)
  got, _ = jax.jit(lambda *args: superset.apply(layout, *args))(
      params, stats, superset.design_spec(layout, resolved), batch)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def _assert_layouts_agree(node_data, designs, reference_layout, layout, train, seed, count):
  """The first `count` designs give the same outputs, updated batch statistics and parameter
  gradients (with dropout) under `layout` as under `reference_layout`, on one training batch
  of `node_data`. Each layout initialises a design from the same key (both read the design's
  own draw out of their padded one); where `layout` pads wider (`width_multiple`), its arrays
  are compared on the reference's channels, since padding sits at the end of every axis of
  `superset._view_shape` (GAT's kernel: of every head's block)."""
  data, _ = reference.split_for_seed(node_data, 1, 4)
  batch = jax.tree.map(lambda a: np.asarray(a)[0], next(iter(
      engine._SeedStreams(node_data, [1], 4).train_batches(0))))
  weights = np.random.default_rng(seed).normal(size=(batch.nodes["x"].shape[0], 3))

  @functools.partial(jax.jit, static_argnums=0)
  def run(layout, params, stats, spec, keys):
    def loss(p):
      out, new = superset.apply(layout, p, stats, spec, batch, train, keys)
      return jnp.sum(out * weights), (out, new)
    return jax.grad(loss, has_aux=True)(params)

  for index, design in enumerate(designs[:count]):
    shapes = superset.design_variable_shapes(graphgym.build_model(design, data)[0], 4)

    def evaluate(layout):
      params, stats, _ = superset.init_variables(layout, superset.init_spec(layout, *shapes),
                                                 jax.random.PRNGKey(index))
      keys = superset.dropout_keys(layout, jax.random.PRNGKey(100 + index))
      return run(layout, params, stats, superset.design_spec(layout, design), keys)

    want_grads, (want_out, want_new) = evaluate(reference_layout)
    grads, (out, new) = evaluate(layout)
    # Float reassociation only: gradients that cancel to ~0 (a bias before batch norm) differ
    # by rounding noise of the size of the largest gradient times float32's epsilon.
    scale = max(float(np.max(np.abs(np.asarray(a)))) for a in jax.tree.leaves(want_grads))
    tolerance = dict(rtol=1e-5, atol=1e-6 * max(scale, 1.0))
    np.testing.assert_allclose(np.asarray(out), np.asarray(want_out), **tolerance,
                               err_msg=f"design {index}: outputs")
    for tree, want_tree in ((grads, want_grads), (new, want_new)):
      flat, want_flat = superset._flatten(tree), superset._flatten(want_tree)
      assert flat.keys() == want_flat.keys()
      for path, want in want_flat.items():
        want, got = np.asarray(want), np.asarray(flat[path])
        view = superset._view_shape(reference_layout, path, want.shape)
        got = got.reshape(superset._view_shape(layout, path, got.shape))
        got = got[tuple(slice(0, n) for n in view)].reshape(want.shape)
        np.testing.assert_allclose(got, want, **tolerance, err_msg=f"design {index}: {path}")


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant", [dict(scan_mp=True), dict(block_nodes=12),
                                     dict(scan_mp=True, block_nodes=12),
                                     dict(scan_mp=True, block_nodes=12, block_extremes=True)],
                         ids=["scan", "blocks", "scan+blocks", "scan+blocks+extremes"])
def test_scanned_and_block_layers_match_the_unrolled_scatter_layers(node_data, train, variant):
  """Layout(scan_mp=True) runs the message-passing layers as one lax.scan over zero-padded,
  stacked kernels, and Layout(block_nodes=M) sums messages with per-graph dense blocks; both
  must compute what the unrolled scatter layers compute: outputs, updated batch statistics
  and parameter gradients, with dropout, for every stage type, aggregation and layer count."""
  data, _ = reference.split_for_seed(node_data, 1, 4)
  designs = [graphgym.build_model(d.replace(layers_mp=1 + i % 3), data)[1]
             for i, d in enumerate(DESIGNS)]
  unrolled = superset.Layout.from_designs(designs, 4, 3, ds.NODE)
  scanned = superset.Layout.from_designs(designs, 4, 3, ds.NODE, **variant)
  assert not unrolled.scan_mp and not unrolled.block_nodes and unrolled.layers_mp == 3
  assert (scanned.scan_mp, scanned.block_nodes) == (variant.get("scan_mp", False),
                                                    variant.get("block_nodes", 0))
  assert len(set(unrolled.mp_in_dims)) > 1  # skipconcat: the kernels really are padded
  _assert_layouts_agree(node_data, designs, unrolled, scanned, train, seed=0,
                        count=len(designs))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("conv", [("gcn", 1), ("sage", 1), ("gin", 1), ("gat", 2)],
                         ids=lambda c: f"{c[0]}{c[1]}")
def test_scanned_layers_of_every_conv_type_match_the_unrolled_layers(node_data, train, conv):
  """The scan covers GCN, SAGE, GIN and GAT layers too (their kernels' input rows padded and
  stacked, the rest stacked as is): outputs, batch statistics and gradients as unrolled, for
  every stage type (skipconcat: layers of different input widths) and layer counts 1-3."""
  data, _ = reference.split_for_seed(node_data, 1, 4)
  designs = [graphgym.build_model(d.replace(layers_mp=1 + i % 3, conv_type=conv[0],
                                            heads=conv[1], conv_variant="release",
                                            aggregation="add"), data)[1]
             for i, d in enumerate(DESIGNS)]
  unrolled = superset.Layout.from_designs(designs, 4, 3, ds.NODE)
  scanned = superset.Layout.from_designs(designs, 4, 3, ds.NODE, scan_mp=True)
  assert scanned.scan_mp and not unrolled.scan_mp and scanned.conv == conv
  assert len(set(unrolled.mp_in_dims)) > 1
  _assert_layouts_agree(node_data, designs, unrolled, scanned, train, seed=1, count=5)


@pytest.mark.parametrize("conv,train", [(("generalconv", 1), True), (("generalconv", 1), False),
                                        (("gat", 2), True), (("gin", 1), True)],
                         ids=["generalconv-train", "generalconv-eval", "gat2-train", "gin-train"])
def test_width_multiple_pads_widths_without_changing_a_design(node_data, train, conv):
  """Layout(width_multiple=m) rounds D, H and every layer's input width up to a multiple of
  m; the extra channels stay zero, so outputs, batch statistics and gradients are those of
  the unrounded layout, for every stage type (skipconcat's wide buffer included) and conv
  types with attention (GAT's heads) or an inner MLP (GIN)."""
  data, _ = reference.split_for_seed(node_data, 1, 4)
  designs = [d.replace(layers_mp=1 + i % 3) for i, d in enumerate(DESIGNS)]
  if conv[0] != "generalconv":
    designs = [d.replace(conv_type=conv[0], heads=conv[1], conv_variant="release",
                         aggregation="add") for d in designs]
  designs = [graphgym.build_model(d, data)[1] for d in designs]
  plain = superset.Layout.from_designs(designs, 4, 3, ds.NODE, scan_mp=True, block_nodes=12)
  aligned = superset.Layout.from_designs(designs, 4, 3, ds.NODE, scan_mp=True, block_nodes=12,
                                         width_multiple=8)
  assert (plain.dim, plain.head_dim) == (6, 18)  # 3 layers x 6, skipconcat's buffer
  assert (aligned.dim, aligned.head_dim) == (8, 24)
  assert aligned.mp_in_dims == tuple(-(-w // 8) * 8 for w in plain.mp_in_dims)
  assert superset.param_count(aligned) > superset.param_count(plain)
  _assert_layouts_agree(node_data, designs, plain, aligned, train, seed=2, count=len(designs))
  with pytest.raises(ValueError, match="width_multiple"):
    superset.Layout.from_designs(designs, 4, 3, ds.NODE, width_multiple=0)


def test_engine_width_multiple_matches_designs_trained_alone(node_data, references):
  results = engine.train_population(DESIGNS[:4], node_data, [1], eval_every=2,
                                    width_multiple=16)
  for index in (0, 2, 3):
    assert_same_trial(results[index], references[(index, 1)])
  with pytest.raises(ValueError, match="width_multiple"):
    engine.train_population([BASE], node_data, [0], width_multiple=0)


def test_layout_cover_and_size_buckets_change_no_result_and_reuse_programs(node_data,
                                                                          references):
  """With a layout cover (designs wider and deeper than the population's, another
  activation) and chunks padded to powers of two, designs train as they do alone;
  and a second population of other designs of the same group, with a chunk size in the same
  bucket, compiles nothing: a search's rounds reuse their programs."""
  cover = DESIGNS + [BASE.replace(dim_inner=9, layers_pre_mp=3, layers_mp=3, layers_post_mp=3,
                                  activation="elu")]
  options = dict(eval_every=2, layout_cover=cover, size_buckets=True)
  calls = []
  population = [DESIGNS[0], DESIGNS[2], DESIGNS[3]]  # stack and skipsum, add and mean
  results, traces = _traces(lambda: engine.train_population(
      population, node_data, [1], progress=lambda *a: calls.append(a[2]), **options))
  assert traces  # the first population compiles
  for result, index in zip(results, (0, 2, 3)):
    assert_same_trial(result, references[(index, 1)])
  assert {(info["members"], info["size"]) for info in calls} == {(3, 4)}  # one frozen member
  layout = calls[0]["program"].layout
  assert (layout.dim, layout.layers_pre, layout.layers_mp, layout.layers_post) == (9, 3, 3, 3)
  assert layout.activations == ("elu", "relu", "swish")  # elu from the cover alone
  others = [BASE.replace(learning_rate=0.005), DESIGNS[6], DESIGNS[2].replace(activation="elu")]
  again, traces = _traces(lambda: engine.train_population(others, node_data, [1], **options))
  assert traces == {}
  assert all(r.status == trial_lib.OK for r in again)


def test_stack_layer_params_pads_input_rows_only():
  layers = [{"w": np.ones((3, 2)), "b": np.ones(2), "eps": np.float32(1)},
            {"w": 2 * np.ones((5, 2)), "b": np.zeros(2), "eps": np.float32(2)}]
  stacked = superset._stack_layer_params(layers, rows=5)
  assert stacked["w"].shape == (2, 5, 2) and stacked["b"].shape == (2, 2)
  np.testing.assert_array_equal(stacked["w"][0, 3:], 0)
  np.testing.assert_array_equal(stacked["eps"], [1, 2])
  with pytest.raises(ValueError, match="beyond their input rows"):
    superset._stack_layer_params([{"w": np.ones((3, 2))}, {"w": np.ones((3, 4))}], rows=3)
  with pytest.raises(ValueError, match="more than the 4"):
    superset._stack_layer_params(layers, rows=4)


def _identity():
  import optax
  return optax.identity()


def test_repad_keeps_real_nodes_edges_and_masks(node_data):
  _, pipe = reference.split_for_seed(node_data, 1, 3)
  batch = next(iter(pipe.train_batches(0)))
  n_node, n_edge = batch.nodes["x"].shape[0] + 5, batch.senders.shape[0] + 7
  bigger = engine._repad(batch, n_node, n_edge)
  assert bigger.nodes["x"].shape[0] == n_node and bigger.senders.shape[0] == n_edge
  for mask in (graph_lib.node_mask, graph_lib.edge_mask, graph_lib.graph_mask):
    old, new = np.asarray(mask(batch)), np.asarray(mask(bigger))
    np.testing.assert_array_equal(new[:old.size], old)
    assert not new[old.size:].any()
  real = np.asarray(graph_lib.node_mask(batch))
  np.testing.assert_array_equal(bigger.nodes["x"][:real.size][real], batch.nodes["x"][real])


def test_bad_arguments_raise(node_data):
  with pytest.raises(ValueError, match="eval_every"):
    engine.train_population([BASE], node_data, [0], eval_every=0)
  with pytest.raises(ValueError, match="max_parallel"):
    engine.train_population([BASE], node_data, [0], max_parallel=0)
  assert engine.train_population([], node_data, [0]) == []


def test_chunks_that_run_out_of_memory_are_split_then_trained_alone(node_data, monkeypatch):
  designs = [BASE.replace(learning_rate=lr) for lr in (0.01, 0.02, 0.03)]
  sizes = []

  def run_one_at_a_time(self, on_epoch=None, *checkpointing):
    sizes.append((len(self.members), self.size))
    if len(self.members) > 1:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
    member = self.members[0]
    return [trial_lib.TrialResult(trial_lib.TrialKey("t", member.design.design_id, member.seed),
                                  member.resolved.to_dict(), num_params=1)]

  monkeypatch.setattr(engine._ChunkRun, "run", run_one_at_a_time)
  results = engine.train_population(designs, node_data, [1])
  # Halves share a padded size (one compilation for both).
  assert sizes == [(3, 3), (1, 2), (2, 2), (1, 1), (1, 1)]
  assert [r.key.design_id for r in results] == [d.design_id for d in designs]

  def out_of_memory(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory")

  # A single member that does not fit is trained alone, unpadded, else reported failed.
  monkeypatch.setattr(engine._ChunkRun, "run", out_of_memory)
  monkeypatch.setattr(reference, "train_design", lambda design, data, seed, every: "alone")
  assert engine.train_population(designs[:1], node_data, [1]) == ["alone"]
  monkeypatch.setattr(reference, "train_design", out_of_memory)
  results = engine.train_population(designs[:1], node_data, [1])
  assert results[0].status == trial_lib.FAILED and "RESOURCE_EXHAUSTED" in results[0].message
  monkeypatch.setattr(engine._ChunkRun, "run", lambda self, *args: 1 / 0)
  with pytest.raises(ZeroDivisionError):  # other errors are not swallowed
    engine.train_population(designs[:1], node_data, [1])


def ragged_dataset(num_graphs: int = 12, seed: int = 0) -> ds.GraphDataset:
  """Node tasks on random graphs of 5-14 nodes and varying density: batches of several sizes,
  so the budget ladder has more than one rung."""
  rng = np.random.default_rng(seed)
  graphs = []
  for _ in range(num_graphs):
    n = int(rng.integers(5, 15))
    e = int(rng.integers(n, 4 * n))
    x = rng.normal(size=(n, 4)).astype(np.float32)
    graphs.append(ds.make_graph(rng.integers(0, n, e), rng.integers(0, n, e), n,
                                {"x": x, "y": (x[:, 0] > 0).astype(np.int32)}))
  return ds.GraphDataset("ragged/node", graphs, ds.NODE, ds.MULTICLASS, 2)


def test_block_only_programs_use_one_batch_shape_and_match_alone():
  """Designs aggregating only by per-graph blocks (add, mean) pad every batch to the largest
  budget: one train-step and one predict compilation where the ladder has several rungs,
  the same results as the design trained alone; a max program keeps the ladder."""
  data = ragged_dataset()
  streams = engine._SeedStreams(data, [1], 3)
  shapes = lambda s: {(b.nodes["x"].shape, b.senders.shape) for b in s.train_batches(0)}
  assert len(shapes(streams)) > 1
  assert len(shapes(streams.one_shape())) == 1
  designs = [BASE.replace(batch_size=3), BASE.replace(batch_size=3, aggregation="mean",
                                                      stage_type="skipsum")]
  results, traces = _traces(lambda: engine.train_population(designs, data, [1], eval_every=2))
  assert traces == {"init": 1, "train_step": 1, "predict": 1}
  assert_same_trial(results[1], reference.train_design(designs[1], data, 1, eval_every=2))
  _, traces = _traces(lambda: engine.train_population(
      [BASE.replace(batch_size=3, aggregation="max")], data, [1], eval_every=2,
      one_batch_shape=False, block_extremes=False))
  assert traces["train_step"] > 1


def test_block_extremes_put_max_programs_on_one_shape_and_match_alone():
  """With block_extremes, max (and a mixed max/mean group) aggregate on the blocks too: one
  batch shape, and the results of the designs trained alone with the scatter."""
  data = ragged_dataset(seed=4)
  designs = [BASE.replace(batch_size=3, aggregation="max", activation="prelu", dropout=0.3),
             BASE.replace(batch_size=3, aggregation="mean", stage_type="skipconcat",
                          layers_mp=2)]
  results, traces = _traces(lambda: engine.train_population(
      designs, data, [1], eval_every=2, block_extremes=True, split_aggregations=False,
      split_stages=False, one_batch_shape=False))
  assert traces == {"init": 1, "train_step": 1, "predict": 1}
  for design, got in zip(designs, results):
    assert_same_trial(got, reference.train_design(design, data, 1, eval_every=2))


@pytest.mark.parametrize("conv_type,heads", [("gat", 2), ("gcn", 1)])
def test_gat_and_gcn_programs_run_on_blocks_and_ignore_the_aggregation_choice(conv_type,
                                                                              heads):
  """GAT and GCN layouts aggregate on per-graph blocks (`blocks.block_attention`,
  `blocks.block_gcn`): one batch shape, and the results of the designs trained alone on the
  edge path. Both ignore design.aggregation, so a max and an add design share one program
  even with split_aggregations."""
  data = ragged_dataset(seed=5)
  conv = BASE.replace(batch_size=3, conv_type=conv_type, heads=heads, conv_variant="release")
  designs = [conv.replace(aggregation="max", stage_type="skipconcat", layers_mp=2),
             conv.replace(aggregation="add", activation="prelu", optimizer="sgd",
                          learning_rate=0.05)]
  assert not any(engine.is_extremal(d) for d in designs)
  results, traces = _traces(lambda: engine.train_population(
      designs, data, [1], eval_every=2, split_aggregations=True, split_stages=False,
      one_batch_shape=False))
  assert traces == {"init": 1, "train_step": 1, "predict": 1}
  for design, got in zip(designs, results):
    assert_same_trial(got, reference.train_design(design, data, 1, eval_every=2))


def test_epoch_scan_trains_an_epoch_per_call_and_matches_steps():
  """With epoch_scan, a block-only program trains each epoch as one scanned call: the same
  results as one call per step and as the design trained alone (ragged graphs, so the batches
  are padded to one shape); a max program, whose batches keep the ladder, still steps."""
  data = ragged_dataset()
  designs = [BASE.replace(batch_size=3, dropout=0.3),
             BASE.replace(batch_size=3, aggregation="mean", stage_type="skipsum",
                          optimizer="sgd", learning_rate=0.05)]
  scanned, traces = _traces(lambda: engine.train_population(designs, data, [1], eval_every=2,
                                                            epoch_scan=True))
  assert traces == {"init": 1, "train_epoch": 1, "predict": 1}
  stepped = engine.train_population(designs, data, [1], eval_every=2, epoch_scan=False)
  for got, want in zip(scanned, stepped):
    assert_same_trial(got, want)
  assert_same_trial(scanned[1], reference.train_design(designs[1], data, 1, eval_every=2))
  # (A max design of its own: an earlier test's would hit the jit caches.)
  _, traces = _traces(lambda: engine.train_population(
      [BASE.replace(batch_size=3, aggregation="max", activation="swish")], data, [1],
      eval_every=2, epoch_scan=True, one_batch_shape=False))
  assert "train_epoch" not in traces and traces.get("train_step", 0) > 1


def test_precompile_covers_every_batch_shape_of_every_epoch():
  """Programs compile, before the run, a train step for every batch shape any epoch will use
  (`_SeedStreams.train_shapes`, from the pipelines' budgets without building batches), so no
  epoch stalls on a new shape: the run adds no trace."""
  data = ragged_dataset(num_graphs=16, seed=3)
  streams = engine._SeedStreams(data, [1, 2], 3)
  epochs = 6
  built = {(b.nodes["x"].shape[1], b.senders.shape[1])
           for e in range(epochs) for b in streams.train_batches(e)}
  assert streams.train_shapes(epochs) == built
  assert len(built) > len({(b.nodes["x"].shape[1], b.senders.shape[1])
                           for b in streams.train_batches(0)})  # epoch 0 alone misses some
  assert streams.one_shape().train_shapes(epochs) == {streams.largest_budget()[:2]}
  # Two programs (max apart from add), so the engine precompiles; the max one keeps the ladder.
  designs = [BASE.replace(batch_size=3, epochs=epochs, activation="prelu"),
             BASE.replace(batch_size=3, epochs=epochs, aggregation="max", batch_norm=False)]
  calls = []
  original = engine._ChunkRun.run

  def run_and_count(self, *args, **kwargs):
    calls.append(dict(engine.TRACE_COUNTS))
    return original(self, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(engine._ChunkRun, "run", run_and_count)
    _, traces = _traces(lambda: engine.train_population(designs, data, [1, 2], eval_every=3,
                                                        split_aggregations=True,
                                                        one_batch_shape=False))
  assert traces["train_step"] == 1 + len(built)  # the block-only program: one shape
  assert calls[0].get("train_step") == engine.TRACE_COUNTS["train_step"]  # all before the run


def test_one_batch_shape_pads_to_the_largest_shape_used():
  """`largest_used_shape` holds every training batch of the run and every evaluation batch;
  padded to it, the streams have one shape; `padding_overhead` is the slots it adds."""
  data = ragged_dataset(num_graphs=16, seed=3)
  streams = engine._SeedStreams(data, [1, 2], 3)
  epochs = 5
  built = [(b.nodes["x"].shape[1], b.senders.shape[1])
           for e in range(epochs) for b in streams.train_batches(e)]
  evals = [(b.nodes["x"].shape[1], b.senders.shape[1]) for b, _ in streams.eval_batches()]
  target = streams.largest_used_shape(epochs)
  assert target == (max(n for n, _ in built + evals), max(e for _, e in built + evals))
  assert target[0] <= streams.largest_budget()[0] and target[1] <= streams.largest_budget()[1]
  want = len(built) * sum(target) / sum(n + e for n, e in built) - 1
  assert streams.padding_overhead(target, epochs) == pytest.approx(want) and want > 0
  assert streams.padding_overhead((0, 0), epochs) == 0.0
  padded = streams.padded(target)
  assert padded is streams.padded(target) and padded.padded((0, 0)) is not padded
  assert padded.train_shapes(epochs) == {target}
  assert {(b.nodes["x"].shape[1], b.senders.shape[1])
          for e in range(epochs) for b in padded.train_batches(e)} == {target}
  assert {(b.nodes["x"].shape[1], b.senders.shape[1])
          for b, _ in padded.eval_batches()} == {target}
  assert engine.one_batch_shape_by_default(jax.devices("cpu")) == engine.ADAPTIVE


def test_one_batch_shape_compiles_once_and_matches_the_ladder(monkeypatch):
  """A scatter (max) program padded to one batch shape compiles one train step and one
  predict, and trains as on the ladder and as the design alone; ADAPTIVE pads only where the
  padding stays under ONE_SHAPE_MAX_PADDING."""
  data = ragged_dataset(num_graphs=16, seed=3)
  designs = [BASE.replace(batch_size=3, epochs=5, aggregation="max", activation="elu"),
             BASE.replace(batch_size=3, epochs=5, aggregation="max", stage_type="skipsum",
                          dropout=0.2)]
  one, traces = _traces(lambda: engine.train_population(designs, data, [1, 2], eval_every=2,
                                                        one_batch_shape=True))
  assert traces == {"init": 1, "train_step": 1, "predict": 1}
  ladder, traces = _traces(lambda: engine.train_population(designs, data, [1, 2], eval_every=2,
                                                           one_batch_shape=False))
  assert traces["train_step"] > 1
  for got, want in zip(one, ladder):
    assert_same_trial(got, want)
  assert_same_trial(one[2], reference.train_design(designs[1], data, 1, eval_every=2))
  streams = engine._SeedStreams(data, [1, 2], 3)
  overhead = streams.padding_overhead(streams.largest_used_shape(5), 5)
  for limit, shapes in ((overhead - 1e-6, lambda n: n > 1), (overhead, lambda n: n == 1)):
    monkeypatch.setattr(engine, "ONE_SHAPE_MAX_PADDING", limit)
    engine._KEPT.clear()
    _, traces = _traces(lambda: engine.train_population(
        designs, data, [1, 2], eval_every=2, one_batch_shape=engine.ADAPTIVE))
    assert shapes(traces["train_step"]), (limit, traces)


def test_a_resumed_chunk_keeps_its_saved_batch_shape(tmp_path):
  """The manifest records the batch padding, so a chunk resumed under another policy runs on
  the shapes it was saved with, and ends as an uninterrupted run."""
  data = ragged_dataset(num_graphs=16, seed=3)
  designs = [BASE.replace(batch_size=3, epochs=6, aggregation="max", activation="prelu")]
  whole = engine.train_population(designs, data, [1], eval_every=2, one_batch_shape=True)

  class Stop(Exception):
    pass

  def stop_at_epoch_5(done, total, info):
    if info.get("epoch") == 5:
      raise Stop

  with pytest.raises(Stop):
    engine.train_population(designs, data, [1], eval_every=2, one_batch_shape=True,
                            checkpoint_dir=tmp_path, checkpoint_every=2,
                            progress=stop_at_epoch_5)
  (chunk,) = os.listdir(tmp_path)
  with open(tmp_path / chunk / "manifest.json") as f:
    pad_to = tuple(json.load(f)["pad_to"])
  assert pad_to == engine._SeedStreams(data, [1], 3).largest_used_shape(6)
  seen = []
  resumed, traces = _traces(lambda: engine.train_population(
      designs, data, [1], eval_every=2, one_batch_shape=False, checkpoint_dir=tmp_path,
      checkpoint_every=2, progress=lambda d, t, info: seen.append(info)))
  assert seen[0].get("resumed_at") == 4
  assert "train_step" not in traces  # the saved shape, compiled by the runs above; no ladder
  assert_same_trial(resumed[0], whole[0])


def test_overlapped_compilation_matches_compiling_first(node_data):
  """precompile=OVERLAP compiles the programs in background threads while chunks train, each
  chunk waiting for its own: one trace per function and the results of up-front compilation
  (the first test's programs, which hit the jit caches, so new designs here)."""
  designs = [BASE.replace(activation="swish", l2norm=False),
             BASE.replace(aggregation="max", dropout=0.2)]
  up_front, traces = _traces(lambda: engine.train_population(
      designs, node_data, [1, 2], eval_every=2, precompile=True))
  assert traces["init"] == 2 and traces["predict"] == 2
  engine._KEPT.clear()  # new jitted functions: this run compiles again
  overlapped, traces = _traces(lambda: engine.train_population(
      designs, node_data, [1, 2], eval_every=2, precompile=engine.OVERLAP))
  assert traces["init"] == 2 and traces["predict"] == 2
  for got, want in zip(overlapped, up_front):
    assert_same_trial(got, want)
  assert engine.precompile_by_default(jax.devices("cpu")) is True
  assert engine.policy_from_flag("overlap") == engine.OVERLAP


def test_programs_precompile_in_windows_and_are_released_after_their_last_chunk(
    node_data, monkeypatch):
  # Batch sizes 1-4 on 8 graphs: four programs. With a window of 2, the first two compile
  # before any chunk runs, the next two when the run reaches the third program.
  designs = [BASE.replace(batch_size=b, dim_inner=7) for b in (1, 2, 3, 4)]
  monkeypatch.setattr(engine, "CPU_PRECOMPILE_WINDOW", 2)
  events, groups = [], []
  precompile, run, group_init = (engine._ChunkRun.precompile, engine._ChunkRun.run,
                                 engine._Group.__init__)

  def logged(kind, method):
    def wrapper(self, *args, **kwargs):
      events.append((kind, self.program.steps_per_epoch))
      return method(self, *args, **kwargs)
    return wrapper

  def keep(self, *args, **kwargs):
    group_init(self, *args, **kwargs)
    groups.append(self)

  monkeypatch.setattr(engine._ChunkRun, "precompile", logged("compile", precompile))
  monkeypatch.setattr(engine._ChunkRun, "run", logged("run", run))
  monkeypatch.setattr(engine._Group, "__init__", keep)
  engine._KEPT.clear()
  windowed, traces = _traces(lambda: engine.train_population(
      designs, node_data, [1], eval_every=2, precompile=True, split_aggregations=False))
  steps = [8, 4, 3, 2]  # per epoch, batch sizes 1-4
  assert [e for e in events if e[0] == "compile"][:2] == [("compile", 8), ("compile", 4)]
  assert events == ([("compile", s) for s in steps[:2]] + [("run", s) for s in steps[:2]]
                    + [("compile", s) for s in steps[2:]] + [("run", s) for s in steps[2:]])
  assert traces["init"] == 4 and traces["train_step"] == 4
  assert len(groups) == 4 and all(g.functions is None for g in groups)
  monkeypatch.setattr(engine._ChunkRun, "precompile", precompile)
  engine._KEPT.clear()
  lazily = engine.train_population(designs, node_data, [1], eval_every=2, precompile=False,
                                   split_aggregations=False)
  for got, want in zip(windowed, lazily):
    assert_same_trial(got, want)


def test_stack_steps_rejects_mixed_shapes():
  streams = engine._SeedStreams(ragged_dataset(), [1], 3)
  with pytest.raises(ValueError, match="one shape"):
    engine._stack_steps(list(streams.train_batches(0)))
  stacked = engine._stack_steps(list(streams.one_shape().train_batches(0)))
  assert stacked.senders.shape[0] == streams.steps_per_epoch


def test_blocks_only_layouts(node_data):
  data, _ = reference.split_for_seed(node_data, 1, 4)
  resolve = lambda d: graphgym.build_model(d, data)[1]
  sums = [resolve(BASE), resolve(BASE.replace(aggregation="mean"))]
  layout = lambda designs, m: superset.Layout.from_designs(designs, 4, 3, ds.NODE,
                                                           block_nodes=m)
  assert layout(sums, 12).blocks_only
  assert not layout(sums, 0).blocks_only  # scatter
  with_max = sums + [resolve(BASE.replace(aggregation="max"))]
  assert not layout(with_max, 12).blocks_only  # max scatters its messages ...
  extremes = superset.Layout.from_designs(with_max, 4, 3, ds.NODE, block_nodes=12,
                                          block_extremes=True)
  assert extremes.blocks_only  # ... unless it reduces the blocks too (blocks.block_max)
  assert not superset.Layout.from_designs(with_max, 4, 3, ds.NODE,
                                          block_extremes=True).block_extremes  # no blocks
  # GAT and GCN aggregate on the blocks whatever aggregation their designs name (they ignore
  # it); SAGE and GIN keep the scatter.
  other = lambda conv, heads: [resolve(d.replace(conv_type=conv, heads=heads,
                                                 conv_variant="release")) for d in with_max]
  for conv, heads in (("gat", 2), ("gcn", 1)):
    assert layout(other(conv, heads), 12).blocks_only
    assert layout(other(conv, heads), 12).block_nodes == 12
  for conv in ("sage", "gin"):
    assert layout(other(conv, 1), 12).block_nodes == 0
    assert not layout(other(conv, 1), 12).blocks_only


def _devices_of(platform: str):
  """Stand-ins for one device of `platform` (only the platform is read)."""
  import types
  return [types.SimpleNamespace(platform=platform)]


def test_gpu_programs_compile_without_triton_gemm_unless_xla_flags_say(monkeypatch, node_data):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert engine.compiler_options_for(_devices_of("cpu")) is None
  assert engine.compiler_options_for(_devices_of("gpu")) == {"xla_gpu_enable_triton_gemm": False}
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true --xla_dump_to=/tmp/x")
  assert engine.compiler_options_for(_devices_of("gpu")) is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_gpu_enable_triton_gemm_any=true")
  assert engine.compiler_options_for(_devices_of("gpu")) == {"xla_gpu_enable_triton_gemm": False}
  # The options reach the population programs' compilation: XLA rejects an unknown one. (XLA
  # reads XLA_FLAGS when the backend starts, and aborts on a flag it does not know.)
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setattr(engine, "compiler_options_for",
                      lambda devices: {"xla_no_such_option_in_gnnjax": True})
  engine._KEPT.clear()
  try:
    with pytest.raises(Exception, match="xla_no_such_option_in_gnnjax"):
      engine.train_population([BASE], node_data, [1], eval_every=2, precompile=False)
  finally:
    engine._KEPT.clear()  # no later test may reuse the rejected functions
