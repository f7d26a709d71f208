"""Orbax checkpoints of the train state: save, restore, resume.

Orbax writes each step into a temporary folder and renames it when complete,
so a process killed mid-save (even by SIGKILL) leaves the previous
checkpoint intact and the partial one is ignored on restore.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp

__all__ = ["make_manager", "save", "restore_latest"]


def make_manager(directory, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """A CheckpointManager for items ``state`` (pytree) and ``meta`` (JSON)."""
  directory = pathlib.Path(directory).absolute()
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True),
      item_names=("state", "meta"))


def save(manager, state, *, meta: dict | None = None, wait: bool = True):
  """Saves ``state`` at ``int(state.step)`` (with a JSON ``meta`` dict)."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave(meta or {})))
  if wait:
    manager.wait_until_finished()
  return step


def restore_latest(manager, target):
  """(state, meta) of the newest complete checkpoint, or (None, None).

  ``target`` is a state (or its ``jax.eval_shape``) giving the structure,
  dtypes and shardings to restore into.
  """
  step = manager.latest_step()
  if step is None:
    return None, None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]
