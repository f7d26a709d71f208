"""A small exemplar-conditioned counter: the smallest class-agnostic method.

Image and exemplar boxes in, similarity map and density out, the shape of
FamNet-style counters (Ranjan et al., CVPR 2021) and of Seg-then-Count's base
counter (Xu, Le & Samaras, eq. 1: the similarity is the inner product of
the feature map with each exemplar's feature vector, averaged over the
exemplars). It is deliberately tiny (a few conv layers, trains on CPU in
seconds) and is the reference for how an exemplar method plugs into the
trainer: its batch carries ``exemplars`` [B, E, 4] and ``exemplar_mask``
[B, E]; ``predict`` takes ``--exemplars boxes.json``.

Model: two conv blocks at full resolution, ``depth`` max-pool + conv block
levels (stride 2 ** depth); an exemplar's vector is the mean feature over
the density cells whose centres lie in its box (the cell holding the box
centre when none does); similarity ``s = <f, e> / sqrt(C)`` averaged over
the valid exemplars; the decoder sees [f, s] and gives ``density_scale`` x
the density (ReLU). Loss: Gaussian L2 (``counting_jax.losses.gaussian_l2``)
on the density. Config fields read: ``model.kwargs`` (``width``,
``depth``), ``input.max_exemplars``, ``loss.kwargs``, ``density_scale``,
``compute_dtype``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from counting_jax import losses as losses_lib
from counting_jax.methods import base
from counting_jax.models import _layers

__all__ = ["ExemplarSimilarityCounter", "exemplar_vectors", "build"]


def exemplar_vectors(features, boxes, box_mask, stride: int):
  """Mean feature inside each exemplar box.

  Args:
    features: float [B, h, w, C], density cell (r, c) covering input pixels
      [stride c, stride (c + 1)) x [stride r, stride (r + 1)).
    boxes: float32 [B, E, 4] (x1, y1, x2, y2) input-image pixels.
    box_mask: bool [B, E]; invalid boxes give zero vectors.
    stride: input pixels per feature cell.

  Returns:
    float32 [B, E, C]: the mean over the cells whose centres lie in the box,
    or the feature of the cell holding the box centre when the box holds no
    cell centre (boxes smaller than a cell).
  """
  _, h, w, _ = features.shape
  cy = (jnp.arange(h, dtype=jnp.float32) + 0.5) * stride
  cx = (jnp.arange(w, dtype=jnp.float32) + 0.5) * stride
  x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))
  in_y = (cy >= y1) & (cy <= y2)  # [B, E, h]
  in_x = (cx >= x1) & (cx <= x2)  # [B, E, w]
  mask = in_y[..., :, None] & in_x[..., None, :]  # [B, E, h, w]
  ry = jnp.clip(((y1 + y2) / 2 // stride).astype(jnp.int32), 0, h - 1)
  rx = jnp.clip(((x1 + x2) / 2 // stride).astype(jnp.int32), 0, w - 1)
  centre = ((jnp.arange(h) == ry)[..., :, None]
            & (jnp.arange(w) == rx)[..., None, :])
  empty = ~mask.any((-2, -1), keepdims=True)
  mask = jnp.where(empty, centre, mask) & box_mask[..., None, None]
  weights = mask.astype(jnp.float32)
  total = weights.sum((-2, -1))[..., None]
  summed = jnp.einsum("behw,bhwc->bec", weights,
                      features.astype(jnp.float32))
  return summed / jnp.maximum(total, 1.0)


class ExemplarSimilarityCounter(nn.Module):
  """Call: ``(image [B, H, W, 3], exemplars [B, E, 4], exemplar_mask [B, E],
  train=...)`` -> {"density": float32 [B, H/s, W/s] (x density_scale),
  "similarity": float32 [B, H/s, W/s]} with s = ``stride`` = 2 ** depth.
  """
  width: int = 16
  depth: int = 2
  dtype: jnp.dtype = jnp.float32

  @property
  def stride(self) -> int:
    return 2 ** self.depth

  @nn.compact
  def __call__(self, image, exemplars, exemplar_mask, *, train: bool = False):
    _layers.check_divisible(image, self.stride, "ExemplarSimilarityCounter")
    x = image.astype(self.dtype)
    x = _layers.ConvBlock(self.width, True, self.dtype)(x, train=train)
    for i in range(self.depth):
      x = nn.max_pool(x, (2, 2), (2, 2))
      x = _layers.ConvBlock(self.width * 2 ** (i + 1), True,
                            self.dtype)(x, train=train)
    feats = x.astype(jnp.float32)
    vectors = exemplar_vectors(feats, exemplars, exemplar_mask, self.stride)
    sim = jnp.einsum("bhwc,bec->behw", feats, vectors) / jnp.sqrt(
        feats.shape[-1])
    m = exemplar_mask.astype(jnp.float32)[..., None, None]
    sim = (sim * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    y = jnp.concatenate([x, sim[..., None].astype(self.dtype)], -1)
    y = _layers.ConvBlock(self.width, True, self.dtype)(y, train=train)
    y = nn.Conv(1, (1, 1), dtype=self.dtype)(y)
    return {"density": nn.relu(y[..., 0]).astype(jnp.float32),
            "similarity": sim.astype(jnp.float32)}


def _density(outputs, *, density_scale):
  return outputs["density"] / density_scale


def _loss(outputs, batch, *, loss_fn, density_scale, stride):
  return loss_fn(outputs["density"] / density_scale, batch["points"],
                 batch["point_mask"], stride=stride)


def build(config) -> base.Method:
  """The exemplar-similarity :class:`~counting_jax.methods.base.Method`.

  Raises:
    ValueError: when ``input.max_exemplars`` is not a positive integer.
  """
  max_exemplars = int(config.input.max_exemplars)
  if max_exemplars < 1:
    raise ValueError(f"input.max_exemplars must be >= 1, got "
                     f"{max_exemplars}")
  kwargs = dict(config.model.kwargs)
  if config.compute_dtype != "float32":
    kwargs["dtype"] = jnp.dtype(config.compute_dtype)
  model = ExemplarSimilarityCounter(**kwargs)
  scale = float(config.density_scale)
  loss_fn = losses_lib.get_loss(config.loss.name, **config.loss.kwargs)
  return base.Method(
      name="exemplar_similarity", model=model,
      loss=functools.partial(_loss, loss_fn=loss_fn, density_scale=scale,
                             stride=model.stride),
      density=functools.partial(_density, density_scale=scale),
      inputs=("image", "exemplars", "exemplar_mask"),
      fields=base.BatchFields(max_exemplars=max_exemplars))
