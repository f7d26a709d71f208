"""Density maps from point annotations, and pooling to a density stride.

A density map D of shape [h, w] with stride s covers the input-image region
[0, s*w) x [0, s*h) (see :mod:`counting_jax.grid`). Each point inside that
region contributes a kernel of mass exactly 1, so ``D.sum()`` equals the
number of points in the image, also for points near the border (the kernel is
renormalised over the map instead of leaking outside). Points outside the
region, and padded points (``point_mask`` False), contribute nothing.

The Gaussian is separable, so a map is built as ``Gy^T @ Gx`` from per-point
1-D profiles: O(N (h + w)) memory and an [N,h]x[N,w] matmul, never an
N x h x w tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from scipy import spatial

from counting_jax import grid

__all__ = ["gaussian_density", "knn_sigma", "adaptive_sigma", "sum_pool"]

_MIN_SIGMA = 1e-3


def _profiles(coord, sigma, size, stride, kernel):
  """Per-point 1-D kernel mass over the ``size`` cells of one axis: [N, size]."""
  coord = coord[:, None]
  sigma = jnp.maximum(sigma, _MIN_SIGMA)[:, None]
  if kernel == "integrated":
    edges = grid.cell_edges(size, stride)[None, :]
    cdf = 0.5 * (1.0 + jsp.erf((edges - coord) / (sigma * np.sqrt(2.0))))
    return cdf[:, 1:] - cdf[:, :-1]
  if kernel == "sampled":
    centers = grid.cell_centers(size, stride)[None, :]
    return jnp.exp(-0.5 * jnp.square((centers - coord) / sigma))
  raise ValueError(f"kernel must be 'integrated' or 'sampled', got {kernel!r}")


def gaussian_density(points, point_mask, shape, sigma, *, stride: int = 1,
                     kernel: str = "integrated", scale: float = 1.0):
  """Mass-preserving Gaussian density map of one image.

  .. math::
     D_{ij} = \\text{scale} \\sum_n m_n \\frac{g_n(i, j)}{\\sum_{i'j'} g_n(i', j')}

  where :math:`g_n` is the Gaussian of point n (σ_n in input pixels)
  integrated over cell (i, j) (``kernel="integrated"``, the exact sum-pooling
  of a fine map) or sampled at the cell centre (``kernel="sampled"``, the
  usual ``scipy.ndimage.gaussian_filter`` of a dot map, up to truncation), and
  :math:`m_n` is 1 for real points inside the map and 0 otherwise.

  Args:
    points: float [N, 2], (x, y) in input-image pixels.
    point_mask: bool [N], True for real points.
    shape: (h, w) of the density map (density pixels).
    sigma: scalar or float [N], Gaussian σ in input-image pixels (fixed σ, or
      per point from :func:`knn_sigma`).
    stride: input pixels per density pixel.
    kernel: "integrated" or "sampled".
    scale: multiplies the map (cell counting commonly trains on density x100).

  Returns:
    float32 [h, w] density map; sum = scale x (points inside the map).

  Raises:
    ValueError: on a bad ``points`` shape or ``kernel`` name.
  """
  points = jnp.asarray(points, jnp.float32)
  if points.ndim != 2 or points.shape[-1] != 2:
    raise ValueError(f"points must be [N, 2], got shape {points.shape}")
  h, w = shape
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), points.shape[:1])
  x, y = points[:, 0], points[:, 1]
  inside = (x >= 0) & (x < w * stride) & (y >= 0) & (y < h * stride)
  weight = (jnp.asarray(point_mask) & inside).astype(jnp.float32)
  gx = _profiles(x, sigma, w, stride, kernel)
  gy = _profiles(y, sigma, h, stride, kernel)
  norm = gx.sum(1) * gy.sum(1)
  weight = weight * scale / jnp.where(norm > 0, norm, 1.0)
  return jnp.einsum("nh,nw->hw", gy * weight[:, None], gx,
                    precision=jax.lax.Precision.HIGHEST)


def knn_sigma(points: np.ndarray, *, k: int = 3, beta: float = 0.3,
              isolated_sigma: float = 15.0) -> np.ndarray:
  """Geometry-adaptive σ per point (MCNN, Zhang et al. CVPR 2016, eq. 1).

  σ_n = β · (mean distance from point n to its k nearest neighbours). MCNN and
  the FSC-147 maps use k=3; β=0.3 is MCNN's. With fewer than k other points
  the available neighbours are used; a lone point gets ``isolated_sigma``.

  Args:
    points: float [N, 2], (x, y) in input-image pixels (real points only).
    k: number of neighbours.
    beta: multiplier.
    isolated_sigma: σ in input pixels for an image with a single point.

  Returns:
    float32 [N] σ in input-image pixels.
  """
  points = np.asarray(points, np.float64).reshape(-1, 2)
  n = len(points)
  if n == 0:
    return np.zeros((0,), np.float32)
  if n == 1:
    return np.full((1,), isolated_sigma, np.float32)
  kk = min(k, n - 1)
  dist, _ = spatial.cKDTree(points).query(points, k=kk + 1)
  return (beta * dist[:, 1:].mean(axis=1)).astype(np.float32)


def adaptive_sigma(points, point_mask, *, k: int = 3, beta: float = 0.3,
                   isolated_sigma: float = 15.0):
  """:func:`knn_sigma` for padded points, in JAX (jit-able; O(N²) memory).

  Args:
    points: float [N, 2], (x, y) in input-image pixels.
    point_mask: bool [N]; padded rows get σ = ``isolated_sigma`` (unused).
    k, beta, isolated_sigma: as :func:`knn_sigma` (MCNN: k=3, β=0.3).

  Returns:
    float32 [N] σ in input pixels; a point with fewer than k real neighbours
    averages the ones it has, a lone point gets ``isolated_sigma``.
  """
  points = jnp.asarray(points, jnp.float32)
  mask = jnp.asarray(point_mask, bool)
  n = points.shape[0]
  diff = points[:, None, :] - points[None, :, :]
  dist = jnp.sqrt(jnp.sum(diff * diff, -1))
  valid = mask[:, None] & mask[None, :] & ~jnp.eye(n, dtype=bool)
  dist = jnp.where(valid, dist, jnp.inf)
  kk = min(k, max(n - 1, 1))
  nearest = -jax.lax.top_k(-dist, kk)[0]  # [N, kk] ascending
  finite = jnp.isfinite(nearest)
  count = finite.sum(-1)
  mean = jnp.where(finite, nearest, 0.0).sum(-1) / jnp.maximum(count, 1)
  return jnp.where(count > 0, beta * mean, isolated_sigma).astype(jnp.float32)


def sum_pool(density, stride: int):
  """Sum-pools a density map [..., H, W] by ``stride`` (count preserved).

  Raises:
    ValueError: if H or W is not a multiple of ``stride``.
  """
  *lead, hh, ww = density.shape
  if hh % stride or ww % stride:
    raise ValueError(
        f"density shape {(hh, ww)} is not a multiple of stride {stride}")
  d = density.reshape(*lead, hh // stride, stride, ww // stride, stride)
  return d.sum(axis=(-3, -1))
