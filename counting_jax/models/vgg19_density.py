"""The VGG19 density regressor of BL, DM-Count and GL (stride 8).

torchvision VGG19 ``features[0:36]`` (conv5_4 + ReLU, stride 16, 512
channels) -> x2 upsampling -> conv3x3 512->256 + ReLU -> conv3x3 256->128 +
ReLU -> conv1x1 128->1 -> output activation. The three papers share it, but
their code differs in two places (the upsampling and the output
activation):

============  ==========================================  ==========
repo          upsampling x2                               activation
============  ==========================================  ==========
BL            bilinear, ``align_corners=True``            abs
DM-Count      bilinear, ``align_corners=True``            ReLU
GL            nearest                                     abs
============  ==========================================  ==========

Sources: Ma et al., "Bayesian Loss for Crowd Count Estimation with Point
Supervision", ICCV 2019 (ZhihengCV/Bayesian-Crowd-Counting@5f10bfc
``models/vgg.py``); Wang et al., "Distribution Matching for Crowd Counting",
NeurIPS 2020 (cvlab-stonybrook/DM-Count@cc5f213 ``models.py:10-30``, which
also returns the density divided by its sum + 1e-6: see
:func:`normalize_density`); Wan et al., "A Generalized Loss Function for
Crowd Counting and Localization", CVPR 2021
(jia-wan/GeneralizedLoss-Counting-Pytorch ``models/vgg.py``).

Head init: GL draws the head weights from N(0, 0.01) with zero bias; BL and
DM-Count keep PyTorch's default uniform init, which we use with zero biases
(PyTorch draws the biases uniformly too).

Params: ``backbone`` (:class:`~counting_jax.models.backbones.vgg.VGG`),
``head_conv1``, ``head_conv2``, ``head_out``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from counting_jax.models.backbones import _ops
from counting_jax.models.backbones.vgg import VGG

__all__ = ["VGG19Density", "normalize_density", "BL_VGG19", "DM_COUNT_VGG19",
           "GL_VGG19", "BL_VGG19_TINY", "DM_COUNT_VGG19_TINY", "GL_VGG19_TINY"]


def normalize_density(density, eps: float = 1e-6):
  """DM-Count's normalised density: ``density / (sum over h, w + eps)``.

  Args:
    density: float [B, h, w].
    eps: 1e-6 as in DM-Count ``models.py:28``.

  Returns:
    float [B, h, w], each map summing to ~1 (0 where the density is 0).
  """
  return density / (density.sum(axis=(1, 2), keepdims=True) + eps)


class VGG19Density(nn.Module):
  """VGG19 + regression head (BL / DM-Count / GL).

  Attributes:
    upsample: ``'bilinear'`` (``align_corners=True``, BL and DM-Count) or
      ``'nearest'`` (GL).
    activation: ``'abs'`` (BL, GL) or ``'relu'`` (DM-Count).
    widths: VGG19 block widths (test variants shrink them).
    head_widths: the two hidden head widths (256, 128).
    head_init_std: None for PyTorch's default init, else N(0, std) weights
      (GL: 0.01).
    dtype: compute dtype (params stay float32; output is float32).
    stride: 8 input pixels per density pixel.

  Call: ``image`` float [B, H, W, 3], ImageNet-normalised RGB, H and W
  multiples of 16 -> density float32 [B, H // 8, W // 8], >= 0.

  Raises:
    ValueError: for a bad image shape or an unknown option.
  """
  upsample: str = "bilinear"
  activation: str = "abs"
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  head_widths: Sequence[int] = (256, 128)
  head_init_std: float | None = None
  dtype: jnp.dtype = jnp.float32
  stride: int = 8

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    _ops.check_image(image, 16, "VGG19Density")
    if self.upsample not in ("bilinear", "nearest"):
      raise ValueError(f"VGG19Density: upsample must be 'bilinear' or "
                       f"'nearest', got {self.upsample!r}")
    if self.activation not in ("abs", "relu"):
      raise ValueError(f"VGG19Density: activation must be 'abs' or 'relu', "
                       f"got {self.activation!r}")
    x = VGG(depths=(2, 2, 4, 4, 4), widths=self.widths, dtype=self.dtype,
            name="backbone")(image, train=train)[-1]
    if self.upsample == "bilinear":
      x = _ops.resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]),
                               align_corners=True)
    else:
      x = _ops.upsample_nearest(x, 2)
    init = (_ops.torch_default_init if self.head_init_std is None else
            nn.initializers.normal(self.head_init_std))
    conv = functools.partial(_ops.conv, dtype=self.dtype, kernel_init=init)
    x = nn.relu(conv(self.head_widths[0], 3, name="head_conv1")(x))
    x = nn.relu(conv(self.head_widths[1], 3, name="head_conv2")(x))
    x = conv(1, 1, name="head_out")(x)[..., 0].astype(jnp.float32)
    return jnp.abs(x) if self.activation == "abs" else nn.relu(x)


BL_VGG19 = functools.partial(VGG19Density, upsample="bilinear",
                             activation="abs")
DM_COUNT_VGG19 = functools.partial(VGG19Density, upsample="bilinear",
                                   activation="relu")
GL_VGG19 = functools.partial(VGG19Density, upsample="nearest",
                             activation="abs", head_init_std=0.01)
_TINY = dict(widths=(4, 4, 8, 8, 8), head_widths=(8, 4))
BL_VGG19_TINY = functools.partial(BL_VGG19, **_TINY)
DM_COUNT_VGG19_TINY = functools.partial(DM_COUNT_VGG19, **_TINY)
GL_VGG19_TINY = functools.partial(GL_VGG19, **_TINY)
