"""Dataset transforms that make a dataset fit a model family.

`one_hot_node_features` turns integer (categorical) node features, e.g. the molecule atoms of
`gnnjax.data.featurize` (int32 `[n, 2]`: atomic number - 1, chirality), into the float32
features that `gnnjax.models.graphgym.GraphGymGNN` takes.

Why this is GraphGym's / OGB's AtomEncoder: with K categorical columns one-hot encoded into
blocks B_1 .. B_K, a linear layer W x + b on the concatenated one-hot x picks one row of each
block's part of W, so it equals sum_k E_k[x_k] + b, a sum of per-column embedding rows plus a
bias (AtomEncoder sums one embedding table per atom feature). The first pre-message-passing
linear layer of GraphGymGNN therefore acts as the atom encoder. (With batch norm that layer has
no bias; BN's shift plays its part.) Edge features are not used by GraphGymGNN and are left as
they are.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gnnjax.data.dataset import GraphDataset

VOCAB_KEY = "one_hot_vocab"  # report entry: per column, the observed values in one-hot order


def one_hot_node_features(dataset: GraphDataset) -> GraphDataset:
  """`nodes['x']` one-hot encoded per column over the values observed in the dataset.

  Float features: returns `dataset` itself (no copy), so calling this on an already encoded
  dataset is free. Integer features `[n, K]` (or `[n]`, read as K = 1): column k becomes a
  float32 block of width V_k = number of distinct values of column k over all graphs, ordered
  by value (np.unique), and the K blocks are concatenated into `[n, sum_k V_k]`. The width is
  therefore compact (Tox21 has a few dozen atom types, not Hu et al.'s 120) and deterministic
  for a given dataset; transform a whole dataset before splitting it, so that every split
  shares one encoding.

  Args:
    dataset: any GraphDataset whose graphs have `nodes['x']`.

  Returns:
    A new GraphDataset with the same name, task and graphs except `nodes['x']` (labels, masks,
    edges, globals and other node arrays are the same objects), and `report['one_hot_vocab']`
    = [observed values of column k, as a list of ints, for each k]; or `dataset` itself for
    float features.
  """
  if not dataset.node_features_categorical:
    return dataset
  counts = np.array([np.shape(g.nodes["x"])[0] for g in dataset.graphs])
  # Encode all nodes at once: one concatenation, one scatter, one split.
  x = np.concatenate([np.asarray(g.nodes["x"]) for g in dataset.graphs], axis=0)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2:
    raise ValueError(f"{dataset.name}: nodes['x'] must be [n, K] or [n], got shape "
                     f"{x.shape[1:]} per node")
  vocab = [np.unique(x[:, k]) for k in range(x.shape[1])]
  offsets = np.concatenate([[0], np.cumsum([len(v) for v in vocab])])
  # Column k's value -> its position in vocab[k] (present by construction) -> block offset.
  columns = np.stack([np.searchsorted(v, x[:, k]) + offsets[k] for k, v in enumerate(vocab)],
                     axis=1)
  one_hot = np.zeros((x.shape[0], int(offsets[-1])), np.float32)
  np.put_along_axis(one_hot, columns, 1.0, axis=1)
  parts = np.split(one_hot, np.cumsum(counts)[:-1])
  graphs = [g._replace(nodes={**g.nodes, "x": part}) for g, part in zip(dataset.graphs, parts)]
  report = {**dataset.report, VOCAB_KEY: [v.tolist() for v in vocab]}
  return dataclasses.replace(dataset, graphs=graphs, report=report)
