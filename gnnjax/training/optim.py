"""Optimizers and learning-rate schedules as optax transformations.

Schedules are defined per epoch (as GraphGym and the GIN paper step them) and converted to
per-step schedules with the number of steps per epoch.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimizer settings.

  Attributes:
    optimizer: 'adam' (weight decay as coupled L2, PyTorch's Adam), 'adamw' (decoupled), or
      'sgd' (coupled L2, momentum).
    learning_rate: base learning rate.
    weight_decay: L2 / decoupled decay coefficient.
    momentum: SGD momentum.
    schedule: 'constant', 'cosine' (lr * (1 + cos(pi * epoch / epochs)) / 2, stepped per epoch,
      GraphGym), or 'step' (multiply by `step_gamma` every `step_size` epochs, GIN paper).
    epochs: schedule horizon for 'cosine'.
    grad_clip: clip gradients to this global norm if set.
  """

  optimizer: str = "adam"
  learning_rate: float = 0.01
  weight_decay: float = 0.0
  momentum: float = 0.9
  schedule: str = "constant"
  epochs: int = 200
  step_size: int = 50
  step_gamma: float = 0.5
  grad_clip: float | None = None

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {list(OPTIMIZERS)}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.schedule!r}; choose from {list(SCHEDULES)}")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def epoch_schedule(config: OptimConfig, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate as a function of the optimizer step, constant within an epoch."""
  lr, steps_per_epoch = config.learning_rate, max(int(steps_per_epoch), 1)

  def schedule(step):
    epoch = step // steps_per_epoch
    if config.schedule == "cosine":
      return lr * 0.5 * (1.0 + jnp.cos(math.pi * epoch / config.epochs))
    if config.schedule == "step":
      return lr * config.step_gamma ** (epoch // config.step_size)
    return jnp.full((), lr)

  return schedule


def make_optimizer(config: OptimConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  schedule = epoch_schedule(config, steps_per_epoch)
  parts = []
  if config.grad_clip:
    parts.append(optax.clip_by_global_norm(config.grad_clip))
  if config.optimizer == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
  else:
    if config.weight_decay:
      parts.append(optax.add_decayed_weights(config.weight_decay))  # coupled L2, as torch
    if config.optimizer == "adam":
      parts.append(optax.adam(schedule))
    else:
      parts.append(optax.sgd(schedule, momentum=config.momentum or None))
  return optax.chain(*parts)
