"""What the task scripts share: --tasks takes @groups of task names (`gnnjax.data.TASK_GROUPS`),
checked so an unknown group is a flags error before anything loads or trains; and the
persistent compilation cache their --compilation_cache_dir flags point at."""

from __future__ import annotations

import os

import jax
from absl import flags

from gnnjax import data as data_lib
from gnnjax.data import sources

COMPILATION_CACHE_HELP = ("Persistent XLA compilation cache (default: $JAX_COMPILATION_CACHE_DIR, "
                          "else <gnnjax cache>/xla); 'none' disables it.")


def check_task_groups(flag_name: str = "tasks") -> None:
  """Registers a validator of the list flag `flag_name`: every @group in it must exist."""
  def check(names) -> bool:
    try:
      data_lib.expand_task_names(names or [])
    except ValueError as error:
      raise flags.ValidationError(str(error)) from error
    return True

  flags.register_validator(flag_name, check)


def use_compilation_cache(path: str) -> str | None:
  """Points JAX's persistent compilation cache at `path` (a --compilation_cache_dir value: ''
  for the default, 'none' for no cache); returns the folder used. JAX keys entries by program,
  compile options, device and version, so a stale entry is never reused, and tasks whose
  programs have one shape (`data.program_group`) share them. Sets config only: no device is
  initialised here."""
  if path == "none":
    return None
  path = (path or os.environ.get("JAX_COMPILATION_CACHE_DIR")
          or os.path.join(sources.cache_dir(), "xla"))
  jax.config.update("jax_compilation_cache_dir", path)
  return path
