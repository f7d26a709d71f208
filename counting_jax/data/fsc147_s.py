"""Reader for FSC-147-S, T2ICount's simple subset of FSC-147.

Qian et al., "T2ICount: Enhancing Cross-modal Understanding for Zero-Shot
Counting", CVPR 2025. FSC-147-S tests whether a text-guided counter counts
what the prompt names rather than the dominant class: each entry names an
FSC-147 image (from any of its splits), a prompt that is never the image's
FSC-147 class, and the number of such objects (mostly small: v2 mean 3.96,
max 117). Two versions, both in the T2ICount repository
(https://github.com/cha15yq/T2ICount, no licence file; not shipped here):

  FSC-147-S.json            v2, 230 images (the repository's README numbers)
  asset/FSC-147-S-v1.json   v1, 196 images (the paper's subset)

Format: ``{"<id>.jpg": {"class": <prompt>, "count": <int>}}``. Only counts
are given (no points): a sample's ``points`` are empty and its GT count is
``count`` (``counting_jax.data.pipeline.pad_points`` keeps it), so MAE and
RMSE are exact and localization metrics are not reported. The official
evaluation (its ``simple_subset_test.py``) reads the images from
``images_384_VarV2`` at full size, prompts with the json's class and tiles
as on FSC-147 (``counting_jax.train.t2icount_tiling``).
"""

from __future__ import annotations

import pathlib

import numpy as np

from counting_jax.data import files
from counting_jax.data import fsc147
from counting_jax.data import sample as sample_lib

__all__ = ["read_subset", "find_files", "read_sample", "FILES",
           "SPLIT_SIZES"]

# split -> json file name of that version.
FILES = {"test": "FSC-147-S.json", "v1": "FSC-147-S-v1.json"}
SPLIT_SIZES = {"test": 230, "v1": 196}


def read_subset(path) -> dict[str, tuple[str, int]]:
  """``{file: {"class": str, "count": int}}`` -> ``{file: (prompt,
  count)}``.

  Raises:
    FileNotFoundError: naming ``path`` when it is missing.
    ValueError: naming the file and entry that lacks a class or a
      non-negative integer count, or a file that is not such a json object.
  """
  path = pathlib.Path(path)
  raw = files.read_json(path, "FSC-147-S file")
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: expected a json object of images, got "
                     f"{type(raw).__name__}")
  out = {}
  for name, entry in raw.items():
    if not isinstance(entry, dict) or "class" not in entry or \
        "count" not in entry:
      raise ValueError(f"{path}: entry {name!r} needs 'class' and 'count', "
                       f"got {entry!r}")
    count = entry["count"]
    if isinstance(count, bool) or not isinstance(count, (int, float)) or \
        count < 0 or count != int(count):
      raise ValueError(f"{path}: entry {name!r} has count {count!r}, not a "
                       "non-negative integer")
    out[str(name)] = (str(entry["class"]), int(count))
  return out


def find_files(manual_dir) -> dict[str, pathlib.Path | None]:
  """``{"images": the images_384_VarV2 folder, "test": FSC-147-S.json or
  None, "v1": FSC-147-S-v1.json or None}`` under ``manual_dir`` (two
  levels deep, as FSC-147's own files).

  Raises:
    FileNotFoundError: naming ``manual_dir`` when the image folder or both
      json files are missing (saying where to get them).
  """
  images = files.find_dir(manual_dir, [fsc147.IMAGE_DIR])
  out = {"images": images}
  for split, name in FILES.items():
    try:
      out[split] = files.find_file_below(manual_dir, name)
    except FileNotFoundError:
      out[split] = None
  if out["test"] is None and out["v1"] is None:
    raise FileNotFoundError(
        f"neither {FILES['test']} nor {FILES['v1']} found under "
        f"{manual_dir} (searched 2 levels deep); download them from "
        "https://github.com/cha15yq/T2ICount (FSC-147-S.json at the top, "
        "asset/FSC-147-S-v1.json) into the FSC-147 folder")
  return out


def read_sample(image_dir, name: str, prompt: str,
                count: int) -> tuple[dict, bytes]:
  """Sample and JPEG bytes of the FSC-147 image ``name`` ('<id>.jpg';
  ``image_id`` '<id>') with ``class_name`` = ``prompt``, no points or
  boxes, and ``count`` float32 = ``count``.

  Raises:
    FileNotFoundError / ValueError: naming the image file.
  """
  image, data = files.read_image(pathlib.Path(image_dir) / name, "jpeg")
  sample = sample_lib.make_sample(image, np.zeros((0, 2), np.float32),
                                  pathlib.Path(name).stem,
                                  class_name=prompt)
  sample["count"] = np.float32(count)
  return sample, data
