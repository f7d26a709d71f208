"""Reader for UCF-QNRF in its native files.

Idrees, Tayyab, Athrey, Zhang, Al-Maadeed, Rajpoot, Shah, "Composition Loss
for Counting, Density Map Estimation and Localization in Dense Crowds",
ECCV 2018. Research use only (web images; terms on the CRCV page).

Layout of the official archive ``UCF-QNRF_ECCV18.zip``::

  UCF-QNRF_ECCV18/Train/img_0001.jpg, img_0001_ann.mat, ...   (1,201 images)
  UCF-QNRF_ECCV18/Test/img_0001.jpg,  img_0001_ann.mat, ...   (334 images)

(``train``/``test`` in lower case and ``.JPG`` are accepted). Each
``_ann.mat`` holds ``annPoints``, N x 2 float, columns (x, y) = (column, row)
in pixels of the full-resolution image (up to ~9000 px; some images are
grayscale and are converted to RGB).

Coordinates: ``annPoints`` is used unchanged as our continuous (x, y); as for
ShanghaiTech, no official repository applies a MATLAB 1-based correction.
BL and DM-Count *drop* points outside [0, W] x [0, H] during preprocessing
(``preprocess_dataset_qnrf.py``); here points overshooting by < 1 px are
clipped and counted (``files.clip_points``), farther ones raise, so that no
annotation disappears silently.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

from counting_jax.data import files
from counting_jax.data import sample as sample_lib

__all__ = ["root_dir", "split_dir", "list_ids", "read_points", "read_sample",
           "SPLIT_SIZES"]

SPLIT_SIZES = {"train": 1201, "test": 334}


def root_dir(manual_dir) -> pathlib.Path:
  """``UCF-QNRF_ECCV18`` (or ``UCF-QNRF``) at or below ``manual_dir``.

  Raises:
    FileNotFoundError: when no such folder exists.
  """
  return files.find_dir(manual_dir, ["UCF-QNRF_ECCV18", "UCF-QNRF",
                                     "UCF_QNRF"])


def split_dir(root, split: str) -> pathlib.Path:
  """``<root>/Train`` or ``<root>/Test`` (any case).

  Raises:
    FileNotFoundError: naming the folder when it is missing.
  """
  return files.find_dir(root, [split.capitalize()], depth=1)


def list_ids(split_root) -> list[str]:
  """Ids ``img_NNNN`` (file stems) of a split, each with its ``_ann.mat``.

  Raises:
    FileNotFoundError: naming the image without annotation (or the reverse),
      or when the folder holds no image.
  """
  split_root = pathlib.Path(split_root)
  images = {p.stem for p in split_root.iterdir()
            if re.match(r"^img_\d+\.jpe?g$", p.name, re.IGNORECASE)}
  anns = {p.name[:-len("_ann.mat")] for p in split_root.iterdir()
          if re.match(r"^img_\d+_ann\.mat$", p.name, re.IGNORECASE)}
  for k in sorted(anns - images):
    raise FileNotFoundError(f"{split_root / k}_ann.mat has no image {k}.jpg")
  for k in sorted(images - anns):
    raise FileNotFoundError(f"image {split_root / k}.jpg has no annotation "
                            f"{k}_ann.mat")
  if not images:
    raise FileNotFoundError(f"no img_NNNN.jpg images in {split_root}")
  return sorted(images, key=lambda s: int(s.split("_")[1]))


def read_points(path) -> np.ndarray:
  """Point annotations float32 [N, 2] (x, y) of an ``img_NNNN_ann.mat``.

  Raises:
    FileNotFoundError / ValueError: naming ``path`` when it is missing,
      unreadable or has no N x 2 ``annPoints`` array.
  """
  mat = files.load_mat(path)
  if "annPoints" not in mat:
    raise ValueError(f"{path}: no 'annPoints' variable (has "
                     f"{sorted(k for k in mat if not k.startswith('__'))})")
  pts = np.asarray(mat["annPoints"], np.float64)
  if pts.size == 0:
    return np.zeros((0, 2), np.float32)
  if pts.ndim != 2 or pts.shape[1] != 2:
    raise ValueError(f"{path}: 'annPoints' must be N x 2, got {pts.shape}")
  return pts.astype(np.float32)


def read_sample(split_root, image_id: str) -> tuple[dict, bytes]:
  """Sample (``counting_jax.data.sample``) and JPEG bytes of ``image_id``.

  Raises:
    FileNotFoundError / ValueError: naming the image or annotation file.
  """
  split_root = pathlib.Path(split_root)
  image, data = files.read_image(
      files.find_file(split_root, image_id, (".jpg", ".jpeg")), "jpeg")
  ann = files.find_file(split_root, f"{image_id}_ann", (".mat",))
  h, w = image.shape[:2]
  points, _ = files.clip_points(read_points(ann), w, h, source=ann)
  return sample_lib.make_sample(image, points, image_id,
                                class_name="person"), data
