"""Reader for a user's folder of images with exemplars (``exemplar_folder``).

For exemplar-based counting on one's own images, e.g. Seg-then-Count's real
multi-class test images (Xu, Le & Samaras, WACV 2025, §4.2): each image
holds objects of several classes, and only the class of the exemplars is
counted. Samples have FSC-147's format (``counting_jax.data.sample``):
``points`` are the objects of the class of interest only, ``boxes`` its
exemplar boxes, ``class_name`` optional.

Layout (``manual_dir``)::

  <id>.jpg | .jpeg | .png | .bmp | .tif | .tiff     the image
  <id>.json                                          its annotation

  {"points": [[x, y], ...],              objects of the class of interest
   "boxes": [[x1, y1, x2, y2], ...],     >= 1 exemplar box of that class
   "class_name": "apple"}                optional

Coordinates are input-image pixels of the stored file with the top-left
corner of the image at (0, 0) (``counting_jax.grid``; a dot at the centre
of pixel (row r, column c) is (c + 0.5, r + 0.5)); boxes are (min x,
min y, max x, max y). Points up to 1 px outside the image are clipped onto
its border (logged); farther ones, an image without a JSON file or a JSON
file without an image, an empty ``boxes`` list and a box with x2 <= x1 or
y2 <= y1 raise a ValueError / FileNotFoundError naming the file: nothing is
dropped. An image without objects of the class has ``"points": []``.

Split: every image of ``manual_dir`` (sorted by id, not its sub-folders) is
in split ``test``.
"""

from __future__ import annotations

import pathlib

import numpy as np

from counting_jax.data import files
from counting_jax.data import sample as sample_lib

__all__ = ["IMAGE_EXTENSIONS", "SPLIT", "read_annotation", "find_pairs",
           "read_sample"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLIT = "test"


def read_annotation(path) -> dict:
  """``<id>.json`` -> {"points" float32 [N, 2] (x, y), "boxes" float32
  [K >= 1, 4] (x1, y1, x2, y2), "class_name" str}, in input pixels.

  Raises:
    FileNotFoundError: naming ``path`` when it is missing.
    ValueError: naming ``path`` when it is not JSON, lacks ``points`` or
      ``boxes``, has no box, or a malformed point or box.
  """
  path = pathlib.Path(path)
  raw = files.read_json(path, "annotation")
  if not isinstance(raw, dict) or "points" not in raw or "boxes" not in raw:
    raise ValueError(f"{path}: expected an object with 'points' [[x, y], "
                     "...] and 'boxes' [[x1, y1, x2, y2], ...]")
  try:
    points = np.asarray(raw["points"], np.float64).reshape(-1, 2)
    boxes = np.asarray(raw["boxes"], np.float64)
    boxes = boxes.reshape(-1, 4) if boxes.size else boxes.reshape(0, 4)
    if np.asarray(raw["boxes"]).ndim != 2 and boxes.size:
      raise ValueError("boxes must be a list of [x1, y1, x2, y2]")
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: malformed points or boxes: {e}") from e
  if not len(boxes):
    raise ValueError(f"{path}: needs at least one exemplar box")
  if not (np.isfinite(boxes).all() and (boxes[:, 2] > boxes[:, 0]).all()
          and (boxes[:, 3] > boxes[:, 1]).all()):
    raise ValueError(f"{path}: every box needs x1 < x2 and y1 < y2 "
                     f"(x1, y1, x2, y2), got {boxes.tolist()}")
  return {"points": points.astype(np.float32),
          "boxes": boxes.astype(np.float32),
          "class_name": str(raw.get("class_name", ""))}


def find_pairs(manual_dir) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
  """(id, image, annotation) of every image of ``manual_dir``, by id.

  Raises:
    FileNotFoundError: when ``manual_dir`` is not a folder or holds no
      image; naming an image without ``<id>.json`` or a JSON file without
      an image.
    ValueError: when two images share an id (``a.jpg`` and ``a.png``).
  """
  root = pathlib.Path(manual_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"exemplar_folder: manual_dir {root} is not a "
                            "folder")
  images = {}
  for p in sorted(root.iterdir()):
    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
      if p.stem in images:
        raise ValueError(f"exemplar_folder: {images[p.stem].name} and "
                         f"{p.name} share the id {p.stem!r}")
      images[p.stem] = p
  if not images:
    raise FileNotFoundError(f"exemplar_folder: no image "
                            f"({', '.join(IMAGE_EXTENSIONS)}) in {root}")
  out = []
  for stem, image in images.items():
    ann = root / f"{stem}.json"
    if not ann.is_file():
      raise FileNotFoundError(f"exemplar_folder: {image} has no annotation "
                              f"{ann.name}")
    out.append((stem, image, ann))
  for ann in sorted(root.glob("*.json")):
    if ann.stem not in images:
      raise FileNotFoundError(f"exemplar_folder: {ann} has no image "
                              f"{ann.stem}.<{'|'.join(IMAGE_EXTENSIONS)}>")
  return out


def read_sample(image_path, annotation_path,
                image_id: str | None = None) -> tuple[dict, bytes]:
  """The sample of one image and its PNG bytes (the pixels as decoded).

  Returns:
    (sample: ``image`` uint8 [H, W, 3], ``points`` float32 [N, 2],
    ``boxes`` float32 [K, 4], ``class_name``, ``image_id`` (default: the
    file's stem); PNG bytes of ``image``).

  Raises:
    FileNotFoundError / ValueError: naming the file, as
      :func:`read_annotation`, or when a point lies more than 1 px outside
      the image.
  """
  image, data = files.read_image(image_path, "png")
  ann = read_annotation(annotation_path)
  h, w = image.shape[:2]
  points, _ = files.clip_points(ann["points"], w, h,
                                source=str(annotation_path))
  image_id = pathlib.Path(image_path).stem if image_id is None else image_id
  return sample_lib.make_sample(image, points, image_id, boxes=ann["boxes"],
                                class_name=ann["class_name"]), data
