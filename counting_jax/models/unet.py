"""A small U-Net density counter (Ronneberger et al., MICCAI 2015, scaled down).

Encoder levels of two conv3x3 blocks with ``widths`` channels, max-pooling
between them; the decoder upsamples, concatenates the skip connection and
applies two conv3x3 blocks; a 1x1 conv gives one density channel. Output
stride 1; H and W must be multiples of 2 ** (len(widths) - 1).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from counting_jax.models import _layers

__all__ = ["UNet"]


class UNet(nn.Module):
  """Small U-Net.

  Call: ``image`` float [B, H, W, 3] -> density float32 [B, H, W].
  """
  widths: Sequence[int] = (16, 32, 64, 128)
  batch_norm: bool = True
  dtype: jnp.dtype = jnp.float32
  stride: int = 1

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    _layers.check_divisible(image, 2 ** (len(self.widths) - 1), "UNet")

    def double(x, width):
      for _ in range(2):
        x = _layers.ConvBlock(width, self.batch_norm, self.dtype)(x,
                                                                  train=train)
      return x

    x = image.astype(self.dtype)
    skips = []
    for i, width in enumerate(self.widths):
      x = double(x, width)
      if i < len(self.widths) - 1:
        skips.append(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
    for width, skip in zip(reversed(self.widths[:-1]), reversed(skips)):
      x = _layers.upsample2(x)
      x = jnp.concatenate([x, skip], axis=-1)
      x = double(x, width)
    x = nn.Conv(1, (1, 1), dtype=self.dtype)(x)
    return x[..., 0].astype(jnp.float32)
