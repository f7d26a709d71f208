"""Point-to-cell squared distances and a PyTorch-like |x| (BL, DM-Count)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from counting_jax import grid

__all__ = ["squared_distances", "axis_squared_distances",
           "abs_with_zero_subgradient"]


def squared_distances(points, shape, *, stride: int,
                      center_offset: float | None = None,
                      distance: str = "exact", pixels_first: bool = False):
  """Squared distances from points to the centres of an h x w density map.

  Args:
    points: float32 [..., N, 2], (x, y) in input-image pixels.
    shape: (h, w) of the density map.
    stride: input pixels per density pixel.
    center_offset: input-pixel centre of cell 0; default stride / 2.
    distance: "exact", (x − c)² + (y − r)², or "expanded", the float32
      evaluation order of BL's ``post_prob.py`` and DM-Count's
      ``ot_loss.py``: (−2·x·c + x·x + c·c) + (same for y), which differs from
      the exact value by up to ~1e-7·(x² + c²) (≈ 0.03 px² on a 512 crop).
    pixels_first: return the transposed layout [..., h*w, N] (the same
      values), so that reductions over the points run along the last axis.

  Returns:
    float32 [..., N, h*w], or [..., h*w, N] with ``pixels_first``; pixels
    flattened row-major.

  Raises:
    ValueError: for an unknown ``distance``.
  """
  dx, dy = axis_squared_distances(points, shape, stride=stride,
                                  center_offset=center_offset,
                                  distance=distance)
  h, w = shape
  if pixels_first:
    dx = jnp.swapaxes(dx, -1, -2)  # [..., w, N]
    dy = jnp.swapaxes(dy, -1, -2)  # [..., h, N]
    d = dy[..., :, None, :] + dx[..., None, :, :]
    return d.reshape(*d.shape[:-3], h * w, d.shape[-1])
  d = dy[..., :, None] + dx[..., None, :]
  return d.reshape(*d.shape[:-2], h * w)


def axis_squared_distances(points, shape, *, stride: int,
                           center_offset: float | None = None,
                           distance: str = "exact"):
  """The per-axis terms of :func:`squared_distances`.

  Args:
    points, shape, stride, center_offset, distance: as
      :func:`squared_distances`.

  Returns:
    (dx float32 [..., N, w], dy float32 [..., N, h]): squared distance
    (``distance`` as in :func:`squared_distances`) of each point's x to the
    column centres and of its y to the row centres; the squared distance to
    cell (r, c) is dy[..., r] + dx[..., c].

  Raises:
    ValueError: for an unknown ``distance``.
  """
  h, w = shape
  # Static centres (also under jit): their squares are constants, not
  # multiplies.
  with jax.ensure_compile_time_eval():
    xs = np.asarray(grid.cell_centers(w, stride, center_offset), np.float32)
    ys = np.asarray(grid.cell_centers(h, stride, center_offset), np.float32)
  px = points[..., 0:1]
  py = points[..., 1:2]
  if distance == "exact":
    dx = jnp.square(px - xs)
    dy = jnp.square(py - ys)
  elif distance == "expanded":
    # Fusion guard (faithful rounding, not speed; kept on every backend, as
    # GPU code generators contract too): XLA's CPU code generator may
    # contract a multiply feeding an add into one FMA (depending on the
    # layout it vectorises), which rounds differently (up to ~0.06 px² here)
    # from the official separate float32 operations. The squares of the
    # points are thus taken through a select (p == p, value-preserving, NaN
    # stays NaN) that stops the contraction; the remaining −2·(x·c) =
    # (x·c)·(−2) is exact either way. Measured on XLA:CPU (jaxlib 0.10.2):
    # without the select, BL's official-value test
    # (tests/losses/bayesian_test.py, with background) fails; with it, all
    # pass. Its cost is one select per point (N values, not N·h·w).
    pxx = jnp.where(px == px, px * px, jnp.nan)
    pyy = jnp.where(py == py, py * py, jnp.nan)
    dx = -2.0 * (px * xs) + pxx + xs * xs
    dy = -2.0 * (py * ys) + pyy + ys * ys
  else:
    raise ValueError(
        f"distance must be 'exact' or 'expanded', got {distance!r}")
  return dx, dy


def abs_with_zero_subgradient(x):
  """|x| whose derivative at 0 is 0, as PyTorch's ``abs``/``L1Loss``.

  ``jax.grad(jnp.abs)(0.)`` is 1; the official losses (PyTorch) use the
  sub-gradient sign(0) = 0, which matters at exact ties such as ReLU-zero
  density pixels against an empty target cell.
  """
  return jnp.sign(x) * x
