"""Reader for the VGG synthetic cells data set in its native files.

Lempitsky & Zisserman, "Learning To Count Objects in Images", NIPS 2010.
200 synthetic fluorescence-microscopy images ``NNNcell.png`` (256x256 RGB,
NNN = 001..200) with dot maps ``NNNdots.png`` in which each annotated cell is
one non-zero pixel. Research use only (no licence is stated by the authors).

A dot at pixel (row r, column c) becomes the point (x, y) = (c + 0.5, r + 0.5),
the centre of that pixel (``counting_jax.grid``).
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from counting_jax.data import files
from counting_jax.data import sample as sample_lib

__all__ = ["read_dots", "read_sample", "list_ids", "NUM_IMAGES",
           "DEFAULT_ROOT"]

NUM_IMAGES = 200
# The copy shipped inside the package (see README "Data").
DEFAULT_ROOT = pathlib.Path(__file__).parent / "assets" / "vgg_cells"


def read_dots(path, image_shape=None) -> np.ndarray:
  """Points float32 [N, 2] (x, y) from a dot-annotation image.

  Args:
    path: dot map file; every non-zero pixel is one object.
    image_shape: (H, W) of the image it annotates; checked when given.

  Raises:
    FileNotFoundError / ValueError: naming ``path`` when missing, unreadable
      or of a size different from ``image_shape``.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"dot annotation file not found: {path}")
  try:
    with Image.open(path) as im:
      dots = np.asarray(im)
  except Exception as e:
    raise ValueError(f"cannot read dot annotation {path}: {e}") from e
  if image_shape is not None and dots.shape[:2] != tuple(image_shape):
    raise ValueError(f"dot map {path} is {dots.shape[:2]} but its image is "
                     f"{tuple(image_shape)}")
  nonzero = dots.reshape(dots.shape[0], dots.shape[1], -1).any(axis=-1)
  rows, cols = np.nonzero(nonzero)
  return np.stack([cols, rows], axis=-1).astype(np.float32) + 0.5


def list_ids(root=DEFAULT_ROOT) -> list[str]:
  """The ids '001'..'200' whose image file exists under ``root``.

  Raises:
    FileNotFoundError: if ``root`` holds no ``NNNcell.png`` file.
  """
  root = pathlib.Path(root)
  ids = sorted(p.name[:3] for p in root.glob("[0-9][0-9][0-9]cell.png"))
  if not ids:
    raise FileNotFoundError(f"no VGG cells images (NNNcell.png) under {root}")
  return ids


def read_sample(root, image_id: str) -> dict:
  """The sample (``counting_jax.data.sample``) of image ``image_id``."""
  root = pathlib.Path(root)
  image = files.read_rgb(root / f"{image_id}cell.png")
  points = read_dots(root / f"{image_id}dots.png", image.shape[:2])
  return sample_lib.make_sample(image, points, image_id, class_name="cell")
