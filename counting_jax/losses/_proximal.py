"""Proximal mapping loss (PML, Lin, Wan & Chan, ICLR 2025)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from counting_jax.losses import _checks
from counting_jax.losses._distances import abs_with_zero_subgradient as _abs

__all__ = ["pml_loss", "nearest_points"]

_COUNT_NORMS = ("l1", "l2")


# Distances per block (pixels x points) when block_pixels is None: 2^22
# float32 (16 MB) stays in cache on CPU; blocks of 16M were 4x slower per
# distance (4,000 points on a 64² map: 30 ms in one block, 6.5 ms in four).
_BLOCK_DISTANCES = 1 << 22


def _blocks(size: int, block: int) -> tuple[int, int]:
  """(block, number of blocks) covering ``size`` with blocks <= ``block``."""
  block = max(1, min(block, size))
  return block, -(-size // block)


def _pixel_block(block_points: int) -> int:
  """Largest power of two of pixels with block_points x it <= 2^22."""
  return 1 << max(0, (_BLOCK_DISTANCES // block_points).bit_length() - 1)


def _largest_with_sqrt(d):
  """Largest float32 v >= 0 with float32 ``sqrt(v) == d``, elementwise.

  v is the last float below (d + ulp/2)², within an ulp of ``d * next(d)``;
  the candidates around it are checked with the same correctly rounded
  square root as the distances.
  """
  c = d * jnp.nextafter(d, jnp.inf)
  lower = jnp.nextafter(c, -jnp.inf)
  best = lower  # below (d + ulp/2)² and far above d²
  for _ in range(3):
    lower = jnp.nextafter(lower, jnp.inf)
    best = jnp.where(jnp.sqrt(lower) == d, lower, best)
  return jnp.where(d == 0, 0.0, best)


def nearest_points(points, point_mask, shape, *, stride: int, offset: float,
                   block_pixels: int | None = None, block_points: int = 4096):
  """Nearest real point of every density cell, in O(n + N) memory.

  Brute force over blocks: ``lax.map`` over blocks of ``block_pixels`` cells,
  inside it a ``lax.scan`` over blocks of ``block_points`` points keeping the
  running minimum, so at most block_pixels x block_points distances exist at
  a time.

  The nearest point is the one the official code picks (PML,
  ``losses/pmloss.py``): the float32 Euclidean distance
  ``torch.norm(pixel - point)`` of every pixel to every point, then the
  strict argmin ``C.min(dim=-1)`` (the first index on an exact tie). Here
  the distance is ``sqrt((x - px)² + (y - py)²)`` in float32, written in the
  order for which XLA:CPU's fused multiply-add rounds it as PyTorch's CPU
  kernel does (``sqrt(fma(dx, dx, dy²))``, bit for bit on every pixel and
  point tried; other backends may round the last bit differently), and the
  first point at the minimal *distance* wins, in both the single-block and
  the blocked search (two points whose distances round to the same float32
  are a tie even when their squared distances differ).

  Args:
    points: float32 [N, 2], (x, y) in input pixels.
    point_mask: bool [N]; masked points are never chosen.
    shape: (h, w) of the density map.
    stride: input pixels per density pixel.
    offset: centre of cell 0 in input pixels.
    block_pixels, block_points: block sizes (memory/speed trade-off). With
      up to ``block_points`` points there is no loop over point blocks,
      which is the fast case on CPU (4,000 points on a 64² map: 7 ms with
      one point block, 37 ms with four). ``block_pixels=None``: the largest
      power of two with at most 2^22 distances per block (a 64² map with
      100 points is one block: 0.35 ms instead of 0.49 ms in four).

  Returns:
    (index int32 [h * w], distance float32 [h * w] in input pixels), row-major;
    with no real point: index 0 and distance +inf.
  """
  h, w = shape
  n, num_points = h * w, points.shape[0]
  bq, nq = _blocks(num_points, block_points)
  if block_pixels is None:
    block_pixels = _pixel_block(bq)
  pts = jnp.pad(points.astype(jnp.float32),
                ((0, bq * nq - num_points), (0, 0)))
  msk = jnp.pad(point_mask, (0, bq * nq - num_points))
  bp, npix = _blocks(n, block_pixels)

  def nearest_in_block(x, y, p, m):
    """(distance, index) of the nearest of points p (mask m)."""
    d2 = (jnp.square(x[:, None] - p[None, :, 0])
          + jnp.square(y[:, None] - p[None, :, 1]))
    d2 = jnp.where(m[None, :], d2, jnp.inf)
    # Strict argmin of sqrt(d2) without a square root per pair (4x slower
    # on XLA:CPU, jaxlib 0.10, 2 cores: 256² cells x 1,000 points 56 vs 14
    # ms): the minimum d2, its distance, then the first index whose d2 is
    # at most the largest float32 whose square root rounds to that distance
    # (the same float32 distance). Two plain reductions instead of XLA's
    # variadic argmin: ~1.6x faster on XLA:CPU.
    d2_min = d2.min(axis=1)
    d_min = jnp.sqrt(d2_min)
    tie = _largest_with_sqrt(d_min)
    j = jnp.min(jnp.where(d2 <= tie[:, None],
                          jnp.arange(p.shape[0], dtype=jnp.int32),
                          p.shape[0]), axis=1)
    return d_min, j

  def pixel_block(start):
    i = start + jnp.arange(bp)
    x = (i % w).astype(jnp.float32) * stride + offset
    y = (i // w).astype(jnp.float32) * stride + offset
    if nq == 1:  # no loop (a loop of one costs ~0.05 ms on CPU)
      d, j = nearest_in_block(x, y, pts, msk)
      return j, d

    def point_block(carry, k):
      best_d, best_j = carry
      d, j = nearest_in_block(
          x, y, jax.lax.dynamic_slice_in_dim(pts, k * bq, bq),
          jax.lax.dynamic_slice_in_dim(msk, k * bq, bq))
      better = d < best_d  # strict: an earlier block wins a tie
      return (jnp.where(better, d, best_d),
              jnp.where(better, j + k * bq, best_j)), None

    init = (jnp.full((bp,), jnp.inf, jnp.float32), jnp.zeros((bp,), jnp.int32))
    (d, j), _ = jax.lax.scan(point_block, init, jnp.arange(nq))
    return j, d

  if npix == 1:
    j, d = pixel_block(0)
  else:
    j, d = jax.lax.map(pixel_block, jnp.arange(npix) * bp)
  return j.reshape(-1)[:n], d.reshape(-1)[:n]


def _image_terms(a, points, mask, *, shape, stride, offset, min_radius,
                 count_norm, official_count_bug, block_pixels, block_points):
  """PML terms of one image: (transport, count) float32 scalars."""
  num_points = points.shape[0]
  idx, dist = nearest_points(points, mask, shape, stride=stride, offset=offset,
                             block_pixels=block_pixels,
                             block_points=block_points)
  has_points = mask.any()

  def seg(values, op=jax.ops.segment_sum):  # per-cell reduction, [N]
    return op(values, idx, num_segments=num_points)

  # Divide: cell j = pixels whose nearest point is j; D_j = largest distance.
  cell_radius = jnp.maximum(seg(dist, jax.ops.segment_max)[idx], min_radius)
  cost = jnp.exp(dist / cell_radius) - 1.0
  cell_size = seg(jnp.ones_like(dist))
  centred = cost - (seg(cost) / (cell_size + 1e-10))[idx]
  centred = jax.lax.stop_gradient(jnp.where(has_points, centred, 0.0))
  cell_mass = seg(a)
  if count_norm == "l1":
    count_pml = jnp.sum(jnp.where(mask, _abs(cell_mass - 1.0), 0.0))
  else:
    count_pml = jnp.sum(jnp.where(
        mask, jnp.square(cell_mass - 1.0) / (2 * jnp.maximum(cell_size, 1)),
        0.0))
  if official_count_bug:
    count = jnp.sum(jnp.where(mask, points[:, 0], 0.0))
  else:
    count = mask.sum().astype(jnp.float32)
  total = a.sum()
  empty = count < 1
  pml_branch = ~empty & (total > 1)
  transport = jnp.where(empty, _abs(a).sum(),
                        jnp.where(pml_branch, jnp.sum(a * centred), 0.0))
  count_term = jnp.where(
      empty, _abs(total),
      jnp.where(pml_branch, count_pml, _abs(total - count)))
  return transport, count_term


def pml_loss(density, points, point_mask, *, stride: int, epsilon: float = 1.0,
             count_norm: str = "l1", min_radius: float = 32.0,
             center_offset: float | None = None,
             official_count_bug: bool = False,
             block_pixels: int | None = None, block_points: int = 4096):
  """Proximal mapping loss (PML): nearest-neighbour cells, proximal targets.

  .. math::
     L_b = \\sum_i a_i\\,\\mathrm{sg}(c_i - \\bar c_{j(i)})
           + \\epsilon \\sum_j \\big|\\textstyle\\sum_{i: j(i)=j} a_i - 1\\big|,
     \\qquad c_i = \\exp\\Big(\\frac{d_i}{\\max(D_{j(i)}, r)}\\Big) - 1

  where a = ``density`` of one image, j(i) the nearest point of pixel i
  (centre x_i) and d_i its distance, D_j the largest d_i in point j's cell,
  c̄_j the mean cost of that cell, r = ``min_radius``, ε = ``epsilon``.
  The gradient of the first term is the centred cost c_i − c̄ (paper eq. 13,
  14: "background loss", negative near the point), and of the second ±ε per
  cell: ∂L/∂a_i = c_i − τη of eq. 8 with the L1 count's dynamic τ (eq. 14).
  ``count_norm="l2"`` uses eq. 13 instead, ε (m_j − 1)² / (2 ñ_j) with ñ_j
  the number of pixels of cell j (τ = ε), whose gradient is exactly eq. 8's
  c_i − τη, i.e. τ (a − p*) with the proximal target p* of eq. 7.

  Args:
    density: float [B, h, w] predicted density (any float dtype; computed in
      float32), h = H // stride.
    points: float [B, N, 2], (x, y) in input-image pixels.
    point_mask: bool [B, N]; images without points are allowed.
    stride: input pixels per density pixel (official: 2).
    epsilon: weight ε of the count term (eq. 24). Official code: 1 (``w_co``;
      the paper's ablation found 2 slightly better). The official code
      multiplies *both* terms by ``w_co``; at the default 1 this is the same.
    count_norm: "l1" (eq. 14, official) or "l2" (eq. 13).
    min_radius: floor r of the cost normaliser, input pixels (official
      ``radis`` = 32; not in the paper).
    center_offset: centre of density cell 0 in input pixels; None = (stride −
      1) / 2 (official ``s·k + (s−1)/2``; this library's convention is
      stride / 2).
    official_count_bug: reproduce the official count (see below).
    block_pixels, block_points: block sizes of the nearest-point search
      (memory O(block_pixels · block_points + h·w + N) per image); None:
      at most 2^22 distances (16 MB) per block, see ``nearest_points``.

  Returns:
    (loss float32 scalar = mean over the batch of L_b, as the official
    ``/ B``; aux) with aux ``pml`` (L_b), ``transport`` and ``count``
    (unweighted terms), each float32 [B].

  Raises:
    ValueError: on inconsistent shapes or an unknown ``count_norm``.

  Branches (official): with no point, L_b = Σ|a_i| + ε|Σ a_i|; with points
  but Σ a ≤ 1, only the count term ε|Σ a − m| (m points); otherwise the
  formula above. Cells of points that no pixel is nearest to count with mass
  0. Gradient: autodiff, the centred cost held constant (``stop_gradient``).

  Source: Lin, Wan & Chan, "Proximal Mapping Loss: Understanding Loss
  Functions in Crowd Counting & Localization", ICLR 2025, eqs. 7, 8, 13, 14, 24.
  Official code: Elin24/pml@d49bf69 ``losses/pmloss.py``. Differences from
  the paper (kept, as in the code): the cost is exp(d / max(D_j, 32)) − 1,
  not eq. 24's exp(d − d_max) normalisation. Bug in the official code: its
  point count is ``seq[:, -1].sum()`` on (y, x) rows, i.e. the *sum of the x
  coordinates*, not the number of points; it decides the empty branch
  (Σx < 1) and the count-only target (|Σa − Σx|). We count the points
  (``official_count_bug=False``); ``True`` restores the official behaviour
  (it changes results only when Σ a ≤ 1 or all points have x < 1). Memory:
  the official code builds the full pixels × points matrix; here the
  nearest-point search is blocked (1024² map, 20,000 points: < 2 GB).
  """
  _checks.check_inputs(density, points, point_mask)
  if count_norm not in _COUNT_NORMS:
    raise ValueError(f"count_norm must be one of {_COUNT_NORMS}, got "
                     f"{count_norm!r}")
  _, h, w = density.shape
  offset = float((stride - 1) / 2 if center_offset is None else center_offset)
  points, point_mask = _checks.at_least_one_point_row(points, point_mask)
  a = density.astype(jnp.float32).reshape(density.shape[0], -1)

  def per_image(a_b, points_b, mask_b):
    return _image_terms(a_b, points_b.astype(jnp.float32), mask_b,
                        shape=(h, w), stride=stride, offset=offset,
                        min_radius=min_radius, count_norm=count_norm,
                        official_count_bug=official_count_bug,
                        block_pixels=block_pixels, block_points=block_points)

  transport, count = _checks.map_images(per_image, a, points, point_mask)
  per_image_loss = transport + epsilon * count
  aux = {"pml": per_image_loss, "transport": transport, "count": count}
  return per_image_loss.mean(), aux
