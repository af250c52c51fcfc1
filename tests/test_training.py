"""Training loop: padding never leaks into losses or gradients, seeds reproduce, runs resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gnnjax import batching
from gnnjax.data import dataset as ds
from gnnjax.models.baselines import BaselineGNN
from gnnjax.training import loop, losses, optim, pipeline


def toy_graph_dataset(num_graphs=48, seed=0):
  """Graphs labelled by whether they contain a triangle-rich core (learnable from structure)."""
  rng = np.random.default_rng(seed)
  graphs = []
  for i in range(num_graphs):
    n = int(rng.integers(4, 12))
    label = i % 2
    p = 0.6 if label else 0.15
    s, r = np.nonzero(np.triu(rng.random((n, n)) < p, 1))
    graphs.append(ds.make_graph(np.concatenate([s, r]), np.concatenate([r, s]), n,
                                {"x": np.ones((n, 2), np.float32)}, None,
                                {"y": np.array([label], np.int32)}))
  return ds.GraphDataset("toy", graphs, ds.GRAPH, ds.MULTICLASS, 2)


def toy_splits(n):
  return {"train": np.arange(0, n - 16), "val": np.arange(n - 16, n - 8),
          "test": np.arange(n - 8, n)}


@pytest.mark.parametrize("model_name", ["gcn", "sage", "gin", "gat"])
def test_padding_does_not_leak_into_loss_or_gradients(model_name):
  data = toy_graph_dataset()
  packed = batching.PackedGraphs.from_graphs(data.graphs)
  batch = packed.gather(range(6), batching.Budget(96, 400, 9))
  model = BaselineGNN(model_name, 2, ds.GRAPH, hidden=8, num_layers=3, dropout=0.0)
  variables = model.init(jax.random.PRNGKey(0), batch)

  def loss_of(params, b):
    out, _ = model.apply({**variables, "params": params}, b, train=True, mutable=["batch_stats"])
    labels, mask = losses.targets_and_mask(b, ds.GRAPH, ds.MULTICLASS, "train")
    return losses.masked_loss(out, labels, mask, ds.MULTICLASS)[0]

  n_real = int(packed.n_node[:6].sum())
  poisoned = batch._replace(
      nodes={"x": batch.nodes["x"].copy()}, globals={"y": batch.globals["y"].copy()})
  poisoned.nodes["x"][n_real:] = 1e4
  poisoned.globals["y"][6:] = 1
  l1, g1 = jax.value_and_grad(loss_of)(variables["params"], batch)
  l2, g2 = jax.value_and_grad(loss_of)(variables["params"], poisoned)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_masked_loss_empty_mask_is_zero_not_nan():
  loss, count = losses.masked_loss(jnp.zeros((4, 3)), jnp.zeros((4,), jnp.int32),
                                   jnp.zeros((4,), bool), ds.MULTICLASS)
  assert float(loss) == 0.0 and int(count) == 0


def test_multitask_loss_matches_hu_et_al_definition():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 3)).astype(np.float32)
  labels = rng.integers(0, 2, (5, 3)).astype(np.float32)
  mask = rng.random((5, 3)) < 0.6
  loss, count = losses.masked_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask),
                                   ds.MULTITASK)
  per = np.log1p(np.exp(-logits)) * labels + np.log1p(np.exp(logits)) * (1 - labels)
  np.testing.assert_allclose(loss, per[mask].sum() / mask.sum(), rtol=1e-5)
  assert int(count) == mask.sum()


def test_train_and_eval_budgets_are_the_shapes_of_their_batches():
  graph_data = toy_graph_dataset()
  node_data = ds.GraphDataset("toy/node", [ds.make_graph(
      g.senders, g.receivers, int(g.n_node[0]),
      {"x": g.nodes["x"], "y": np.zeros(int(g.n_node[0]), np.int32),
       "train_mask": np.ones(int(g.n_node[0]), bool)}) for g in graph_data.graphs],
      ds.NODE, ds.MULTICLASS, 2)
  pipes = [pipeline.GraphTaskPipeline(graph_data, toy_splits(len(graph_data)), 5, seed=2),
           pipeline.NodeTaskPipeline(node_data, 5, seed=2),
           pipeline.NodeTaskPipeline(node_data, None, seed=2)]  # one full batch
  for pipe in pipes:
    for epoch in range(4):
      built = [(b.nodes["x"].shape[0], b.senders.shape[0], b.n_node.shape[0])
               for b in pipe.train_batches(epoch)]
      assert [tuple(b) for b in pipe.train_budgets(epoch)] == built
    built = [(b.nodes["x"].shape[0], b.senders.shape[0], b.n_node.shape[0])
             for b, _ in pipe.eval_batches()]
    assert [tuple(b) for b in pipe.eval_budgets()] == built


def _fit(data, tmp_path=None, epochs=8, seed=0, **fit_kwargs):
  pipe = pipeline.GraphTaskPipeline(data, toy_splits(len(data)), batch_size=8, seed=seed)
  model = BaselineGNN("gin", 2, ds.GRAPH, hidden=16, num_layers=3, dropout=0.2)
  return loop.fit(model, pipe, data.task_type, optim.OptimConfig(learning_rate=0.01),
                  loop.FitConfig(epochs=epochs, seed=seed, **fit_kwargs))


def test_training_learns_and_same_seed_reproduces():
  data = toy_graph_dataset()
  a = _fit(data, epochs=30)
  b = _fit(data, epochs=30)
  assert a.status == "ok"
  assert a.history[-1]["epoch_loss"] < a.history[0]["epoch_loss"]
  assert a.best["val"]["accuracy"] >= 0.75
  for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
    np.testing.assert_array_equal(x, y)
  c = _fit(data, epochs=30, seed=1)
  assert any(not np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a.state.params), jax.tree.leaves(c.state.params)))


class _Interrupt(Exception):
  pass


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
  data = toy_graph_dataset()
  reference = _fit(data, epochs=8)

  original = pipeline.GraphTaskPipeline.train_batches

  def crash_at_epoch_6(self, epoch):
    if epoch == 6:
      raise _Interrupt()
    return original(self, epoch)

  log = tmp_path / "log.jsonl"
  ckpt = tmp_path / "ckpt"
  monkeypatch.setattr(pipeline.GraphTaskPipeline, "train_batches", crash_at_epoch_6)
  with pytest.raises(_Interrupt):
    _fit(data, epochs=8, checkpoint_dir=str(ckpt), checkpoint_every=2, log_path=str(log))
  assert len(log.read_text().splitlines()) == 6  # epochs 0..5 were logged before the crash
  monkeypatch.setattr(pipeline.GraphTaskPipeline, "train_batches", original)

  resumed = _fit(data, epochs=8, checkpoint_dir=str(ckpt), checkpoint_every=2,
                 log_path=str(log))
  for x, y in zip(jax.tree.leaves(reference.state.params), jax.tree.leaves(resumed.state.params)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  records = [json.loads(line) for line in log.read_text().splitlines()]
  assert [r["epoch"] for r in records] == list(range(8))  # no duplicated or lost epochs
  assert resumed.best_epoch == reference.best_epoch


def test_divergence_is_reported_not_raised():
  data = toy_graph_dataset()
  pipe = pipeline.GraphTaskPipeline(data, toy_splits(len(data)), batch_size=8)
  model = BaselineGNN("gcn", 2, ds.GRAPH, hidden=16, num_layers=3, dropout=0.0)
  result = loop.fit(model, pipe, data.task_type,
                    optim.OptimConfig(optimizer="sgd", learning_rate=1e12),
                    loop.FitConfig(epochs=20))
  assert result.status == "diverged"
  assert result.diverged_epoch is not None and result.diverged_epoch < 20


def test_schedules():
  cfg = optim.OptimConfig(learning_rate=0.1, schedule="cosine", epochs=10)
  sched = optim.epoch_schedule(cfg, steps_per_epoch=3)
  np.testing.assert_allclose(sched(0), 0.1)
  np.testing.assert_allclose(sched(2), 0.1)  # constant within epoch 0
  np.testing.assert_allclose(sched(15), 0.1 * 0.5 * (1 + np.cos(np.pi * 5 / 10)), rtol=1e-6)
  step = optim.epoch_schedule(optim.OptimConfig(learning_rate=0.01, schedule="step",
                                                step_size=50, step_gamma=0.5), 1)
  np.testing.assert_allclose(step(120), 0.01 * 0.25, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown optimizer"):
    optim.OptimConfig(optimizer="rmsprop")


def test_coupled_weight_decay_equals_torch_adam_l2():
  """adam + weight_decay adds wd * w to the gradient before Adam, like torch.optim.Adam."""
  cfg = optim.OptimConfig(optimizer="adam", learning_rate=0.1, weight_decay=0.5)
  tx = optim.make_optimizer(cfg, 1)
  w = {"w": jnp.array([1.0, -2.0])}
  g = {"w": jnp.array([0.3, 0.1])}
  updates, _ = tx.update(g, tx.init(w), w)
  # First Adam step: update = -lr * sign-like m/sqrt(v) = -lr * (g + wd w)/|g + wd w|.
  eff = np.array([0.3 + 0.5, 0.1 - 1.0])
  np.testing.assert_allclose(updates["w"], -0.1 * eff / (np.abs(eff) + 1e-8), rtol=1e-5)
