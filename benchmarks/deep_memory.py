r"""Peak device memory and training-step time versus depth for deep GNNs, beside PyG.

    python -m benchmarks.deep_memory --out_dir=benchmarks

Models (one entry each in MODELS; a model is an object with pure `init(key, graph)` and
`apply(params, graph, train, key)`):
  resgnn      DeeperGCN res+ with GEN blocks at full width, plain autodiff (stored activations)
  revgnn      grouped reversible GNN (gnnjax.models.revgnn.RevGNN), custom VJP over the stack
  revgnn_wt   the same with one set of block weights for all layers
  revgnn_unfused  (not in the default --models) RevGNN with the [E, H] edge embedding
              materialised, the literal form as in PyG (revgnn folds the shared edge encoder
              into each block's, `blocks.LinearEdges`)
  deq         DEQ-GNN (gnnjax.models.deqgnn, GEN equilibrium map, Anderson both ways); its
              "depth" is the number of solver iterations, forward and adjoint
  pyg         torch_geometric.nn.GroupAddRev around the same GEN block (LayerNorm -> ReLU ->
              shared dropout -> GENConv(aggr max, 2-layer MLP with LayerNorm, edge_dim=H,
              biases on)), same width, groups and encoders; skipped when torch/PyG are missing

Task: a random graph of ogbn-proteins' size (132,534 nodes, 39,561,252 edges, 8-d edge
features in [0, 1], 8-d node features, 112 binary targets learnable from the node features;
--nodes/--edges shrink it), edges sorted by receiver. One training step = forward, BCE loss,
backward, Adam update (lr 1e-3); dropout 0.1 in training mode (RevGNN: one shared mask per step).

Each (model, depth) runs in a fresh subprocess (peak memory is process-wide and monotone): the
script re-invokes itself with --single_run=model,depth and reads one JSON line back. Columns:
peak device memory (JAX: memory_stats()['peak_bytes_in_use']; torch: max_memory_allocated;
both include the graph, parameters, gradients and Adam state), XLA's compiled temp size
(memory_analysis; JAX only), and the median step time. JAX steps are compiled ahead of time, so
the first executed step is already a clean measurement: configs whose step is slow are timed on
fewer steps (--steps, --slow_step_s). A model that runs out of memory is recorded as OOM and not
run at larger depths. Depths run shallowest and deepest first, then the rest; a config is skipped
when its wall time, extrapolated linearly in depth from the model's nearest finished one, exceeds what is left of --time_budget_s (counted from the start, the
training run included), so the whole run stays within about that budget.

--train_1001 additionally trains a 1001-layer RevGNN (RevGNN-Deep's width 80, 2 groups) end to
end for --train_steps Adam steps with gradient clipping 1.0 on a subgraph of an ogbn-proteins
training partition's size (13,254 nodes, 791,225 edges; the repo trains on 1/10 random node
parts), reporting the loss curve and peak memory (the paper reports 2.86 GB in PyTorch).

Writes results/deep_memory.json + RESULTS.md under --out_dir and the plot --plot (memory and
time vs depth, log x).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("nodes", 132_534, "Random graph: nodes (ogbn-proteins: 132,534).")
flags.DEFINE_integer("edges", 39_561_252, "Random graph: directed edges (ogbn-proteins: "
                     "39,561,252).")
flags.DEFINE_integer("edge_dim", 8, "Edge-feature width.")
flags.DEFINE_integer("in_features", 8, "Node-feature width.")
flags.DEFINE_integer("num_outputs", 112, "Binary targets per node.")
flags.DEFINE_integer("hidden", 64, "Hidden width H.")
flags.DEFINE_integer("groups", 2, "Reversible groups C.")
flags.DEFINE_string("aggregation", "max", "GENConv aggregation.")
flags.DEFINE_float("dropout", 0.1, "Dropout rate.")
flags.DEFINE_list("depths", ["4", "16", "64", "256", "1001"], "Depths L to sweep.")
flags.DEFINE_list("models", ["resgnn", "revgnn", "pyg", "revgnn_wt", "deq"],
                  "Models to sweep (keys of MODELS, or 'pyg'), in priority order at each depth.")
flags.DEFINE_bool("pyg", True, "Include PyG's GroupAddRev (skipped when torch_geometric is "
                  "missing).")
flags.DEFINE_integer("steps", 2, "Timed steps per config (after one warm-up step).")
flags.DEFINE_float("slow_step_s", 5.0, "A config whose warm-up step takes longer is timed on "
                   "that step alone.")
flags.DEFINE_integer("config_timeout_s", 240, "Wall-clock limit of one (model, depth) subprocess.")
flags.DEFINE_integer("time_budget_s", 420, "Skip configs predicted to end after this many "
                     "seconds from the start.")
flags.DEFINE_float("mem_fraction", 0.9, "XLA_PYTHON_CLIENT_MEM_FRACTION for JAX subprocesses.")
flags.DEFINE_bool("train_1001", True, "Also train a 1001-layer RevGNN for a few steps.")
flags.DEFINE_integer("train_layers", 1001, "Depth of the end-to-end training run.")
flags.DEFINE_integer("train_hidden", 80, "Width of the end-to-end training run (RevGNN-Deep: 80).")
flags.DEFINE_integer("train_nodes", 13_254, "Nodes of the training-run graph.")
flags.DEFINE_integer("train_edges", 791_225, "Edges of the training-run graph.")
flags.DEFINE_integer("train_steps", 5, "Adam steps of the training run.")
flags.DEFINE_string("plot", "docs/figures/deep_memory.png", "Plot path ('' = no plot).")
flags.DEFINE_string("out_dir", "benchmarks", "Where results/deep_memory.json and RESULTS.md go.")
flags.DEFINE_string("cache_dir", "/tmp/gnnjax_deep_memory", "Where the random graph is cached "
                    "for the subprocesses.")
flags.DEFINE_string("single_run", "", "Internal: 'model,depth' runs one config in this process "
                    "and prints one RESULT line.")
flags.DEFINE_list("merge", [], "Results JSONs of earlier runs (e.g. one sweep split over "
                  "several GPU calls) to merge into one report instead of running anything: a "
                  "measured entry beats a skipped one; device/date/commit come from the first.")
flags.DEFINE_integer("seed", 0, "Seed of the graph, parameters and dropout.")


# ----------------------------------------------------------------------------------------------
# Models. Adding one is one entry: name -> build(depth) returning an object with init/apply.


def _revgnn(depth: int, **overrides):
  from gnnjax.models import revgnn
  kwargs = dict(num_outputs=FLAGS.num_outputs, hidden=FLAGS.hidden, num_layers=depth,
                groups=FLAGS.groups, dropout=FLAGS.dropout, aggregation=FLAGS.aggregation,
                edge_dim=FLAGS.edge_dim)
  return revgnn.RevGNN(**{**kwargs, **overrides})


def _deq(depth: int):
  from gnnjax.models import deqgnn
  return deqgnn.benchmark_model(FLAGS.num_outputs, FLAGS.hidden, max_iter=depth,
                                dropout=FLAGS.dropout, aggregation=FLAGS.aggregation)


def _resgnn(depth: int):
  from gnnjax.models import revgnn
  return revgnn.ResGNN(num_outputs=FLAGS.num_outputs, hidden=FLAGS.hidden, num_layers=depth,
                       dropout=FLAGS.dropout, aggregation=FLAGS.aggregation,
                       edge_dim=FLAGS.edge_dim)


MODELS: dict[str, Callable[[int], Any]] = {
    "resgnn": _resgnn,
    "revgnn": _revgnn,
    "revgnn_wt": lambda depth: _revgnn(depth, weight_tied=True),
    # The literal form: the [E, H] edge embedding materialised and its cotangent accumulated.
    "revgnn_unfused": lambda depth: _revgnn(depth, fuse_edge_encoders=False),
    # DEQ-GNN: `depth` is the solver's iteration budget (forward and adjoint solves both run
    # exactly that many Anderson iterations), so memory must stay flat while time grows.
    "deq": lambda depth: _deq(depth),
}
PYG = "pyg"


# ----------------------------------------------------------------------------------------------
# The random graph, generated once by the parent and memory-mapped by every subprocess.


_ARRAYS = ("senders", "receivers", "edge_x", "x", "y", "n_node", "n_edge")


def _graph_arrays(nodes: int, edges: int, tag: str) -> dict[str, Any]:
  """The random task graph, already padded (gnnjax convention: real nodes and edges first),
  as NumPy arrays cached in .npy files under --cache_dir and memory-mapped on later calls.

  Padding is done once here, not in every subprocess: it costs seconds at 40M edges.
  """
  import numpy as np
  from gnnjax import batching
  from gnnjax.data import dataset as ds
  folder = pathlib.Path(FLAGS.cache_dir) / (
      f"{tag}_n{nodes}_e{edges}_f{FLAGS.in_features}_d{FLAGS.edge_dim}_k{FLAGS.num_outputs}"
      f"_s{FLAGS.seed}")
  if all((folder / f"{n}.npy").exists() for n in _ARRAYS):
    return {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in _ARRAYS}
  rng = np.random.default_rng(FLAGS.seed)
  senders = rng.integers(0, nodes, edges, dtype=np.int32)
  receivers = rng.integers(0, nodes, edges, dtype=np.int32)
  order = np.argsort(receivers, kind="stable")  # CSR order, for both libraries
  x = rng.random((nodes, FLAGS.in_features), dtype=np.float32)
  mix = rng.standard_normal((FLAGS.in_features, FLAGS.num_outputs)).astype(np.float32)
  y = ((x - 0.5) @ mix > 0).astype(np.float32)
  edge_x = rng.random((edges, FLAGS.edge_dim), dtype=np.float32)
  graph = batching.pad_single_graph(ds.make_graph(senders[order], receivers[order], nodes,
                                                  {"x": x, "y": y}, {"x": edge_x}))
  arrays = {"senders": graph.senders, "receivers": graph.receivers,
            "edge_x": graph.edges["x"], "x": graph.nodes["x"], "y": graph.nodes["y"],
            "n_node": graph.n_node, "n_edge": graph.n_edge}
  folder.mkdir(parents=True, exist_ok=True)
  for name, value in arrays.items():
    tmp = folder / f".{name}.tmp.npy"
    np.save(tmp, np.asarray(value))
    tmp.rename(folder / f"{name}.npy")
  return arrays


def _real(arrays) -> dict[str, Any]:
  """The unpadded graph (PyG): the first n_node[0] nodes and n_edge[0] edges."""
  n, e = int(arrays["n_node"][0]), int(arrays["n_edge"][0])
  return {"senders": arrays["senders"][:e], "receivers": arrays["receivers"][:e],
          "edge_x": arrays["edge_x"][:e], "x": arrays["x"][:n], "y": arrays["y"][:n]}


def _jax_graph(arrays):
  import jax
  import jraph
  import numpy as np
  graph = jraph.GraphsTuple(
      nodes={"x": np.asarray(arrays["x"]), "y": np.asarray(arrays["y"])},
      edges={"x": np.asarray(arrays["edge_x"])}, senders=np.asarray(arrays["senders"]),
      receivers=np.asarray(arrays["receivers"]), globals={},
      n_node=np.asarray(arrays["n_node"]), n_edge=np.asarray(arrays["n_edge"]))
  return jax.device_put(graph)


# ----------------------------------------------------------------------------------------------
# One configuration, in this process.


def _is_oom(error: BaseException) -> bool:
  text = f"{type(error).__name__}: {error}"
  return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                 "OutOfMemory"))


def _jax_peak() -> int | None:
  import jax
  stats = jax.devices()[0].memory_stats()
  return None if not stats else int(stats.get("peak_bytes_in_use", 0))


def _jax_run(model, graph, steps: int, clip: float | None = None) -> dict[str, Any]:
  """Compiles one Adam training step ahead of time, runs warm-up + timed steps."""
  import jax
  import jax.numpy as jnp
  import optax
  from gnnjax import graph as graph_lib

  key = jax.random.key(FLAGS.seed)
  params = model.init(jax.random.fold_in(key, 0), graph)
  num_params = int(sum(a.size for a in jax.tree.leaves(params)))
  opt = optax.adam(1e-3)
  if clip is not None:
    opt = optax.chain(optax.clip_by_global_norm(clip), opt)
  opt_state = opt.init(params)
  mask = graph_lib.node_mask(graph).astype(jnp.float32)[:, None]

  def loss_fn(params, graph, step_key):
    logits = model.apply(params, graph, True, step_key)
    losses = optax.sigmoid_binary_cross_entropy(logits, graph.nodes["y"])
    return jnp.sum(losses * mask) / (jnp.sum(mask) * losses.shape[-1])

  def step(params, opt_state, graph, step_key):
    loss, grads = jax.value_and_grad(loss_fn)(params, graph, step_key)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step_key = jax.random.fold_in(key, 1)
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, graph,
                                                        step_key).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  peak_after_compile = _jax_peak()
  times, losses = [], []
  for i in range(1 + steps):
    start = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, graph, jax.random.fold_in(step_key, i))
    losses.append(float(loss))  # blocks until the step is done
    times.append(time.perf_counter() - start)
    if i == 0 and times[0] > FLAGS.slow_step_s:
      break
  timed = times[1:] or times
  return {"status": "ok", "peak_bytes": _jax_peak(), "peak_after_compile": peak_after_compile,
          "temp_bytes": None if analysis is None else int(analysis.temp_size_in_bytes),
          "step_s": statistics.median(timed), "steps_timed": len(timed), "compile_s": compile_s,
          "losses": losses, "num_params": num_params}


def _pyg_run(depth: int, arrays, steps: int) -> dict[str, Any]:
  import torch
  import torch.nn.functional as F
  from torch_geometric.nn import GENConv, GroupAddRev

  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(FLAGS.seed)
  hidden, groups, rate = FLAGS.hidden, FLAGS.groups, FLAGS.dropout
  d = hidden // groups

  class Block(torch.nn.Module):
    """LayerNorm -> ReLU -> shared dropout mask -> GENConv, the RevGNN repo's GENBlock."""

    def __init__(self):
      super().__init__()
      self.norm = torch.nn.LayerNorm(d)
      self.conv = GENConv(d, d, aggr=FLAGS.aggregation, num_layers=2, norm="layer", bias=True,
                          edge_dim=hidden)

    def reset_parameters(self):
      self.norm.reset_parameters()
      self.conv.reset_parameters()

    def forward(self, x, edge_index, edge_emb_t, mask):
      h = self.norm(x).relu()
      if mask is not None:
        h = h * mask
      # The edge embedding travels transposed ([H, E]) so that GroupAddRev, which chunks every
      # tensor whose last dim equals the channel count, hands each group the whole embedding
      # (the RevGNN repo tiles it C times for the same effect).
      return self.conv(h, edge_index, edge_emb_t.t())

  class Model(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.node_encoder = torch.nn.Linear(FLAGS.in_features, hidden)
      self.edge_encoder = torch.nn.Linear(FLAGS.edge_dim, hidden)
      self.layers = torch.nn.ModuleList(
          [GroupAddRev(Block(), num_groups=groups) for _ in range(depth)])
      self.norm = torch.nn.LayerNorm(hidden)
      self.head = torch.nn.Linear(hidden, FLAGS.num_outputs)

    def forward(self, x, edge_index, edge_attr):
      h = self.node_encoder(x)
      emb_t = self.edge_encoder(edge_attr).t()
      mask = torch.empty_like(h).bernoulli_(1 - rate) / (1 - rate)  # shared by all layers
      for layer in self.layers:
        h = layer(h, edge_index, emb_t, mask)
      h = F.dropout(self.norm(h).relu(), rate, self.training)
      return self.head(h)

  x = torch.tensor(arrays["x"], device=dev)
  y = torch.tensor(arrays["y"], device=dev)
  edge_attr = torch.tensor(arrays["edge_x"], device=dev)
  edge_index = torch.stack([torch.tensor(arrays["senders"], device=dev).long(),
                            torch.tensor(arrays["receivers"], device=dev).long()])
  model = Model().to(dev).train()
  num_params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  times, losses = [], []
  for i in range(1 + steps):
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.binary_cross_entropy_with_logits(model(x, edge_index, edge_attr), y)
    loss.backward()
    opt.step()
    losses.append(float(loss))
    sync()
    times.append(time.perf_counter() - start)
    if i == 0 and times[0] > FLAGS.slow_step_s:
      break
  timed = times[1:] or times
  peak = int(torch.cuda.max_memory_allocated()) if dev.type == "cuda" else None
  return {"status": "ok", "peak_bytes": peak, "temp_bytes": None,
          "step_s": statistics.median(timed), "steps_timed": len(timed), "losses": losses,
          "num_params": int(num_params), "torch": torch.__version__}


def _single(spec: str) -> dict[str, Any]:
  name, depth = spec.split(",")
  depth = int(depth)
  try:
    if name == "train":
      arrays = _graph_arrays(FLAGS.train_nodes, FLAGS.train_edges, "train")
      model = _revgnn(depth, hidden=FLAGS.train_hidden)
      result = _jax_run(model, _jax_graph(arrays), FLAGS.train_steps - 1, clip=1.0)
      result["steps_run"] = len(result["losses"])
      return result
    arrays = _graph_arrays(FLAGS.nodes, FLAGS.edges, "sweep")
    if name == PYG:
      return _pyg_run(depth, _real(arrays), FLAGS.steps)
    return _jax_run(MODELS[name](depth), _jax_graph(arrays), FLAGS.steps)
  except Exception as error:  # noqa: BLE001 -- any failure is a result of this config
    if _is_oom(error):
      return {"status": "oom", "error": str(error).splitlines()[0][:300]}
    return {"status": "error", "error": f"{type(error).__name__}: {error}"[:500]}


# ----------------------------------------------------------------------------------------------
# The parent: sweep in subprocesses, table, targets, plot.


def _launch(spec: str, timeout: float) -> dict[str, Any]:
  argv = [a for a in sys.argv[1:] if not a.startswith("--single_run")]
  cmd = [sys.executable, "-m", "benchmarks.deep_memory", *argv, f"--single_run={spec}"]
  env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=str(FLAGS.mem_fraction))
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
  except subprocess.TimeoutExpired:
    return {"status": "timeout", "wall_s": time.perf_counter() - start}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("RESULT "):
      result = json.loads(line[len("RESULT "):])
      result["wall_s"] = time.perf_counter() - start
      return result
  tail = (proc.stderr or proc.stdout)[-600:]
  status = "oom" if any(s in tail for s in ("RESOURCE_EXHAUSTED", "out of memory")) else "error"
  return {"status": status, "error": f"exit {proc.returncode}: {tail}",
          "wall_s": time.perf_counter() - start}


def _predicted_wall_s(done: dict[int, dict], depth: int) -> float | None:
  """Wall time of a config, extrapolated linearly in depth from the model's nearest finished one.

  The subprocess's fixed cost (start-up, graph, compilation) is its wall time minus its steps;
  the step time scales with depth. None when nothing has finished yet.
  """
  ok = [d for d, r in done.items() if r["status"] == "ok" and "wall_s" in r]
  if not ok:
    return None
  nearest = min(ok, key=lambda d: abs(math.log(d / depth)))
  last = done[nearest]
  fixed = max(last["wall_s"] - len(last["losses"]) * last["step_s"], 0.0)
  step = last["step_s"] * depth / nearest
  steps = 1 if step > FLAGS.slow_step_s else 1 + FLAGS.steps
  return fixed + steps * step


def _run_order(depths: list[int]) -> list[int]:
  """Shallowest and deepest first (the memory-flatness targets need both), then the rest."""
  ends = [depths[0], depths[-1]] if len(depths) > 1 else depths
  return ends + [d for d in depths if d not in ends]


def _pyg_available() -> bool:
  import importlib.util
  return all(importlib.util.find_spec(m) is not None for m in ("torch", "torch_geometric"))


def _gb(value) -> str:
  return "-" if value is None else f"{value / 2**30:.2f}"


def _cell(result: dict[str, Any]) -> tuple[str, str, str]:
  if result["status"] != "ok":
    return result["status"].upper(), "-", "-"
  step = f"{result['step_s'] * 1e3:.0f}" if result["step_s"] < 100 else f"{result['step_s']:.0f}s"
  return _gb(result.get("peak_bytes")), _gb(result.get("temp_bytes")), step


def _targets(results: dict[str, dict[int, dict]], depths: list[int]) -> dict[str, Any]:
  from benchmarks import common
  targets = {}
  ok = lambda m, d: results.get(m, {}).get(d, {}).get("status") == "ok"
  peak = lambda m, d: results[m][d].get("peak_bytes")
  lo, hi = min(depths), max(depths)
  for model in ("revgnn", "revgnn_wt"):
    if ok(model, lo) and ok(model, hi) and peak(model, lo):
      targets[f"{model} peak at L={hi} <= 1.2x its peak at L={lo}"] = common.target(
          peak(model, hi) / peak(model, lo), 1.2, higher_is_better=False)
  both = [d for d in depths if ok("revgnn", d) and ok(PYG, d) and peak(PYG, d)]
  if both:
    targets["revgnn peak <= PyG GroupAddRev peak at every L (max ratio)"] = common.target(
        max(peak("revgnn", d) / peak(PYG, d) for d in both), 1.0, higher_is_better=False)
    targets["revgnn step time <= 0.5x PyG GroupAddRev (max ratio over L)"] = common.target(
        max(results["revgnn"][d]["step_s"] / results[PYG][d]["step_s"] for d in both), 0.5,
        higher_is_better=False)
  return targets


def _plot(results: dict[str, dict[int, dict]], depths: list[int], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
  # Peak device memory where the backend reports it (GPU); XLA's temp size otherwise (CPU).
  key = "peak_bytes" if any(r.get("peak_bytes") for v in results.values() for r in v.values()
                            ) else "temp_bytes"
  for model, by_depth in results.items():
    ok = sorted(d for d, r in by_depth.items() if r["status"] == "ok" and r.get(key))
    if ok:
      line, = ax_mem.plot(ok, [by_depth[d][key] / 2**30 for d in ok], "o-", label=model)
      ax_time.plot(ok, [by_depth[d]["step_s"] for d in ok], "o-", color=line.get_color(),
                   label=model)
      failed = sorted(d for d, r in by_depth.items() if r["status"] == "oom")
      if failed:
        ax_mem.plot(failed, [by_depth[ok[-1]][key] / 2**30] * len(failed), "x",
                    color=line.get_color(), markersize=10)
  ylabel = "peak device memory (GiB)" if key == "peak_bytes" else "XLA temp memory (GiB)"
  ax_mem.set(xscale="log", xlabel="layers L", ylabel=ylabel,
             title="memory vs depth (x: out of memory)")
  ax_time.set(xscale="log", yscale="log", xlabel="layers L", ylabel="training step (s)",
              title="step time vs depth")
  for ax in (ax_mem, ax_time):
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  if FLAGS.single_run:
    print("RESULT " + json.dumps(_single(FLAGS.single_run)), flush=True)
    return
  if FLAGS.merge:
    _merge_reports(FLAGS.merge)
    return
  from benchmarks import common

  depths = sorted(int(d) for d in FLAGS.depths)
  models = [m for m in FLAGS.models if m != PYG or FLAGS.pyg]
  unknown = [m for m in models if m != PYG and m not in MODELS]
  if unknown:
    raise ValueError(f"unknown models {unknown}; choose from {list(MODELS) + [PYG]}")
  notes = []
  if PYG in models and not _pyg_available():
    models.remove(PYG)
    notes.append("PyG skipped: torch/torch_geometric not installed.")
  start = time.perf_counter()
  train_table = None
  if FLAGS.train_1001:  # first, so the sweep's time budget cannot crowd it out
    train = _launch(f"train,{FLAGS.train_layers}", FLAGS.config_timeout_s)
    train_info = {"layers": FLAGS.train_layers, "hidden": FLAGS.train_hidden,
                  "nodes": FLAGS.train_nodes, "edges": FLAGS.train_edges, **train}
    if train["status"] == "ok":
      losses = ", ".join(f"{v:.4f}" for v in train["losses"])
      train_table = (f"End-to-end training, RevGNN L={FLAGS.train_layers} H={FLAGS.train_hidden} "
                     f"C={FLAGS.groups} ({FLAGS.train_nodes} nodes, {FLAGS.train_edges} edges, "
                     f"Adam lr 1e-3 + clip 1.0): peak {_gb(train.get('peak_bytes'))} GiB, step "
                     f"{train['step_s']:.2f} s, {train['num_params']:,} params, losses {losses} "
                     f"(paper, PyTorch on ogbn-proteins parts: 2.86 GB)")
    else:
      train_table = (f"End-to-end training, RevGNN L={FLAGS.train_layers}: {train['status']} "
                     f"{train.get('error', '')[:200]}")
    print(train_table, flush=True)
  _graph_arrays(FLAGS.nodes, FLAGS.edges, "sweep")
  print(f"graph ready ({time.perf_counter() - start:.0f} s)", flush=True)

  results: dict[str, dict[int, dict]] = {m: {} for m in models}
  for depth in _run_order(depths):
    for model in models:
      done = results[model]
      remaining = FLAGS.time_budget_s - (time.perf_counter() - start)
      predicted = _predicted_wall_s(done, depth)
      if any(r["status"] == "oom" for d, r in done.items() if d < depth):
        results[model][depth] = {"status": "oom", "error": "a smaller depth ran out of memory"}
      elif any(r["status"] == "timeout" for d, r in done.items() if d < depth):
        results[model][depth] = {"status": "skipped", "error": "a smaller depth timed out"}
      elif predicted is not None and predicted > remaining:
        results[model][depth] = {"status": "skipped", "error": (
            f"predicted {predicted:.0f} s > {max(remaining, 0):.0f} s left of --time_budget_s")}
      else:
        results[model][depth] = _launch(f"{model},{depth}", FLAGS.config_timeout_s)
      r = results[model][depth]
      print(f"{model:>14} L={depth:<5} {r['status']:>7} peak {_gb(r.get('peak_bytes'))} GiB "
            f"temp {_gb(r.get('temp_bytes'))} GiB step {r.get('step_s', float('nan')):.3f} s "
            f"wall {r.get('wall_s', 0):.0f} s {r.get('error', '')[:200]}", flush=True)

  config = {k: FLAGS[k].value for k in ("nodes", "edges", "edge_dim", "in_features",
                                          "num_outputs", "hidden", "groups", "aggregation",
                                          "dropout")}
  notes.append(f"Total wall time {time.perf_counter() - start:.0f} s.")
  _report(config, results, depths, train_info if FLAGS.train_1001 else None, train_table, notes)


def _report(config: dict, results: dict[str, dict[int, dict]], depths: list[int],
            train_info: dict | None, train_table: str | None, notes: list[str],
            provenance: dict | None = None) -> None:
  """Prints the tables and targets, draws the plot and writes the results files."""
  from benchmarks import common
  models = list(results)
  header = "| model | " + " | ".join(f"L={d}" for d in depths) + " |"
  rule = "|---|" + "---|" * len(depths)
  tables = []
  for title, column in (("peak memory (GiB)", 0), ("XLA temp (GiB)", 1), ("step (ms)", 2)):
    rows = [f"| {m} | " + " | ".join(_cell(results[m].get(d, _NOT_RUN))[column] for d in depths)
            + " |" for m in models]
    tables.append(f"{title}:\n\n{header}\n{rule}\n" + "\n".join(rows))
  metrics: dict[str, Any] = {"config": config, "sweep": {
      m: {str(d): v[d] for d in sorted(v)} for m, v in results.items()}}
  targets = _targets(results, depths)
  if train_info is not None:
    metrics["train"] = train_info
  if train_table:
    tables.append(train_table)

  table = "\n\n".join(tables)
  print(table)
  if FLAGS.plot:
    _plot(results, depths, FLAGS.plot)
    print(f"plot: {FLAGS.plot}")
  path = common.write_results("deep_memory", metrics, targets, FLAGS.out_dir, table,
                              notes=" ".join(notes), provenance=provenance)
  for name, t in targets.items():
    print(f"{name}: {t['value']:.3f} (target {t['target']}) {'met' if t['met'] else 'NOT met'}")
  print(f"wrote {path}")


_NOT_RUN = {"status": "skipped", "error": "not run"}
_MEASURED = ("ok", "oom", "timeout", "error")


def _merge_reports(paths: list[str]) -> None:
  """One report from several runs' results JSONs (same config): measured beats skipped."""
  records = [json.loads(pathlib.Path(p).read_text()) for p in paths]
  configs = {json.dumps(r["metrics"]["config"], sort_keys=True) for r in records}
  if len(configs) != 1:
    raise ValueError(f"cannot merge runs with different configs: {sorted(configs)}")
  results: dict[str, dict[int, dict]] = {}
  train_info = None
  for record in records:
    for model, by_depth in record["metrics"]["sweep"].items():
      merged = results.setdefault(model, {})
      for depth, entry in by_depth.items():
        if int(depth) not in merged or entry["status"] in _MEASURED:
          merged[int(depth)] = entry
    train_info = train_info or record["metrics"].get("train")
  depths = sorted({d for v in results.values() for d in v})
  train_table = None
  if train_info and train_info.get("status") == "ok":
    losses = ", ".join(f"{v:.4f}" for v in train_info["losses"])
    train_table = (f"End-to-end training, RevGNN L={train_info['layers']} "
                   f"H={train_info['hidden']} ({train_info['nodes']} nodes, "
                   f"{train_info['edges']} edges, Adam lr 1e-3 + clip 1.0): peak "
                   f"{_gb(train_info.get('peak_bytes'))} GiB, step {train_info['step_s']:.2f} s, "
                   f"{train_info['num_params']:,} params, losses {losses} (paper, PyTorch on "
                   f"ogbn-proteins parts: 2.86 GB)")
  first = records[0]
  provenance = {k: first[k] for k in ("device", "date", "commit")}
  notes = [f"Merged from {len(records)} runs (commits "
           f"{', '.join(sorted({r['commit'] for r in records}))}): one sweep split over several "
           "GPU calls by the 10-minute limit per call."]
  _report(json.loads(configs.pop()), results, depths, train_info, train_table, notes,
          provenance)


if __name__ == "__main__":
  app.run(main)
