"""The task embedding z_e = g(z_f) of AutoTransfer (Cao et al. 2023, sec. 4.3, Alg. 2).

g is a 2-layer MLP (U -> 16 -> ReLU -> 16) whose output is L2-normalised, so z_e(i) . z_e(j) is
a cosine similarity and d_e = 1 - z_e(i) . z_e(j). It is trained with the margin ranking loss on
task triplets (a, b, c) supervised by GraphGym's task similarity S (Kendall tau of the anchors'
performance, `gnnjax.tasks.similarity`; larger = closer):

    y = +1 if S[a, b] > S[a, c] (b is closer to a), -1 if S[a, b] < S[a, c]
    L = max(0, -y (z_a . z_b - z_a . z_c) + margin),  margin 0.1

Paper hyper-parameters (Appendix A): Adam lr 5e-3, 1000 iterations, 128 triplets per
iteration, drawn uniformly with replacement. Choices where the paper is silent or the code
differs: gradients are NOT accumulated across iterations (the reference code never zeroes
them); tied triplets (S[a, b] == S[a, c], e.g. b == c) carry no ranking information and are
left out of the mean (the paper's rule would give them y = -1 and a constant loss);
initialisation as torch.nn.Linear (uniform +-1/sqrt(fan_in) for weights and biases).

Training is one jitted `lax.scan`; `leave_one_out` vmaps many trainings (held-out task x run).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gnnjax.tasks import similarity as similarity_lib

Array = jax.Array
Params = dict


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
  """Projection and training settings (paper defaults)."""

  hidden: int = 16
  out_dim: int = 16
  margin: float = 0.1
  learning_rate: float = 5e-3
  iterations: int = 1000
  batch_size: int = 128


def init_projection(key: Array, in_dim: int, config: EmbeddingConfig = EmbeddingConfig()
                    ) -> Params:
  """Parameters of g, as torch.nn.Linear initialises them."""
  keys = jax.random.split(key, 4)

  def linear(kw, kb, fan_in, fan_out):
    bound = 1.0 / np.sqrt(fan_in)
    return {"kernel": jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)}

  return {"hidden": linear(keys[0], keys[1], in_dim, config.hidden),
          "out": linear(keys[2], keys[3], config.hidden, config.out_dim)}


def project(params: Params, features: Array) -> Array:
  """g(z_f): features [T, U] -> unit-norm embeddings [T, D]."""
  h = jax.nn.relu(features @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  z = h @ params["out"]["kernel"] + params["out"]["bias"]
  norm = jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True))
  return z / jnp.maximum(norm, 1e-12)


def triplet_loss(embeddings: Array, similarity: Array, triplets: Array, margin: float) -> Array:
  """Mean margin ranking loss over the non-tied triplets [K, 3] (0 if all are tied)."""
  a, b, c = triplets[:, 0], triplets[:, 1], triplets[:, 2]
  s_ab, s_ac = similarity[a, b], similarity[a, c]
  y = jnp.sign(s_ab - s_ac)
  scores = jnp.sum(embeddings[a] * embeddings[b], -1) - jnp.sum(embeddings[a] * embeddings[c], -1)
  per = jnp.maximum(0.0, -y * scores + margin)
  informative = y != 0
  return jnp.sum(jnp.where(informative, per, 0.0)) / jnp.maximum(informative.sum(), 1)


def sample_triplets(key: Array, task_weights: Array, batch_size: int) -> Array:
  """[batch, 3] task indices drawn with replacement, uniformly over tasks with weight > 0."""
  logits = jnp.where(task_weights > 0, 0.0, -jnp.inf)
  return jax.random.categorical(key, logits, shape=(batch_size, 3))


def _train(key: Array, features: Array, similarity: Array, task_weights: Array,
           config: EmbeddingConfig) -> tuple[Params, Array]:
  init_key, loop_key = jax.random.split(key)
  params = init_projection(init_key, features.shape[-1], config)
  tx = optax.adam(config.learning_rate)

  def loss_fn(p, triplets):
    return triplet_loss(project(p, features), similarity, triplets, config.margin)

  def step(carry, k):
    p, opt = carry
    triplets = sample_triplets(k, task_weights, config.batch_size)
    value, grad = jax.value_and_grad(loss_fn)(p, triplets)
    updates, opt = tx.update(grad, opt, p)
    return (optax.apply_updates(p, updates), opt), value

  (params, _), history = jax.lax.scan(step, (params, tx.init(params)),
                                      jax.random.split(loop_key, config.iterations))
  return params, history


@functools.partial(jax.jit, static_argnames=("config",))
def train_projection(key: Array, features: Array, similarity: Array,
                     task_weights: Array | None = None,
                     config: EmbeddingConfig = EmbeddingConfig()) -> tuple[Params, Array]:
  """Trains g on bank tasks.

  Args:
    key: PRNG key (init and triplet draws).
    features: [T, U] task features z_f.
    similarity: [T, T] GraphGym similarity (Kendall tau; larger = closer).
    task_weights: [T] > 0 for tasks triplets may use (default all); lets many trainings on
      different bank subsets share one program.
    config: hyper-parameters.

  Returns:
    (params, loss per iteration [iterations]).
  """
  features = jnp.asarray(features, jnp.float32)
  similarity = jnp.asarray(similarity, jnp.float32)
  if task_weights is None:
    task_weights = jnp.ones(features.shape[0])
  return _train(key, features, similarity, task_weights, config)


# [runs, held-out] trainings at once: keys [R, T], task weights [T, T] (row h excludes task h).
_train_many = jax.jit(
    jax.vmap(jax.vmap(_train, in_axes=(0, None, None, 0, None)),
             in_axes=(0, None, None, None, None)), static_argnums=4)


def evaluation_loss(params: Params, features: Array, similarity: Array,
                    config: EmbeddingConfig = EmbeddingConfig()) -> Array:
  """The triplet loss averaged over ALL (a, b, c) triplets of the tasks (no sampling)."""
  t = features.shape[0]
  grid = jnp.stack(jnp.meshgrid(jnp.arange(t), jnp.arange(t), jnp.arange(t), indexing="ij"),
                   -1).reshape(-1, 3)
  return triplet_loss(project(params, jnp.asarray(features, jnp.float32)),
                      jnp.asarray(similarity, jnp.float32), grid, config.margin)


def ranking_correlation(scores: np.ndarray, similarity: np.ndarray) -> np.ndarray:
  """Per central task i: Kendall tau between scores[i, j] and similarity[i, j] over j != i.

  Both [T, T]; returns [T]."""
  t = similarity.shape[0]
  out = np.empty(t)
  for i in range(t):
    others = np.arange(t) != i
    out[i] = similarity_lib.kendall_tau(scores[i, others], similarity[i, others])
  return out


@dataclasses.dataclass
class LeaveOneOutResult:
  """Leave-one-task-out agreement with GraphGym's similarity ranking.

  Attributes:
    tasks: task names (or indices as strings).
    feature_tau: [T] per held-out task, Kendall tau between the raw-feature cosine ranking of
      the other tasks and GraphGym's (deterministic: no training involved).
    embedding_tau: [runs, T] the same with the embedding g trained without the held-out task.
  """

  tasks: list[str]
  feature_tau: np.ndarray
  embedding_tau: np.ndarray

  def summary(self) -> dict[str, float]:
    """Means over held-out tasks (and runs), the std over tasks (as the paper's Table 5) and
    the std of the run means over runs."""
    run_means = np.nanmean(self.embedding_tau, axis=1)
    return {"feature_mean": float(np.nanmean(self.feature_tau)),
            "feature_std_over_tasks": float(np.nanstd(self.feature_tau)),
            "embedding_mean": float(np.nanmean(self.embedding_tau)),
            "embedding_std_over_tasks": float(np.nanmean(np.nanstd(self.embedding_tau, axis=1))),
            "embedding_std_over_runs": float(np.nanstd(run_means)),
            "runs": int(self.embedding_tau.shape[0])}


def leave_one_out(features: np.ndarray | Mapping[str, np.ndarray], similarity: np.ndarray,
                  runs: int = 10, seed: int = 0, config: EmbeddingConfig = EmbeddingConfig()
                  ) -> LeaveOneOutResult:
  """Leave-one-task-out evaluation (AutoTransfer Table 5).

  For each held-out task h and run r, g is trained on the other tasks only (triplets never
  touch h); then the other tasks are ranked by z_e(h) . z_e(j) and compared (Kendall tau) with
  GraphGym's similarity S[h, j]. Raw features are ranked by z_f(h) . z_f(j). All T x runs
  trainings run as one vmapped, jitted program.

  Args:
    features: [T, U] L2-normalised task features, or task -> feature.
    similarity: [T, T] Kendall-tau similarity in the same task order as `features`.

  Tasks are processed in sorted name order (the result's `tasks`), so the PRNG keys of each
  held-out task's trainings, and hence the numbers, do not depend on the input order.
    runs: independent trainings per held-out task.
    seed: base PRNG seed.
  """
  similarity = np.asarray(similarity, np.float64)
  if isinstance(features, Mapping):
    names = list(features)
    features = np.stack([np.asarray(features[n]) for n in names])
  else:
    features = np.asarray(features)
    names = [str(i) for i in range(features.shape[0])]
  t = features.shape[0]
  if similarity.shape != (t, t):
    raise ValueError(f"similarity has shape {similarity.shape}, expected ({t}, {t})")
  if len(set(names)) == t:  # named tasks: results do not depend on the order they come in
    order = sorted(range(t), key=lambda i: names[i])
    names = [names[i] for i in order]
    features, similarity = features[order], similarity[np.ix_(order, order)]
  if t < 4:
    raise ValueError(f"leave-one-out needs at least 4 tasks (3 bank tasks to rank), got {t}")
  raw = features @ features.T
  feature_tau = ranking_correlation(raw, similarity)

  weights = 1.0 - np.eye(t, dtype=np.float32)  # row h: every task but h
  keys = jax.random.split(jax.random.key(seed), runs * t).reshape(runs, t)
  params, _ = _train_many(keys, jnp.asarray(features, jnp.float32),
                          jnp.asarray(similarity, jnp.float32), jnp.asarray(weights), config)
  embeddings = np.asarray(jax.vmap(jax.vmap(project, in_axes=(0, None)), in_axes=(0, None))(
      params, jnp.asarray(features, jnp.float32)))  # [runs, T(held-out), T, D]
  embedding_tau = np.empty((runs, t))
  for r in range(runs):
    for h in range(t):
      z = embeddings[r, h]
      scores = z @ z.T
      others = np.arange(t) != h
      embedding_tau[r, h] = similarity_lib.kendall_tau(scores[h, others], similarity[h, others])
  return LeaveOneOutResult(tasks=names, feature_tau=feature_tau, embedding_tau=embedding_tau)
