"""Density regression from point annotations: one image in, one density out.

The method of the cell counters and of BL, DM-Count, GL, PML (and Gaussian
L2): a model of ``counting_jax.models`` maps the image float32 [B, H, W, 3]
to ``density_scale`` x the density [B, H / stride, W / stride]; a loss of
``counting_jax.losses`` compares the density (count units) with the point
annotations. Config fields read: ``model.name``, ``model.kwargs``,
``compute_dtype``, ``loss.name``, ``loss.kwargs``, ``density_scale``.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from counting_jax import losses as losses_lib
from counting_jax import models as models_lib
from counting_jax.methods import base

__all__ = ["build", "build_model", "from_model"]


def build_model(config):
  """The model ``config.model.name`` with ``config.model.kwargs``, computing
  in ``config.compute_dtype`` ("float32" or "bfloat16"; parameters stay
  float32).

  Raises:
    ValueError: for an unknown dtype, or a model that does not take the
      keyword attributes (the message names them).
  """
  kwargs = dict(config.model.kwargs)
  dtype = config.compute_dtype
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got "
                     f"{dtype!r}")
  if dtype != "float32":
    kwargs["dtype"] = jnp.dtype(dtype)
  try:
    return models_lib.get_model(config.model.name, **kwargs)
  except TypeError as e:
    raise ValueError(f"model {config.model.name!r} does not take "
                     f"{sorted(kwargs)} (compute_dtype needs a model with a "
                     f"'dtype' attribute): {e}") from e


def _scaled(outputs, *, density_scale):
  return outputs / density_scale


def _point_loss(outputs, batch, *, loss_fn, density_scale, stride):
  return loss_fn(outputs / density_scale, batch["points"],
                 batch["point_mask"], stride=stride)


def from_model(model, loss_fn, *, density_scale: float = 1.0) -> base.Method:
  """The density-regression method of a model and a point loss.

  Args:
    model: linen module ``image -> density_scale x density [B, h, w]`` with
      a ``stride`` attribute.
    loss_fn: ``loss(density, points, point_mask, *, stride) -> (loss, aux)``
      (``counting_jax.losses.get_loss``).
    density_scale: the model regresses the density times this (cell
      counting uses 100).
  """
  scale = float(density_scale)
  return base.Method(
      name="density", model=model,
      loss=functools.partial(_point_loss, loss_fn=loss_fn,
                             density_scale=scale, stride=int(model.stride)),
      density=functools.partial(_scaled, density_scale=scale))


def build(config) -> base.Method:
  """The density-regression :class:`~counting_jax.methods.base.Method` of
  ``config`` (see module docstring).

  Raises:
    ValueError: for an unknown model, loss or dtype.
  """
  return from_model(
      build_model(config),
      losses_lib.get_loss(config.loss.name, **config.loss.kwargs),
      density_scale=config.density_scale)
