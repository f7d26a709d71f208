"""Reader for CARPK in its native files.

Hsieh, Lin, Hsu, "Drone-based Object Counting by Spatially Regularized
Regional Proposal Network", ICCV 2017. 1,448 drone images (1280x720) of
parking lots with 89,777 car boxes; research / non-commercial use only.
Used for class-specific car counting and as a cross-data-set test of
class-agnostic counters (FamNet, SAFECount, CounTR, T2ICount: test split,
full resolution, prompt "cars").

Layout of the official archive ``CARPK.zip``::

  CARPK_devkit/data/Images/<name>.png
  CARPK_devkit/data/Annotations/<name>.txt      rows "x1 y1 x2 y2 1"
  CARPK_devkit/data/ImageSets/train.txt, test.txt   names without extension

Coordinates: box corners are pixels of the image, used unchanged as our
continuous (x1, y1, x2, y2). The point of a car is its box centre
((x1 + x2) / 2, (y1 + y2) / 2); the count is the number of boxes. Centres
overshooting the border by < 1 px are clipped and counted
(``files.clip_points``); boxes are stored unclipped. All boxes of an image
are stored in ``boxes`` (K = N): the pipeline takes the first E as
exemplars, so by default the first E boxes of the annotation file;
:func:`sample_exemplars` instead moves E boxes sampled deterministically
(seed and image id) to the front, the sampled-exemplar protocol of
cross-data-set tests on CARPK.
"""

from __future__ import annotations

import pathlib
import zlib

import numpy as np

from counting_jax.data import files
from counting_jax.data import sample as sample_lib

__all__ = ["sample_exemplars", "root_dir", "read_split", "read_boxes", "read_sample",
           "SPLIT_SIZES"]

SPLIT_SIZES = {"train": 989, "test": 459}


def root_dir(manual_dir) -> pathlib.Path:
  """``CARPK_devkit/data`` (the folder holding Images/, Annotations/).

  Raises:
    FileNotFoundError: when no ``CARPK_devkit`` folder holds ``data``.
  """
  devkit = files.find_dir(manual_dir, ["CARPK_devkit", "CARPK"])
  for d in (devkit / "data", devkit / "CARPK_devkit" / "data"):
    if d.is_dir():
      return d
  raise FileNotFoundError(f"no data/ folder in {devkit}")


def read_split(root, split: str) -> list[str]:
  """Image names listed in ``ImageSets/<split>.txt``.

  Raises:
    FileNotFoundError: naming the split file when it is missing.
  """
  path = pathlib.Path(root) / "ImageSets" / f"{split}.txt"
  if not path.is_file():
    raise FileNotFoundError(f"CARPK split file not found: {path}")
  return [line.strip() for line in path.read_text().splitlines()
          if line.strip()]


def read_boxes(path) -> np.ndarray:
  """An annotation file -> car boxes float32 [N, 4] (x1, y1, x2, y2).

  Raises:
    FileNotFoundError: when ``path`` is missing.
    ValueError: naming ``path`` and the line when a row is not 5 numbers
      with class 1, or has x2 <= x1 or y2 <= y1.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"CARPK annotation not found: {path}")
  rows = []
  for i, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = [float(v) for v in line.split()]
      if len(row) != 5 or row[4] != 1:
        raise ValueError("expected 'x1 y1 x2 y2 1'")
      if row[2] <= row[0] or row[3] <= row[1]:
        raise ValueError("empty box")
    except ValueError as e:
      raise ValueError(f"{path}:{i}: bad annotation row {line!r}: {e}") from e
    rows.append(row[:4])
  return np.asarray(rows, np.float32).reshape(-1, 4)


def read_sample(root, name: str) -> tuple[dict, bytes]:
  """Sample (box centres, all boxes, class 'car') and PNG bytes of ``name``.

  Raises:
    FileNotFoundError / ValueError: naming the image or annotation file.
  """
  root = pathlib.Path(root)
  image, data = files.read_image(
      files.find_file(root / "Images", name, (".png",)), "png")
  ann = root / "Annotations" / f"{name}.txt"
  boxes = read_boxes(ann)
  centres = 0.5 * (boxes[:, :2] + boxes[:, 2:])
  h, w = image.shape[:2]
  points, _ = files.clip_points(centres, w, h, source=ann)
  return sample_lib.make_sample(image, points, name, boxes=boxes,
                                class_name="car"), data


def sample_exemplars(sample, num: int = 3, *, seed: int = 0):
  """Moves ``num`` boxes, sampled without replacement, to the front of
  ``sample['boxes']`` (the pipeline's exemplars are the first E boxes).

  The choice depends only on ``seed`` and the image id (CRC-32 of
  ``image_id``), not on the order images are read, so every run and every
  process picks the same exemplars. No box is dropped and the points (the
  count) are unchanged; the sampled boxes keep their order of the file.
  Usable as a ``before_augment`` hook
  (``functools.partial(sample_exemplars, num=3, seed=0)``).

  Args:
    sample: a CARPK sample (``boxes`` float32 [N, 4], ``image_id``).
    num: exemplars to sample; all boxes when the image has fewer.
    seed: int seed of the draw.

  Raises:
    ValueError: naming the image when ``num`` < 1.
  """
  image_id = sample.get("image_id", "?")
  if num < 1:
    raise ValueError(f"{image_id}: num must be >= 1, got {num}")
  if isinstance(image_id, bytes):
    image_id = image_id.decode()
  boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
  rng = np.random.default_rng([int(seed), zlib.crc32(str(image_id).encode())])
  chosen = np.sort(rng.choice(len(boxes), min(num, len(boxes)),
                              replace=False))
  rest = np.setdiff1d(np.arange(len(boxes)), chosen)
  out = dict(sample)
  out["boxes"] = boxes[np.concatenate([chosen, rest]).astype(np.int64)]
  return out
