"""Reader for JHU-Crowd++ (v2.0) in its native files.

Sindagi, Yasarla, Patel, "Pushing the Frontiers of Unconstrained Crowd
Counting: New Dataset and Benchmark Method", ICCV 2019, and "JHU-CROWD++:
Large-Scale Crowd Counting Dataset and A Benchmark Method", TPAMI 2020.
Licence (official ``License`` file): academic / non-commercial research only;
images may not be redistributed for commercial purposes.

Layout of the official archive ``jhu_crowd_v2.0.zip``::

  jhu_crowd_v2.0/{train,val,test}/images/NNNN.jpg
  jhu_crowd_v2.0/{train,val,test}/gt/NNNN.txt
  jhu_crowd_v2.0/{train,val,test}/image_labels.txt

A gt row is ``x y w h o b`` (space separated, pixels): (x, y) the head
location, (w, h) the approximate head size, o the occlusion level
(1 visible, 2 partial, 3 full), b the blur level (0/1); an image without
people has an empty file. An ``image_labels.txt`` row is
``name,total,scene,weather,distractor`` with weather 0 none, 1 fog/haze,
2 rain, 3 snow and distractor 0/1. The number of gt rows must equal
``total`` (checked). Splits: 2,272 / 500 / 1,600 images.

Coordinates: (x, y) are used unchanged as our continuous (x, y); JHU is not
a MATLAB format and its README states pixel positions. Points overshooting
the border by < 1 px are clipped and counted (``files.clip_points``).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from counting_jax.data import files
from counting_jax.data import sample as sample_lib

__all__ = ["root_dir", "list_ids", "read_image_labels", "read_gt",
           "read_annotation", "read_sample", "ImageLabel", "SPLITS",
           "SPLIT_SIZES"]

SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"train": 2272, "val": 500, "test": 1600}


@dataclasses.dataclass(frozen=True)
class ImageLabel:
  """One row of ``image_labels.txt``."""
  total: int
  scene: str
  weather: int
  distractor: bool


def root_dir(manual_dir) -> pathlib.Path:
  """``jhu_crowd_v2.0`` at or below ``manual_dir``.

  Raises:
    FileNotFoundError: when no such folder exists.
  """
  return files.find_dir(manual_dir, ["jhu_crowd_v2.0", "jhu_crowd_v2",
                                     "jhu_crowd"])


def read_image_labels(path) -> dict[str, ImageLabel]:
  """``image_labels.txt`` -> {image id ('0002'): ImageLabel}.

  Raises:
    FileNotFoundError: when ``path`` is missing.
    ValueError: naming ``path`` and the line number of a malformed row
      (not 5 comma-separated fields, non-integer values, weather outside 0..3,
      distractor not 0/1, repeated id).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"JHU image labels not found: {path}")
  labels = {}
  for i, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    fields = [f.strip() for f in line.split(",")]
    try:
      if len(fields) != 5:
        raise ValueError(f"expected 5 fields, got {len(fields)}")
      name, total, scene, weather, distractor = fields
      label = ImageLabel(int(total), scene, int(weather), bool(int(distractor)))
      if label.weather not in (0, 1, 2, 3) or distractor not in ("0", "1"):
        raise ValueError("weather must be 0..3 and distractor 0/1")
      if name in labels:
        raise ValueError(f"repeated image {name}")
    except ValueError as e:
      raise ValueError(f"{path}:{i}: bad image label row {line!r}: {e}") from e
    labels[name] = label
  return labels


def list_ids(split_root) -> tuple[list[str], dict[str, ImageLabel]]:
  """Image ids of a split (sorted) and their ``image_labels.txt`` rows.

  Every image in ``images/`` must have a label row and every label row an
  image.

  Raises:
    FileNotFoundError: naming the image or label row without counterpart, or
      the missing ``image_labels.txt`` / ``images`` folder.
  """
  split_root = pathlib.Path(split_root)
  labels = read_image_labels(split_root / "image_labels.txt")
  image_dir = split_root / "images"
  if not image_dir.is_dir():
    raise FileNotFoundError(f"JHU images folder not found: {image_dir}")
  images = {p.stem for p in image_dir.iterdir()
            if p.suffix.lower() in (".jpg", ".jpeg")}
  for k in sorted(set(labels) - images):
    raise FileNotFoundError(f"{split_root / 'image_labels.txt'} lists {k} but "
                            f"{image_dir / k}.jpg is missing")
  for k in sorted(images - set(labels)):
    raise FileNotFoundError(f"image {image_dir / k}.jpg has no row in "
                            f"{split_root / 'image_labels.txt'}")
  return sorted(labels), labels


def read_gt(path) -> dict[str, np.ndarray]:
  """A gt file -> {'points' f32[N,2] (x,y), 'head_sizes' f32[N,2] (w,h),
  'occlusion' int32[N] (1..3), 'blur' int32[N] (0/1)}.

  Raises:
    FileNotFoundError: when ``path`` is missing.
    ValueError: naming ``path`` and the line of a row that is not 6 numbers
      or has an occlusion/blur level outside the documented values.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"JHU annotation not found: {path}")
  rows = []
  for i, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = [float(v) for v in line.split()]
      if len(row) != 6:
        raise ValueError(f"expected 6 values, got {len(row)}")
      if row[4] not in (1, 2, 3) or row[5] not in (0, 1):
        raise ValueError("occlusion must be 1..3 and blur 0/1")
    except ValueError as e:
      raise ValueError(f"{path}:{i}: bad annotation row {line!r}: {e}") from e
    rows.append(row)
  arr = np.asarray(rows, np.float64).reshape(-1, 6)
  return {"points": arr[:, :2].astype(np.float32),
          "head_sizes": arr[:, 2:4].astype(np.float32),
          "occlusion": arr[:, 4].astype(np.int32),
          "blur": arr[:, 5].astype(np.int32)}


def read_annotation(split_root, image_id: str,
                    label: ImageLabel) -> dict[str, np.ndarray]:
  """``read_gt`` of ``gt/<image_id>.txt``, checked against ``label.total``.

  Raises:
    ValueError: naming the gt file when its row count differs from the
      ``total`` given in ``image_labels.txt``.
  """
  path = pathlib.Path(split_root) / "gt" / f"{image_id}.txt"
  gt = read_gt(path)
  if len(gt["points"]) != label.total:
    raise ValueError(f"{path}: {len(gt['points'])} rows but image_labels.txt "
                     f"gives total {label.total} for {image_id}")
  return gt


def read_sample(split_root, image_id: str,
                label: ImageLabel) -> tuple[dict, bytes, dict]:
  """Sample, JPEG bytes and extra per-point / per-image labels.

  Returns:
    (sample with no boxes and class_name 'person', image bytes,
    extra = {'head_sizes', 'occlusion', 'blur', 'scene', 'weather',
    'distractor'} aligned with the sample's points).

  Raises:
    FileNotFoundError / ValueError: naming the image or gt file.
  """
  split_root = pathlib.Path(split_root)
  image, data = files.read_image(
      files.find_file(split_root / "images", image_id, (".jpg", ".jpeg")),
      "jpeg")
  gt = read_annotation(split_root, image_id, label)
  h, w = image.shape[:2]
  points, _ = files.clip_points(gt["points"], w, h,
                                source=split_root / "gt" / f"{image_id}.txt")
  sample = sample_lib.make_sample(image, points, image_id,
                                  class_name="person")
  extra = {"head_sizes": gt["head_sizes"], "occlusion": gt["occlusion"],
           "blur": gt["blur"], "scene": label.scene,
           "weather": np.int32(label.weather),
           "distractor": label.distractor}
  return sample, data, extra
