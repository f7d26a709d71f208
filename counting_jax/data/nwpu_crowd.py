"""Reader for NWPU-Crowd in its native files.

Wang, Gao, Lin, Li, "NWPU-Crowd: A Large-Scale Benchmark for Crowd Counting
and Localization", IEEE TPAMI 2020. Research use only (data terms on
https://gjy3035.github.io/NWPU-Crowd-Sample-Code/); the sample code and
``val_gt_loc.txt`` are MIT.

Layout after extracting the official files::

  NWPU-Crowd/images/0001.jpg ... 5109.jpg   (or images_part1..5/ as zipped)
  NWPU-Crowd/jsons/0001.json ...  3609.json (train + val labels)
  NWPU-Crowd/mats/0001.mat ...               (optional, ``annPoints``)
  NWPU-Crowd/train.txt, val.txt, test.txt

Train = ids 0001-3109 (3,109), val = 3110-3609 (500), test = 3610-5109
(1,500, labels withheld: evaluated by the benchmark server, so no ``test``
split is built). A split-file line starts with the image id, followed by
attribute labels (ignored).

json schema (**field names not confirmed against a real file**; a mismatch
raises naming the file): ``{"img_id": "0001.jpg", "human_num": N,
"points": [[x, y], ...], "boxes": [[x1, y1, x2, y2], ...]}`` with
``human_num == len(points)`` (checked). When both a json and a .mat exist,
their point counts must agree.

Coordinates: (x, y) in pixels of the original image, used unchanged as our
continuous (x, y) (DM-Count reads ``mats/<id>.mat['annPoints']`` likewise;
no repository shifts them). Points overshooting the border by < 1 px are
clipped and counted (``files.clip_points``).

``val_gt_loc.txt`` (NWPU localization sample code, ``eval/``): one line per
val image, ``id num (x y σ_s σ_l level) * num``, the matching radii of the
localization metric and a head-size class 0..5; read with
:func:`read_localization_gt`.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from counting_jax.data import files
from counting_jax.data import sample as sample_lib

__all__ = ["root_dir", "read_split", "image_path", "read_json", "read_mat",
           "read_sample", "read_localization_gt", "SPLIT_SIZES"]

SPLIT_SIZES = {"train": 3109, "val": 500}


def root_dir(manual_dir) -> pathlib.Path:
  """``NWPU-Crowd`` (or ``NWPU_Crowd``/``NWPU``) at or below ``manual_dir``.

  Raises:
    FileNotFoundError: when no such folder exists.
  """
  return files.find_dir(manual_dir, ["NWPU-Crowd", "NWPU_Crowd", "NWPU"])


def read_split(root, split: str) -> list[str]:
  """Image ids ('0001') listed in ``<root>/<split>.txt``.

  Raises:
    FileNotFoundError / ValueError: naming the split file when it is missing
      or a line does not start with a numeric id.
  """
  path = pathlib.Path(root) / f"{split}.txt"
  if not path.is_file():
    raise FileNotFoundError(f"NWPU split file not found: {path}")
  ids = []
  for i, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    image_id = line.split()[0]
    if not image_id.isdigit():
      raise ValueError(f"{path}:{i}: line does not start with an image id: "
                       f"{line!r}")
    ids.append(image_id)
  return ids


def image_path(root, image_id: str) -> pathlib.Path:
  """``images/<id>.jpg`` or ``images_part*/<id>.jpg``.

  Raises:
    FileNotFoundError: naming the id and the folders searched.
  """
  root = pathlib.Path(root)
  dirs = [root / "images"] + sorted(root.glob("images_part*"))
  for d in dirs:
    for suffix in (".jpg", ".JPG", ".jpeg"):
      if (d / f"{image_id}{suffix}").is_file():
        return d / f"{image_id}{suffix}"
  raise FileNotFoundError(f"NWPU image {image_id}.jpg not found in "
                          f"{[str(d) for d in dirs]}")


def read_json(path) -> tuple[np.ndarray, np.ndarray]:
  """An NWPU json -> (points f32[N, 2] (x, y), head boxes f32[K, 4]).

  Raises:
    FileNotFoundError: when ``path`` is missing.
    ValueError: naming ``path`` when it is not valid JSON, lacks
      ``human_num``/``points``, ``human_num`` differs from the number of
      points, or a box has x2 < x1 or y2 < y1.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"NWPU annotation not found: {path}")
  try:
    ann = json.loads(path.read_text())
    num = int(ann["human_num"])
    points = np.asarray(ann["points"], np.float64).reshape(-1, 2)
    boxes = np.asarray(ann.get("boxes", []), np.float64).reshape(-1, 4)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not an NWPU annotation json: {e!r}") from e
  if num != len(points):
    raise ValueError(f"{path}: human_num is {num} but 'points' holds "
                     f"{len(points)} points")
  bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
  if bad.any():
    raise ValueError(f"{path}: {int(bad.sum())} box(es) are not "
                     f"[x1, y1, x2, y2], e.g. {boxes[bad][0].tolist()}")
  return points.astype(np.float32), boxes.astype(np.float32)


def read_mat(path) -> np.ndarray:
  """``mats/<id>.mat`` -> points f32[N, 2] (x, y) from ``annPoints``.

  Raises:
    FileNotFoundError / ValueError: naming ``path``.
  """
  mat = files.load_mat(path)
  if "annPoints" not in mat:
    raise ValueError(f"{path}: no 'annPoints' variable")
  pts = np.asarray(mat["annPoints"], np.float64)
  if pts.size == 0:
    return np.zeros((0, 2), np.float32)
  if pts.ndim != 2 or pts.shape[1] != 2:
    raise ValueError(f"{path}: 'annPoints' must be N x 2, got {pts.shape}")
  return pts.astype(np.float32)


def read_sample(root, image_id: str) -> tuple[dict, bytes]:
  """Sample (head points, head boxes, class 'person') and JPEG bytes.

  Raises:
    FileNotFoundError / ValueError: naming the image or annotation file.
  """
  root = pathlib.Path(root)
  image, data = files.read_image(image_path(root, image_id), "jpeg")
  json_path = root / "jsons" / f"{image_id}.json"
  mat_path = root / "mats" / f"{image_id}.mat"
  if json_path.is_file():
    points, boxes = read_json(json_path)
    source = json_path
    n_mat = len(read_mat(mat_path)) if mat_path.is_file() else len(points)
    if n_mat != len(points):
      raise ValueError(f"{mat_path}: {n_mat} points but {json_path} has "
                       f"{len(points)}")
  elif mat_path.is_file():
    points, boxes, source = read_mat(mat_path), None, mat_path
  else:
    raise FileNotFoundError(f"no annotation for NWPU image {image_id}: "
                            f"neither {json_path} nor {mat_path} exists")
  h, w = image.shape[:2]
  points, _ = files.clip_points(points, w, h, source=source)
  return sample_lib.make_sample(image, points, image_id, boxes=boxes,
                                class_name="person"), data


def read_localization_gt(path) -> dict[str, dict[str, np.ndarray]]:
  """``val_gt_loc.txt`` -> {id: {'points' f32[N,2] (x,y), 'sigma' f32[N,2]
  (σ_s, σ_l), 'level' int32[N]}}.

  σ_s and σ_l are the small and large matching radii (input pixels) of the
  NWPU localization metric; ``level`` the head-size class 0..5.

  Raises:
    FileNotFoundError: when ``path`` is missing.
    ValueError: naming ``path`` and the line when a row does not hold
      2 + 5 * num fields, or an id repeats.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"NWPU localization GT not found: {path}")
  out = {}
  for i, line in enumerate(path.read_text().splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    try:
      num = int(fields[1]) if len(fields) > 1 else -1
      if len(fields) != 2 + 5 * num or num < 0:
        raise ValueError(f"{len(fields)} fields for num={num}")
      if fields[0] in out:
        raise ValueError(f"repeated image id {fields[0]}")
      rows = np.asarray(fields[2:], np.float64).reshape(num, 5)
    except ValueError as e:
      raise ValueError(f"{path}:{i}: bad localization row: {e}") from e
    out[fields[0]] = {"points": rows[:, :2].astype(np.float32),
                      "sigma": rows[:, 2:4].astype(np.float32),
                      "level": rows[:, 4].astype(np.int32)}
  return out
