"""Readers and writers for the NWPU-Crowd localization files.

Formats of the official evaluation (``eval/`` of
gjy3035/NWPU-Crowd-Sample-Code-for-Localization), one image per line, fields
separated by spaces:

* ground truth: ``id num (x y sigma_s sigma_l level) * num``;
* prediction (the submission format): ``id num (x y) * num``.

Every field is an integer (the official reader applies ``int()`` to each
one): coordinates are pixels of the original image, ``sigma_s``/``sigma_l``
the small/large matching radii of the head in pixels, ``level`` its head-size
class 0-5. Malformed rows raise ``ValueError`` naming the file and line (the
official reader exits or raises a bare ``NameError`` there).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Mapping

import numpy as np

__all__ = ["NwpuGroundTruth", "read_nwpu_gt", "read_nwpu_pred",
           "write_nwpu_gt", "write_nwpu_pred"]


@dataclasses.dataclass(frozen=True)
class NwpuGroundTruth:
  """The ground truth of one image.

  Attributes:
    points: int64 [n, 2] head positions (x, y), original-image pixels.
    sigma: int64 [n, 2] matching radii (sigma_s, sigma_l) in pixels.
    level: int64 [n] head-size level 0-5.
  """
  points: np.ndarray
  sigma: np.ndarray
  level: np.ndarray

  def __len__(self) -> int:
    return int(self.points.shape[0])


def _lines(path):
  path = pathlib.Path(path)
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      fields = line.split()
      if fields:
        yield path, lineno, fields


def _numbers(path, lineno, fields, integer):
  try:
    if integer:
      return np.array(fields).astype(np.int64)
    return np.array(fields, dtype=np.float64)
  except ValueError:
    bad = next(f for f in fields if not _is_number(f, integer))
    kind = "integer" if integer else "number"
    raise ValueError(f"{path}:{lineno}: field {bad!r} is not an {kind}"
                     + (" (the official format has integer coordinates; "
                        "pass integer=False to read floats)" if integer
                        else "")) from None


def _is_number(field, integer):
  try:
    int(field) if integer else float(field)
  except ValueError:
    return False
  return True


def _header(path, lineno, values, seen, width, what):
  if values.size < 2:
    raise ValueError(f"{path}:{lineno}: expected 'id num ...', got "
                     f"{values.size} field(s)")
  image_id, num = int(values[0]), int(values[1])
  if values[1] != num:
    raise ValueError(f"{path}:{lineno}: num {values[1]} is not an integer")
  if num < 0 or values.size != 2 + width * num:
    raise ValueError(
        f"{path}:{lineno}: id {image_id} declares num={values[1]} {what}, "
        f"which needs {2 + width * max(num, 0)} fields, but the line has "
        f"{values.size}")
  if image_id in seen:
    raise ValueError(f"{path}:{lineno}: id {image_id} already on line "
                     f"{seen[image_id]}")
  seen[image_id] = lineno
  return image_id, num


def read_nwpu_gt(path) -> dict[int, NwpuGroundTruth]:
  """Reads a ground-truth file (``id num (x y sigma_s sigma_l level)*num``).

  Args:
    path: the file (e.g. the official ``val_gt_loc.txt``).

  Returns:
    dict image id -> :class:`NwpuGroundTruth`, in file order.

  Raises:
    ValueError: naming the file and line, on a non-integer field, a field
      count that disagrees with ``num``, a repeated id, a negative radius or a
      level outside 0-5.
    FileNotFoundError: if ``path`` does not exist.
  """
  out, seen = {}, {}
  for path_, lineno, fields in _lines(path):
    values = _numbers(path_, lineno, fields, integer=True)
    image_id, num = _header(path_, lineno, values, seen, 5,
                            "heads (x y sigma_s sigma_l level)")
    rows = values[2:].reshape(num, 5)
    if (rows[:, 2:4] < 0).any():
      raise ValueError(f"{path_}:{lineno}: id {image_id} has a negative "
                       "sigma")
    if ((rows[:, 4] < 0) | (rows[:, 4] > 5)).any():
      raise ValueError(f"{path_}:{lineno}: id {image_id} has a level outside "
                       "0-5")
    out[image_id] = NwpuGroundTruth(points=rows[:, 0:2].copy(),
                                    sigma=rows[:, 2:4].copy(),
                                    level=rows[:, 4].copy())
  return out


def read_nwpu_pred(path, *, integer: bool = True) -> dict[int, np.ndarray]:
  """Reads a prediction file (``id num (x y)*num``).

  Args:
    path: the file.
    integer: require integer coordinates, as the official reader does
      (default). ``False`` reads float coordinates (not the official format).

  Returns:
    dict image id -> int64 (float64 if ``integer=False``) [num, 2] points
    (x, y), in file order.

  Raises:
    ValueError: naming the file and line, on a non-integer field, a field
      count that disagrees with ``num`` or a repeated id.
    FileNotFoundError: if ``path`` does not exist.
  """
  out, seen = {}, {}
  for path_, lineno, fields in _lines(path):
    values = _numbers(path_, lineno, fields, integer=integer)
    image_id, num = _header(path_, lineno, values, seen, 2, "points (x y)")
    out[image_id] = values[2:].reshape(num, 2).copy()
  return out


def _format_int(array, path, image_id, what):
  array = np.asarray(array)
  if array.size and not np.array_equal(array, np.round(array)):
    raise ValueError(f"{path}: id {image_id}: {what} must be integers (the "
                     "official reader int()s every field); round or floor "
                     "them first")
  return " ".join(str(int(v)) for v in array.ravel())


def write_nwpu_pred(path, predictions: Mapping[int, np.ndarray]) -> None:
  """Writes a prediction file in the official submission format.

  Args:
    path: output file.
    predictions: image id -> [num, 2] integer-valued points (x, y) in
      original-image pixels; written in the mapping's order.

  Raises:
    ValueError: on non-integer coordinates or a shape other than [num, 2].
  """
  lines = []
  for image_id, points in predictions.items():
    points = np.asarray(points).reshape(-1, 2) if np.size(points) else \
        np.zeros((0, 2), np.int64)
    body = _format_int(points, path, image_id, "coordinates")
    lines.append(f"{int(image_id)} {points.shape[0]}" +
                 (f" {body}" if body else ""))
  _write(path, lines)


def write_nwpu_gt(path, ground_truth: Mapping[int, NwpuGroundTruth]) -> None:
  """Writes a ground-truth file (``id num (x y sigma_s sigma_l level)*num``).

  Raises:
    ValueError: on non-integer fields.
  """
  lines = []
  for image_id, gt in ground_truth.items():
    rows = np.concatenate([np.asarray(gt.points).reshape(-1, 2),
                           np.asarray(gt.sigma).reshape(-1, 2),
                           np.asarray(gt.level).reshape(-1, 1)], axis=1)
    body = _format_int(rows, path, image_id, "fields")
    lines.append(f"{int(image_id)} {rows.shape[0]}" +
                 (f" {body}" if body else ""))
  _write(path, lines)


def _write(path, lines):
  path = pathlib.Path(path)
  if path.parent and not path.parent.exists():
    os.makedirs(path.parent, exist_ok=True)
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
