"""Reader for FSC-147 (and the FSC-147-D descriptions) in their native files.

Ranjan, Sharma, Nguyen, Hoai, "Learning To Count Everything", CVPR 2021.
6,135 images of 147 object classes, each with dot annotations of every
object and (at least) 3 exemplar boxes. The images are web images released
for research use (no separate data licence; the repository is MIT). The
FSC-147-D text descriptions (Amini-Naieni, Amini-Naieni, Han, Zisserman,
"Open-world Text-specified Object Counting", BMVC 2023; CounTX repository,
MIT) replace each class name by a short phrase ("the sea shells").

Files of the official release (mirrors put them under ``data/`` or
``FSC147_384_V2/``; all are searched up to two folders deep)::

  images_384_VarV2/<id>.jpg         images resized to height 384
  annotation_FSC147_384.json        {"<id>.jpg": {"points": [[x, y], ...],
                                     "box_examples_coordinates":
                                     [[[x1,y1],[x1,y2],[x2,y2],[x2,y1]], ...],
                                     "H", "W", "ratio_h", "ratio_w", ...}}
  Train_Test_Val_FSC_147.json       {"train": [...], "val": [...],
                                     "test": [...], "val_coco", "test_coco"}
  ImageClasses_FSC147.txt           "<id>.jpg<TAB><class name>" per line
  FSC-147-D.json (CounTX, optional) {"<id>.jpg": {"data_split",
                                     "text_description"}}

Coordinates: ``points`` are (x, y) in pixels of the stored 384-high image
(``H``/``W`` are the original size and are not used) and are taken
unchanged as our continuous (x, y). An exemplar box is given by its 4
corners; we store (min x, min y, max x, max y) over the corners (FamNet reads
corner 0 as top-left and corner 2 as bottom-right, which is the same for
these axis-aligned boxes). Every point must lie inside the image (checked;
overshoots < 1 px are clipped and counted). The absolute ``/nfs/...`` paths
in the annotation file are ignored.
"""

from __future__ import annotations

import pathlib

import numpy as np

from counting_jax.data import files
from counting_jax.data import sample as sample_lib

__all__ = ["find_files", "read_annotations", "read_splits", "read_classes",
           "read_descriptions", "read_sample", "ANNOTATION_FILE",
           "SPLIT_FILE", "CLASS_FILE", "DESCRIPTION_FILE", "IMAGE_DIR",
           "SPLITS", "SPLIT_SIZES"]

ANNOTATION_FILE = "annotation_FSC147_384.json"
SPLIT_FILE = "Train_Test_Val_FSC_147.json"
CLASS_FILE = "ImageClasses_FSC147.txt"
DESCRIPTION_FILE = "FSC-147-D.json"
IMAGE_DIR = "images_384_VarV2"
SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"train": 3659, "val": 1286, "test": 1190}


def find_files(manual_dir) -> dict[str, pathlib.Path | None]:
  """Paths of the release files under ``manual_dir`` (two levels deep).

  Returns:
    {'annotations', 'splits', 'classes', 'images', 'descriptions'}; the
    last is None when ``FSC-147-D.json`` is absent.

  Raises:
    FileNotFoundError: naming the first required file or folder missing.
  """
  out = {"annotations": files.find_file_below(manual_dir, ANNOTATION_FILE),
         "splits": files.find_file_below(manual_dir, SPLIT_FILE),
         "classes": files.find_file_below(manual_dir, CLASS_FILE),
         "images": files.find_dir(manual_dir, [IMAGE_DIR])}
  try:
    out["descriptions"] = files.find_file_below(manual_dir, DESCRIPTION_FILE)
  except FileNotFoundError:
    out["descriptions"] = None
  return out


def _read_json(path):
  return files.read_json(path, "FSC-147 file")


def _corners_to_box(corners, where) -> list[float]:
  c = np.asarray(corners, np.float64)
  if c.shape != (4, 2):
    raise ValueError(f"{where}: an exemplar box must be 4 (x, y) corners, "
                     f"got shape {c.shape}")
  return [*c.min(axis=0), *c.max(axis=0)]


def read_annotations(path) -> dict[str, dict[str, np.ndarray]]:
  """``annotation_FSC147_384.json`` -> {'<id>.jpg': {'points' f32[N, 2]
  (x, y), 'boxes' f32[K, 4] (x1, y1, x2, y2)}}.

  Raises:
    FileNotFoundError: when ``path`` is missing.
    ValueError: naming ``path`` and the image when an entry lacks
      ``points`` / ``box_examples_coordinates`` or they are malformed.
  """
  raw = _read_json(path)
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: expected a dict keyed by '<id>.jpg'")
  out = {}
  for name, entry in raw.items():
    where = f"{path} [{name!r}]"
    try:
      points = np.asarray(entry["points"], np.float64).reshape(-1, 2)
      boxes = [_corners_to_box(b, where)
               for b in entry["box_examples_coordinates"]]
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{where}: bad FSC-147 annotation: {e}") from e
    out[name] = {"points": points.astype(np.float32),
                 "boxes": np.asarray(boxes, np.float32).reshape(-1, 4)}
  return out


def read_splits(path) -> dict[str, list[str]]:
  """``Train_Test_Val_FSC_147.json`` -> {split: ['<id>.jpg', ...]}.

  Raises:
    FileNotFoundError / ValueError: naming ``path`` when missing or when
      train/val/test are absent or overlap.
  """
  raw = _read_json(path)
  try:
    splits = {k: list(raw[k]) for k in SPLITS}
  except (KeyError, TypeError) as e:
    raise ValueError(f"{path}: needs lists 'train', 'val', 'test'") from e
  seen = {}
  for split, names in splits.items():
    for n in names:
      if n in seen:
        raise ValueError(f"{path}: {n} is in both {seen[n]} and {split}")
      seen[n] = split
  for extra in ("val_coco", "test_coco"):
    if extra in raw:
      splits[extra] = list(raw[extra])
  return splits


def read_classes(path) -> dict[str, str]:
  """``ImageClasses_FSC147.txt`` -> {'<id>.jpg': class name}.

  Raises:
    FileNotFoundError / ValueError: naming ``path`` and the line when a line
      is not ``name<TAB>class`` or a name repeats.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"FSC-147 class file not found: {path}")
  out = {}
  for i, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    parts = line.split("\t")
    if len(parts) != 2 or parts[0] in out:
      raise ValueError(f"{path}:{i}: expected a new '<id>.jpg<TAB><class>', "
                       f"got {line!r}")
    out[parts[0].strip()] = parts[1].strip()
  return out


def read_descriptions(path) -> dict[str, tuple[str, str]]:
  """``FSC-147-D.json`` -> {'<id>.jpg': (data_split, text_description)}.

  Raises:
    FileNotFoundError / ValueError: naming ``path`` when missing or when an
      entry lacks ``data_split`` / ``text_description``.
  """
  raw = _read_json(path)
  try:
    return {k: (v["data_split"], v["text_description"])
            for k, v in raw.items()}
  except (KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{path}: bad FSC-147-D entry: {e!r}") from e


def read_sample(image_dir, name: str, annotation: dict,
                class_name: str) -> tuple[dict, bytes]:
  """Sample (points, exemplar boxes, class) and JPEG bytes of ``name``.

  Args:
    image_dir: the ``images_384_VarV2`` folder.
    name: '<id>.jpg' (the sample's ``image_id`` is '<id>').
    annotation: ``read_annotations(...)[name]``.
    class_name: from ``ImageClasses_FSC147.txt``.

  Raises:
    FileNotFoundError / ValueError: naming the image, or the annotation when
      a point lies outside the image.
  """
  image, data = files.read_image(pathlib.Path(image_dir) / name, "jpeg")
  h, w = image.shape[:2]
  points, _ = files.clip_points(annotation["points"], w, h,
                                source=f"{ANNOTATION_FILE} [{name!r}]")
  return sample_lib.make_sample(image, points, pathlib.Path(name).stem,
                                boxes=annotation["boxes"],
                                class_name=class_name), data
