"""VGG feature extractors (Simonyan & Zisserman, ICLR 2015), torchvision layout.

``VGG`` is torchvision's ``features`` without the last max-pool: five blocks
of 3x3 convs (+ BatchNorm) + ReLU, a 2x2 max-pool between blocks. It returns
the output of every block, at strides 1, 2, 4, 8, 16 input pixels:
VGG19's conv1_2, conv2_2, conv3_4, conv4_4, conv5_4. The crowd counters use
them as the official code slices ``features`` (BL, DM-Count, GL: block 5 =
``features[0:36]``; PML: blocks 4 and 5 = ``features[0:27]`` and
``features[27:36]``; P2PNet's VGG16-bn ``body1..4``: blocks 2..5).

Params: ``conv{b}_{i}`` (and ``bn{b}_{i}``), b = block 1..5, i = 1..depth;
:mod:`counting_jax.convert.vgg_keys` maps them to ``features.N``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from counting_jax.models.backbones import _ops

__all__ = ["VGG", "VGG16_BN", "VGG19", "VGG16_BN_TINY", "VGG19_TINY"]


class VGG(nn.Module):
  """VGG conv blocks; returns the five block outputs.

  Attributes:
    depths: convs per block ((2, 2, 3, 3, 3) VGG16, (2, 2, 4, 4, 4) VGG19).
    widths: channels per block.
    batch_norm: BatchNorm after every conv (torchvision ``vgg*_bn``; PyTorch
      momentum 0.1 = Flax 0.9).
    dtype: compute dtype (params stay float32).

  Call: ``x`` float [B, H, W, C] -> list of 5 arrays [B, H / 2^k, W / 2^k,
  widths[k]] in ``dtype`` (sizes floored as PyTorch's max-pool does).
  """
  depths: Sequence[int] = (2, 2, 4, 4, 4)
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  batch_norm: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if len(self.depths) != len(self.widths):
      raise ValueError(f"VGG: depths {self.depths} and widths {self.widths} "
                       "differ in length")
    x = x.astype(self.dtype)
    outputs = []
    for b, (depth, width) in enumerate(zip(self.depths, self.widths), 1):
      if b > 1:
        x = _ops.max_pool2(x)
      for i in range(1, depth + 1):
        x = _ops.conv(width, 3, use_bias=True, dtype=self.dtype,
                      name=f"conv{b}_{i}")(x)
        if self.batch_norm:
          x = _ops.batch_norm(train=train, dtype=self.dtype,
                              name=f"bn{b}_{i}")(x)
        x = nn.relu(x)
      outputs.append(x)
    return outputs


VGG16_BN = functools.partial(VGG, depths=(2, 2, 3, 3, 3), batch_norm=True)
VGG19 = functools.partial(VGG, depths=(2, 2, 4, 4, 4))
# Test-only: the same layer structure with few channels.
VGG16_BN_TINY = functools.partial(VGG16_BN, widths=(4, 4, 8, 8, 8))
VGG19_TINY = functools.partial(VGG19, widths=(4, 4, 8, 8, 8))
