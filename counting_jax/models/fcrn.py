"""FCRN-A (Xie, Noble & Zisserman, "Microscopy cell counting and detection
with fully convolutional regression networks", MICCAI-W 2015 / CMBBE 2016).

Encoder: three (conv3x3 -> ReLU -> maxpool 2) blocks with 32, 64, 128
channels and a conv3x3 with 512 channels; decoder: three (upsample x2 ->
conv3x3 -> ReLU) blocks with 128, 64, 32 channels and a 1x1 conv to one
density channel. The paper uses no normalisation; ``batch_norm=True`` adds
BatchNorm after every hidden conv, as common re-implementations do, which
trains much faster from scratch on small data sets. Output stride 1.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from counting_jax.models import _layers

__all__ = ["FCRNA"]


class FCRNA(nn.Module):
  """FCRN-A density regressor.

  Attributes:
    widths: encoder channels (decoder mirrors the first three).
    batch_norm: BatchNorm after hidden convs (not in the paper).
    dtype: compute dtype (params stay float32).

  Call: ``image`` float [B, H, W, 3] (H, W multiples of 8) ->
  density float32 [B, H, W] (stride 1).
  """
  widths: Sequence[int] = (32, 64, 128, 512)
  batch_norm: bool = True
  dtype: jnp.dtype = jnp.float32
  stride: int = 1

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    _layers.check_divisible(image, 8, "FCRNA")
    block = functools.partial(_layers.ConvBlock, batch_norm=self.batch_norm,
                              dtype=self.dtype)
    x = image.astype(self.dtype)
    for width in self.widths[:3]:
      x = block(width)(x, train=train)
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = block(self.widths[3])(x, train=train)
    for width in reversed(self.widths[:3]):
      x = _layers.upsample2(x)
      x = block(width)(x, train=train)
    x = nn.Conv(1, (1, 1), dtype=self.dtype)(x)
    return x[..., 0].astype(jnp.float32)
