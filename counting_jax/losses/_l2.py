"""Pixel-wise L2 loss against a Gaussian density target (the classic baseline)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from counting_jax import density as density_lib
from counting_jax.losses import _checks

__all__ = ["gaussian_l2_loss"]


def gaussian_l2_loss(density, points, point_mask, *, stride: int, sigma=4.0,
                     kernel: str = "integrated", scale: float = 1.0,
                     reduction: str = "sum", knn: int = 3, beta: float = 0.3):
  """Pixel L2 between a predicted density and a Gaussian density target.

  .. math::
     L_b = \\sum_{ij} \\big(s\\,\\hat D_{b,ij} - s\\,D_{b,ij}\\big)^2,
     \\qquad L = \\frac{1}{B}\\sum_b L_b

  with :math:`D_b` = :func:`counting_jax.density.gaussian_density` of the
  points of image b (mass-preserving, σ = ``sigma`` input pixels) and s =
  ``scale``.

  Args:
    density: float [B, h, w], predicted density (count units), h = H // stride.
    points: float [B, N, 2], (x, y) in input-image pixels.
    point_mask: bool [B, N]; images without points are allowed.
    stride: input pixels per density pixel.
    sigma: Gaussian σ in input pixels: a Python number (the fast windowed
      target of ``gaussian_density``), float [B, N] per point, or
      "adaptive" for the geometry-adaptive σ of MCNN (β · mean distance to
      the ``knn`` nearest points, :func:`counting_jax.density.adaptive_sigma`).
    knn, beta: neighbours and multiplier of the adaptive σ (MCNN: 3, 0.3).
    kernel: "integrated" (exact mass per cell) or "sampled" (Gaussian at cell
      centres, then renormalised), see ``gaussian_density``.
    scale: density multiplier applied to prediction and target before the
      squared error (cell counting commonly trains on density x100).
    reduction: pixel reduction per image, "sum" or "mean"; the batch is always
      averaged.

  Returns:
    (loss float32 scalar, aux) with aux ``l2`` [B] per-image loss and
    ``count`` [B] predicted count.

  Raises:
    ValueError: on inconsistent shapes or an unknown ``reduction``.

  Empty images: the target is zero, the loss is the (scaled) squared density.
  Source: Lempitsky & Zisserman, NIPS 2010; Zhang et al., MCNN, CVPR 2016.
  None of the official BL, DM-Count, GL, PML or P2PNet repositories trains
  with it.
  """
  _checks.check_inputs(density, points, point_mask)
  if reduction not in ("sum", "mean"):
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
  _, h, w = density.shape
  if isinstance(sigma, str):
    if sigma != "adaptive":
      raise ValueError(f"sigma must be a number, an array or 'adaptive', "
                       f"got {sigma!r}")
    sigma = jax.vmap(lambda p, m: density_lib.adaptive_sigma(
        p, m, k=knn, beta=beta))(points, point_mask)
  target = density_lib.gaussian_density(points, point_mask, (h, w), sigma,
                                        stride=stride, kernel=kernel)
  sq = jnp.square(scale * (density.astype(jnp.float32) - target))
  per_image = sq.sum((1, 2)) if reduction == "sum" else sq.mean((1, 2))
  aux = {"l2": per_image, "count": density.astype(jnp.float32).sum((1, 2))}
  return per_image.mean(), aux
