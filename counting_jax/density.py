"""Density maps from point annotations, and pooling to a density stride.

A density map D of shape [h, w] with stride s covers the closed input-image
region [0, s*w] x [0, s*h] (see :mod:`counting_jax.grid`: a point on the right
or bottom edge belongs to the last cell). Each point inside that region
contributes a kernel of mass exactly 1, so ``D.sum()`` equals the number of
points in the image, also for points on or near the border (the kernel is
renormalised over the map instead of leaking outside). Points outside the
region, and padded points (``point_mask`` False), contribute nothing.

The Gaussian is separable, so a map is built from per-point 1-D profiles,
never an N x h x w tensor: with one fixed σ known at trace time (a Python or
NumPy number, or a concrete 0-d array) each point's kernel is the outer
product of its profiles on the (2k + 1)² cells around it, k = ceil(5.5σ /
stride), scatter-added into the map (``method="windowed"``, O(N k²)); with
per-point σ (an array), or a traced σ, it is ``Gy^T @ Gx`` over whole rows and
columns (``method="dense"``, O(N (h + w)) memory, an [N,h]x[N,w] matmul).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from scipy import spatial

__all__ = ["gaussian_density", "knn_sigma", "adaptive_sigma", "sum_pool",
           "image_cells", "image_mask", "count_in_image", "crop_to_image",
           "median_nearest_distance", "spacing_sigma", "METHODS"]

# ``gaussian_density``'s algorithms (see its docstring).
METHODS = ("auto", "windowed", "dense")

_MIN_SIGMA = 1e-3
# Window half-width in σ for a fixed σ: the Gaussian mass beyond 5.5σ on an
# axis is 3.8e-8, below float32 resolution (the dense float32 product's
# erf differences are rounding noise there too).
_TRUNCATE = 5.5


def _profiles(coord, sigma, first, size, stride, kernel):
  """Kernel mass of each point over cells ``first .. first + size - 1``.

  Args:
    coord: float [N], point coordinate on this axis (input pixels).
    sigma: float [N], σ in input pixels.
    first: int, [N] or scalar, index of each point's first cell.
    size: static number of cells per point.
    stride, kernel: as :func:`gaussian_density`.

  Returns:
    float32 [N, size]; the cells must lie inside the map (the caller
    chooses ``first``), as edges and centres are not clipped.
  """
  coord = coord[:, None]
  sigma = jnp.maximum(sigma, _MIN_SIGMA)[:, None]
  first = jnp.asarray(first, jnp.float32).reshape(-1, 1)
  if kernel == "integrated":
    edges = (first + jnp.arange(size + 1, dtype=jnp.float32)) * stride
    cdf = 0.5 * (1.0 + jsp.erf((edges - coord) / (sigma * np.sqrt(2.0))))
    return cdf[:, 1:] - cdf[:, :-1]
  # "sampled" (gaussian_density validates the name)
  centers = (first + jnp.arange(size, dtype=jnp.float32)) * stride + (
      stride / 2.0)
  return jnp.exp(-0.5 * jnp.square((centers - coord) / sigma))


def _window(sigma, stride: int) -> int:
  """Cells each side of a point's own cell: all but < 4e-8 of its mass."""
  return max(1, math.ceil(_TRUNCATE * max(float(sigma), _MIN_SIGMA) / stride))


def _fixed_sigma(sigma) -> float | None:
  """σ as a Python float when it is one number known at trace time (Python
  or NumPy scalar, concrete 0-d array), else None (per-point or traced)."""
  if isinstance(sigma, jax.core.Tracer):
    return None
  value = np.asarray(sigma)
  if value.ndim != 0 or not np.issubdtype(value.dtype, np.number):
    return None
  return float(value)


def gaussian_density(points, point_mask, shape, sigma, *, stride: int = 1,
                     kernel: str = "integrated", scale: float = 1.0,
                     method: str = "auto"):
  """Mass-preserving Gaussian density map of one image.

  .. math::
     D_{ij} = \\text{scale} \\sum_n m_n \\frac{g_n(i, j)}{\\sum_{i'j'} g_n(i', j')}

  where :math:`g_n` is the Gaussian of point n (σ_n in input pixels)
  integrated over cell (i, j) (``kernel="integrated"``, the exact sum-pooling
  of a fine map) or sampled at the cell centre (``kernel="sampled"``, the
  usual ``scipy.ndimage.gaussian_filter`` of a dot map, up to truncation), and
  :math:`m_n` is 1 for real points inside the map and 0 otherwise.

  Args:
    points: float [N, 2], (x, y) in input-image pixels, or [B, N, 2] for a
      batch of images (one map each).
    point_mask: bool [N] (or [B, N]), True for real points.
    shape: (h, w) of the density map (density pixels).
    sigma: one number (Python or NumPy scalar, 0-d array), or float [N]
      ([B, N]), Gaussian σ in input pixels (fixed σ, or per point from
      :func:`knn_sigma`).
    stride: input pixels per density pixel.
    kernel: "integrated" or "sampled".
    scale: multiplies the map (cell counting commonly trains on density x100).
    method: "windowed": the kernel is evaluated on the (2k + 1)² cells within
      k = ceil(5.5σ / stride) cells of each point (the mass beyond, 4e-8, is
      below float32 resolution), equal to the dense product to float32
      rounding and O(N σ²/stride²) instead of O(N h w); needs a fixed σ known
      at trace time, and a map wider and taller than 2k + 1 cells (smaller
      maps use the dense product, which is then as cheap). "dense": the
      [N, h] x [N, w] product for any σ. "auto" (default): "windowed"
      whenever σ is one concrete number, else "dense".

  Returns:
    float32 [h, w] density map ([B, h, w] for batched points); sum = scale x
    (points inside the map).

  Raises:
    ValueError: on a bad ``points`` shape, ``kernel`` or ``method`` name, or
      ``method="windowed"`` with a per-point or traced σ.
  """
  points = jnp.asarray(points, jnp.float32)
  if points.ndim not in (2, 3) or points.shape[-1] != 2:
    raise ValueError(f"points must be [N, 2] or [B, N, 2], got shape "
                     f"{points.shape}")
  if kernel not in ("integrated", "sampled"):
    raise ValueError(f"kernel must be 'integrated' or 'sampled', "
                     f"got {kernel!r}")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  fixed = _fixed_sigma(sigma) if method != "dense" else None
  if method == "windowed" and fixed is None:
    raise ValueError("method='windowed' needs one fixed sigma known at trace "
                     "time (a number), got a per-point or traced sigma; use "
                     "method='dense'")
  batched = points.ndim == 3
  points = points if batched else points[None]
  point_mask = jnp.asarray(point_mask).reshape(points.shape[:2])
  h, w = shape
  half = None if fixed is None else _window(fixed, stride)
  x, y = points[..., 0], points[..., 1]
  # Closed region: a point on the right or bottom edge is in the last cell.
  inside = (x >= 0) & (x <= w * stride) & (y >= 0) & (y <= h * stride)
  weight = (point_mask & inside).astype(jnp.float32) * scale
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32),
                           points.shape[:2])
  if half is not None and 2 * half + 1 < min(h, w):
    out = _windowed(x, y, weight, sigma, (h, w), half, stride, kernel)
  else:
    bsz, n = x.shape
    gx = _profiles(x.reshape(-1), sigma.reshape(-1), 0, w, stride,
                   kernel).reshape(bsz, n, w)
    gy = _profiles(y.reshape(-1), sigma.reshape(-1), 0, h, stride,
                   kernel).reshape(bsz, n, h)
    norm = gx.sum(-1) * gy.sum(-1)
    weight = weight / jnp.where(norm > 0, norm, 1.0)
    out = jnp.einsum("bnh,bnw->bhw", gy * weight[..., None], gx,
                     precision=jax.lax.Precision.HIGHEST)
  return out if batched else out[0]


def _windowed(x, y, weight, sigma, shape, half, stride, kernel):
  """Each point's kernel on a window of its cells, scatter-added: O(N·half²).

  x, y, weight, sigma: float [B, N]. Returns float32 [B, h, w]. Requires
  2·half + 1 < min(h, w). Each window has ``size`` >= 2·half + 1 cells per
  axis and is shifted to lie inside the map, so it covers every map cell
  within ±half cells of the point's own cell (all of the in-map mass but
  < 4e-8), and its cells are the map's: the in-map mass, the normaliser, is
  the sum of the window, in closed form from its first and last edge. The
  batch is flattened into one scatter (vmap would add a batch dimension to
  the scatter's updates, which XLA:CPU lays out with a slow transposing
  copy).
  """
  h, w = shape
  bsz = x.shape[0]
  image = jnp.repeat(jnp.arange(bsz), x.shape[1])
  x, y, weight, sigma = (v.reshape(-1) for v in (x, y, weight, sigma))
  # At least 8 cells (one whole AVX vector on CPU: ~2x faster outer products
  # for small windows), at most the map.
  size = min(max(2 * half + 1, 8), h, w)
  n = x.shape[0]
  # Both axes in one array (one kernel, not two, on CPU): rows then columns.
  coord = jnp.concatenate([y, x])
  limit = jnp.repeat(jnp.array([h, w], jnp.int32), n)
  sigma2 = jnp.concatenate([sigma, sigma])
  # First window cell, the window inside the map (points outside the map
  # have weight 0).
  first = jnp.clip(jnp.floor(coord / stride).astype(jnp.int32) - half, 0,
                   limit - size)
  if kernel == "integrated":
    scale = jnp.maximum(sigma2, _MIN_SIGMA)[:, None] * np.sqrt(2.0)
    edges = ((first[:, None] + jnp.arange(size + 1)) * stride).astype(
        jnp.float32)
    # One erf per cell edge (XLA keeps them out of the outer product below;
    # the differences are fused into it).
    half_erf = 0.5 * jsp.erf((edges - coord[:, None]) / scale)
    prof = half_erf[:, 1:] - half_erf[:, :-1]
    mass = half_erf[:, -1] - half_erf[:, 0]
  else:
    prof = _profiles(coord, sigma2, first, size, stride, kernel)
    mass = prof.sum(1)
  norm = mass[:n] * mass[n:]
  gy, gx = prof[:n], prof[n:]
  row0, col0 = first[:n], first[n:]
  weight = weight / jnp.where(norm > 0, norm, 1.0)
  # One row segment (size cells) per point and window row, scatter-added into
  # the flattened maps (flat row segments scatter 2-3x faster on CPU than
  # size x size windows).
  rows = (gy * weight[:, None])[:, :, None] * gx[:, None, :]
  starts = ((image[:, None] * h + row0[:, None] + jnp.arange(size)) * w
            + col0[:, None])
  flat = jax.lax.scatter_add(
      jnp.zeros((bsz * h * w,), jnp.float32), starts.reshape(-1, 1),
      rows.reshape(-1, size),
      jax.lax.ScatterDimensionNumbers(update_window_dims=(1,),
                                      inserted_window_dims=(),
                                      scatter_dims_to_operand_dims=(0,)),
      mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
  return flat.reshape(bsz, h, w)


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


def image_cells(image_size, stride: int):
  """Density cells (rows, cols) that cover a real image: ceil(H / stride),
  ceil(W / stride).

  Args:
    image_size: int [..., 2], the image's (height, width) in input pixels
      before zero-padding.
    stride: input pixels per density cell.
  """
  size = jnp.asarray(image_size, jnp.int32)
  return (size + stride - 1) // stride


def image_mask(shape, image_size, stride: int):
  """bool [B, h, w]: True on the density cells that cover the real image.

  Images are zero-padded at the bottom/right (to a multiple of the model's
  down-sampling) before the model sees them; the cells that cover padding
  only are False. A cell straddling the image edge (H or W not a multiple
  of ``stride``) is True: it holds the density of the real pixels it covers
  (a point at x belongs to cell floor(x / stride), ``counting_jax.grid``),
  so it is counted in full.

  Args:
    shape: (h, w) of the density maps.
    image_size: int [B, 2] (height, width) of each real image, input pixels.
    stride: input pixels per density cell.
  """
  cells = image_cells(image_size, stride).reshape(-1, 2)
  rows = jnp.arange(shape[0])[None, :, None] < cells[:, 0, None, None]
  cols = jnp.arange(shape[1])[None, None, :] < cells[:, 1, None, None]
  return rows & cols


def count_in_image(density, image_size, stride: int):
  """Counts float32 [B]: the density summed over the cells covering each
  real image, not its zero padding.

  Summing the whole map of a padded image adds whatever the model puts on
  the black band (12-15 cells per 300x300 image in one cell-counting run).
  Cells are masked as in :func:`image_mask`: cells of padding only are
  left out; a cell straddling the image edge is counted in full.

  Args:
    density: float [B, h, w] (count units) of padded images.
    image_size: int [B, 2] (height, width) of the real images, input pixels
      (``image_size`` of ``pipeline.eval_batches``).
    stride: input pixels per density cell.

  Raises:
    ValueError: when the map is smaller than an image's cells.
  """
  density = jnp.asarray(density)
  cells = np.asarray(image_cells(image_size, stride)).reshape(-1, 2)
  if np.any(cells > np.asarray(density.shape[1:3])):
    raise ValueError(f"image sizes {np.asarray(image_size).tolist()} need "
                     f"more cells than the density map {density.shape[1:3]} "
                     f"at stride {stride}")
  mask = image_mask(density.shape[1:3], image_size, stride)
  return jnp.sum(jnp.where(mask, density, 0.0), axis=(1, 2),
                 dtype=jnp.float32)


def crop_to_image(density, image_size, stride: int):
  """One map [h, w] cropped to the cells covering its real image
  (:func:`image_mask`), e.g. for display; ``image_size`` is (H, W)."""
  rows, cols = (int(v) for v in np.asarray(image_cells(image_size, stride)))
  return density[:rows, :cols]


def median_nearest_distance(point_sets) -> float:
  """Median distance (input pixels) from each point to its nearest other
  point of the same image, over all images with at least two points.

  Args:
    point_sets: iterable of float [N, 2] (x, y) arrays, one per image.

  Raises:
    ValueError: when no image has two points.
  """
  dists = []
  for pts in point_sets:
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    if len(pts) >= 2:
      d, _ = spatial.cKDTree(pts).query(pts, k=2)
      dists.append(d[:, 1])
  if not dists:
    raise ValueError("median_nearest_distance: no image has two points")
  return float(np.median(np.concatenate(dists)))


def spacing_sigma(point_sets, fraction: float = 0.25) -> float:
  """A fixed σ (input pixels) for a new cell data set: ``fraction`` times
  :func:`median_nearest_distance`.

  The main job's σ = 2 px on VGG cells is 0.23 of that set's median
  nearest-dot distance (8.5 px); the default 0.25 gives 2.1 px there, so
  σ scales with the spacing of the objects (a heuristic of this library,
  not a published rule).
  """
  return fraction * median_nearest_distance(point_sets)
