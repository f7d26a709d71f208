"""Input validation shared by the losses (shapes only: traced values pass)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["check_points", "check_inputs", "at_least_one_point_row",
           "map_images"]


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


def map_images(fn, *batched):
  """``jax.vmap(fn)(*batched)`` over the leading batch axis, except that a
  batch of one calls ``fn`` on the image itself and adds the axis back.

  The result is the same on every backend (the batch-of-one path is
  checked against the official values in tests/losses/batch_of_one_test.py,
  the vmapped one in each loss's tests); the reason is speed on XLA:CPU:
  with XLA's default CPU options, XLA hands large reductions to YNNPACK,
  which treats an extent-1 axis as a broadcast, so a vmapped batch of one
  (the official BL / GL trainers' batch) ran DM-Count's Sinkhorn reductions
  ~5x slower (0.18 ms instead of 0.035 ms per mat-vec on a 64² map with
  1,000 points). Measured on XLA:CPU (jaxlib 0.10.2, 2 cores), DM-Count's
  value and gradient on that map, batch of one: 14.5 ms with this path,
  39.0 ms vmapped (XLA's default options, those of ``benchmarks/
  losses.py``); equal, 15.7 ms, with the trainer's options
  (``counting_jax.train.compile_options``, reductions kept in XLA). Calling
  the per-image function directly costs nothing on other backends, so the
  path is not behind a backend check.
  """
  if batched[0].shape[0] == 1:
    out = fn(*(x[0] for x in batched))
    return jax.tree.map(lambda x: jnp.expand_dims(x, 0), out)
  return jax.vmap(fn)(*batched)
