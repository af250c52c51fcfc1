r"""Designs fully trained per GPU-hour: the population engine beside PyG, same GPU, same run.

    python -m benchmarks.design_throughput --data_dir=../shared/datasets --out_dir=benchmarks

Task: GraphGym's smallworld clustering-coefficient node task (--task; 256 graphs from
--data_dir, else --num_graphs generated ones), GraphGym's protocol (80/20 graph split per seed,
the design's optimizer, learning rate, batch size, cosine schedule per epoch, evaluation every
--eval_every epochs). Designs: --num_designs sampled from GraphGym round 1 (--space), each
trained --epochs epochs (0: the design's own 100-400).

* gnnjax: `engine.train_population` trains all designs (seed 1) to the end; the wall time
  includes compilation and evaluation. Designs per GPU-hour = N / wall x 3600; also reported
  without compilation (steady state: the median epoch time of each chunk).
* PyG: a GraphGym-style torch model of each of the first --pyg_designs designs (pre-MP
  Linear layers, GeneralConv 'release' message W x_j aggregated with add/mean/max, stage
  stack/skipsum/skipconcat, batch norm, dropout, activation relu/prelu/swish, L2 norm, post-MP
  head, torch Adam/SGD with coupled weight decay and CosineAnnealingLR stepped per epoch),
  trained one after another on the same device with PyG's DataLoader (graphs already on the
  device, shuffled per epoch, the design's batch size). Each is timed for --pyg_epochs epochs
  after one warm-up epoch, and one evaluation pass is timed; a design's time is extrapolated
  to its epochs plus its evaluations. Designs per GPU-hour = 3600 / mean design time.
* Memory-bandwidth floor: bytes a population step must move at least (per member and layer:
  the E x D message gather written and read by the scatter, the N x D aggregate, the layer's
  input and output activations and weights; backward counted as twice the forward) over the
  device's copy bandwidth (a large array copy, measured in the same run), beside the measured
  step time (median epoch time / steps per epoch), per chunk and time-weighted over chunks.
* Scaling (--device_counts=1,2): the same population trained again with its population axis
  sharded over the first k local devices (`jax.sharding`, no code change), one after the
  other in the same process; designs per hour with and without compilation, and the speedup
  over the first count (target: about 2x on 2 GPUs, taken as >= 1.8x).

    python -m benchmarks.design_throughput --data_dir=../shared/datasets --device_counts=1,2

* Over several jobs (--state_dir): a population too large for one job's time limit is trained
  in runs of --max_seconds each, every run training the designs not yet finished (regrouped:
  each run compiles its own programs, which only lowers the measured rate); the run that
  finishes the population reports the sum of the runs' wall times:

    python -m benchmarks.design_throughput --num_designs=1024 --max_seconds=420 \
        --state_dir=results/throughput_1024   # repeat until it writes the results

  The PyG side can be timed in a job of its own first (--pyg_only, saved in the state), so
  that the finishing run need not leave time for it; and with --compilation_cache_dir on a
  disk the jobs share, a later job loads the programs an earlier one compiled (JAX's
  persistent cache) instead of compiling them again, as one uninterrupted run would.
"""

from __future__ import annotations

import collections
import datetime
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from experiments import engine_flags
from gnnjax import data as data_lib
from gnnjax.data import dataset as ds
from gnnjax.design import engine, reference, spaces
from gnnjax.models import graphgym

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "smallworld/clustering/pagerank", "Registry name of the task "
                    "(a GraphGym smallworld clustering task; prefix generated/ for no files).")
flags.DEFINE_string("data_dir", None, "Data root with graphgym_synthetic/ (shared/datasets).")
flags.DEFINE_integer("num_graphs", None, "Graphs of a generated/ task (default 32).")
flags.DEFINE_string("space", "graphgym_round1", "Design space the designs are sampled from.")
flags.DEFINE_integer("num_designs", 64, "Designs in the population.")
flags.DEFINE_integer("sample_seed", 0, "Seed of the design sample.")
flags.DEFINE_integer("epochs", 100, "Epochs of every design (0: the design's own; the issue's "
                     "PyG reference of 3,300 designs per GPU-hour is at 100 epochs).")
flags.DEFINE_integer("eval_every", 20, "Evaluate every k epochs (GraphGym: 20).")
flags.DEFINE_integer("max_parallel", None, "Members per chunk (default: the engine's choice).")
flags.DEFINE_float("max_seconds", None, "Stop the gnnjax run at the end of the first chunk "
                   "that finishes past this many seconds and report the designs trained by "
                   "then (a time-limited job still reports; every group's compilation, "
                   "done up front, still counts).")
flags.DEFINE_string("state_dir", None, "Measure one population over several jobs (e.g. device "
                    "calls with a time limit): each run trains the designs not yet finished "
                    "(with --max_seconds, chunk by chunk until then), adds its wall time and "
                    "chunks to <state_dir>/progress.json, and the run that finishes the "
                    "population reports on all of it (PyG and the results files come with "
                    "that run). A run killed before its end adds nothing.")
flags.DEFINE_bool("pyg_only", False, "With --state_dir: time the PyG designs now, save the "
                  "timings in the state for the run that finishes the population, and train "
                  "nothing.")
flags.DEFINE_string("compilation_cache_dir", None, "JAX's persistent compilation cache "
                    "(default: none, every program compiles in the run; recorded in the "
                    "results): e.g. shared by the jobs of a --state_dir population.")
flags.DEFINE_string("results_name", "design_throughput", "Name of the results JSON and the "
                    "RESULTS.md section (e.g. for an A/B of engine options).")
flags.DEFINE_list("device_counts", ["1"], "Train the population once per count, sharded over the "
                  "first k local devices (e.g. 1,2 on a 2-GPU host: the scaling run). The ratio to "
                  "PyG uses the first count.")
flags.DEFINE_integer("pyg_designs", 4, "Designs trained with PyG, one after another.")
flags.DEFINE_integer("pyg_epochs", 5, "Timed PyG epochs per design (after one warm-up epoch).")
flags.DEFINE_bool("pyg", True, "Also time PyG (needs torch and torch_geometric).")
flags.DEFINE_integer("copy_mb", 1024, "Size of the array copied to measure bandwidth (MB).")
flags.DEFINE_string("out_dir", "benchmarks", "Where results/design_throughput.json and "
                    "RESULTS.md go.")

TARGET_RATIO = 30.0
TARGET_SCALING = 1.8  # "about 2x one GPU"


def sample_designs() -> list:
  space = spaces.get_space(FLAGS.space)
  designs = space.sample(FLAGS.sample_seed, FLAGS.num_designs)
  if FLAGS.epochs:
    designs = [d.replace(epochs=FLAGS.epochs) for d in designs]
    repeats = len(designs) - len({d.design_id for d in designs})
    if repeats:  # e.g. 3 of GraphGym round 1's first 1,024 at --epochs=100
      print(f"{repeats} of the {len(designs)} designs repeat an earlier one once --epochs="
            f"{FLAGS.epochs} pins their epochs; each is trained as drawn")
  return designs


# ----------------------------------------------------------------------------------------------
# gnnjax.


def run_gnnjax(designs, dataset, devices) -> dict:
  """Trains the population sharded over `devices` (with --max_seconds, only the chunks that
  end within it, plus the one running then); per chunk: members, padded size, program,
  budget, epoch times."""
  chunks: dict[int, dict] = {}
  finished: list[int] = []
  last = [time.perf_counter()]
  first_epoch_done = []

  def progress(done, total, info):
    now = time.perf_counter()
    if "epoch" not in info:  # a chunk finished
      finished.append(info["chunk"])
      print(f"  chunk {info['chunk']}/{info['chunks']}: {info['members']} members done at "
            f"{info['seconds']:.1f} s ({done}/{total} designs)", flush=True)
    if "epoch" in info:
      chunk = chunks.setdefault(info["chunk"], {**info, "epoch_s": []})
      if info["epoch"] == 1 and not first_epoch_done:
        first_epoch_done.append(now)
      if info["epoch"] > 1:  # the first epoch of a chunk includes its compilation
        chunk["epoch_s"].append(now - last[0])
    last[0] = now

  start = time.perf_counter()
  results = []
  policies = engine_flags.engine_policies()
  # read_every_epoch: each epoch reported has run, so the epoch times are the device's (the
  # host's lead between evaluations saves a dispatch gap per epoch, small beside these
  # epochs of many steps).
  stream = engine.iter_population(designs, dataset, [1], eval_every=FLAGS.eval_every,
                                  max_parallel=FLAGS.max_parallel, devices=devices,
                                  progress=progress, read_every_epoch=True, **policies)
  for result in stream:
    results.append(result)
    chunk_members = sum(chunks[c]["members"] for c in finished)
    if (FLAGS.max_seconds and time.perf_counter() - start > FLAGS.max_seconds
        and len(results) == chunk_members and len(results) < len(designs)):
      print(f"  --max_seconds={FLAGS.max_seconds:g}: stopping after {len(results)} of "
            f"{len(designs)} designs", flush=True)
      stream.close()
      break
  wall = time.perf_counter() - start
  chunks = {index: chunks[index] for index in finished}
  for chunk in chunks.values():
    times = chunk["epoch_s"]
    chunk["epoch_median_s"] = statistics.median(times) if times else math.nan
    chunk["steady_s"] = chunk["epoch_median_s"] * chunk["epochs"] if times else 0.0
  return {"wall_s": wall, "designs": len(results), "results": results,
          "first_epoch_s": first_epoch_done[0] - start if first_epoch_done else math.nan,
          "steady_s": sum(c["steady_s"] for c in chunks.values()),
          "statuses": dict(collections.Counter(r.status for r in results)), "chunks": chunks}


def bytes_per_member_step(layout, budget) -> int:
  """Lower bound of the bytes one member's training step moves (see module docstring)."""
  n, e, g = budget
  d, h = layout.dim, layout.head_dim
  aggregates = 2 if "max" in layout.aggregations else 1  # add and mean share one sum
  # Per-graph blocks aggregate without messages (max too, with block_extremes); else max
  # gathers and scatters them.
  scatters = not layout.blocks_only
  forward = layout.dim_in * n + layout.dim_in * d  # input features, first weights
  forward += layout.layers_pre * (2 * n * d + d * d)
  for d_in in layout.mp_in_dims:
    forward += (n * d_in + d_in * d + n * d  # matmul input, weights, output
                + 2 * e * d * scatters  # messages: written by the gather, read by the scatter
                + aggregates * n * d  # aggregates
                + 2 * n * h)  # stage buffer in and out
  rows = n if layout.task_level == ds.NODE else g
  forward += layout.layers_post * (2 * rows * h + h * h)
  return 3 * 4 * forward  # float32; backward ~ twice the forward


def copy_bandwidth_gbs() -> float:
  size = FLAGS.copy_mb * 2**20 // 4
  big = jnp.ones((size,), jnp.float32)
  copy = jax.jit(lambda a: a + 1.0)
  ms = common.time_call(lambda: copy(big), jax.block_until_ready, iters=10)
  return 2 * size * 4 / 1e9 / (ms / 1e3)


# ----------------------------------------------------------------------------------------------
# PyG.


def _pyg_model(design, dim_in: int, num_outputs: int):
  import torch
  from torch import nn
  from torch_geometric.nn import MessagePassing

  class GeneralConv(MessagePassing):
    """GraphGym's release GeneralConv: aggregate W x_j over incoming edges (+ bias)."""

    def __init__(self, d_in, d_out, aggr, bias):
      super().__init__(aggr=aggr)
      self.lin = nn.Linear(d_in, d_out, bias=False)
      self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def forward(self, x, edge_index):
      out = self.propagate(edge_index, x=self.lin(x))
      return out + self.bias if self.bias is not None else out

  class GeneralLayer(nn.Module):
    def __init__(self, core, width):
      super().__init__()
      self.core = core
      self.bn = nn.BatchNorm1d(width) if design.batch_norm else None
      self.dropout = nn.Dropout(design.dropout) if design.dropout > 0 else None

    def forward(self, x, edge_index=None):
      h = self.core(x, edge_index) if edge_index is not None else self.core(x)
      if self.bn is not None:
        h = self.bn(h)
      if self.dropout is not None:
        h = self.dropout(h)
      return h

  if design.layers_pre_mp < 1 or design.conv_type != "generalconv":
    raise ValueError("the PyG model covers GraphGym round-1 designs (GeneralConv, >= 1 pre-MP "
                     f"layer); got {design.summary()}")
  aggr = {"add": "add", "mean": "mean", "max": "max"}[design.aggregation]
  d = design.dim_inner
  bias = not design.batch_norm

  class GNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.act = {"relu": nn.ReLU(), "prelu": nn.PReLU(), "swish": nn.SiLU()}[design.activation]
      self.pre = nn.ModuleList(GeneralLayer(nn.Linear(dim_in if i == 0 else d, d, bias=bias), d)
                               for i in range(design.layers_pre_mp))
      widths = [(i + 1) * d if design.stage_type == "skipconcat" else d
                for i in range(design.layers_mp)]
      self.mp = nn.ModuleList(GeneralLayer(GeneralConv(w, d, aggr, bias), d) for w in widths)
      h = (design.layers_mp + 1) * d if design.stage_type == "skipconcat" else d
      self.post = nn.ModuleList(GeneralLayer(nn.Linear(h, h, bias=bias), h)
                                for _ in range(design.layers_post_mp - 1))
      self.out = nn.Linear(h, num_outputs)

    def forward(self, x, edge_index):
      for layer in self.pre:
        x = self.act(layer(x))
      for layer in self.mp:
        y = layer(x, edge_index)
        if design.stage_type == "stack":
          x = y
        elif design.stage_type == "skipsum":
          x = x + y
        else:
          x = torch.cat([x, y], dim=-1)
        x = self.act(x)
      if design.l2norm:
        x = torch.nn.functional.normalize(x, p=2, dim=-1)
      for layer in self.post:
        x = self.act(layer(x))
      return self.out(x)

  return GNN()


def _pyg_graphs(dataset, seed: int, device):
  import torch
  from torch_geometric.data import Data
  data, _ = data_lib.apply_split(dataset, reference.SPLIT_PROTOCOL, seed)
  train, evaluate = [], []
  for graph in data.graphs:
    n = int(graph.n_node[0])
    item = Data(x=torch.as_tensor(np.asarray(graph.nodes["x"])[:n], dtype=torch.float32),
                y=torch.as_tensor(np.asarray(graph.nodes["y"])[:n], dtype=torch.long),
                edge_index=torch.as_tensor(np.stack([graph.senders, graph.receivers]),
                                           dtype=torch.long),
                train_mask=torch.as_tensor(np.asarray(graph.nodes["train_mask"])[:n]),
                val_mask=torch.as_tensor(np.asarray(graph.nodes["val_mask"])[:n])).to(device)
    evaluate.append(item)
    if bool(item.train_mask.any()):
      train.append(item)
  return train, evaluate


def time_pyg_design(design, dataset, device) -> dict:
  """Seconds per epoch and per evaluation pass of one design, PyG on `device`."""
  import torch
  from torch_geometric.loader import DataLoader
  _, resolved = graphgym.build_model(design, dataset)
  torch.manual_seed(0)
  train, evaluate = _pyg_graphs(dataset, 1, device)
  model = _pyg_model(resolved, int(np.asarray(dataset.graphs[0].nodes["x"]).shape[-1]),
                     dataset.num_outputs).to(device)
  if resolved.optimizer == "adam":
    optimizer = torch.optim.Adam(model.parameters(), lr=resolved.learning_rate,
                                 weight_decay=resolved.weight_decay)
  elif resolved.optimizer == "adamw":
    optimizer = torch.optim.AdamW(model.parameters(), lr=resolved.learning_rate,
                                  weight_decay=resolved.weight_decay)
  else:
    optimizer = torch.optim.SGD(model.parameters(), lr=resolved.learning_rate,
                                momentum=resolved.momentum, weight_decay=resolved.weight_decay)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=resolved.epochs)
  loader = DataLoader(train, batch_size=resolved.batch_size, shuffle=True)
  eval_loader = DataLoader(evaluate, batch_size=resolved.batch_size)

  def epoch():
    model.train()
    for batch in loader:
      optimizer.zero_grad()
      out = model(batch.x, batch.edge_index)
      loss = torch.nn.functional.cross_entropy(out[batch.train_mask], batch.y[batch.train_mask])
      loss.backward()
      optimizer.step()
    scheduler.step()

  def evaluation():
    model.eval()
    correct = {"train": 0, "val": 0}
    with torch.no_grad():
      for batch in eval_loader:
        pred = model(batch.x, batch.edge_index).argmax(-1)
        for split in correct:
          mask = batch[f"{split}_mask"]
          correct[split] += int((pred[mask] == batch.y[mask]).sum())  # syncs, as GraphGym
    return correct

  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  epoch()
  evaluation()
  sync()
  start = time.perf_counter()
  for _ in range(FLAGS.pyg_epochs):
    epoch()
  sync()
  per_epoch = (time.perf_counter() - start) / FLAGS.pyg_epochs
  start = time.perf_counter()
  evaluation()
  sync()
  per_eval = time.perf_counter() - start
  evaluations = len({0, resolved.epochs - 1} | set(range(FLAGS.eval_every - 1, resolved.epochs,
                                                         FLAGS.eval_every)))
  steps = len(loader)
  return {"design": resolved.summary(), "epochs": resolved.epochs, "epoch_s": per_epoch,
          "step_ms": 1e3 * per_epoch / steps, "eval_s": per_eval,
          "design_s": per_epoch * resolved.epochs + per_eval * evaluations}


# ----------------------------------------------------------------------------------------------


def summarise_chunks(run: dict, bandwidth: float, num_devices: int) -> None:
  """Adds to a run_gnnjax result its per-chunk markdown rows ('rows'), its chunks as JSON-ready
  records ('chunk_records', with each chunk's floor and measured step time added up over its
  steps) and their time-weighted ratio of measured step time to the memory-bandwidth floor
  ('floor_ratio'; the floor counts a chunk's members spread over its devices)."""
  run["rows"] = []
  for index, chunk in sorted(run["chunks"].items()):
    program = chunk["program"]
    layout, steps = program.layout, program.steps_per_epoch
    member_bytes = bytes_per_member_step(layout, chunk["budget"])
    chunk["floor_step_ms"] = (1e3 * chunk["size"] * member_bytes
                              / (num_devices * bandwidth * 1e9))
    chunk["measured_step_ms"] = 1e3 * chunk["epoch_median_s"] / steps
    chunk["member_mb_per_step"] = member_bytes / 1e6
    chunk["floor_ms_total"] = chunk["floor_step_ms"] * steps * chunk["epochs"]
    chunk["measured_ms_total"] = chunk["measured_step_ms"] * steps * chunk["epochs"]
    run["rows"].append(f"| {num_devices} | {index} | {chunk['members']} ({chunk['size']}) | {steps} | "
                f"{chunk['budget'][0]} / {chunk['budget'][1]} | {layout.dim} / "
                f"{layout.head_dim} / {layout.layers_mp} | {'/'.join(layout.aggregations)}"
                f"{' (blocks)' if layout.blocks_only else ''} | "
                f"{member_bytes / 1e6:.1f} | {chunk['floor_step_ms']:.2f} | "
                f"{chunk['measured_step_ms']:.2f} | "
                f"{chunk['measured_step_ms'] / chunk['floor_step_ms']:.1f}x |")
  run["chunk_records"] = [_chunk_record(c) for c in run["chunks"].values()]
  run["floor_ratio"] = _floor_ratio(run["chunk_records"])


def _chunk_record(chunk: dict) -> dict:
  """The JSON-ready part of a chunk summarised by `summarise_chunks`."""
  layout = chunk["program"].layout
  record = {k: v for k, v in chunk.items() if k != "program"}
  record["layout"] = {"dim": layout.dim, "head_dim": layout.head_dim,
                      "layers_mp": layout.layers_mp}
  return json.loads(json.dumps(record, default=str))


def _floor_ratio(records: list[dict]) -> float:
  """Measured over floor step time, both added up over every step of the chunks."""
  floor = sum(r["floor_ms_total"] for r in records)
  return sum(r["measured_ms_total"] for r in records) / floor if floor else math.nan


# ----------------------------------------------------------------------------------------------
# One population over several jobs (--state_dir).


def _population_identity(dataset) -> dict:
  return {"task": dataset.name, "num_graphs": len(dataset.graphs), "space": FLAGS.space,
          "sample_seed": FLAGS.sample_seed, "num_designs": FLAGS.num_designs,
          "epochs": FLAGS.epochs, "eval_every": FLAGS.eval_every}


def load_state(state_dir: str, identity: dict) -> dict:
  """progress.json of `state_dir` (a fresh state when there is none).

  Raises:
    ValueError: the state is of another population (task, sample, epochs ...).
  """
  path = os.path.join(state_dir, "progress.json")
  if not os.path.exists(path):
    return {"population": identity, "done": [], "calls": [], "chunks": []}
  with open(path) as f:
    state = json.load(f)
  if state["population"] != identity:
    raise ValueError(f"{path} measures another population: {state['population']} (this run: "
                     f"{identity}); use another --state_dir")
  if isinstance(state["done"], dict):  # written before 2026-12-03: one entry per design id
    state["done"] = [[design_id, status] for design_id, status in state["done"].items()]
  return state


def designs_to_train(designs: list, state: dict) -> list:
  """The designs of the population that no run of the state has trained yet.

  A design can appear more than once (--epochs pins the epochs of designs that differed only
  there); each appearance is one training, so the state's finished trials are taken off as a
  multiset."""
  finished = collections.Counter(design_id for design_id, _ in state["done"])
  todo = []
  for design in designs:
    if finished[design.design_id]:
      finished[design.design_id] -= 1
    else:
      todo.append(design)
  return todo


def _write_state(state: dict, state_dir: str) -> None:
  os.makedirs(state_dir, exist_ok=True)
  path = os.path.join(state_dir, "progress.json")
  with open(path + ".tmp", "w") as f:
    json.dump(state, f, indent=1)
  os.replace(path + ".tmp", path)  # atomic: a killed run leaves the last complete state


def save_pyg(state: dict, state_dir: str, timings: list[dict]) -> None:
  """Saves PyG's per-design timings in the state, for the run that finishes the population."""
  state["pyg"] = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                  "device": common.device_description(), "timings": timings}
  _write_state(state, state_dir)


def saved_pyg(state: dict | None, count: int) -> list[dict] | None:
  """The first `count` PyG timings saved in the state, or None when it has fewer."""
  saved = (state or {}).get("pyg")
  if not saved or len(saved["timings"]) < count:
    return None
  return saved["timings"][:count]


def add_call(state: dict, state_dir: str, ours: dict, results: list) -> dict:
  """Adds one run (its wall time, finished designs and chunks) to the state, writes it
  (atomically), and returns the totals so far in run_gnnjax's form."""
  state["calls"].append({"date": datetime.datetime.now().isoformat(timespec="seconds"),
                         "wall_s": ours["wall_s"], "first_epoch_s": ours["first_epoch_s"],
                         "designs": ours["designs"], "steady_s": ours["steady_s"],
                         "rows": ours["rows"]})
  state["done"].extend([r.key.design_id, r.status] for r in results)
  state["chunks"].extend(ours["chunk_records"])
  _write_state(state, state_dir)
  return state_totals(state)


def state_totals(state: dict) -> dict:
  """The runs of a state added up, in run_gnnjax's form."""
  calls = state["calls"]
  return {"wall_s": sum(c["wall_s"] for c in calls), "designs": len(state["done"]),
          "first_epoch_s": calls[0]["first_epoch_s"],
          "steady_s": sum(c["steady_s"] for c in calls),
          "statuses": dict(collections.Counter(status for _, status in state["done"])),
          "rows": [row for c in calls for row in c["rows"]],
          "floor_ratio": _floor_ratio(state["chunks"]),
          "chunk_records": state["chunks"], "calls": len(calls)}


def pyg_designs_per_hour(timings: list[dict]) -> float:
  """PyG's designs per GPU-hour: one after another, each taking its extrapolated time."""
  return 3600 / statistics.mean(t["design_s"] for t in timings)


def time_pyg_designs(designs, dataset) -> list[dict]:
  """PyG's timing of each design (`time_pyg_design`), one after another; [] without torch
  or PyG."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torch_geometric  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as error:
    print(f"PyG skipped: {error}")
    return []
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  timings = []
  for design in designs:
    timings.append(time_pyg_design(design, dataset, device))
    print(f"PyG {timings[-1]['design']}: {timings[-1]['step_ms']:.2f} ms/step, "
          f"{timings[-1]['design_s']:.1f} s per design (extrapolated)", flush=True)
  return timings


def main(argv):
  del argv
  if FLAGS.pyg_only and not FLAGS.state_dir:
    raise app.UsageError("--pyg_only saves the PyG timings for a later run: it needs "
                         "--state_dir")
  if FLAGS.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache_dir)
  dataset = data_lib.load_dataset(FLAGS.task, FLAGS.data_dir, num_graphs=FLAGS.num_graphs)
  designs = sample_designs()
  print(f"{dataset.name}: {len(dataset.graphs)} graphs; {len(designs)} designs from "
        f"{FLAGS.space}, epochs {FLAGS.epochs or 'own'}; device {common.device_description()}")
  counts = [int(c) for c in FLAGS.device_counts]
  if any(c < 1 or c > len(jax.local_devices()) for c in counts):
    raise ValueError(f"--device_counts {counts}: this host has {len(jax.local_devices())} "
                     "local devices")
  state = None
  if FLAGS.state_dir:
    if len(counts) != 1:
      raise app.UsageError("--state_dir measures one device count at a time")
    state = load_state(FLAGS.state_dir, _population_identity(dataset))
  if FLAGS.pyg_only:
    timings = time_pyg_designs(designs[:FLAGS.pyg_designs], dataset)
    if not timings:
      raise app.UsageError("--pyg_only: PyG did not run (see above)")
    save_pyg(state, FLAGS.state_dir, timings)
    print(f"{len(timings)} PyG timings saved in {FLAGS.state_dir}: "
          f"{pyg_designs_per_hour(timings):,.0f} designs per hour")
    return
  bandwidth = copy_bandwidth_gbs()
  print(f"copy bandwidth {bandwidth:.0f} GB/s")
  todo = designs if state is None else designs_to_train(designs, state)
  if state is not None:
    print(f"{FLAGS.state_dir}: {len(state['calls'])} earlier run(s), "
          f"{len(designs) - len(todo)} of {len(designs)} designs done")
  runs = {}
  for count in counts:
    if state is not None and not todo:  # finished earlier: report it again
      ours = state_totals(state)
    else:
      ours = run_gnnjax(todo, dataset, jax.local_devices()[:count])
      summarise_chunks(ours, bandwidth, count)
      if state is not None:
        ours = add_call(state, FLAGS.state_dir, ours, ours.pop("results"))
        left = len(designs) - ours["designs"]
        if left:
          print(f"{ours['designs']} of {len(designs)} designs done in {ours['calls']} run(s), "
                f"{ours['wall_s']:.1f} s: rerun the same command to train the other {left}")
          return
    n = ours["designs"]  # fewer than asked when --max_seconds stopped the run
    ours["designs_per_hour"] = n / ours["wall_s"] * 3600
    ours["steady_designs_per_hour"] = (n / ours["steady_s"] * 3600 if ours["steady_s"]
                                       else math.nan)
    runs[count] = ours
    print(f"gnnjax on {count} device(s): {n} designs in {ours['wall_s']:.1f} s (first epoch "
          f"after {ours['first_epoch_s']:.1f} s), statuses {ours['statuses']}: "
          f"{ours['designs_per_hour']:,.0f} designs/GPU-hour "
          f"({ours['steady_designs_per_hour']:,.0f} without compilation); population steps "
          f"{ours['floor_ratio']:.1f}x the memory-bandwidth floor (time-weighted)")
  ours = runs[counts[0]]
  n = ours["designs"]
  ours_per_hour, steady_per_hour = ours["designs_per_hour"], ours["steady_designs_per_hour"]
  floor_ratio = ours["floor_ratio"]

  pyg = saved_pyg(state, FLAGS.pyg_designs) if FLAGS.pyg_designs else None
  if pyg is not None:
    print(f"PyG: {len(pyg)} designs timed on {state['pyg']['device']} at "
          f"{state['pyg']['date']} (saved in {FLAGS.state_dir})")
  elif FLAGS.pyg and FLAGS.pyg_designs:
    pyg = time_pyg_designs(designs[:FLAGS.pyg_designs], dataset)
    if state is not None and pyg:
      save_pyg(state, FLAGS.state_dir, pyg)
  pyg = pyg or []
  pyg_per_hour = pyg_designs_per_hour(pyg) if pyg else math.nan
  ratio = ours_per_hour / pyg_per_hour if pyg else math.nan
  print(f"designs per GPU-hour: gnnjax {ours_per_hour:,.0f}, PyG {pyg_per_hour:,.0f}, "
        f"ratio {ratio:.1f}x (target {TARGET_RATIO:.0f}x)")

  scaling_rows, scaling = [], {}
  for count, run in runs.items():
    base = runs[counts[0]]
    scaling[count] = {"wall_s": run["wall_s"], "designs_per_hour": run["designs_per_hour"],
                      "steady_designs_per_hour": run["steady_designs_per_hour"],
                      "speedup": run["designs_per_hour"] / base["designs_per_hour"],
                      "steady_speedup": (run["steady_designs_per_hour"]
                                         / base["steady_designs_per_hour"])}
    scaling_rows.append(
        f"| {count} | {run['wall_s']:.1f} | {run['first_epoch_s']:.1f} | "
        f"{run['designs_per_hour']:,.0f} | {run['steady_designs_per_hour']:,.0f} | "
        f"{scaling[count]['speedup']:.2f}x | {scaling[count]['steady_speedup']:.2f}x | "
        f"{run['floor_ratio']:.1f}x |")
  table = "\n".join([
      "| what | value |", "|---|---|",
      f"| task | {dataset.name}, {len(dataset.graphs)} graphs, seed 1 |",
      f"| designs | {n} from {FLAGS.space} (sample seed {FLAGS.sample_seed}), epochs "
      f"{FLAGS.epochs or 'own'}, eval every {FLAGS.eval_every} |",
      f"| gnnjax wall on {counts[0]} device(s) (incl. compile, eval) | {ours['wall_s']:.1f} s "
      f"(first epoch at {ours['first_epoch_s']:.1f} s"
      + (f"; the sum of {ours['calls']} runs, each compiling its own programs"
         + (" or loading them from --compilation_cache_dir" if FLAGS.compilation_cache_dir
            else "") if ours.get("calls", 1) > 1 else "") + ") |",
      f"| gnnjax designs / GPU-hour | {ours_per_hour:,.0f} (steady state {steady_per_hour:,.0f}) |",
      f"| PyG designs / GPU-hour ({len(pyg)} designs, {FLAGS.pyg_epochs} timed epochs each, "
      f"extrapolated) | {pyg_per_hour:,.0f} |",
      f"| ratio | {ratio:.1f}x |",
      f"| copy bandwidth | {bandwidth:.0f} GB/s |",
      f"| population steps vs memory-bandwidth floor | {floor_ratio:.1f}x (all chunks, "
      "time-weighted) |",
      "", "| devices | wall s | first epoch at s | designs / hour | designs / hour without "
      "compilation | speedup | speedup without compilation | steps / floor |",
      "|---|---|---|---|---|---|---|---|", *scaling_rows,
      "", "| devices | chunk | members (padded) | steps/epoch | largest batch nodes / edges | "
      "D / H / l_mp | aggregations | floor MB per member step | floor ms/step | "
      "measured ms/step | measured / floor |", "|---|---|---|---|---|---|---|---|---|---|---|",
      *[row for run in runs.values() for row in run["rows"]],
      "", "| PyG design | ms/step | s/epoch | s per design (extrapolated) |", "|---|---|---|---|",
      *[f"| {p['design']} | {p['step_ms']:.2f} | {p['epoch_s']:.3f} | {p['design_s']:.1f} |"
        for p in pyg]])
  metrics = {"num_designs": n, "num_designs_asked": len(designs), "epochs": FLAGS.epochs,
             "task": dataset.name,
             **engine_flags.flag_values(),
             "compiler_options": engine.compiler_options_for(jax.local_devices()),
             "num_graphs": len(dataset.graphs), "device_counts": counts,
             "gnnjax_wall_s": ours["wall_s"],
             "gnnjax_first_epoch_s": ours["first_epoch_s"], "gnnjax_steady_s": ours["steady_s"],
             "gnnjax_designs_per_hour": ours_per_hour,
             "gnnjax_steady_designs_per_hour": steady_per_hour,
             "statuses": ours["statuses"], "pyg": pyg, "pyg_designs_per_hour": pyg_per_hour,
             "ratio": ratio, "copy_gbs": bandwidth, "floor_ratio": floor_ratio,
             "scaling": scaling, "compilation_cache_dir": FLAGS.compilation_cache_dir,
             "chunks": {count: run["chunk_records"] for count, run in runs.items()},
             "runs": ours.get("calls", 1)}
  targets = {}
  if pyg:
    targets[f"designs per GPU-hour >= {TARGET_RATIO:.0f}x PyG"] = common.target(
        ratio, TARGET_RATIO)
  if 2 in runs and counts[0] == 1:
    targets[f"2 devices >= {TARGET_SCALING}x one device (designs per hour)"] = common.target(
        scaling[2]["speedup"], TARGET_SCALING)
    targets[f"2 devices >= {TARGET_SCALING}x one device, without compilation"] = (
        common.target(scaling[2]["steady_speedup"], TARGET_SCALING))
  path = common.write_results(FLAGS.results_name, json.loads(json.dumps(metrics, default=str)),
                              targets, FLAGS.out_dir, table)
  print(table)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
