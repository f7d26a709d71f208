"""FSC-147 reader and builder on the real split/class/description files and
the 12 real images.

``annotation_FSC147_384.json`` itself is not available: the fixture is
written in its official schema from SAFECount's converted test labels (the
official points; boxes (y1, x1, y2, x2) turned into 4 (x, y) corners). The 3
train images have no public points here, so they get fixture points.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from counting_jax import data
from counting_jax.data import fsc147

# What the ``fsc147_release`` fixture (tests/conftest.py) writes.
TEST_COUNTS = {"2": 8, "2287": 195, "2934": 56, "3312": 136, "3338": 258,
               "336": 16, "4408": 14, "687": 548, "7707": 370}
TRAIN_IDS = ("7", "22", "458")
FIXTURE_TRAIN_POINTS = [[10.5, 20.25], [100.0, 200.0], [383.0, 1.0]]


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_data, fsc147_release):
  fsc = shared_data("fsc147")
  manual, converted = fsc147_release
  data_dir = tmp_path_factory.mktemp("tfds")
  splits = {s: data.load("fsc147", s, data_dir=data_dir, manual_dir=manual)
            for s in ("train", "test")}
  return fsc, converted, splits


def test_official_metadata_files(shared_data):
  fsc = shared_data("fsc147")
  splits = fsc147.read_splits(fsc / "official" / "data" / fsc147.SPLIT_FILE)
  assert {k: len(splits[k]) for k in fsc147.SPLITS} == fsc147.SPLIT_SIZES
  assert set(splits["test_coco"]) <= set(splits["test"])
  classes = fsc147.read_classes(fsc / "official" / "data" /
                                fsc147.CLASS_FILE)
  assert len(classes) == 6146 and len(set(classes.values())) == 147
  assert classes["2.jpg"] == "sea shells"
  desc = fsc147.read_descriptions(fsc / "countx" / fsc147.DESCRIPTION_FILE)
  assert len(desc) == 6135
  for split in fsc147.SPLITS:
    assert all(desc[n][0] == split for n in splits[split])
  assert desc["2.jpg"] == ("test", "the sea shells")


def test_test_split_counts_points_and_boxes(built):
  fsc, converted, splits = built
  source = splits["test"]
  assert len(source) == 9
  counts = {}
  for i in range(len(source)):
    ex = source[i]
    name = f"{ex['image_id']}.jpg"
    counts[ex["image_id"]] = len(ex["points"])
    h, w = ex["image"].shape[:2]
    assert h == 384 and ex["image"].dtype == np.uint8
    # The annotation points are kept exactly and all lie inside the image.
    np.testing.assert_allclose(ex["points"], converted[name]["points"],
                               rtol=1e-6)
    assert ex["points"].min() >= 0
    assert (ex["points"][:, 0] <= w).all() and (ex["points"][:, 1] <= h).all()
    yx = np.asarray(converted[name]["boxes"], np.float32)
    np.testing.assert_array_equal(ex["boxes"], yx[:, [1, 0, 3, 2]])
    with Image.open(fsc / "images_384_VarV2" / name) as im:
      np.testing.assert_array_equal(ex["image"], np.asarray(im))
    assert isinstance(ex["class_name"], str) and ex["class_name"]
  assert counts == TEST_COUNTS
  ex = next(source[i] for i in range(9) if source[i]["image_id"] == "2")
  assert ex["class_name"] == "sea shells"
  assert ex["description"] in (b"the sea shells", "the sea shells")


def test_train_split_and_exemplar_corners(built):
  _, _, splits = built
  source = splits["train"]
  assert sorted(source[i]["image_id"] for i in range(len(source))) == sorted(
      TRAIN_IDS)
  ex = source[0]
  np.testing.assert_allclose(ex["points"], FIXTURE_TRAIN_POINTS)
  np.testing.assert_allclose(ex["boxes"], [[6, 5, 36, 25]] * 3)


def test_point_outside_image_and_missing_image_raise(tmp_path, shared_data):
  fsc = shared_data("fsc147")
  image_dir = tmp_path / "images"
  image_dir.mkdir()
  shutil.copy(fsc / "images_384_VarV2" / "336.jpg", image_dir)  # 458 x 384
  ann = {"points": np.array([[10.0, 10.0], [458.5, 384.0]], np.float32),
         "boxes": np.zeros((3, 4), np.float32)}
  sample, _ = fsc147.read_sample(image_dir, "336.jpg", ann, "x")
  np.testing.assert_allclose(sample["points"], [[10, 10], [458, 384]])
  ann["points"] = np.array([[10.0, 10.0], [10.0, 390.0]], np.float32)
  with pytest.raises(ValueError, match=r"annotation_FSC147_384.json \['336"):
    fsc147.read_sample(image_dir, "336.jpg", ann, "x")
  with pytest.raises(FileNotFoundError, match="2.jpg"):
    fsc147.read_sample(image_dir, "2.jpg", ann, "x")


def test_malformed_exemplar_raises(tmp_path):
  path = tmp_path / fsc147.ANNOTATION_FILE
  path.write_text(json.dumps({"5.jpg": {
      "points": [[1, 2]], "box_examples_coordinates": [[[1, 2], [3, 4]]]}}))
  with pytest.raises(ValueError, match="5.jpg.*4 \\(x, y\\) corners"):
    fsc147.read_annotations(path)
