"""Small building blocks shared by the cell-counting models."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ConvBlock", "upsample2", "check_divisible"]


class ConvBlock(nn.Module):
  """conv3x3 -> (BatchNorm) -> ReLU.

  The standard ``nn.Conv`` on every backend (so are the cell models'
  ``nn.max_pool``): the CPU tricks of ``counting_jax.models.backbones._ops``
  made the main job's U-Net slower on XLA:CPU (jaxlib 0.10.2, 2 cores,
  trainer's options; forward + backward, batch 8 of 128x128, widths 8-64:
  209 ms with them, 122 ms without).
  """
  features: int
  batch_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.Conv(self.features, (3, 3), use_bias=not self.batch_norm,
                dtype=self.dtype)(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       dtype=self.dtype)(x)
    return nn.relu(x)


def upsample2(x):
  """Nearest-neighbour x2 upsampling of [B, H, W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def check_divisible(image, factor: int, name: str) -> None:
  if image.ndim != 4 or image.shape[-1] != 3:
    raise ValueError(f"{name}: image must be [B, H, W, 3], got {image.shape}")
  if image.shape[1] % factor or image.shape[2] % factor:
    raise ValueError(f"{name}: image height and width must be multiples of "
                     f"{factor}, got {image.shape[1:3]}")
