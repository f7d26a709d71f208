"""Reader for ShanghaiTech Part A and Part B in their native files.

Zhang, Zhou, Chen, Gao, Ma, "Single-Image Crowd Counting via Multi-Column
Convolutional Neural Network", CVPR 2016. Research use only (web and street
photographs; the official pointer repository desenzhou/ShanghaiTechDataset
carries a BSD-2-Clause file for its own content).

Layout of the official archive (mirrors drop ``_final``, write
``ground_truth`` for ``ground-truth`` or ``.JPG`` for ``.jpg``; all are
accepted)::

  part_A_final/{train_data,test_data}/images/IMG_<k>.jpg
  part_A_final/{train_data,test_data}/ground-truth/GT_IMG_<k>.mat

Each .mat holds ``image_info``, a 1x1 cell with a 1x1 struct of ``location``
(N x 2 float64, columns (x, y) = (column, row) in pixels of the image) and
``number`` (== N, checked). Part A: 300 train / 182 test images of varying
size, 20 grayscale (converted to RGB); Part B: 400 / 316, all 1024x768.

Coordinates: ``location`` is used unchanged as our continuous (x, y) (pixel
(r, c) spans [c, c+1) x [r, r+1)). No official repository subtracts a
MATLAB 1-based offset, and the files themselves hold values below 0.5 (the
smallest Part B coordinate is 0.0010 px), which a 1-based pixel-centre
convention cannot produce, so the annotations read as 0-based continuous
positions; a residual half-pixel ambiguity remains documented here.
Points overshooting the border by < 1 px are clipped (``files.clip_points``).
"""

from __future__ import annotations

import logging
import pathlib
import re

import numpy as np

from counting_jax.data import files
from counting_jax.data import sample as sample_lib

__all__ = ["part_dir", "split_dir", "list_ids", "read_points", "read_sample",
           "SPLIT_SIZES"]

# Official number of images per (part, split).
SPLIT_SIZES = {("A", "train"): 300, ("A", "test"): 182,
               ("B", "train"): 400, ("B", "test"): 316}
_GT_DIRS = ("ground-truth", "ground_truth", "ground-truths", "gt")


def part_dir(root, part: str) -> pathlib.Path:
  """The folder of Part ``part`` ('A' or 'B') under ``root``.

  Accepts ``part_A_final`` (official zip) and ``part_A`` (mirrors), at
  ``root`` or up to two levels below it (e.g. ``root/ShanghaiTech/part_A``).

  Raises:
    ValueError: for a part other than 'A'/'B'.
    FileNotFoundError: when no such folder exists.
  """
  if part not in ("A", "B"):
    raise ValueError(f"part must be 'A' or 'B', got {part!r}")
  return files.find_dir(root, [f"part_{part}_final", f"part_{part}"])


def split_dir(part_root, split: str) -> pathlib.Path:
  """``<part>/<split>_data`` ('train' or 'test').

  Raises:
    FileNotFoundError: naming the folder when it is missing.
  """
  path = pathlib.Path(part_root) / f"{split}_data"
  if not path.is_dir():
    raise FileNotFoundError(f"ShanghaiTech split folder not found: {path}")
  return path


def _gt_dir(split_root: pathlib.Path) -> pathlib.Path:
  for name in _GT_DIRS:
    if (split_root / name).is_dir():
      return split_root / name
  raise FileNotFoundError(f"no ground-truth folder ({'/'.join(_GT_DIRS)}) "
                          f"in {split_root}")


def list_ids(split_root, *, allow_missing_images: bool = False) -> list[str]:
  """Ids ``IMG_<k>`` (file stems) of a split, sorted by k.

  Every image must have its ``GT_IMG_<k>.mat``; every .mat must have its
  image unless ``allow_missing_images`` (a subset of the images with all the
  annotations, e.g. a test copy), when annotations without an image are
  left out with a warning giving their number.

  Raises:
    FileNotFoundError: naming the file that lacks its counterpart, or when the
      split holds no image.
  """
  split_root = pathlib.Path(split_root)
  pattern = re.compile(r"^(IMG_\d+)\.jpe?g$", re.IGNORECASE)
  image_dir = split_root / "images"
  images = {}
  if image_dir.is_dir():
    images = {m.group(1).upper(): m.group(1) for p in image_dir.iterdir()
              if (m := pattern.match(p.name))}
  gt_dir = _gt_dir(split_root)
  mats = {p.stem[3:].upper(): p for p in gt_dir.iterdir()
          if re.match(r"^GT_IMG_\d+\.mat$", p.name, re.IGNORECASE)}
  orphans = sorted(set(mats) - set(images))
  if orphans and images and allow_missing_images:
    logging.warning("ShanghaiTech %s: %d of %d annotations have no image in "
                    "%s; the split holds the %d images present", split_root,
                    len(orphans), len(mats), image_dir, len(images))
  elif orphans:
    k = orphans[0]
    raise FileNotFoundError(f"{mats[k]} has no image {k}.jpg in {image_dir}")
  for k in sorted(set(images) - set(mats)):
    raise FileNotFoundError(f"image {image_dir / images[k]}.jpg has no "
                            f"annotation GT_{images[k]}.mat in {gt_dir}")
  if not images:
    raise FileNotFoundError(f"no IMG_<k>.jpg images under {split_root}")
  return sorted(images.values(), key=lambda s: int(s.split("_")[1]))


def read_points(path) -> np.ndarray:
  """Point annotations float32 [N, 2] (x, y) of a ``GT_IMG_<k>.mat`` file.

  Raises:
    FileNotFoundError / ValueError: naming ``path`` when it is missing,
      unreadable, not in the ``image_info`` schema, or when ``number`` differs
      from the number of locations.
  """
  mat = files.load_mat(path)
  try:
    info = mat["image_info"][0, 0][0, 0]
    location = np.asarray(info["location"], np.float64).reshape(-1, 2)
    number = int(np.asarray(info["number"]).reshape(-1)[0])
  except (KeyError, IndexError, ValueError, TypeError) as e:
    raise ValueError(f"{path}: not a ShanghaiTech annotation (expected "
                     f"image_info{{1}}.location / .number): {e!r}") from e
  if number != len(location):
    raise ValueError(f"{path}: 'number' is {number} but 'location' holds "
                     f"{len(location)} points")
  return location.astype(np.float32)


def read_sample(split_root, image_id: str) -> tuple[dict, bytes]:
  """Sample (``counting_jax.data.sample``) and JPEG bytes of ``image_id``.

  Raises:
    FileNotFoundError / ValueError: naming the image or annotation file.
  """
  split_root = pathlib.Path(split_root)
  image_path = files.find_file(split_root / "images", image_id,
                               (".jpg", ".jpeg"))
  image, data = files.read_image(image_path, "jpeg")
  gt_path = files.find_file(_gt_dir(split_root), f"GT_{image_id}", (".mat",))
  points = read_points(gt_path)
  h, w = image.shape[:2]
  points, _ = files.clip_points(points, w, h, source=gt_path)
  return sample_lib.make_sample(image, points, image_id,
                                class_name="person"), data
