"""ResNet-50 feature extractor (He et al., CVPR 2016), torchvision layout.

Stem conv 7x7/2 + BN + ReLU + max-pool 3x3/2, then ``layer1..4`` of
Bottleneck blocks (1x1, 3x3, 1x1 convs, expansion 4) with the stride on the
3x3 conv (torchvision's "ResNet v1.5") and a 1x1 conv + BN projection in the
first block of each layer. No classifier. Returns the layer outputs at
strides 4, 8, 16, 32 input pixels (Seg-then-Count's base counter uses
``layer3``, stride 16, 1024 channels).

Params: ``conv1``, ``bn1``, ``layer{l}_{k}`` with ``conv{1,2,3}``,
``bn{1,2,3}`` and ``downsample_conv`` / ``downsample_bn`` (block 0);
:mod:`counting_jax.convert.resnet_keys` maps them to torchvision names.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from counting_jax.models.backbones import _ops

__all__ = ["Bottleneck", "ResNet", "RESNET50", "RESNET50_TINY"]


class Bottleneck(nn.Module):
  """torchvision Bottleneck: output channels 4 * planes.

  ``momentum`` is Flax's BatchNorm momentum (PyTorch 0.1 -> 0.9; HRNet's
  segmentation code uses 0.01 -> 0.99).
  """
  planes: int
  stride: int = 1
  project: bool = False
  momentum: float = 0.9
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    bn = functools.partial(_ops.batch_norm, train=train, momentum=self.momentum,
                           dtype=self.dtype)
    conv = functools.partial(_ops.conv, use_bias=False, dtype=self.dtype)
    y = nn.relu(bn(name="bn1")(conv(self.planes, 1, name="conv1")(x)))
    y = conv(self.planes, 3, stride=self.stride, name="conv2")(y)
    y = nn.relu(bn(name="bn2")(y))
    y = bn(name="bn3")(conv(4 * self.planes, 1, name="conv3")(y))
    if self.project:
      x = conv(4 * self.planes, 1, stride=self.stride, name="downsample_conv")(x)
      x = bn(name="downsample_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Bottleneck ResNet; returns the outputs of ``layer1..num_layers``.

  Attributes:
    stage_sizes: blocks per layer ((3, 4, 6, 3) for ResNet-50).
    width: stem channels and layer1 planes (64); layer k has width 2^(k-1)
      planes and 4 width 2^(k-1) output channels.
    num_layers: how many layers to build (e.g. 3 to stop at layer3).
    dtype: compute dtype (params stay float32).
    frozen_layers: stop gradients after the stem and the first
      ``frozen_layers`` layers (0: none; 1: stem and layer1, as the
      frozen ResNet-50 parts of counters): their parameters get zero
      gradients and the backward pass skips them.

  Call: ``x`` float [B, H, W, 3] -> list of ``num_layers`` arrays
  [B, ~H / 2^(k+1), ~W / 2^(k+1), 4 width 2^(k-1)], k = 1..num_layers, in
  ``dtype`` (sizes rounded up at every stride-2 op, as in PyTorch).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  num_layers: int = 4
  dtype: jnp.dtype = jnp.float32
  frozen_layers: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if not 1 <= self.num_layers <= len(self.stage_sizes):
      raise ValueError(f"ResNet: num_layers must be in [1, "
                       f"{len(self.stage_sizes)}], got {self.num_layers}")
    x = x.astype(self.dtype)
    x = _ops.conv(self.width, 7, stride=2, use_bias=False, dtype=self.dtype,
                  name="conv1")(x)
    x = nn.relu(_ops.batch_norm(train=train, dtype=self.dtype, name="bn1")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    outputs = []
    for layer in range(self.num_layers):
      planes = self.width * 2**layer
      for k in range(self.stage_sizes[layer]):
        stride = 2 if (k == 0 and layer > 0) else 1
        x = Bottleneck(planes, stride=stride, project=k == 0, dtype=self.dtype,
                       name=f"layer{layer + 1}_{k}")(x, train=train)
      if layer + 1 == self.frozen_layers:
        x = jax.lax.stop_gradient(x)
      outputs.append(x)
    return outputs


RESNET50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
# Test-only: one block per layer, 8 stem channels.
RESNET50_TINY = functools.partial(ResNet, stage_sizes=(2, 1, 1, 1), width=8)
