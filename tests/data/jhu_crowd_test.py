"""JHU-Crowd++ reader and builder on the real test labels and gt files.

No JHU image is available: where the builder needs one, a blank JPEG large
enough for the annotation is synthesised (the tests are about annotations).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from counting_jax import data
from counting_jax.data import jhu_crowd

BUILD_IDS = ("0104", "0307", "0515")  # 0104: distractor without people.


def _test_dir(shared_data):
  return shared_data("jhu_crowd") / "jhu_crowd_v2.0" / "test"


def test_image_labels_file(shared_data):
  labels = jhu_crowd.read_image_labels(_test_dir(shared_data) /
                                       "image_labels.txt")
  assert len(labels) == jhu_crowd.SPLIT_SIZES["test"]
  assert sum(l.total for l in labels.values()) == 521859
  assert labels["0002"] == jhu_crowd.ImageLabel(43, "street", 1, False)
  assert labels["0195"] == jhu_crowd.ImageLabel(82, "airport", 0, True)


def test_every_gt_file_matches_its_total(shared_data):
  root = _test_dir(shared_data)
  labels = jhu_crowd.read_image_labels(root / "image_labels.txt")
  gts = sorted((root / "gt").glob("*.txt"))
  assert len(gts) == 66
  for path in gts:
    gt = jhu_crowd.read_annotation(root, path.stem, labels[path.stem])
    rows = np.loadtxt(path, ndmin=2)
    np.testing.assert_allclose(gt["points"], rows[:, :2], rtol=1e-6)
    np.testing.assert_allclose(gt["head_sizes"], rows[:, 2:4], rtol=1e-6)
    np.testing.assert_array_equal(gt["occlusion"], rows[:, 4])
    np.testing.assert_array_equal(gt["blur"], rows[:, 5])


def test_total_mismatch_and_bad_rows_name_the_file(tmp_path):
  (tmp_path / "gt").mkdir()
  (tmp_path / "gt" / "0001.txt").write_text("10 20 5 6 1 0\n30 40 5 6 2 1\n")
  label = jhu_crowd.ImageLabel(3, "street", 0, False)
  with pytest.raises(ValueError, match="0001.txt: 2 rows.*total 3"):
    jhu_crowd.read_annotation(tmp_path, "0001", label)
  (tmp_path / "gt" / "0001.txt").write_text("10 20 5 6 4 0\n")
  with pytest.raises(ValueError, match="0001.txt:1: bad annotation row"):
    jhu_crowd.read_gt(tmp_path / "gt" / "0001.txt")
  (tmp_path / "labels.txt").write_text("0001,3,street,7,0\n")
  with pytest.raises(ValueError, match="labels.txt:1"):
    jhu_crowd.read_image_labels(tmp_path / "labels.txt")


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_data):
  src = _test_dir(shared_data)
  manual = tmp_path_factory.mktemp("manual")
  split = manual / "jhu_crowd_v2.0" / "test"
  (split / "images").mkdir(parents=True)
  (split / "gt").mkdir()
  rows = {l.split(",")[0]: l for l in
          (src / "image_labels.txt").read_text().splitlines()}
  (split / "image_labels.txt").write_text(
      "\n".join(rows[k] for k in BUILD_IDS) + "\n")
  for k in BUILD_IDS:
    gt = src / "gt" / f"{k}.txt"
    if gt.exists():
      (split / "gt" / f"{k}.txt").symlink_to(gt)
      pts = np.loadtxt(gt, ndmin=2)[:, :2]
      w, h = (math.ceil(v) + 5 for v in pts.max(axis=0))
    else:  # Official format of an image without people: an empty file.
      (split / "gt" / f"{k}.txt").write_text("")
      w, h = 64, 48
    Image.new("L", (w, h), 90).save(split / "images" / f"{k}.jpg")
  source = data.load("jhu_crowd", "test", manual_dir=manual,
                     data_dir=tmp_path_factory.mktemp("tfds"))
  return src, source


def test_builder_round_trip_with_labels(built):
  src, source = built
  assert len(source) == len(BUILD_IDS)
  by_id = {source[i]["image_id"]: source[i] for i in range(len(source))}
  assert sorted(by_id) == list(BUILD_IDS)
  empty = by_id["0104"]
  assert empty["points"].shape == (0, 2) and empty["occlusion"].shape == (0,)
  assert bool(empty["distractor"]) and int(empty["weather"]) == 0
  for k in ("0307", "0515"):
    ex = by_id[k]
    rows = np.loadtxt(src / "gt" / f"{k}.txt", ndmin=2)
    np.testing.assert_allclose(ex["points"], rows[:, :2], rtol=1e-6)
    np.testing.assert_allclose(ex["head_sizes"], rows[:, 2:4], rtol=1e-6)
    np.testing.assert_array_equal(ex["occlusion"], rows[:, 4])
    np.testing.assert_array_equal(ex["blur"], rows[:, 5])
    assert ex["image"].shape[-1] == 3  # grayscale JPEG stored as RGB
    assert ex["class_name"] == "person" and not bool(ex["distractor"])
  assert len(by_id["0515"]["points"]) == 3
