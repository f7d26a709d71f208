"""HRNet (Wang et al., "Deep High-Resolution Representation Learning for
Visual Recognition", TPAMI 2020), official HRNet-Image-Classification layout.

Stem: two 3x3 stride-2 convs (64 channels) with BN + ReLU; ``layer1``: four
Bottlenecks (64 planes, 256 channels); then stages 2, 3, 4 with 2, 3, 4
parallel branches of widths C, 2C, 4C, 8C at strides 4, 8, 16, 32 input
pixels (W48: C = 48, W40: C = 40), made of 1, 4, 3 modules. A module runs
4 BasicBlocks per branch, then fuses: output i sums, over every branch j,
branch j itself (j = i), a 1x1 conv + BN upsampled to branch i (j > i), or a
chain of i - j stride-2 3x3 conv + BN (ReLU between) (j < i), then a ReLU.
Transitions add each new branch with a stride-2 3x3 conv + BN + ReLU on the
lowest-resolution branch. No classification head (incre/downsamp/final
layers): the network returns the four stage-4 branch outputs.

Fuse upsampling: the ImageNet code (and timm) uses nearest upsampling
(``fuse_upsample='nearest'``); the segmentation HRNet that PML builds on
(``Elin24/pml`` ``models/encoders/hrnet.py:246-249``) resizes bilinearly with
``align_corners=False`` (``'bilinear'``). The key names are identical, so
ImageNet weights load in both. BatchNorm momentum: 0.1 (Flax 0.9) in the
ImageNet code and timm, 0.01 (Flax 0.99) in the segmentation code.

Params: ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1_{k}``,
``transition{t}_{i}`` / ``transition{t}_{i}_{j}`` (``conv``/``bn`` pairs),
``stage{s}_{m}`` modules with ``branches_{b}_{k}`` and ``fuse_{i}_{j}`` /
``fuse_{i}_{j}_{k}``; :mod:`counting_jax.convert.hrnet_keys` maps them to
the official names.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from counting_jax.models.backbones import _ops
from counting_jax.models.backbones.resnet import Bottleneck

__all__ = ["BasicBlock", "HRModule", "HRNet", "HRNET_W40", "HRNET_W48",
           "HRNET_TINY"]


class _ConvBN(nn.Module):
  """conv (no bias) + BN, params ``conv`` and ``bn``."""
  features: int
  kernel: int
  stride: int = 1
  momentum: float = 0.9
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = _ops.conv(self.features, self.kernel, stride=self.stride,
                  use_bias=False, dtype=self.dtype, name="conv")(x)
    return _ops.batch_norm(train=train, momentum=self.momentum,
                           dtype=self.dtype, name="bn")(x)


class BasicBlock(nn.Module):
  """Two 3x3 conv + BN with an identity shortcut (same width in and out)."""
  features: int
  momentum: float = 0.9
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    bn = functools.partial(_ops.batch_norm, train=train, momentum=self.momentum,
                           dtype=self.dtype)
    conv = functools.partial(_ops.conv, self.features, 3, use_bias=False,
                             dtype=self.dtype)
    y = nn.relu(bn(name="bn1")(conv(name="conv1")(x)))
    y = bn(name="bn2")(conv(name="conv2")(y))
    return nn.relu(x + y)


class HRModule(nn.Module):
  """One multi-resolution module: BasicBlocks per branch, then fusion.

  Call: list of [B, H_b, W_b, widths[b]] -> list of the same shapes.
  """
  widths: Sequence[int]
  num_blocks: int = 4
  fuse_upsample: str = "nearest"
  momentum: float = 0.9
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, xs, *, train: bool):
    kw = dict(momentum=self.momentum, dtype=self.dtype)
    xs = list(xs)
    for b, width in enumerate(self.widths):
      for k in range(self.num_blocks):
        xs[b] = BasicBlock(width, name=f"branches_{b}_{k}", **kw)(
            xs[b], train=train)
    n = len(self.widths)
    if n == 1:
      return xs
    fused = []
    for i in range(n):
      y = xs[i]
      for j in range(n):
        if j > i:
          z = _ConvBN(self.widths[i], 1, name=f"fuse_{i}_{j}", **kw)(
              xs[j], train=train)
          if self.fuse_upsample == "nearest":
            z = _ops.upsample_nearest(z, 2**(j - i))
          else:
            z = _ops.resize_bilinear(z, xs[i].shape[1:3], align_corners=False)
          y = y + z
        elif j < i:
          z = xs[j]
          for k in range(i - j):
            last = k == i - j - 1
            width = self.widths[i] if last else self.widths[j]
            z = _ConvBN(width, 3, stride=2, name=f"fuse_{i}_{j}_{k}", **kw)(
                z, train=train)
            if not last:
              z = nn.relu(z)
          y = y + z
      fused.append(nn.relu(y))
    return fused


class HRNet(nn.Module):
  """HRNet backbone; returns the stage-4 branch outputs.

  Attributes:
    widths: branch widths (C, 2C, 4C, 8C).
    stem_width: channels of the two stem convs (64).
    stem_strides: strides of the two stem convs ((2, 2); mPrompt uses
      (2, 1)).
    layer1_planes: Bottleneck planes of layer1 (64 -> 256 channels).
    layer1_blocks: Bottlenecks in layer1 (4).
    stage_modules: modules in stages 2, 3, 4 ((1, 4, 3)).
    num_blocks: BasicBlocks per branch in every module (4).
    fuse_upsample: ``'nearest'`` (ImageNet HRNet, timm) or ``'bilinear'``
      (segmentation HRNet, PML; ``align_corners=False``).
    momentum: Flax BatchNorm momentum (0.9 = PyTorch 0.1; 0.99 = 0.01).
    return_layer1: also return layer1's output (mPrompt's heads read it).
    dtype: compute dtype (params stay float32).

  Call: ``x`` float [B, H, W, 3] (H, W multiples of 32 with the default
  stem, of 16 with ``stem_strides=(2, 1)``) -> list of 4 arrays
  [B, H / s, W / s, widths[b]], s = 4, 8, 16, 32 (halved by a stride-1
  second stem conv), in ``dtype``; with ``return_layer1``, the pair (that
  list, layer1's output [B, H / 4, W / 4, 4 layer1_planes]).
  """
  widths: Sequence[int] = (48, 96, 192, 384)
  stem_width: int = 64
  stem_strides: Sequence[int] = (2, 2)
  layer1_planes: int = 64
  layer1_blocks: int = 4
  stage_modules: Sequence[int] = (1, 4, 3)
  num_blocks: int = 4
  fuse_upsample: str = "nearest"
  momentum: float = 0.9
  return_layer1: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.fuse_upsample not in ("nearest", "bilinear"):
      raise ValueError("HRNet: fuse_upsample must be 'nearest' or 'bilinear', "
                       f"got {self.fuse_upsample!r}")
    if len(self.widths) != 4 or len(self.stage_modules) != 3:
      raise ValueError(f"HRNet: need 4 widths and 3 stage_modules, got "
                       f"{self.widths}, {self.stage_modules}")
    kw = dict(momentum=self.momentum, dtype=self.dtype)
    bn = functools.partial(_ops.batch_norm, train=train, **kw)
    x = x.astype(self.dtype)
    for n, stride in enumerate(self.stem_strides, 1):
      x = _ops.conv(self.stem_width, 3, stride=stride, use_bias=False,
                    dtype=self.dtype, name=f"conv{n}")(x)
      x = nn.relu(bn(name=f"bn{n}")(x))
    for k in range(self.layer1_blocks):
      x = Bottleneck(self.layer1_planes, project=k == 0, name=f"layer1_{k}",
                     **kw)(x, train=train)
    layer1, xs, previous = x, [x], [4 * self.layer1_planes]
    for stage, modules in zip((2, 3, 4), self.stage_modules):
      widths = list(self.widths[:stage])
      xs = self._transition(xs, previous, widths, stage - 1, train)
      for m in range(modules):
        xs = HRModule(widths, num_blocks=self.num_blocks,
                      fuse_upsample=self.fuse_upsample,
                      name=f"stage{stage}_{m}", **kw)(xs, train=train)
      previous = widths
    return (xs, layer1) if self.return_layer1 else xs

  def _transition(self, xs, previous, widths, t, train):
    kw = dict(momentum=self.momentum, dtype=self.dtype)
    out = []
    for i, width in enumerate(widths):
      if i < len(previous):
        if width == previous[i]:
          out.append(xs[i])
        else:
          out.append(nn.relu(_ConvBN(width, 3, name=f"transition{t}_{i}", **kw)(
              xs[-1], train=train)))
        continue
      z = xs[-1]
      for j in range(i + 1 - len(previous)):
        out_width = width if j == i - len(previous) else previous[-1]
        z = nn.relu(_ConvBN(out_width, 3, stride=2,
                            name=f"transition{t}_{i}_{j}", **kw)(z, train=train))
      out.append(z)
    return out


HRNET_W48 = functools.partial(HRNet, widths=(48, 96, 192, 384))
HRNET_W40 = functools.partial(HRNet, widths=(40, 80, 160, 320))
# Test-only: every structural feature (several blocks and modules, all
# transitions and fusions) with few channels.
HRNET_TINY = functools.partial(HRNet, widths=(4, 8, 12, 16), stem_width=8,
                               layer1_planes=4, layer1_blocks=2,
                               stage_modules=(1, 2, 1), num_blocks=2)
