"""Points from density maps by local maxima (the "LM" localization).

Two official recipes, both expressible with the arguments of
:func:`local_maxima`:

* STEERER (Han et al., ICCV 2023; ``lib/utils/points_from_den.py``
  ``local_maximum_points``): zero-pad the map at the bottom/right to a
  multiple of ``patch_size`` (32); per patch a threshold
  t = clip(r * patch max, lo, hi) with r = ``loc_threshold`` (NWPU 0.10,
  QNRF 0.15, ShanghaiTech 0.20) and lo, hi = r * g, 0.3 * g, where g is the
  peak value of the Gaussian kernel that made the training targets; a pixel
  is a point iff it equals the maximum of its 3 x 3 window (ties: every equal
  pixel is kept) and is >= t. STEERER returns the pixel *index* (column, row)
  times the density scale, i.e. ``center_offset=0``::

    local_maxima(d, stride=1, patch_size=32, relative_threshold=0.2,
                 threshold=0.2 * g, max_threshold=0.3 * g, center_offset=0.0)

* GL (Wan et al., CVPR 2021; the authors' recipe in the repository's issue
  #3): upsample the map x8 bilinearly, 3 x 3 peak test, zero the pixels below
  a threshold ``th`` (not given), the non-zero pixels are the points::

    local_maxima(d, stride=8, upsample=8, threshold=th)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from counting_jax.localization._types import Localization

__all__ = ["local_maxima"]


@functools.partial(jax.jit, static_argnames=(
    "stride", "window", "max_points", "patch_size", "upsample",
    "center_offset"))
def local_maxima(density, *, stride: float, threshold=0.0,
                 window: int = 3, max_points: int = 1024,
                 relative_threshold=0.0, max_threshold=float("inf"),
                 patch_size: int | None = None, upsample: int = 1,
                 center_offset: float | None = None) -> Localization:
  """Local maxima of a batch of density maps, as points.

  A pixel is a point iff (1) it equals the maximum of the ``window`` x
  ``window`` window centred on it (stride 1, the border padded with -inf;
  equal neighbours are all kept, as in STEERER), (2) it is >= its threshold
  t = clip(relative_threshold * M, threshold, max_threshold), M the maximum of
  its ``patch_size`` x ``patch_size`` patch (patches tile the map from the
  top-left; a partial patch at the bottom/right sees the map zero-padded, as
  in STEERER) or of the whole map when ``patch_size`` is None, and (3) it is
  > 0.

  Args:
    density: float [B, h, w] density maps.
    stride: input pixels per density pixel.
    threshold: absolute lower bound of the threshold (count units per
      density pixel, after upsampling); scalar or float [B].
    window: odd side of the peak window (3 everywhere official).
    max_points: K, the static bound on points per map. If a map has more
      peaks, the K highest are returned (ties: the first in row-major order)
      and ``count`` says how many there were.
    relative_threshold: fraction of the patch maximum (STEERER's
      ``loc_threshold``); 0 disables it.
    max_threshold: upper bound of the threshold (STEERER: 0.3 * g).
    patch_size: side of the threshold patches (STEERER 32), in density
      pixels after upsampling; None = the whole map.
    upsample: bilinear upsampling factor applied first (GL: 8;
      ``align_corners=False`` as PyTorch's ``interpolate``).
    center_offset: position in input pixels of the centre of (upsampled)
      pixel 0; default half an (upsampled) pixel, the convention of
      :mod:`counting_jax.grid`. STEERER and GL report the pixel index, i.e.
      0.

  Returns:
    :class:`Localization`: points [B, K, 2] (x, y) in input-image pixels,
    in row-major order of their pixels, mask [B, K], count [B].

  Raises:
    ValueError: if ``density`` is not [B, h, w] or ``window`` is not a
      positive odd integer.
  """
  if density.ndim != 3:
    raise ValueError(f"density must be [B, h, w], got {density.shape}")
  if window < 1 or window % 2 != 1:
    raise ValueError(f"window must be a positive odd integer, got {window}")
  d = density.astype(jnp.float32)
  b, h, w = d.shape
  if upsample != 1:
    h, w = h * upsample, w * upsample
    # Half-pixel centres, edges clamped: PyTorch's bilinear
    # align_corners=False (no antialiasing when upsampling).
    d = jax.image.resize(d, (b, h, w), "bilinear")
  cell = stride / upsample
  offset = cell / 2 if center_offset is None else center_offset

  pooled = jax.lax.reduce_window(d, -jnp.inf, jax.lax.max, (1, window, window),
                                 (1, 1, 1), "SAME")
  if patch_size is None:
    top = d.max(axis=(1, 2), keepdims=True)
  else:
    ph, pw = -(-h // patch_size), -(-w // patch_size)
    padded = jnp.pad(d, ((0, 0), (0, ph * patch_size - h),
                         (0, pw * patch_size - w)))
    top = padded.reshape(b, ph, patch_size, pw, patch_size).max(axis=(2, 4))
    top = jnp.repeat(jnp.repeat(top, patch_size, 1), patch_size, 2)[:, :h, :w]
  lo = jnp.reshape(jnp.asarray(threshold, jnp.float32), (-1, 1, 1))
  t = jnp.clip(relative_threshold * top, lo, max_threshold)
  keep = (d == pooled) & (d >= t) & (d > 0)

  flat_keep = keep.reshape(b, h * w)
  count = flat_keep.sum(axis=1, dtype=jnp.int32)
  k = min(max_points, h * w)
  score = jnp.where(flat_keep, d.reshape(b, h * w), -jnp.inf)
  values, idx = jax.lax.top_k(score, k)
  idx = jnp.sort(jnp.where(values > -jnp.inf, idx, h * w), axis=1)
  mask = idx < h * w
  rows, cols = idx // w, idx % w
  points = jnp.stack([cols * cell + offset, rows * cell + offset], axis=-1)
  points = jnp.where(mask[..., None], points, 0.0).astype(jnp.float32)
  if k < max_points:
    points = jnp.pad(points, ((0, 0), (0, max_points - k), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, max_points - k)))
  return Localization(points, mask, count)
