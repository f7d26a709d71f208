"""UCF-QNRF reader and builder.

No UCF-QNRF file is available: the fixtures are ``img_NNNN_ann.mat`` files
in the official schema (variable ``annPoints``, N x 2 float64, (x, y)) with
synthesised JPEG images.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from counting_jax import data
from counting_jax.data import ucf_qnrf

POINTS = {
    "img_0001": np.array([[0.5, 0.5], [99.9, 59.0], [50.25, 30.75]]),
    "img_0002": np.zeros((0, 2)),
    "img_0010": np.array([[120.0, 10.0], [-0.4, 5.0]]),  # < 1 px outside
}
SIZES = {"img_0001": (100, 60), "img_0002": (40, 30), "img_0010": (120, 80)}


def _write_split(folder, ids, *, gray=()):
  folder.mkdir(parents=True)
  for k in ids:
    w, h = SIZES[k]
    mode, color = ("L", 128) if k in gray else ("RGB", (200, 100, 50))
    Image.new(mode, (w, h), color).save(folder / f"{k}.jpg", quality=95)
    scipy.io.savemat(folder / f"{k}_ann.mat", {"annPoints": POINTS[k]})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  manual = tmp_path_factory.mktemp("manual")
  root = manual / "UCF-QNRF_ECCV18"
  _write_split(root / "Train", ["img_0001", "img_0002"])
  _write_split(root / "Test", ["img_0010"], gray=("img_0010",))
  data_dir = tmp_path_factory.mktemp("tfds")
  return {s: data.load("ucf_qnrf", s, manual_dir=manual, data_dir=data_dir)
          for s in ("train", "test")}


def test_builder_round_trip(built):
  train = {built["train"][i]["image_id"]: built["train"][i]
           for i in range(len(built["train"]))}
  assert sorted(train) == ["img_0001", "img_0002"]
  np.testing.assert_allclose(train["img_0001"]["points"], POINTS["img_0001"],
                             rtol=1e-6)
  assert train["img_0002"]["points"].shape == (0, 2)
  assert train["img_0001"]["image"].shape == (60, 100, 3)
  test = built["test"][0]
  assert test["image_id"] == "img_0010"
  assert test["image"].shape == (80, 120, 3)  # grayscale stored as RGB
  np.testing.assert_allclose(test["points"], [[120, 10], [0, 5]])  # clipped


def test_ids_sorted_numerically_and_pairs_checked(tmp_path):
  folder = tmp_path / "Train"
  _write_split(folder, ["img_0010", "img_0002"])
  assert ucf_qnrf.list_ids(folder) == ["img_0002", "img_0010"]
  (folder / "img_0002_ann.mat").unlink()
  with pytest.raises(FileNotFoundError, match="img_0002.jpg has no annot"):
    ucf_qnrf.list_ids(folder)


def test_bad_annotations_name_the_file(tmp_path):
  folder = tmp_path / "Test"
  _write_split(folder, ["img_0001"])
  scipy.io.savemat(folder / "img_0001_ann.mat", {"pts": POINTS["img_0001"]})
  with pytest.raises(ValueError, match="img_0001_ann.mat: no 'annPoints'"):
    ucf_qnrf.read_sample(folder, "img_0001")
  scipy.io.savemat(folder / "img_0001_ann.mat",
                   {"annPoints": np.array([[10.0, 10.0], [10.0, 75.0]])})
  with pytest.raises(ValueError, match="img_0001_ann.mat: 1 point.*100x60"):
    ucf_qnrf.read_sample(folder, "img_0001")
  (folder / "img_0001_ann.mat").write_bytes(b"not a mat file")
  with pytest.raises(ValueError, match="cannot read MATLAB.*img_0001_ann"):
    ucf_qnrf.read_sample(folder, "img_0001")
