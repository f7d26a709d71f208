"""T2ICount's evaluation tiling, as the official test loop does it.

The official model only runs on 384 x 384 crops, so every test image (batch
of one, no resize) is cut into 384² tiles at stride 384, the last row and
column of tiles shifted inwards to end at the border; tiles are predicted
in chunks of 16; each 48² map (x60 domain) is upsampled x8 bilinearly
(PyTorch ``align_corners=False``), divided by 64 and accumulated at full
resolution, overlaps averaged; the count is the sum / 60. The same is used
for FSC-147 val/test (prompt: the class name), FSC-147-S (its own prompts
and counts) and CARPK (prompt "cars", 1280 x 720 images).

Images smaller than a tile along a side (not in these data sets) are
zero-padded at the bottom / right to the tile and the padded part is
dropped from the map (the official code does not handle them).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["official_tile_starts", "official_tiled_density"]


def official_tile_starts(length: int, tile: int = 384) -> list[int]:
  """Tile starts along one side: 0, tile, 2 tile, ... while the tile fits,
  then one tile ending at the border (no duplicate)."""
  if length <= tile:
    return [0]
  starts = list(range(0, length - tile + 1, tile))
  if starts[-1] + tile < length:
    starts.append(length - tile)
  return starts


def official_tiled_density(predict: Callable, image, *, tile: int = 384,
                           stride: int = 8, chunk: int = 16,
                           density_scale: float = 60.0) -> np.ndarray:
  """Full-resolution density of one image by official 384² tiling.

  Args:
    predict: ``tiles float32 [n, tile, tile, 3] -> float [n, tile/stride,
      tile/stride]`` maps in the x``density_scale`` domain (the model with
      its parameters and prompt bound; called with n <= ``chunk``, the last
      chunk zero-padded to ``chunk`` so it compiles once).
    image: float32 [H, W, 3], normalised as the model expects.
    tile, stride, chunk, density_scale: official 384, 8, 16, 60.

  Returns:
    float32 [H, W] density in count units (its sum is the count).

  Raises:
    ValueError: for an image that is not [H, W, 3].
  """
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be [H, W, 3], got {image.shape}")
  h, w = image.shape[:2]
  ph, pw = max(h, tile), max(w, tile)
  if (ph, pw) != (h, w):
    image = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)))
  boxes = [(t, l) for t in official_tile_starts(ph, tile)
           for l in official_tile_starts(pw, tile)]
  maps = []
  for i in range(0, len(boxes), chunk):
    part = boxes[i:i + chunk]
    tiles = np.zeros((chunk, tile, tile, 3), np.float32)
    for j, (t, l) in enumerate(part):
      tiles[j] = image[t:t + tile, l:l + tile]
    maps.append(np.asarray(predict(tiles), np.float32)[:len(part)])
  maps = np.concatenate(maps)
  up = jax.image.resize(jnp.asarray(maps)[..., None],
                        (len(boxes), tile, tile, 1), "linear",
                        antialias=False)[..., 0]
  up = np.asarray(up) / float(stride * stride)
  total = np.zeros((ph, pw), np.float64)
  count = np.zeros((ph, pw), np.float64)
  for (t, l), m in zip(boxes, up):
    total[t:t + tile, l:l + tile] += m
    count[t:t + tile, l:l + tile] += 1.0
  return (total / count / density_scale)[:h, :w].astype(np.float32)
