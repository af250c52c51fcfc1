"""--tasks takes @groups of task names (`gnnjax.data.TASK_GROUPS`): a check shared by the
scripts, so an unknown group is a flags error before anything loads or trains."""

from __future__ import annotations

from absl import flags

from gnnjax import data as data_lib


def check_task_groups(flag_name: str = "tasks") -> None:
  """Registers a validator of the list flag `flag_name`: every @group in it must exist."""
  def check(names) -> bool:
    try:
      data_lib.expand_task_names(names or [])
    except ValueError as error:
      raise flags.ValidationError(str(error)) from error
    return True

  flags.register_validator(flag_name, check)
