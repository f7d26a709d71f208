"""Orbax checkpoints of the train state: save, restore, resume.

Orbax writes each step into a temporary folder
(``<step>.orbax-checkpoint-tmp-<time>``) and renames it to ``<step>`` when
complete, so a process killed mid-save (even by SIGKILL) leaves the previous
checkpoint intact; temporary folders are not steps. A ``<step>`` folder
without orbax's ``_CHECKPOINT_METADATA`` (copied by hand, or from a
non-atomic file system) is skipped, and a step that fails to restore falls
back to the previous one, with a warning.
"""

from __future__ import annotations

import logging
import pathlib

import jax
import orbax.checkpoint as ocp

__all__ = ["make_manager", "save", "restore_latest", "complete_steps"]


def make_manager(directory, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """A CheckpointManager for items ``state`` (pytree) and ``meta`` (JSON)."""
  directory = pathlib.Path(directory).absolute()
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True),
      item_names=("state", "meta"))


def save(manager, state, *, meta: dict | None = None, step: int | None = None,
         wait: bool = True):
  """Saves ``state`` at ``step`` (default ``int(state.step)``) with a JSON
  ``meta`` dict; returns the step."""
  if step is None:
    step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave(meta or {})))
  if wait:
    manager.wait_until_finished()
  return step


def complete_steps(manager) -> list[int]:
  """Steps of ``manager`` whose folder orbax finalised, oldest first."""
  root = pathlib.Path(manager.directory)
  return [s for s in manager.all_steps()
          if (root / str(s) / "_CHECKPOINT_METADATA").is_file()]


def restore_latest(manager, target):
  """(state, meta) of the newest complete checkpoint, or (None, None).

  ``target`` is a state (or its ``jax.eval_shape``) giving the structure,
  dtypes and shardings to restore into.

  Raises:
    the newest restore error when no complete step can be restored.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  error = None
  for step in reversed(complete_steps(manager)):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("checkpoint step %d of %s does not restore (%s); trying "
                      "the previous one", step, manager.directory, e)
      error = error or e
      continue
    return restored["state"], restored["meta"]
  if error is not None:
    raise error
  return None, None
