"""Dataset loaders and splits, behind one name-based entry point.

    dataset = gnnjax.data.load_dataset("cora", data_dir="../shared/datasets")
    dataset, graph_splits = gnnjax.data.apply_split(dataset, "public", seed=0)

Names:
  cora, citeseer                          Planetoid (node classification)
  MUTAG, PROTEINS, BZR, DHFR, NCI109,     TU Dortmund graph classification; any other TU
  tu/<NAME>                               folder under <data_dir>/tu/ via the tu/ prefix
  bbbp, bace, clintox, hiv, muv, sider,   MoleculeNet (multi-task binary / regression)
  tox21, toxcast, esol, freesolv,
  lipophilicity, qm8
  <family>/<label>/<feature>              GraphGym synthetic tasks on the shipped graphs, e.g.
                                          smallworld/clustering/onehot (see data.synthetic)
  generated/<family>/<label>/<feature>    the same on freshly generated graphs (no files needed)
  pointcloud, pointcloud/<P>              generated point-cloud part segmentation (P points per
                                          cloud, default 256; see data.pointcloud)
  <name>/link                             link prediction on the graphs of <name> (e.g. cora/link;
                                          data.links: GraphGym's 80/10/10 edge split, negatives)

Groups of names (`expand_task_names`, the scripts' --tasks=@<group>): @synthetic (GraphGym's
20), @planetoid, @tu, @moleculenet_classification, @autotransfer_bank (all of those: 35 tasks).
"""

from __future__ import annotations

import os

import numpy as np

from gnnjax.data import links, planetoid, pointcloud, splits, synthetic, tu
from gnnjax.data.dataset import EDGE, GRAPH, NODE, DataFormatError, GraphDataset  # noqa: F401
from gnnjax.data.sources import DatasetUnavailableError  # noqa: F401
from gnnjax.data.transforms import one_hot_node_features  # noqa: F401

# Needs no files: graphs are generated with networkx.
DEFAULT_DATASET = "generated/smallworld/clustering/pagerank"
# MoleculeNet and the scaffold split need RDKit, imported only when a molecule set is asked for.
MOLECULENET_NAMES = ("bbbp", "bace", "clintox", "hiv", "muv", "sider", "tox21", "toxcast",
                     "esol", "freesolv", "lipophilicity", "qm8")
SPLIT_PROTOCOLS = ("default", "public", "random", "scaffold", "graphgym")
MOLECULENET_CLASSIFICATION = ("bbbp", "bace", "clintox", "hiv", "muv", "sider", "tox21",
                              "toxcast")
# Named task lists, written @<name> where scripts take --tasks (`expand_task_names`).
# 'autotransfer_bank' is every task a task-model bank is built on (AutoTransfer, GraphGym): the
# 20 GraphGym synthetic tasks (each label type x feature augmentation), Cora, CiteSeer, the five
# TU tasks and the MoleculeNet classification sets.
TASK_GROUPS = {
    "synthetic": tuple("/".join(task) for task in synthetic.SYNTHETIC_TASKS),
    "planetoid": planetoid.NAMES,
    "tu": ("MUTAG", "BZR", "PROTEINS", "DHFR", "NCI109"),  # tu.SHIPPED_NAMES, GraphGym's order
    "moleculenet_classification": MOLECULENET_CLASSIFICATION,
}
TASK_GROUPS["autotransfer_bank"] = sum(TASK_GROUPS.values(), ())


def expand_task_names(names) -> list[str]:
  """Task names with each @<group> replaced by the tasks of TASK_GROUPS[group], in order,
  each task once (the first time it appears).

  Raises:
    ValueError: an unknown group (the message lists the groups).
  """
  tasks = []
  for name in names:
    if name.startswith("@"):
      group = TASK_GROUPS.get(name[1:])
      if group is None:
        raise ValueError(f"unknown task group {name!r}; groups: "
                         + ", ".join("@" + g for g in TASK_GROUPS))
      tasks.extend(group)
    else:
      tasks.append(name)
  return list(dict.fromkeys(tasks))


def program_group(name: str) -> str:
  """The key a task shares with the tasks whose padded arrays have its shapes: a population
  compiled for one of them serves the others through the persistent compilation cache, so
  worker pools run a group's tasks one after another (`design.workers`) instead of compiling
  the same programs side by side. A task that shares with none gets its own name.

  GraphGym's synthetic tasks on the shipped graphs: every input feature is 11-d and every
  label has 5 classes (quantile bins of the published graphs), so the arrays depend only on
  the graph family and on whether the label is per node or per graph: the 20 tasks form 4
  groups, '<family>/node' and '<family>/graph'. A wrong key costs parallelism, never a
  result: the tasks are trained the same either way.

  Example: program_group('smallworld/clustering/onehot') == program_group(
  'smallworld/pagerank/const') == 'smallworld/node'.
  """
  parts = tuple(name.lower().split("/"))
  if parts in synthetic.SYNTHETIC_TASKS:  # not ID-GNN's ba/ws graphs: their labels tie into
    # fewer classes, clustering's differently from pagerank's
    level = "node" if parts[1] in synthetic.NODE_LABELS else "graph"
    return f"{parts[0]}/{level}"
  return name


def _is_tu(name: str) -> bool:
  return name.lower().startswith("tu/") or name.upper() in tu.SHIPPED_NAMES


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0,
                 normalize_features: bool = False, num_graphs: int | None = None,
                 limit: int | None = None) -> GraphDataset:
  """Loads a dataset by name (see the module docstring).

  Args:
    name: dataset name.
    data_dir: local data root laid out like shared/datasets (else $GNNJAX_DATA, else the cache).
    seed: seed for randomness inside the data (GraphGym's 'onehot' node-id permutation,
      generated graphs).
    normalize_features: row-normalise Planetoid features (Kipf & Welling).
    num_graphs: number of graphs for generated/ synthetic tasks. Default 32, drawn without
      GraphGym's stratified acceptance so it takes well under a second; 256 reproduces
      GraphGym's 4-graphs-per-cell stratification but takes minutes (rare cells).
    limit: read only the first `limit` molecules (MoleculeNet; quick experiments).
  """
  lowered = name.lower()
  if lowered.endswith("/link"):
    base = load_dataset(name[:-len("/link")], data_dir, seed=seed,
                        normalize_features=normalize_features, num_graphs=num_graphs,
                        limit=limit)
    return links.as_link_task(base, name=name)
  if lowered in planetoid.NAMES:
    return planetoid.load_planetoid(lowered, data_dir, split="public",
                                    normalize_features=normalize_features)
  if _is_tu(name):
    return tu.load_tu(name.split("/", 1)[1] if "/" in name else name.upper(), data_dir)
  if lowered in MOLECULENET_NAMES:
    from gnnjax.data import moleculenet
    return moleculenet.load_moleculenet(lowered, data_dir, limit=limit)
  parts = lowered.split("/")
  if parts[0] == pointcloud.COLLECTION and len(parts) <= 2:
    return pointcloud.load_pointcloud(name, num_graphs=num_graphs, seed=seed)
  generate = parts[0] == "generated"
  if generate:
    parts = parts[1:]
  if len(parts) == 3 and parts[0] in synthetic.FAMILIES:
    return synthetic.load_synthetic_task(parts[0], parts[1], parts[2], data_dir, seed=seed,
                                         generate=generate,
                                         num_graphs=num_graphs or (32 if generate else 256))
  raise ValueError(
      f"unknown dataset {name!r}. Known: {', '.join(planetoid.NAMES)}, "
      f"{', '.join(tu.SHIPPED_NAMES)} (or tu/<NAME>), {', '.join(MOLECULENET_NAMES)}, "
      f"<family>/<label>/<feature> with family in {synthetic.FAMILIES}, label in "
      f"{synthetic.LABELS}, feature in {synthetic.FEATURES} (prefix generated/ to generate), "
      f"pointcloud or pointcloud/<points>")


def apply_split(dataset: GraphDataset, protocol: str = "default", seed: int = 0
                ) -> tuple[GraphDataset, dict[str, np.ndarray] | None]:
  """Applies a split protocol.

  Returns (dataset, graph_splits): node tasks carry their split as node masks and return
  graph_splits None; graph tasks return index arrays {'train', 'val', 'test'}.

  Protocols: 'public' (Planetoid's standard split), 'random' (Planetoid: 20 per class / 500 /
  1000, seeded; other node tasks 80/10/10 per graph; graph tasks 80/10/10; link tasks
  GraphGym's 80/10/10 edge split with one negative per positive, the default), 'scaffold'
  (MoleculeNet, Hu et al.), 'graphgym' (80/20 train/val, no test, as GraphGym), 'default'
  (public for Planetoid, scaffold for MoleculeNet, graphgym for synthetic tasks, random
  otherwise).
  """
  if protocol not in SPLIT_PROTOCOLS:
    raise ValueError(f"unknown split {protocol!r}; choose from {list(SPLIT_PROTOCOLS)}")
  if dataset.task_level == EDGE:
    if protocol not in ("default", "random"):
      raise ValueError(f"link task {dataset.name} splits its edges: use 'default' or 'random', "
                       f"not {protocol!r}")
    return links.split_links(dataset, seed=seed), None
  is_planetoid = dataset.name.lower() in planetoid.NAMES
  is_molecule = "smiles" in dataset.report
  is_synthetic = "/" in dataset.name and dataset.name.split("/")[0] in synthetic.FAMILIES
  if protocol == "default":
    protocol = ("public" if is_planetoid else "scaffold" if is_molecule else
                "graphgym" if is_synthetic else "random")
  fractions = (0.8, 0.2, 0.0) if protocol == "graphgym" else (0.8, 0.1, 0.1)

  if dataset.task_level == NODE:
    if is_planetoid and protocol in ("public", "random"):
      return planetoid.resplit(dataset, protocol, seed), None
    if dataset.name.startswith(pointcloud.COLLECTION) and protocol == "random":
      return pointcloud.split_clouds(dataset, fractions, seed), None  # whole clouds per split
    if protocol in ("public", "scaffold"):
      raise ValueError(f"split {protocol!r} does not apply to node task {dataset.name}")
    return splits.random_node_split(dataset, fractions, seed=seed, per_graph=True), None

  if protocol == "scaffold":
    if not is_molecule:
      raise ValueError(f"scaffold split needs SMILES; {dataset.name} has none")
    from gnnjax.data import scaffold
    return dataset, scaffold.scaffold_split(dataset.report["smiles"])
  if protocol == "public":
    raise ValueError(f"{dataset.name} has no public split; use 'random' or 'graphgym'")
  return dataset, splits.random_graph_split(len(dataset), fractions, seed=seed)
