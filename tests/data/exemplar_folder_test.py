"""``exemplar_folder``: a user's multi-class images with the points and
exemplar boxes of one class, written by the test, through the TFDS builder;
every mistake names its file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from counting_jax import data
from counting_jax.data import exemplar_folder


def _scene(seed):
  """A 40 x 56 image with red squares (the class of interest) and blue
  ones; (image, red centres (x, y), one red box)."""
  g = np.random.default_rng(seed)
  image = np.full((40, 56, 3), 200, np.uint8)
  red = []
  for i, (x, y) in enumerate(g.integers(4, 36, size=(6, 2))):
    colour = (255, 0, 0) if i % 2 == 0 else (0, 0, 255)
    image[y - 3:y + 3, x - 3:x + 3] = colour
    if i % 2 == 0:
      red.append([float(x), float(y)])
  x, y = red[0]
  return image, np.array(red, np.float32), [x - 3, y - 3, x + 3, y + 3]


def _write(folder, image_id, image, ann, fmt="PNG"):
  ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
  Image.fromarray(image).save(folder / f"{image_id}.{ext}", format=fmt)
  (folder / f"{image_id}.json").write_text(json.dumps(ann))


def test_builder_keeps_the_class_of_interest(tmp_path):
  folder = tmp_path / "mine"
  folder.mkdir()
  scenes = {}
  for i, fmt in ((0, "PNG"), (1, "JPEG")):
    image, points, box = _scene(i)
    ann = {"points": points.tolist(), "boxes": [box], "class_name": "red"}
    _write(folder, f"img{i}", image, ann, fmt)
    scenes[f"img{i}"] = (image, points, box)
  _write(folder, "empty", np.zeros((8, 8, 3), np.uint8),
         {"points": [], "boxes": [[0, 0, 2, 2]]})
  (folder / "sub").mkdir()  # sub-folders are not read
  source = data.load("exemplar_folder", "test", data_dir=tmp_path / "tfds",
                     manual_dir=folder)
  got = {s["image_id"]: s for s in (source[i] for i in range(len(source)))}
  assert sorted(got) == ["empty", "img0", "img1"]
  for image_id, (image, points, box) in scenes.items():
    s = got[image_id]
    np.testing.assert_array_equal(s["points"], points)  # red only
    np.testing.assert_array_equal(s["boxes"], [box])
    assert s["class_name"] == "red"
    with Image.open(folder / (image_id + (".png" if image_id == "img0"
                                          else ".jpg"))) as im:
      decoded = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(s["image"], decoded)  # PNG: lossless
  assert got["empty"]["points"].shape == (0, 2)
  assert got["empty"]["class_name"] == ""


@pytest.mark.parametrize("files,needle", [
    ({"a.png": None}, "a.png has no annotation a.json"),
    ({"a.png": {"points": [], "boxes": [[0, 0, 2, 2]]}, "b.json": {}},
     "b.json has no image"),
    ({"a.png": {"points": [[1, 1]], "boxes": []}},
     "a.json: needs at least one exemplar box"),
    ({"a.png": {"points": [[1, 1]], "boxes": [[4, 0, 2, 2]]}},
     "a.json: every box needs x1 < x2"),
    ({"a.png": {"points": [[1, 1]]}}, "a.json: expected an object"),
    ({"a.png": {"points": [[1, 30]], "boxes": [[0, 0, 2, 2]]}},
     "a.json: 1 point(s) lie more than"),
    ({"a.png": {"points": [], "boxes": [[0, 0, 2, 2]]}, "a.jpg": None},
     "share the id 'a'"),
])
def test_mistakes_name_the_file(tmp_path, files, needle):
  for name, ann in files.items():
    path = tmp_path / name
    if name.endswith(".json"):
      path.write_text(json.dumps(ann))
      continue
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    if ann is not None:
      path.with_suffix(".json").write_text(json.dumps(ann))
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    for _, image, ann in exemplar_folder.find_pairs(tmp_path):
      exemplar_folder.read_sample(image, ann)
  assert needle in str(e.value)


def test_empty_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="no image"):
    exemplar_folder.find_pairs(tmp_path)
