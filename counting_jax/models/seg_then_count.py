"""Seg-then-Count's networks: the base counter and the exemplar segmenter.

Xu, Le & Samaras, "Learning to Count from Pseudo-Labeled Segmentation"
(WACV 2025). No official code exists; the base counter follows the paper's
§3.1 / §4.1 and the layout of the same author's public BMNet+-style counter
(every number of §4.1 matches its saved configuration):

* feature extractor: ImageNet ResNet-50 up to ``layer3`` (1024 channels,
  stride 16) with frozen BatchNorm (running statistics and affine fixed, a
  ``FrozenBatchNorm2d``); stem and ``layer1`` are frozen too (the method's
  parameter groups), ``layer2`` / ``layer3`` train;
* ``input_proj``: 1x1 conv 1024 -> 256 (with bias) on the image features;
* exemplar vectors: each exemplar box is cropped from the (normalised) image
  and resized to ``exemplar_size`` x ``exemplar_size`` (128), passed through
  the same backbone, global-average-pooled and projected by a linear layer
  1024 -> 256 (``exemplar_proj``, Xavier-uniform init);
* similarity (eq. 1): S_ij = <w_ij, b>, the inner product of the projected
  feature at cell (i, j) with each exemplar vector, averaged over the valid
  exemplars;
* counter: the 257 channels [w, S] through conv7x7 -> 196, ReLU, x2;
  conv5x5 -> 128, ReLU, x2; conv3x3 -> 64, ReLU, x2; conv1x1 -> 32, ReLU,
  x2; conv1x1 -> 1, ReLU. "x2" is bilinear upsampling with align_corners=True
  semantics (PyTorch ``nn.UpsamplingBilinear2d``; ``jax.image.resize`` is
  half-pixel and differs). The density is at full input resolution
  (``stride`` = 1), in count units.

The segmenter (§3.3, eq. 6): a second ResNet-50 up to ``layer3`` of the same
architecture (frozen BatchNorm); v = the mean over the exemplars of the
global-average-pooled ``layer3`` features of the 128x128 exemplar crops;
M^p_ij = cos(P_ij(I), v) on the similarity grid (stride 16). At inference
(§3.4) M^p >= ``threshold`` (0.6) keeps S_ij, every other cell becomes the
constant δ (eq. 4) before the counter.

δ is not given in the paper; we use 0.0 by default (``delta``): after
eq. 1 with unnormalised vectors, 0 is "no similarity", the value of an
exemplar orthogonal to the feature.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from counting_jax.models.backbones import _ops
from counting_jax.models.backbones import resnet

__all__ = ["SegThenCount", "CounterHead", "crop_boxes", "upsample2",
           "masked_similarity", "STRIDE"]

STRIDE = 16  # input pixels per similarity-map cell (ResNet layer3)


def upsample2(x):
  """Bilinear x2 upsampling of [B, h, w, C] -> [B, 2h, 2w, C] with
  align_corners=True (PyTorch ``nn.UpsamplingBilinear2d(scale_factor=2)``)."""
  _, h, w, _ = x.shape
  return _ops.resize_bilinear(x, (2 * h, 2 * w), align_corners=True)


def crop_boxes(image, boxes, size: int):
  """Bilinear crops of ``boxes`` from ``image``, each resized to size x size.

  Args:
    image: float [B, H, W, C].
    boxes: float [B, E, 4] (x1, y1, x2, y2) in input-image pixels (pixel
      k covers [k, k + 1)); boxes narrower than one pixel are widened to one
      pixel about their centre.
    size: output height and width (pixels).

  Returns:
    float32 [B, E, size, size, C]: pixel (i, j) of a crop samples the image
    bilinearly at the centre of the (i, j)-th cell of a size x size grid on
    the box (align_corners=False convention); outside the image the edge
    pixel repeats.
  """
  x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  bw = jnp.maximum(x2 - x1, 1.0)
  bh = jnp.maximum(y2 - y1, 1.0)
  t = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size - 0.5  # [S]
  ys = cy[..., None] + bh[..., None] * t - 0.5  # [B, E, S], pixel index
  xs = cx[..., None] + bw[..., None] * t - 0.5
  img = image.astype(jnp.float32)

  def one(channel, yy, xx):  # [H, W], [S], [S] -> [S, S]
    grid = jnp.meshgrid(yy, xx, indexing="ij")
    return jax.scipy.ndimage.map_coordinates(channel, grid, order=1,
                                             mode="nearest")

  per_box = jax.vmap(one, in_axes=(None, 0, 0))  # boxes
  per_chan = jax.vmap(per_box, in_axes=(2, None, None), out_axes=-1)
  return jax.vmap(per_chan)(img, ys, xs)


def masked_similarity(similarity, mask, delta: float):
  """Eq. 4: S where ``mask`` else δ. [B, h, w] float, bool -> float32."""
  return jnp.where(mask, similarity, delta).astype(jnp.float32)


class CounterHead(nn.Module):
  """The counter C: 5 convs with 4 bilinear x2 upsamplings (§3.1).

  Call: float [B, h, w, 257] -> float32 [B, 16h, 16w] density (ReLU).
  """
  widths: Sequence[int] = (196, 128, 64, 32)
  kernels: Sequence[int] = (7, 5, 3, 1)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for i, (c, k) in enumerate(zip(self.widths, self.kernels)):
      x = _ops.conv(c, k, dtype=self.dtype, kernel_init=_ops.torch_default_init,
                    cpu_kernel_grad=False, name=f"conv{i}")(x)
      x = upsample2(nn.relu(x))
    x = _ops.conv(1, 1, dtype=self.dtype, kernel_init=_ops.torch_default_init,
                  name=f"conv{len(self.widths)}")(x)
    return nn.relu(x[..., 0]).astype(jnp.float32)


class SegThenCount(nn.Module):
  """Base counter (+ optional segmenter) of Seg-then-Count.

  Attributes:
    stage_sizes, width: the ResNet (ResNet-50: (3, 4, 6, 3), 64); tests use
      smaller ones. Features are ``layer3`` (4 width 4 channels, stride 16).
    proj_dim: channels of ``input_proj`` / ``exemplar_proj`` (256).
    exemplar_size: exemplar crop size in pixels (128).
    head_widths: the counter's conv widths (196, 128, 64, 32).
    with_segmenter: build the segmenter and mask the similarity map by it.
    threshold: the segmenter's binarisation threshold (0.6, §4.1).
    delta: δ of eq. 4, the similarity outside the mask (not in the paper).
    dtype: compute dtype.

  Call: ``(image float [B, H, W, 3] normalised, H, W multiples of 16,
  exemplars float32 [B, E, 4] (x1, y1, x2, y2) pixels, exemplar_mask bool
  [B, E], train=...)`` -> {"density": float32 [B, H, W] count units,
  "similarity": float32 [B, H/16, W/16] (eq. 1, before masking)} and with
  the segmenter also "segmentation" float32 [B, H/16, W/16] (cosine, eq. 6)
  and "mask" bool (segmentation >= threshold). BatchNorm is frozen: ``train``
  changes nothing.

  Raises:
    ValueError: when H or W is not a multiple of 16.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  proj_dim: int = 256
  exemplar_size: int = 128
  head_widths: Sequence[int] = (196, 128, 64, 32)
  with_segmenter: bool = False
  threshold: float = 0.6
  delta: float = 0.0
  dtype: jnp.dtype = jnp.float32

  stride = 1  # input pixels per density pixel (full resolution)

  def setup(self):
    net = functools.partial(resnet.ResNet, stage_sizes=self.stage_sizes,
                            width=self.width, num_layers=3, dtype=self.dtype,
                            frozen_layers=1)  # stem, layer1: no backward
    self.backbone = net()
    self.input_proj = nn.Conv(self.proj_dim, (1, 1), dtype=self.dtype,
                              kernel_init=_ops.torch_default_init)
    self.exemplar_proj = nn.Dense(self.proj_dim, dtype=self.dtype,
                                  kernel_init=nn.initializers.xavier_uniform())
    self.counter = CounterHead(tuple(self.head_widths), dtype=self.dtype)
    if self.with_segmenter:
      self.segmenter = net()

  def _features(self, net, image):
    return net(image, train=False)[-1]

  def _pooled_exemplars(self, net, image, exemplars):
    crops = crop_boxes(image, exemplars, self.exemplar_size)
    b, e = crops.shape[:2]
    f = self._features(net, crops.reshape(b * e, *crops.shape[2:]))
    return f.astype(jnp.float32).mean((1, 2)).reshape(b, e, -1)

  def encode(self, image, exemplars, exemplar_mask):
    """-> (projected features float32 [B, h, w, 256], S float32 [B, h, w])
    (eq. 1, mean over the valid exemplars)."""
    _ops.check_image(image, STRIDE, "SegThenCount")
    feats = self.input_proj(self._features(self.backbone, image))
    feats = feats.astype(jnp.float32)
    vec = self.exemplar_proj(
        self._pooled_exemplars(self.backbone, image, exemplars))
    sim = jnp.einsum("bhwc,bec->behw", feats, vec.astype(jnp.float32))
    m = exemplar_mask.astype(jnp.float32)[..., None, None]
    sim = (sim * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return feats, sim

  def count(self, feats, similarity):
    """The counter C on [feats [B, h, w, 256], S [B, h, w]] -> float32
    [B, 16h, 16w]."""
    x = jnp.concatenate([feats, similarity[..., None]], -1)
    return self.counter(x)

  def segment(self, image, exemplars, exemplar_mask):
    """Eq. 6: cos(P_ij(I), v) float32 [B, h, w], v = mean over the valid
    exemplars of GAP(P(B))."""
    feats = self._features(self.segmenter, image).astype(jnp.float32)
    vec = self._pooled_exemplars(self.segmenter, image, exemplars)
    m = exemplar_mask.astype(jnp.float32)[..., None]
    v = (vec * m).sum(1) / jnp.maximum(m.sum(1), 1.0)  # [B, C]
    num = jnp.einsum("bhwc,bc->bhw", feats, v)
    # |f|² |v|² floored before the square root: a zero feature (after the
    # ReLU) gives cosine 0 and a zero, not NaN, gradient.
    sq = ((feats ** 2).sum(-1)
          * (v ** 2).sum(-1)[:, None, None])
    return num / jnp.sqrt(jnp.maximum(sq, 1e-16))

  def __call__(self, image, exemplars, exemplar_mask, *, train: bool = False):
    del train  # frozen BatchNorm, no dropout
    feats, sim = self.encode(image, exemplars, exemplar_mask)
    out = {"similarity": sim}
    masked = sim
    if self.with_segmenter:
      seg = self.segment(image, exemplars, exemplar_mask)
      out["segmentation"] = seg
      out["mask"] = seg >= self.threshold
      masked = masked_similarity(sim, out["mask"], self.delta)
    out["density"] = self.count(feats, masked)
    return out
