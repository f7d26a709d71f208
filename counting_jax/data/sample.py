"""The one sample model shared by every data set.

A sample is a dict of numpy arrays (what ``tfds.data_source`` yields and what
grain transforms map over):

=============  ==================  ==============================================
key            type                meaning
=============  ==================  ==============================================
image          uint8 [H, W, 3]     RGB (grayscale sources are converted)
points         float32 [N, 2]      point annotations (x, y), input-image pixels,
                                   continuous: pixel (r, c) spans [c, c+1) x
                                   [r, r+1); the image spans the closed
                                   [0, W] x [0, H], x = W belonging to the
                                   last pixel (see ``counting_jax.grid``)
boxes          float32 [K, 4]      exemplar / head boxes (x1, y1, x2, y2); K may
                                   be 0
class_name     str                 class name or description ("" when none)
image_id       str                 stable id, unique within a data set
=============  ==================  ==============================================
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_sample", "validate_sample", "KEYS"]

KEYS = ("image", "points", "boxes", "class_name", "image_id")


def make_sample(image, points, image_id: str, *, boxes=None,
                class_name: str = "") -> dict:
  """Builds a validated sample (see module docstring).

  Raises:
    ValueError: naming ``image_id`` when a field has the wrong shape or a
      point lies outside the image.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  sample = {
      "image": image,
      "points": np.asarray(points, np.float32).reshape(-1, 2),
      "boxes": (np.zeros((0, 4), np.float32) if boxes is None else
                np.asarray(boxes, np.float32).reshape(-1, 4)),
      "class_name": class_name,
      "image_id": str(image_id),
  }
  validate_sample(sample)
  return sample


def validate_sample(sample: dict) -> None:
  """Raises ValueError naming the sample when a field is malformed."""
  sid = sample.get("image_id", "?")
  image = sample["image"]
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"{sid}: image must be uint8 [H, W, 3], got "
                     f"{image.dtype} {image.shape}")
  pts = sample["points"]
  if pts.ndim != 2 or pts.shape[-1] != 2:
    raise ValueError(f"{sid}: points must be [N, 2], got {pts.shape}")
  if not np.all(np.isfinite(pts)):
    raise ValueError(f"{sid}: points contain NaN or inf")
  h, w = image.shape[:2]
  bad = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
  if bad.any():
    raise ValueError(f"{sid}: {int(bad.sum())} point(s) outside the "
                     f"{w}x{h} image, e.g. {pts[bad][0].tolist()}")
