"""File helpers shared by the native data-set readers.

Pure functions over local files: read an image as RGB together with the bytes
a builder stores, find a data set's folder among the names mirrors use, read
MATLAB arrays and JSON files, and bring annotation points that overshoot the image border by
less than a pixel back inside it (counted, never dropped).
"""

from __future__ import annotations

import io
import json
import logging
import pathlib

import numpy as np
import scipy.io
from PIL import Image

from counting_jax.data import features as features_lib

__all__ = ["read_rgb", "read_image", "find_dir", "find_file", "find_file_below",
           "load_mat", "read_json",
           "clip_points", "example_from", "BORDER_TOLERANCE"]

# Points at most this far (input pixels) outside [0, W] x [0, H] are official
# annotation noise and are clipped onto the border; farther ones raise.
BORDER_TOLERANCE = 1.0

_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG"}


def _open_rgb(path):
  """(file bytes, uint8 [H, W, 3] RGB, PIL mode, PIL format) of ``path``."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"image file not found: {path}")
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as im:
      return data, np.asarray(im.convert("RGB")), im.mode, im.format
  except Exception as e:  # PIL raises several types for broken files.
    raise ValueError(f"cannot read image {path}: {e}") from e


def read_rgb(path) -> np.ndarray:
  """Reads an image file as uint8 RGB [H, W, 3] (grayscale, palette, CMYK
  and RGBA converted; EXIF orientation ignored, as in :func:`read_image`).

  Raises:
    FileNotFoundError: naming ``path`` when it is missing.
    ValueError: naming ``path`` when it cannot be decoded.
  """
  return _open_rgb(path)[1]


def read_image(path, encoding_format: str = "jpeg"):
  """Reads an image file as RGB and the encoded bytes to store for it.

  The original file bytes are kept when the file is already an RGB image in
  ``encoding_format`` (no re-encoding loss); grayscale, CMYK, palette or RGBA
  files, or files in another format, are converted to RGB and re-encoded
  (JPEG quality 95 or lossless PNG, ``features.encode_image``). EXIF
  orientation is ignored, as by PIL and OpenCV's ``IMREAD_UNCHANGED`` (the
  decoders tfds uses), so annotations stay in the stored pixel frame.

  Args:
    path: image file.
    encoding_format: 'jpeg' or 'png', the builder's ``Image`` encoding.

  Returns:
    (image uint8 [H, W, 3] RGB, encoded bytes decoding to that image up to
    JPEG re-encoding when a conversion happened).

  Raises:
    FileNotFoundError: naming ``path`` when it is missing.
    ValueError: naming ``path`` when it cannot be decoded.
  """
  data, image, mode, fmt = _open_rgb(path)
  if not (mode == "RGB" and fmt == _PIL_FORMAT[encoding_format]):
    data = features_lib.encode_image(image, encoding_format)
  return image, data


def find_dir(root, names, *, depth: int = 2) -> pathlib.Path:
  """The first folder under ``root`` (itself included) named one of ``names``.

  Names match case-insensitively; ``root`` and its sub-folders are searched
  breadth-first down to ``depth`` levels, so both ``manual/part_A_final`` and
  ``manual/ShanghaiTech/part_A`` are found.

  Raises:
    FileNotFoundError: naming ``root`` and ``names`` when none exists.
  """
  root = pathlib.Path(root)
  wanted = [n.lower() for n in names]
  level = [root]
  for i in range(depth + 1):
    for name in wanted:  # Earlier names win within one level.
      for d in level:
        if d.name.lower() == name:
          return d
    if i < depth:
      level = sorted(c for d in level if d.is_dir() for c in d.iterdir()
                     if c.is_dir())
  raise FileNotFoundError(
      f"none of the folders {list(names)} found under {root} (searched "
      f"{depth} levels deep)")


def find_file_below(root, name: str, *, depth: int = 2) -> pathlib.Path:
  """The file ``name`` in ``root`` or a sub-folder down to ``depth`` levels.

  Shallower files win; within a level, folders are searched in sorted order.

  Raises:
    FileNotFoundError: naming ``root`` and ``name`` when none exists.
  """
  level = [pathlib.Path(root)]
  for i in range(depth + 1):
    for d in level:
      if (d / name).is_file():
        return d / name
    if i < depth:
      level = sorted(c for d in level if d.is_dir() for c in d.iterdir()
                     if c.is_dir())
  raise FileNotFoundError(f"{name} not found under {root} (searched {depth} "
                          f"levels deep)")


def find_file(folder, stem: str, suffixes) -> pathlib.Path:
  """``folder/<stem><suffix>`` for the first existing suffix (any case).

  Raises:
    FileNotFoundError: naming the folder, stem and suffixes tried.
  """
  folder = pathlib.Path(folder)
  for suffix in suffixes:
    for s in (suffix, suffix.upper()):
      path = folder / f"{stem}{s}"
      if path.is_file():
        return path
  raise FileNotFoundError(f"no file {stem}{{{','.join(suffixes)}}} in "
                          f"{folder}")


def read_json(path, what: str = "JSON file"):
  """The parsed JSON of ``path``.

  Args:
    path: the file.
    what: what the file is, for the error message (e.g. "FSC-147 file").

  Raises:
    FileNotFoundError: naming ``what`` and ``path`` when it is missing.
    ValueError: naming ``path`` when it is not valid JSON.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} not found: {path}")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except ValueError as e:
    raise ValueError(f"cannot parse {path} as JSON: {e}") from e


def load_mat(path) -> dict:
  """``scipy.io.loadmat`` raising errors that name ``path``.

  Raises:
    FileNotFoundError: when ``path`` is missing.
    ValueError: when it is not a readable MATLAB (v4-v7.2) file.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"annotation file not found: {path}")
  try:
    return scipy.io.loadmat(path)
  except Exception as e:
    raise ValueError(f"cannot read MATLAB annotation {path}: {e}") from e


def clip_points(points, width: int, height: int, *, source,
                tolerance: float = BORDER_TOLERANCE):
  """Clips points that overshoot the image border by < ``tolerance`` pixels.

  The image spans [0, W] x [0, H] (``counting_jax.grid``). A point with
  x in [-tolerance, 0) is moved to x = 0, one in (W, W + tolerance] to x = W
  (likewise for y); the number of moved points is returned and logged with
  ``source``. Points are never dropped.

  Args:
    points: float [N, 2] (x, y) in input-image pixels.
    width, height: image size in pixels.
    source: the annotation file (named in the log and in errors).
    tolerance: largest overshoot clipped, input pixels.

  Returns:
    (points float32 [N, 2] inside the image, number of points clipped).

  Raises:
    ValueError: naming ``source`` when a point is non-finite or farther than
      ``tolerance`` outside the image.
  """
  pts = np.asarray(points, np.float32).reshape(-1, 2)
  if not np.all(np.isfinite(pts)):
    raise ValueError(f"{source}: annotation contains NaN or inf")
  size = np.array([width, height], np.float32)
  far = np.any((pts < -tolerance) | (pts > size + tolerance), axis=-1)
  if far.any():
    raise ValueError(
        f"{source}: {int(far.sum())} point(s) lie more than {tolerance} px "
        f"outside the {width}x{height} image, e.g. (x, y) = "
        f"{pts[far][0].tolist()}")
  outside = np.any((pts < 0) | (pts > size), axis=-1)
  n = int(outside.sum())
  if n:
    logging.warning("%s: clipped %d point(s) lying < %g px outside the "
                    "%dx%d image", source, n, tolerance, width, height)
    pts = np.clip(pts, 0.0, size)
  return pts, n


def example_from(sample: dict, image_bytes: bytes, **extra) -> dict:
  """A validated sample -> tfds example with stored ``image_bytes``.

  ``extra`` adds a builder's additional features.
  """
  out = dict(sample)
  out["image"] = image_bytes
  out.update(extra)
  return out
