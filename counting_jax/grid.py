"""The one pixel-coordinate convention of counting_jax.

Points are continuous (x, y) positions in input-image pixels with the image's
top-left *corner* at (0, 0): input pixel (row r, column c) covers
[c, c + 1) x [r, r + 1) and its centre is (c + 0.5, r + 0.5).

An H x W image spans the *closed* rectangle [0, W] x [0, H]: a coordinate
equal to W (or H) belongs to the last pixel, column W - 1 (row H - 1). So the
pixel of a point is (min(floor(x), W - 1), min(floor(y), H - 1)), and every
point the readers accept (``counting_jax.data.files.clip_points``,
``counting_jax.data.sample.validate_sample``) lies on a pixel. The closed
rectangle is what flips need (x -> W - x maps x = 0 to x = W), and every
transform (``counting_jax.data.transforms``), density map
(``counting_jax.density``) and loss keeps a point on the border:

* a crop keeps a point when its pixel is in the crop, so a point at x = W is
  kept by a crop that reaches the image's right edge (it lands on the crop's
  right edge);
* zero-padding at the bottom/right moves a point at x = W (y = H) by one
  float32 step inside, onto the last image pixel, as the padding pixels
  beyond carry no annotation.

A density map with ``stride`` s (input pixels per density pixel) has cell
(i, j) covering input pixels [s*j, s*(j+1)) x [s*i, s*(i+1)), centred at
(s*j + s/2, s*i + s/2). A point belongs to the cell floor(x / s), floor(y / s),
the last cell for a point on the map's right or bottom edge (x = s*w or
y = s*h).

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


def cell_index(points: jnp.ndarray, stride: int = 1,
               shape: tuple[int, int] | None = None) -> jnp.ndarray:
  """Integer (col, row) cell of each (x, y) point: ``floor(points / stride)``.

  Args:
    points: float [..., 2], (x, y) in input-image pixels.
    stride: input pixels per cell.
    shape: (h, w) of the map; when given, a point on its right or bottom edge
      (x = stride * w, y = stride * h) gets the last cell (the closed
      convention above); points farther out are not clipped.

  Returns:
    int32 [..., 2] (col, row).
  """
  index = jnp.floor(points / stride).astype(jnp.int32)
  if shape is not None:
    h, w = shape
    size = jnp.array([w, h], jnp.int32)
    on_edge = points == size * stride
    index = jnp.where(on_edge, size - 1, index)
  return index
