r"""Forward+backward time of each conv, gnnjax beside PyG on the same GPU in one run, plus the
bandwidth of a plain sum message pass against the device's copy bandwidth.

    python -m benchmarks.layers --data_dir=../shared/datasets --out_dir=benchmarks

Graphs: Cora (2708 nodes, 10556 edges, 1433 features) and a random graph with --nodes nodes,
--edges edges and --features features (default 1M / 16M / 64). Edges are sorted by receiver
(CSR order) once, for both libraries. A "step" is the forward pass, a scalar loss, and the
gradient with respect to the parameters and the node features.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from gnnjax import batching
from gnnjax import data as data_lib
from gnnjax.data import dataset as ds
from gnnjax.nn import conv, deeper, general_conv, mlp, pna, point

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Data root with planetoid/ (for Cora).")
flags.DEFINE_integer("nodes", 1_000_000, "Random graph: nodes.")
flags.DEFINE_integer("edges", 16_000_000, "Random graph: directed edges.")
flags.DEFINE_integer("features", 64, "Random graph: feature width (in and out).")
flags.DEFINE_integer("iters", 10, "Timed iterations per measurement (median reported).")
flags.DEFINE_list("layers", ["gcn", "sage", "gin", "gine", "gat", "general", "gen", "edge",
                             "pna"], "Convs to time.")
flags.DEFINE_bool("pyg", True, "Also time PyG's layers (needs torch and torch_geometric).")
flags.DEFINE_string("out_dir", "benchmarks", "Where results/layers.json and RESULTS.md go.")

EDGE_DIM = 16


def _graphs():
  cora = data_lib.load_dataset("cora", FLAGS.data_dir).graphs[0]
  rng = np.random.default_rng(0)
  n, e = FLAGS.nodes, FLAGS.edges
  senders = rng.integers(0, n, e, dtype=np.int32)
  receivers = rng.integers(0, n, e, dtype=np.int32)
  order = np.lexsort((senders, receivers))
  x = rng.standard_normal((n, FLAGS.features), dtype=np.float32)
  big = ds.make_graph(senders[order], receivers[order], n, {"x": x})
  cora_x = np.asarray(cora.nodes["x"], np.float32)
  cora = ds.make_graph(cora.senders, cora.receivers, cora_x.shape[0], {"x": cora_x})
  return {"cora": cora, f"random_{n // 1000}k_{e // 1000}k": big}


def _with_edge_features(graph, rng):
  e = graph.senders.shape[0]
  return graph._replace(edges={"x": rng.standard_normal((e, EDGE_DIM), dtype=np.float32)})


def _jax_layers(width: int, deg_hist):
  """name -> (module, uses edge features)."""
  two_layer = lambda: mlp.MLP((width, width))
  return {
      "gcn": (conv.GCNConv(width), False),
      "sage": (conv.SAGEConv(width), False),
      "gin": (conv.GINConv(two_layer()), False),
      "gine": (conv.GINConv(two_layer()), True),
      "gat": (conv.GATConv(width // 4, heads=4), False),
      "general": (general_conv.GeneralConv(width), False),
      "gen": (deeper.GENConv(width, aggr="softmax", learn_t=True), False),
      "edge": (point.EdgeConv(two_layer()), False),
      "pna": (pna.PNAConv(width, deg=tuple(int(d) for d in deg_hist)), False),
  }


def jax_step_ms(module, graph, uses_edges) -> float:
  """Median ms of jit(grad(sum(module(x))) wrt params and x) on a padded copy of `graph`."""
  n, e = int(graph.n_node[0]), int(graph.n_edge[0])
  padded = batching.PackedGraphs.from_graphs([graph]).gather(
      [0], batching.Budget(n + 8 - n % 8, e + 64 - e % 64 if e % 64 else e, 2))
  padded = jax.device_put(padded)
  x = padded.nodes["x"]
  edge_x = padded.edges["x"] if uses_edges else None
  kwargs = {"edge_features": edge_x} if uses_edges else {}
  variables = module.init(jax.random.PRNGKey(0), x, padded, **kwargs)

  def loss(params, x):
    out = module.apply({**variables, "params": params}, x, padded, **kwargs,
                       mutable=["batch_stats"])[0]
    return out.sum()

  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return common.time_call(lambda: step(variables["params"], x), jax.block_until_ready,
                          iters=FLAGS.iters)


def torch_step_ms(name, graph, width, deg_hist) -> float:
  import torch
  import torch_geometric.nn as pyg

  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  x = torch.tensor(np.asarray(graph.nodes["x"]), device=dev, requires_grad=True)
  edge_index = torch.tensor(np.stack([graph.senders, graph.receivers]).astype(np.int64),
                            device=dev)
  edge_attr = (torch.tensor(np.asarray(graph.edges["x"]), device=dev) if name == "gine"
               else None)
  d = x.shape[1]
  seq = lambda i: torch.nn.Sequential(torch.nn.Linear(i, width), torch.nn.ReLU(),
                                      torch.nn.Linear(width, width))
  layer = {
      "gcn": lambda: pyg.GCNConv(d, width),
      "sage": lambda: pyg.SAGEConv(d, width),
      "gin": lambda: pyg.GINConv(seq(d)),
      "gine": lambda: pyg.GINEConv(seq(d), edge_dim=EDGE_DIM),
      "gat": lambda: pyg.GATConv(d, width // 4, heads=4),
      "general": lambda: pyg.GeneralConv(d, width, aggr="add"),
      "gen": lambda: pyg.GENConv(d, width, aggr="softmax", learn_t=True, norm="batch"),
      "edge": lambda: pyg.EdgeConv(seq(2 * d), aggr="max"),
      "pna": lambda: pyg.PNAConv(d, width, ["mean", "min", "max", "std"],
                                 ["identity", "amplification", "attenuation"],
                                 deg=torch.tensor(deg_hist, dtype=torch.long)),
  }[name]().to(dev)
  sync = (lambda _: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda _: None)

  def step():
    layer.zero_grad(set_to_none=True)
    x.grad = None
    out = layer(x, edge_index, edge_attr) if edge_attr is not None else layer(x, edge_index)
    out.sum().backward()
    return out

  return common.time_call(step, sync, iters=FLAGS.iters)


def message_pass_bandwidth(graph) -> dict[str, float]:
  """GB/s of out = segment_sum(x[senders], receivers) (bytes: gather E*D*4, write N*D*4,
  indices 2*E*4) and of a plain copy (read + write), on the device."""
  n, e, d = int(graph.n_node[0]), int(graph.n_edge[0]), FLAGS.features
  x = jax.device_put(np.asarray(graph.nodes["x"]))
  s, r = jax.device_put(graph.senders), jax.device_put(graph.receivers)

  @jax.jit
  def message_pass(x, s, r):
    return jax.ops.segment_sum(x[s], r, num_segments=n, indices_are_sorted=True)

  ms = common.time_call(lambda: message_pass(x, s, r), jax.block_until_ready, iters=FLAGS.iters)
  moved = (e * d * 4 + n * d * 4 + 2 * e * 4) / 1e9
  big = jnp.ones((e * d // 4,), jnp.float32)  # 1 GB at 16M x 64
  copy = jax.jit(lambda a: a + 1.0)
  copy_ms = common.time_call(lambda: copy(big), jax.block_until_ready, iters=FLAGS.iters)
  copy_gbs = 2 * big.size * 4 / 1e9 / (copy_ms / 1e3)
  return {"message_pass_ms": ms, "message_pass_gbs": moved / (ms / 1e3), "copy_gbs": copy_gbs}


def main(argv):
  del argv
  graphs = _graphs()
  rng = np.random.default_rng(1)
  rows, metrics, targets = [], {}, {}
  for gname, graph in graphs.items():
    graph = _with_edge_features(graph, rng)
    deg_hist = np.bincount(np.bincount(graph.receivers, minlength=int(graph.n_node[0])))
    in_width = graph.nodes["x"].shape[1]
    width = FLAGS.features if gname != "cora" else 64
    layers = _jax_layers(width, deg_hist)
    for name in FLAGS.layers:
      module, uses_edges = layers[name]
      ours = jax_step_ms(module, graph, uses_edges)
      theirs = torch_step_ms(name, graph, width, deg_hist) if FLAGS.pyg else float("nan")
      speedup = theirs / ours
      rows.append(f"| {gname} | {name} | {ours:.2f} | {theirs:.2f} | {speedup:.2f}x |")
      metrics[f"{gname}/{name}"] = {"gnnjax_ms": ours, "pyg_ms": theirs, "speedup": speedup,
                                    "in_width": in_width, "out_width": width}
      if FLAGS.pyg:
        targets[f"{gname}/{name} faster than PyG"] = common.target(speedup, 1.0)
      print(rows[-1], flush=True)
    if gname != "cora":
      bw = message_pass_bandwidth(graph)
      metrics[f"{gname}/message_pass"] = bw
      targets["sum message pass >= 0.5 x copy bandwidth"] = common.target(
          bw["message_pass_gbs"] / bw["copy_gbs"], 0.5)
      print(f"message pass {bw['message_pass_ms']:.2f} ms = {bw['message_pass_gbs']:.0f} GB/s; "
            f"copy {bw['copy_gbs']:.0f} GB/s", flush=True)
  table = ("| graph | conv | gnnjax ms | PyG ms | PyG / gnnjax |\n|---|---|---|---|---|\n"
           + "\n".join(rows))
  path = common.write_results("layers", metrics, targets, FLAGS.out_dir, table)
  print(table)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
