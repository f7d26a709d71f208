"""Input validation shared by the losses (shapes only: traced values pass)."""

from __future__ import annotations

__all__ = ["check_inputs"]


def check_inputs(density, points, point_mask) -> None:
  """Raises ValueError unless density [B,h,w], points [B,N,2], mask [B,N]."""
  if density.ndim != 3:
    raise ValueError(f"density must be [B, h, w], got shape {density.shape}")
  if points.ndim != 3 or points.shape[-1] != 2:
    raise ValueError(f"points must be [B, N, 2] (x, y), got {points.shape}")
  if point_mask.shape != points.shape[:2]:
    raise ValueError(f"point_mask must be [B, N] = {points.shape[:2]}, "
                     f"got {point_mask.shape}")
  if density.shape[0] != points.shape[0]:
    raise ValueError(f"batch sizes differ: density {density.shape[0]}, "
                     f"points {points.shape[0]}")
