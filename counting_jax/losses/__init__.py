"""Counting losses, all with one signature.

``loss(density, points, point_mask, *, stride, **hyper) -> (loss, aux)``:
``density`` float [B, h, w] (count units, one pixel per ``stride`` input
pixels), ``points`` float [B, N, 2] (x, y) in input-image pixels,
``point_mask`` bool [B, N]. ``loss`` is a float32 scalar reduced over the
batch as the official code does; ``aux`` maps names to per-image [B] terms.
Pick one by name with :func:`get_loss`.

Map-target losses with their own signature (not in ``LOSSES``):
:func:`t2icount_loss` (T2ICount's L_reg + L_RRC on x60 density maps).
"""

from __future__ import annotations

import functools

from counting_jax.losses._bayesian import bayesian_loss
from counting_jax.losses._dm_count import dm_count_loss
from counting_jax.losses._generalized import generalized_loss
from counting_jax.losses._l2 import gaussian_l2_loss
from counting_jax.losses._matching import p2p_matching, p2pnet_loss
from counting_jax.losses._proximal import pml_loss
from counting_jax.losses._t2icount import t2icount_loss

LOSSES = {
    "gaussian_l2": gaussian_l2_loss,
    "bayesian": bayesian_loss,
    "dm_count": dm_count_loss,
    "gl": generalized_loss,
    "pml": pml_loss,
}


def get_loss(name: str, **kwargs):
  """The loss registered as ``name`` with keyword hyperparameters bound.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")
  return functools.partial(LOSSES[name], **kwargs)
