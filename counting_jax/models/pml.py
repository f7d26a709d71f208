"""The PML counters (VGG and HRNet encoders), density stride 2.

Lin & Chan, "Proximal Mapping Loss: Understanding Loss Functions in Crowd
Counting & Localization", ICLR 2025; official code Elin24/pml@d49bf69
(``models/counter.py``, ``decoder.py``, ``encoders/{vgg,hrnet,utils}.py``).

Encoder + fuse ("UpSample_P2P"): two feature maps, ``small`` (coarse) and
``large`` (fine), are each projected by a 1x1 conv to the fine width, the
coarse one resized bilinearly (``align_corners=False``) to the fine size,
summed, then passed through conv3x3 + (BN) + ReLU:

* VGG (``PMLVGG``): conv5_4 (stride 16) and conv4_4 (stride 8) of VGG19
  (or conv5_3 / conv4_3 of VGG16-bn), 512 -> 512 channels, convs with bias,
  no BN, no post-process. Fine stride 8.
* HRNet (``PMLHRNet``): branches 1 (stride 8, 2C) and 0 (stride 4, C) of
  the segmentation-style HRNet (bilinear fuse upsampling, BN momentum 0.01),
  2C -> C and C -> C, convs without bias + BN, then a post-process conv3x3 +
  BN + ReLU. Fine stride 4.

Decoder: conv3x3 + ReLU, conv3x3 + ReLU (C -> C, with bias), conv1x1
C -> r^2, PixelShuffle(r) with r = fine stride / 2, ReLU: density at stride
2 ("half of the input"). The official init divides the last conv's weights
by 100 and zeroes its bias (and the biases of the other new convs); we do
the same on top of PyTorch's default uniform init.

Params: ``backbone``, ``fuse`` (``conv_small``, ``conv_large``,
``fuse_conv`` [``fuse_bn``, ``post_conv``, ``post_bn``]), ``decoder``
(``conv1``, ``conv2``, ``out``).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from counting_jax.models.backbones import _ops
from counting_jax.models.backbones.hrnet import HRNet
from counting_jax.models.backbones.vgg import VGG

__all__ = ["PMLFuse", "PMLDecoder", "PMLVGG", "PMLHRNet", "PML_VGG19",
           "PML_VGG16_BN", "PML_HRNET_W48", "PML_HRNET_W40", "PML_VGG19_TINY",
           "PML_HRNET_TINY"]

_zeros = nn.initializers.zeros


class PMLFuse(nn.Module):
  """PML's ``UpSample_P2P`` (+ optional ``post_process``).

  Call: ``(small [B, h, w, Cs], large [B, H, W, Cl])`` -> [B, H, W, features].
  """
  features: int
  batch_norm: bool
  post_process: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, small, large, *, train: bool):
    conv = functools.partial(_ops.conv, use_bias=not self.batch_norm,
                             dtype=self.dtype,
                             kernel_init=_ops.torch_default_init,
                             bias_init=_zeros)
    bn = functools.partial(_ops.batch_norm, train=train, dtype=self.dtype)
    small = conv(self.features, 1, name="conv_small")(small)
    small = _ops.resize_bilinear(small, large.shape[1:3], align_corners=False)
    x = small + conv(self.features, 1, name="conv_large")(large)
    x = conv(self.features, 3, name="fuse_conv")(x)
    if self.batch_norm:
      x = bn(name="fuse_bn")(x)
    x = nn.relu(x)
    if self.post_process:
      x = conv(self.features, 3, name="post_conv")(x)
      if self.batch_norm:
        x = bn(name="post_bn")(x)
      x = nn.relu(x)
    return x


class PMLDecoder(nn.Module):
  """PML's ``SimpleDecoder`` + output ReLU: [B, h, w, C] -> [B, h r, w r]."""
  features: int
  upscale: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(_ops.conv, dtype=self.dtype,
                             kernel_init=_ops.torch_default_init,
                             bias_init=_zeros)
    x = nn.relu(conv(self.features, 3, name="conv1")(x))
    x = nn.relu(conv(self.features, 3, name="conv2")(x))
    out_init = nn.initializers.variance_scaling(1e-4 / 3, "fan_in", "uniform")
    x = conv(self.upscale**2, 1, kernel_init=out_init, name="out")(x)
    x = _ops.pixel_shuffle(x, self.upscale)[..., 0]
    return nn.relu(x.astype(jnp.float32))


class PMLVGG(nn.Module):
  """PML counter on a VGG encoder (blocks 4 and 5 fused).

  Attributes:
    depths: VGG convs per block ((2, 2, 4, 4, 4) VGG19; (2, 2, 3, 3, 3)
      with ``batch_norm=True`` for VGG16-bn).
    widths: VGG block widths.
    batch_norm: BatchNorm in the VGG encoder (``vgg16_bn``).
    dtype: compute dtype (params stay float32; output is float32).
    stride: 2 input pixels per density pixel.

  Call: ``image`` float [B, H, W, 3], ImageNet-normalised RGB, H and W
  multiples of 16 -> density float32 [B, H // 2, W // 2], >= 0.

  Raises:
    ValueError: for a bad image shape.
  """
  depths: Sequence[int] = (2, 2, 4, 4, 4)
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  batch_norm: bool = False
  dtype: jnp.dtype = jnp.float32
  stride: int = 2

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    _ops.check_image(image, 16, "PMLVGG")
    feats = VGG(depths=self.depths, widths=self.widths,
                batch_norm=self.batch_norm, dtype=self.dtype,
                name="backbone")(image, train=train)
    x = PMLFuse(self.widths[3], batch_norm=False, post_process=False,
                dtype=self.dtype, name="fuse")(feats[4], feats[3], train=train)
    return PMLDecoder(self.widths[3], 4, dtype=self.dtype, name="decoder")(x)


class PMLHRNet(nn.Module):
  """PML counter on a segmentation-style HRNet (branches 0 and 1 fused).

  Attributes:
    widths: HRNet branch widths ((48, 96, 192, 384) for W48).
    hrnet: other :class:`~counting_jax.models.backbones.hrnet.HRNet`
      attributes (test variants shrink it), as a tuple of (name, value).
    fuse_upsample: HRNet fuse upsampling (PML: ``'bilinear'``).
    dtype: compute dtype (params stay float32; output is float32).
    stride: 2 input pixels per density pixel.

  Call: ``image`` float [B, H, W, 3], ImageNet-normalised RGB, H and W
  multiples of 32 -> density float32 [B, H // 2, W // 2], >= 0.

  Raises:
    ValueError: for a bad image shape.
  """
  widths: Sequence[int] = (48, 96, 192, 384)
  hrnet: tuple = ()
  fuse_upsample: str = "bilinear"
  dtype: jnp.dtype = jnp.float32
  stride: int = 2

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    _ops.check_image(image, 32, "PMLHRNet")
    feats = HRNet(widths=self.widths, fuse_upsample=self.fuse_upsample,
                  momentum=0.99, dtype=self.dtype, name="backbone",
                  **dict(self.hrnet))(image, train=train)
    x = PMLFuse(self.widths[0], batch_norm=True, post_process=True,
                dtype=self.dtype, name="fuse")(feats[1], feats[0], train=train)
    return PMLDecoder(self.widths[0], 2, dtype=self.dtype, name="decoder")(x)


PML_VGG19 = functools.partial(PMLVGG, depths=(2, 2, 4, 4, 4))
PML_VGG16_BN = functools.partial(PMLVGG, depths=(2, 2, 3, 3, 3),
                                 batch_norm=True)
PML_HRNET_W48 = functools.partial(PMLHRNet, widths=(48, 96, 192, 384))
PML_HRNET_W40 = functools.partial(PMLHRNet, widths=(40, 80, 160, 320))
# Test-only tiny variants.
PML_VGG19_TINY = functools.partial(PML_VGG19, widths=(4, 4, 8, 8, 8))
PML_HRNET_TINY = functools.partial(
    PMLHRNet, widths=(4, 8, 12, 16),
    hrnet=(("stem_width", 8), ("layer1_planes", 4), ("layer1_blocks", 2),
           ("stage_modules", (1, 2, 1)), ("num_blocks", 2)))
