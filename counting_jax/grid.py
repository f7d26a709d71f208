"""The one pixel-coordinate convention of counting_jax.

Points are continuous (x, y) positions in input-image pixels with the image's
top-left *corner* at (0, 0): input pixel (row r, column c) covers
[c, c + 1) x [r, r + 1) and its centre is (c + 0.5, r + 0.5).

A density map with ``stride`` s (input pixels per density pixel) has cell
(i, j) covering input pixels [s*j, s*(j+1)) x [s*i, s*(i+1)), centred at
(s*j + s/2, s*i + s/2). A point belongs to the cell floor(x / s), floor(y / s).

The official crowd-counting repositories use other centres for their cost
matrices (BL: s*k + s/2 with s=8, i.e. 8k+4; GL: 8k+8; PML: s*k + (s-1)/2).
Losses that need those take an explicit ``center_offset`` argument and build
their grid with :func:`cell_centers`; nothing here changes silently.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["cell_centers", "cell_index", "cell_edges"]


def cell_centers(size: int, stride: int = 1, offset: float | None = None,
                 dtype=jnp.float32) -> jnp.ndarray:
  """Centres of the ``size`` cells of one axis, in input-image pixels.

  Args:
    size: number of density cells along the axis.
    stride: input pixels per density cell.
    offset: centre of cell 0 in input pixels; default ``stride / 2`` (this
      library's convention). Official conventions: BL ``stride / 2``
      (8k+4), GL ``stride`` (8k+8), PML ``(stride - 1) / 2``.
    dtype: output dtype.

  Returns:
    float [size] array ``stride * k + offset``.
  """
  if offset is None:
    offset = stride / 2.0
  return jnp.arange(size, dtype=dtype) * stride + jnp.asarray(offset, dtype)


def cell_edges(size: int, stride: int = 1, dtype=jnp.float32) -> jnp.ndarray:
  """The ``size + 1`` cell boundaries of one axis, in input-image pixels."""
  return jnp.arange(size + 1, dtype=dtype) * stride


def cell_index(points: jnp.ndarray, stride: int = 1) -> jnp.ndarray:
  """Integer (col, row) cell of each (x, y) point: ``floor(points / stride)``."""
  return jnp.floor(points / stride).astype(jnp.int32)
