"""Counting networks, picked by name.

Every model is a linen module called as ``model.apply(variables, image,
train=...)`` on ``image`` float [B, H, W, 3] and returning the density
float32 [B, H // stride, W // stride]; its ``stride`` attribute gives the
density stride. BatchNorm statistics live in the ``batch_stats`` collection.
"""

from __future__ import annotations

import functools

from counting_jax.models.fcrn import FCRNA
from counting_jax.models.unet import UNet

MODELS = {
    "fcrn_a": FCRNA,
    "unet": UNet,
    # Test-only tiny variants.
    "fcrn_a_tiny": functools.partial(FCRNA, widths=(4, 4, 8, 8)),
    "unet_tiny": functools.partial(UNet, widths=(4, 8)),
}


def get_model(name: str, **kwargs):
  """The model registered as ``name``, built with keyword attributes.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
  return MODELS[name](**kwargs)
