r"""Where a population step's time goes: a kernel profile of one program's training steps.

    python -m benchmarks.population_profile --data_dir=../shared/datasets --batch_size=32 \
        --aggregation=sum --stage=other --depth=shallow

Designs: --num_designs sampled from --space (as `benchmarks.design_throughput` samples them),
kept where they fall in one of the engine's groups (--batch_size, sum- or extremal
aggregation, skipconcat or not, l_mp <= 4 or deeper), then trained --epochs epochs as one
population by `engine.iter_population` (default engine policies). The first epoch compiles;
epochs 2 .. 1 + --trace_epochs run under `jax.profiler`, and the device's kernel events of
that window are summed per HLO op (the `hlo_op` of each event: a fusion, a GEMM, a copy ...)
and per kind of op. Printed: the step time, the top --top ops with their share of kernel
time, and the kinds; written: results/<--results_name>.json and a RESULTS.md section. Set
XLA_FLAGS=--xla_dump_to=DIR to read what a fusion computes (its name is the `hlo_op`).
With --cover the programs are a real-training study's (`experiments.autotransfer
--stable_programs`: every layout covers the whole space), e.g. a BZR round's chunk:

    python -m benchmarks.population_profile --data_dir=../shared/datasets --task=BZR \
        --space=autotransfer --num_designs=20 --batch_size=0 --aggregation=any --stage=any \
        --depth=any --cover --results_name=population_profile_BZR_cover

XLA's GPU command buffers (CUDA graphs) are turned off for the run (--command_buffers to keep
them): the trace shows a command buffer as one event, which hides its kernels. Measured on
one H200 (2026-12-03, 73 members) the step time is the same either way (28.5 ms with them,
27.9 ms without).

On a CPU-only host the XLA op events of the host are summed instead; they nest (a while
loop's event spans its body's), so there the shares overcount. The profile says where a
step's kernel time goes, not why; pair it with
`benchmarks.design_throughput`'s memory-bandwidth floor for the chunk.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time

import jax
from absl import app, flags

from benchmarks import common
from experiments import engine_flags
from gnnjax import data as data_lib
from gnnjax.design import engine, spaces
from gnnjax.models import graphgym

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "smallworld/clustering/pagerank", "Registry name of the task.")
flags.DEFINE_string("data_dir", None, "Data root (shared/datasets).")
flags.DEFINE_string("space", "graphgym_round1", "Design space the designs are sampled from.")
flags.DEFINE_integer("num_designs", 1024, "Designs sampled before the group filter.")
flags.DEFINE_integer("sample_seed", 0, "Seed of the design sample.")
flags.DEFINE_integer("batch_size", 32, "Keep designs of this batch size (0: any).")
flags.DEFINE_enum("aggregation", "sum", ["any", "sum", "extremal"], "Keep designs whose "
                  "aggregation is add/mean (sum), max/min (extremal), or any.")
flags.DEFINE_enum("stage", "other", ["any", "skipconcat", "other"], "Keep skipconcat designs, "
                  "the others (stack, skipsum), or any.")
flags.DEFINE_enum("depth", "shallow", ["any", "shallow", "deep"], "Keep designs with at most "
                  f"{engine.SHALLOW_LAYERS_MP} message-passing layers, deeper ones, or any.")
flags.DEFINE_integer("max_designs", 0, "Keep at most this many of the filtered designs (0: all).")
flags.DEFINE_integer("epochs", 4, "Epochs trained (the first compiles).")
flags.DEFINE_integer("trace_epochs", 2, "Epochs profiled, from the second.")
flags.DEFINE_integer("top", 30, "Ops listed.")
flags.DEFINE_bool("command_buffers", False, "Keep XLA's GPU command buffers on (their kernels "
                  "then show as one event each).")
flags.DEFINE_bool("cover", False, "Every program's layout covers the whole --space, with "
                  "chunks padded to a power of two (`layout_cover`, `size_buckets`): the "
                  "stable programs of a real-training study (`experiments.autotransfer "
                  "--stable_programs`).")
flags.DEFINE_string("trace_dir", None, "Where the trace goes (default: a temporary folder).")
flags.DEFINE_string("results_name", "population_profile", "Name of the results JSON.")
flags.DEFINE_string("out_dir", "benchmarks", "Where results/<name>.json and RESULTS.md go.")

# Kinds of op, by the first pattern found in the op's name (XLA's GPU names: loop_fusion.12,
# input_reduce_fusion, transpose_fusion, cublas-gemm.3, dynamic-update-slice ...).
_KINDS = (("gemm", r"gemm|dot|cublas|cutlass|triton"), ("transpose", r"transpose"),
          ("reduce", r"reduce"), ("scatter", r"scatter"), ("gather", r"gather"),
          ("dynamic-update-slice", r"dynamic[-_]update[-_]slice"),
          ("dynamic-slice", r"dynamic[-_]slice"), ("copy", r"copy|memcpy|memset"),
          ("rng", r"rng|threefry|random"), ("concatenate", r"concat"),
          ("loop fusion", r"fusion"))


def op_kind(name: str) -> str:
  for kind, pattern in _KINDS:
    if re.search(pattern, name, re.IGNORECASE):
      return kind
  return "other"


def keep(design) -> bool:
  """Whether a (resolved) design is in the group the filters ask for, by the engine's own
  grouping predicates."""
  if FLAGS.batch_size and design.batch_size != FLAGS.batch_size:
    return False
  filters = ((FLAGS.aggregation, "extremal", engine.is_extremal),
             (FLAGS.stage, "skipconcat", engine.is_skipconcat),
             (FLAGS.depth, "deep", engine.is_deep))
  return all(value == "any" or predicate(design) == (value == selected)
             for value, selected, predicate in filters)


def kernel_events(trace_dir: str) -> list[tuple[str, float]]:
  """(hlo_op, seconds) of every device kernel event in the trace (on a CPU-only host, the
  XLA op events of the host plane)."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no .xplane.pb trace under {trace_dir}")
  profile = jax.profiler.ProfileData.from_file(max(paths, key=os.path.getmtime))
  device_planes = [p for p in profile.planes if p.name.startswith("/device:")]
  planes = device_planes or [p for p in profile.planes if p.name == "/host:CPU"]
  events = []
  for plane in planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if device_planes or "hlo_op" in stats:
          events.append((str(stats.get("hlo_op", event.name)), event.duration_ns / 1e9))
  return events


def main(argv):
  del argv
  if not FLAGS.command_buffers:  # read when the backend starts, which is below
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_gpu_enable_command_buffer=").strip()
  dataset = data_lib.load_dataset(FLAGS.task, FLAGS.data_dir)
  space = spaces.get_space(FLAGS.space)
  sampled = space.sample(FLAGS.sample_seed, FLAGS.num_designs)
  designs = [d for d in sampled if keep(graphgym.build_model(d, dataset)[1])]
  if FLAGS.max_designs:
    designs = designs[:FLAGS.max_designs]
  if not designs:
    raise SystemExit("no sampled design is in the group asked for; widen the filters")
  designs = [d.replace(epochs=FLAGS.epochs) for d in designs]
  print(f"{dataset.name}: {len(designs)} of {len(sampled)} designs in the group; device "
        f"{common.device_description()}", flush=True)

  trace_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix="population_profile_")
  window, info_seen = {}, {}
  last_epoch = 1 + FLAGS.trace_epochs

  def progress(done, total, info):
    del done, total
    if info.get("chunk") != 1 or "epoch" not in info:
      return
    if info["epoch"] == 1:
      info_seen.update(info)
      jax.profiler.start_trace(trace_dir)
      window["start"] = time.perf_counter()
    elif info["epoch"] == last_epoch and "start" in window and "end" not in window:
      window["end"] = time.perf_counter()
      jax.profiler.stop_trace()

  # read_every_epoch: an epoch reported is an epoch run, so the window holds whole epochs.
  policies = engine_flags.engine_policies()
  if FLAGS.cover:
    policies.update(layout_cover=tuple(space), size_buckets=True)
  results = list(engine.iter_population(designs, dataset, [1], eval_every=max(20, last_epoch + 1),
                                        progress=progress, read_every_epoch=True, **policies))
  if "end" not in window:
    raise SystemExit(f"the first chunk ended before epoch {last_epoch}: raise --epochs")
  chunks = info_seen["chunks"]
  if chunks != 1:
    print(f"note: the group ran as {chunks} chunks; the profile is of the first "
          f"({info_seen['members']} members)")
  layout = info_seen["program"].layout
  steps_per_epoch = info_seen["program"].steps_per_epoch
  step_ms = (window["end"] - window["start"]) / (FLAGS.trace_epochs * steps_per_epoch) * 1e3

  events = kernel_events(trace_dir)
  by_op: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
  for name, seconds in events:
    by_op[name][0] += seconds
    by_op[name][1] += 1
  total = sum(s for s, _ in by_op.values())
  if any(name.startswith("command_buffer") for name in by_op) and not FLAGS.command_buffers:
    print("warning: command buffers in the trace (the backend started before XLA_FLAGS was "
          "set?): their kernels are not itemised")
  steps = FLAGS.trace_epochs * steps_per_epoch
  by_kind: dict[str, float] = collections.defaultdict(float)
  for name, (seconds, _) in by_op.items():
    by_kind[op_kind(name)] += seconds

  members = info_seen["members"]
  conv = layout.conv[0] + (f" x{layout.conv[1]} heads" if layout.conv[1] > 1 else "")
  head = (f"{members} members ({len(results)} trials, statuses "
          f"{dict(collections.Counter(r.status for r in results))}); layout {conv}, "
          f"stages {'/'.join(layout.stages)}, D {layout.dim} / H {layout.head_dim} / l_mp "
          f"{layout.layers_mp} (layer inputs up to {max(layout.mp_in_dims, default=0)} "
          f"columns), aggregations "
          f"{'/'.join(layout.aggregations)}{' (blocks)' if layout.blocks_only else ''}; "
          f"budget {info_seen['budget']}; {steps} steps traced: {step_ms:.2f} ms per step "
          f"({step_ms / members:.3f} per member), kernels {total / steps * 1e3:.2f} ms per step")
  print(head)
  lines = ["| op | kind | ms per step | share | calls per step |", "|---|---|---|---|---|"]
  ranked = sorted(by_op.items(), key=lambda kv: -kv[1][0])
  for name, (seconds, count) in ranked[:FLAGS.top]:
    lines.append(f"| {name} | {op_kind(name)} | {seconds / steps * 1e3:.3f} | "
                 f"{seconds / total:.1%} | {count / steps:g} |")
  kinds = ["| kind | ms per step | share |", "|---|---|---|"]
  for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
    kinds.append(f"| {kind} | {seconds / steps * 1e3:.3f} | {seconds / total:.1%} |")
  table = "\n".join(lines) + "\n\n" + "\n".join(kinds)
  print(table)
  metrics = {"task": dataset.name, "space": FLAGS.space, "members": members,
             "filters": {"batch_size": FLAGS.batch_size, "aggregation": FLAGS.aggregation,
                         "stage": FLAGS.stage, "depth": FLAGS.depth},
             "engine_flags": engine_flags.flag_values(), "cover": FLAGS.cover,
             "layout": {"conv": list(layout.conv), "stages": list(layout.stages),
                        "dim": layout.dim, "head_dim": layout.head_dim,
                        "mp_in_dims": list(layout.mp_in_dims),
                        "layers_mp": layout.layers_mp, "block_nodes": layout.block_nodes,
                        "block_extremes": layout.block_extremes,
                        "aggregations": list(layout.aggregations)},
             "budget": list(info_seen["budget"]), "steps_traced": steps, "step_ms": step_ms,
             "kernel_ms_per_step": total / steps * 1e3,
             "ops": [{"op": n, "kind": op_kind(n), "ms_per_step": s / steps * 1e3,
                      "calls_per_step": c / steps} for n, (s, c) in ranked[:200]],
             "kinds": {k: s / steps * 1e3 for k, s in by_kind.items()}}
  path = common.write_results(FLAGS.results_name, metrics, {}, FLAGS.out_dir,
                              head + "\n\n" + table)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
