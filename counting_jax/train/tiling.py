"""Full-resolution density maps of large images from overlapping tiles.

Crowd test images reach 4K (NWPU-Crowd); a VGG19 forward pass on the whole
image may not fit in accelerator memory. The image (already zero-padded at
the bottom/right to a multiple ``m`` of the model's down-sampling, as for
untiled evaluation) is covered by ``tile`` x ``tile`` windows whose starts
are multiples of ``m`` (so every tile's density grid is a sub-grid of the
whole image's, and max-pooling networks see the same pixel phase) and that
overlap by at least ``overlap`` input pixels; the last window of a row or
column is aligned with the image edge. A side shorter than ``tile`` gets
one window of its own length. The tile densities are stitched with
per-pixel weights that sum to 1, so the stitched map is a convex
combination of tile predictions at every pixel and carries exactly their
mass where they agree (mass-correct):

* ``blend="core"``: each density pixel comes from one tile, split at the
  middle of every overlap (rounded to a density pixel). When half the
  overlap exceeds the model's receptive-field radius, the stitched map is
  the untiled one exactly (a translation-equivariant model).
* ``blend="linear"``: weights ramp linearly across each overlap (1 away from
  inner tile edges, > 0 everywhere), then are normalised per pixel; seams
  of models with large receptive fields are smoothed.

Padding rules: (1) the image is zero-padded (uint8 0, before normalising)
at the bottom/right to a multiple of ``m``, exactly as for untiled
evaluation; counts sum the stitched map over the cells that cover the real
image only (``counting_jax.density.count_in_image``, via
``predict.predict_counts``), as untiled counts do, so a tiled and an
untiled count differ only by seams;
(2) tiles are never padded: a side shorter than ``tile`` gets one window of
its own length; (3) at the image border a tile sees the same zero padding
of its convolutions as the whole image does, so only inner tile edges
create border effects, and those are what the overlap and the weights
hide. ``tile`` and ``overlap`` must be multiples of ``m``.

Everything here is NumPy on the host: :func:`tile_grid` and
:func:`tile_image` cut, :func:`stitch` blends; the model runs in between.
"""

from __future__ import annotations

import numpy as np

__all__ = ["tile_starts", "tile_grid", "tile_image", "tile_weights",
           "stitch", "predict_tiled", "nine_patch_boxes"]

_BLENDS = ("core", "linear")


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1):
  """Start offsets (input pixels) of windows covering ``[0, length)``.

  Args:
    length: padded side length (input pixels), a multiple of ``multiple``.
    tile: window side, a multiple of ``multiple``.
    overlap: minimum overlap of consecutive windows, a multiple of
      ``multiple``, ``0 <= overlap < tile``.
    multiple: the model's down-sampling factor (every start is a multiple).

  Returns:
    (starts list of int, window side used: ``min(tile, length)``).

  Raises:
    ValueError: naming the argument that is not a multiple of ``multiple``
      or out of range.
  """
  for name, v in (("length", length), ("tile", tile), ("overlap", overlap)):
    if v < 0 or v % multiple:
      raise ValueError(f"{name}={v} must be a non-negative multiple of "
                       f"{multiple}")
  if tile <= 0 or length <= 0:
    raise ValueError(f"tile={tile} and length={length} must be positive")
  if not 0 <= overlap < tile:
    raise ValueError(f"overlap={overlap} must be in [0, tile={tile})")
  if length <= tile:
    return [0], length
  starts = [0]
  while starts[-1] + tile < length:
    starts.append(min(starts[-1] + tile - overlap, length - tile))
  return starts, tile


def tile_grid(height: int, width: int, *, tile: int, overlap: int,
              multiple: int = 1):
  """Windows ``(y0, x0, th, tw)`` (input pixels) covering an image, row-major.

  Raises:
    ValueError: see :func:`tile_starts`.
  """
  ys, th = tile_starts(height, tile, overlap, multiple)
  xs, tw = tile_starts(width, tile, overlap, multiple)
  return [(y, x, th, tw) for y in ys for x in xs]


def tile_image(image, boxes):
  """Cuts [H, W, C] ``image`` into a [T, th, tw, C] stack at ``boxes`` from
  :func:`tile_grid` (all boxes share one size)."""
  image = np.asarray(image)
  return np.stack([image[y:y + h, x:x + w] for y, x, h, w in boxes])


def _axis_weights(starts, size, length, stride, overlap, blend):
  """Per-tile 1-D weights [n_tiles, size // stride] along one axis."""
  n = size // stride
  pos = np.arange(n)
  out = []
  for k, s in enumerate(starts):
    s //= stride
    lo = 0 if k == 0 else starts[k - 1] // stride + n   # previous tile end
    hi = length // stride if k == len(starts) - 1 else starts[k + 1] // stride
    g = s + pos                                         # global positions
    if blend == "core":
      # Split each overlap [next start, this end) at its middle.
      left = 0 if k == 0 else (s + lo + 1) // 2
      right = (length // stride if k == len(starts) - 1
               else (hi + s + n + 1) // 2)
      w = ((g >= left) & (g < right)).astype(np.float64)
    else:
      ramp = max(overlap // stride, 1)
      w = np.ones(n)
      if k > 0:
        w = np.minimum(w, (g - s + 0.5) / ramp)
      if k < len(starts) - 1:
        w = np.minimum(w, (s + n - g - 0.5) / ramp)
      w = np.clip(w, 1e-3, 1.0)
    out.append(w)
  return np.stack(out)


def tile_weights(boxes, height: int, width: int, *, stride: int,
                 overlap: int, blend: str = "linear"):
  """Stitching weights float64 [T, th // stride, tw // stride], one per box
  of :func:`tile_grid`; summed at each density pixel of the whole
  [H // stride, W // stride] map they give 1.

  Raises:
    ValueError: for an unknown ``blend``.
  """
  if blend not in _BLENDS:
    raise ValueError(f"blend must be one of {_BLENDS}, got {blend!r}")
  ys = sorted({b[0] for b in boxes})
  xs = sorted({b[1] for b in boxes})
  th, tw = boxes[0][2], boxes[0][3]
  wy = _axis_weights(ys, th, height, stride, overlap, blend)
  wx = _axis_weights(xs, tw, width, stride, overlap, blend)
  w = np.stack([wy[ys.index(y)][:, None] * wx[xs.index(x)][None, :]
                for y, x, _, _ in boxes])
  total = np.zeros((height // stride, width // stride))
  for (y, x, h, ww), wt in zip(boxes, w):
    total[y // stride:(y + h) // stride, x // stride:(x + ww) // stride] += wt
  for i, (y, x, h, ww) in enumerate(boxes):
    w[i] /= total[y // stride:(y + h) // stride, x // stride:(x + ww) // stride]
  return w


def stitch(densities, boxes, height: int, width: int, *, stride: int,
           overlap: int, blend: str = "linear"):
  """Blends tile densities into one map.

  Args:
    densities: float [T, th // stride, tw // stride], one per box.
    boxes: windows from :func:`tile_grid`.
    height, width: padded image size (input pixels).
    stride: input pixels per density pixel.
    overlap: the overlap the boxes were made with (sets the linear ramp).
    blend: "core" or "linear" (module docstring).

  Returns:
    float32 [height // stride, width // stride] density (count units).

  Raises:
    ValueError: when ``densities`` does not match ``boxes``.
  """
  densities = np.asarray(densities, np.float64)
  th, tw = boxes[0][2] // stride, boxes[0][3] // stride
  if densities.shape != (len(boxes), th, tw):
    raise ValueError(f"densities has shape {densities.shape}, expected "
                     f"{(len(boxes), th, tw)} for {len(boxes)} tiles")
  w = tile_weights(boxes, height, width, stride=stride, overlap=overlap,
                   blend=blend)
  out = np.zeros((height // stride, width // stride))
  for (y, x, _, _), d, wt in zip(boxes, densities, w):
    out[y // stride:y // stride + th, x // stride:x // stride + tw] += wt * d
  return out.astype(np.float32)


def predict_tiled(predict_fn, image, *, tile: int, overlap: int,
                  stride: int, multiple: int, blend: str = "linear",
                  batch_size: int = 4):
  """Density of one padded image from tiles.

  Args:
    predict_fn: float32 [b, th, tw, 3] -> float [b, th // stride,
      tw // stride] (count units); called on at most ``batch_size`` tiles.
    image: float32 [H, W, 3], normalised, H and W multiples of ``multiple``.
    tile, overlap: window side and minimum overlap (input pixels, multiples
      of ``multiple``).
    stride: density stride of the model.
    multiple: the model's down-sampling factor.
    blend: "core" or "linear".
    batch_size: tiles per call.

  Returns:
    float32 [H // stride, W // stride].
  """
  height, width = image.shape[:2]
  boxes = tile_grid(height, width, tile=tile, overlap=overlap,
                    multiple=multiple)
  tiles = tile_image(image, boxes)
  dens = np.concatenate([np.asarray(predict_fn(tiles[i:i + batch_size]))
                         for i in range(0, len(tiles), batch_size)])
  return stitch(dens, boxes, height, width, stride=stride, overlap=overlap,
                blend=blend)


def nine_patch_boxes(height: int, width: int):
  """The 9 windows ``(y0, x0, H/2, W/2)`` at offsets (H/4) i, (W/4) j,
  i, j in {0, 1, 2}, row-major, of the mPrompt evaluation (Guo et al.,
  CVPR 2024, official code; not in the paper). :func:`stitch` with
  ``blend="core"`` then keeps each patch's central region and the outer
  patches' outer 3/4, as the official code stitches: rows [0, 3H/8),
  [3H/8, 5H/8), [5H/8, H) and the same for columns.

  Raises:
    ValueError: unless ``height`` and ``width`` are multiples of 8 (the
      split points H/4 and 3H/8 are then whole pixels; the mPrompt resize
      rule gives multiples of 32).
  """
  if height <= 0 or width <= 0 or height % 8 or width % 8:
    raise ValueError(f"nine_patch_boxes: image {height} x {width} must have "
                     "positive sides that are multiples of 8")
  h, w = height // 2, width // 2
  return [(height // 4 * i, width // 4 * j, h, w)
          for i in range(3) for j in range(3)]
