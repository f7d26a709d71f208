"""NWPU-Crowd reader and builder.

Real file: the official validation localization ground truth
(``val_gt_loc.txt``). The per-image jsons are not available: fixtures are
written in the documented json schema from the real val points, with blank
images large enough for them (the tests are about annotations).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.io
from PIL import Image

from counting_jax import data
from counting_jax.data import nwpu_crowd

BUILD_IDS = ("3110", "3143", "3111")  # 3143 has no head.


def _loc_gt(shared_data):
  return nwpu_crowd.read_localization_gt(
      shared_data("nwpu_crowd") / "eval" / "val_gt_loc.txt")


def test_localization_gt_file(shared_data):
  gt = _loc_gt(shared_data)
  assert len(gt) == 500
  assert sum(len(v["points"]) for v in gt.values()) == 196238
  # The sample code replaces val image 3169 by 3098.
  assert set(gt) == (set(map(str, range(3110, 3610))) - {"3169"}) | {"3098"}
  levels = np.concatenate([v["level"] for v in gt.values()])
  sigma = np.concatenate([v["sigma"] for v in gt.values()])
  assert set(np.unique(levels)) == set(range(6))
  assert (sigma[:, 0] <= sigma[:, 1]).all() and (sigma > 0).all()
  np.testing.assert_array_equal(gt["3110"]["points"][:2],
                                [[851, 1304], [831, 1344]])
  np.testing.assert_array_equal(gt["3110"]["sigma"][0], [15, 23])


def test_localization_gt_bad_row(tmp_path):
  path = tmp_path / "loc.txt"
  path.write_text("1 2 10 10 3 4 1 20 20 3 4\n")
  with pytest.raises(ValueError, match="loc.txt:1: bad localization row"):
    nwpu_crowd.read_localization_gt(path)


def _write_json(path, points, boxes, human_num=None):
  path.write_text(json.dumps({
      "img_id": f"{path.stem}.jpg",
      "human_num": len(points) if human_num is None else human_num,
      "points": [list(map(float, p)) for p in points],
      "boxes": [list(map(float, b)) for b in boxes]}))


def test_json_checks(tmp_path):
  path = tmp_path / "0001.json"
  _write_json(path, [[1, 2], [3, 4]], [[0, 0, 2, 4]], human_num=3)
  with pytest.raises(ValueError, match="0001.json: human_num is 3.*2"):
    nwpu_crowd.read_json(path)
  _write_json(path, [[1, 2]], [[5, 0, 2, 4]])
  with pytest.raises(ValueError, match=r"0001.json: 1 box.*\[x1, y1, x2, y2\]"):
    nwpu_crowd.read_json(path)
  _write_json(path, [[1, 2]], [[0, 0, 2, 4]])
  points, boxes = nwpu_crowd.read_json(path)
  np.testing.assert_array_equal(points, [[1, 2]])
  np.testing.assert_array_equal(boxes, [[0, 0, 2, 4]])


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_data):
  gt = _loc_gt(shared_data)
  manual = tmp_path_factory.mktemp("manual")
  root = manual / "NWPU-Crowd"
  for d in ("images", "images_part4", "jsons", "mats"):
    (root / d).mkdir(parents=True)
  for k in BUILD_IDS:
    pts = gt[k]["points"]
    half = gt[k]["sigma"][:, :1]  # fixture head boxes of side 2 * sigma_s
    boxes = np.concatenate([pts - half, pts + half], axis=1)
    w, h = ((math.ceil(v) + 5 for v in pts.max(axis=0)) if len(pts)
            else (80, 60))
    folder = "images_part4" if k == "3111" else "images"
    Image.new("RGB", (w, h), (10, 20, 30)).save(root / folder / f"{k}.jpg")
    if k == "3111":  # only a .mat, as in mats.zip
      scipy.io.savemat(root / "mats" / f"{k}.mat",
                       {"annPoints": pts.astype(np.float64)})
    else:
      _write_json(root / "jsons" / f"{k}.json", pts, boxes)
  scipy.io.savemat(root / "mats" / "3110.mat",
                   {"annPoints": gt["3110"]["points"].astype(np.float64)})
  (root / "val.txt").write_text("".join(f"{k} 1 2\n" for k in BUILD_IDS))
  source = data.load("nwpu_crowd", "val", manual_dir=manual,
                     data_dir=tmp_path_factory.mktemp("tfds"))
  return gt, source


def test_builder_round_trip(built):
  gt, source = built
  by_id = {source[i]["image_id"]: source[i] for i in range(len(source))}
  assert sorted(by_id) == sorted(BUILD_IDS)
  for k in BUILD_IDS:
    np.testing.assert_array_equal(by_id[k]["points"], gt[k]["points"])
    assert by_id[k]["class_name"] == "person"
  half = gt["3110"]["sigma"][:, :1]
  np.testing.assert_allclose(
      by_id["3110"]["boxes"],
      np.concatenate([gt["3110"]["points"] - half,
                      gt["3110"]["points"] + half], axis=1))
  assert by_id["3143"]["points"].shape == (0, 2)
  assert by_id["3111"]["boxes"].shape == (0, 4)  # no json -> no boxes
  assert len(by_id["3110"]["points"]) == 240


def test_json_and_mat_disagree(tmp_path):
  root = tmp_path
  (root / "images").mkdir()
  (root / "jsons").mkdir()
  (root / "mats").mkdir()
  Image.new("RGB", (50, 40)).save(root / "images" / "0001.jpg")
  _write_json(root / "jsons" / "0001.json", [[1, 2]], [])
  scipy.io.savemat(root / "mats" / "0001.mat",
                   {"annPoints": np.zeros((2, 2))})
  with pytest.raises(ValueError, match="0001.mat: 2 points but .*0001.json"):
    nwpu_crowd.read_sample(root, "0001")
  with pytest.raises(FileNotFoundError, match="0002"):
    nwpu_crowd.read_sample(root, "0002")
