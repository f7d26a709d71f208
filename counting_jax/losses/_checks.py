"""Input validation shared by the losses (shapes only: traced values pass)."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["check_points", "check_inputs", "at_least_one_point_row"]


def check_points(points, point_mask) -> None:
  """Raises ValueError unless points [B,N,2] and point_mask [B,N]."""
  if points.ndim != 3 or points.shape[-1] != 2:
    raise ValueError(f"points must be [B, N, 2] (x, y), got {points.shape}")
  if point_mask.shape != points.shape[:2]:
    raise ValueError(f"point_mask must be [B, N] = {points.shape[:2]}, "
                     f"got {point_mask.shape}")


def check_inputs(density, points, point_mask) -> None:
  """Raises ValueError unless density [B,h,w], points [B,N,2], mask [B,N]."""
  if density.ndim != 3:
    raise ValueError(f"density must be [B, h, w], got shape {density.shape}")
  check_points(points, point_mask)
  if density.shape[0] != points.shape[0]:
    raise ValueError(f"batch sizes differ: density {density.shape[0]}, "
                     f"points {points.shape[0]}")


def at_least_one_point_row(points, point_mask):
  """(points, point_mask) with one padded (masked-out) row when N = 0, so
  per-image reductions over points keep a non-empty axis."""
  if points.shape[1]:
    return points, point_mask
  b = points.shape[0]
  return jnp.zeros((b, 1, 2), jnp.float32), jnp.zeros((b, 1), bool)
