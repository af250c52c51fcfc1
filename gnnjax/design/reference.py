"""One design trained alone: the oracle the population engine is checked against.

`train_design` runs GraphGym's protocol for one (design, seed) with the ordinary training loop
(`gnnjax.training.loop.fit`): the 'graphgym' split of the seed (80/20 train/val), the
budget-matched model of `gnnjax.models.graphgym.build_model`, the design's optimizer
(`optim_config`: coupled L2, cosine per epoch) and evaluation at the first epoch, every
`eval_every` epochs and the last epoch. `gnnjax.design.engine.train_population` must give the
same `TrialResult` (up to float reassociation) for every member of a population; it falls back
on this function for a member whose padded program does not fit the device.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from gnnjax import data as data_lib
from gnnjax.data import dataset as ds
from gnnjax.design import design as design_lib
from gnnjax.design import trial as trial_lib
from gnnjax.design.design import Design
from gnnjax.models import graphgym
from gnnjax.training import loop
from gnnjax.training import pipeline as pipeline_lib

SPLIT_PROTOCOL = "graphgym"


def count_params(params) -> int:
  """Number of trainable scalars in a parameter pytree."""
  return int(sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))


def split_for_seed(dataset: ds.GraphDataset, seed: int, batch_size: int):
  """(split dataset, pipeline) of GraphGym's protocol for one seed and batch size."""
  data, graph_splits = data_lib.apply_split(dataset, SPLIT_PROTOCOL, seed)
  return data, pipeline_lib.make_pipeline(data, graph_splits, batch_size, seed=seed)


def train_design(design: Design, dataset: ds.GraphDataset, seed: int,
                 eval_every: int = 20) -> trial_lib.TrialResult:
  """Trains `design` on `dataset` with `seed` alone, as GraphGym does.

  Args:
    design: the design as planned (dim_inner None means budget-matched for this dataset).
    dataset: the task; split with protocol 'graphgym' and `seed`. Integer (categorical) node
      features are one-hot encoded first (`gnnjax.data.one_hot_node_features`).
    seed: the run's seed (split, init, dropout, batch order).
    eval_every: evaluate every k epochs (and after the first and the last epoch).

  Returns:
    A TrialResult keyed by (dataset.name, design.design_id, seed), whose `design` is the
    resolved design (dim_inner set), `final` the last evaluation, `best` the evaluation at the
    best validation epoch, and status 'diverged' with `diverged_epoch` when the epoch's training
    loss became non-finite (training stops there, as `loop.fit` does).
  """
  dataset = data_lib.one_hot_node_features(dataset)  # categorical -> float; float: no-op
  data, pipe = split_for_seed(dataset, seed, design.batch_size)
  model, resolved = graphgym.build_model(design, data)
  result = loop.fit(model, pipe, data.task_type, design_lib.optim_config(resolved),
                    design_lib.fit_config(resolved, seed=seed, eval_every=eval_every))
  return trial_lib.TrialResult(
      key=trial_lib.TrialKey(task=dataset.name, design_id=design.design_id, seed=int(seed)),
      design=resolved.to_dict(),
      num_params=count_params(result.state.params),
      status=result.status,
      history=result.history,
      final=result.last,
      best=result.best,
      diverged_epoch=result.diverged_epoch,
      seconds=result.seconds)
