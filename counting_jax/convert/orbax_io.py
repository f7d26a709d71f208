"""Saving and loading converted variables as an orbax checkpoint.

The checkpoint is one ``orbax.checkpoint.StandardCheckpointer`` directory
holding the variables dict ``{'params': ..., ['batch_stats': ...]}`` (float32
arrays, the structure of ``model.init``). The trainer restores it with
:func:`load_variables` and the abstract variables of its model, e.g.::

  abstract = jax.eval_shape(model.init, key, image, train=False)
  variables = load_variables(out_dir, abstract)

(passing ``abstract`` also places the arrays with its shardings, when they
are ``jax.ShapeDtypeStruct`` with a ``sharding``).
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["save_variables", "load_variables"]


def save_variables(variables, out_dir, *, force: bool = False) -> pathlib.Path:
  """Writes ``variables`` to ``out_dir`` (created; absolute path returned).

  Args:
    variables: nested dicts of arrays (numpy or jax), e.g. from
      :func:`counting_jax.convert.convert_checkpoint`.
    out_dir: directory to create.
    force: overwrite an existing ``out_dir``.

  Raises:
    ValueError: if ``out_dir`` exists and ``force`` is False.
  """
  out_dir = pathlib.Path(out_dir).resolve()
  if out_dir.exists() and not force:
    raise ValueError(f"out_dir {out_dir} exists; pass force=True to overwrite")
  variables = jax.tree.map(np.asarray, variables)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out_dir, variables, force=force)
    checkpointer.wait_until_finished()
  return out_dir


def load_variables(directory, abstract_variables=None):
  """Reads variables saved by :func:`save_variables`.

  Args:
    directory: the checkpoint directory.
    abstract_variables: optional target tree (arrays or
      ``jax.ShapeDtypeStruct``) with the model's structure; restoring then
      checks the structure and shapes and applies its dtypes/shardings.
      Without it, arrays come back as saved.

  Raises:
    ValueError: if ``directory`` does not exist or does not match
      ``abstract_variables`` (orbax's message is included).
  """
  directory = pathlib.Path(directory).resolve()
  if not directory.is_dir():
    raise ValueError(f"checkpoint directory {directory} does not exist")
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      return checkpointer.restore(directory, abstract_variables)
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{directory} does not match the abstract variables: "
                       f"{e}") from e
