"""VGG cells: native reader on the real files and the tfds builder."""

import numpy as np
import pytest
from PIL import Image

from counting_jax import data
from counting_jax.data import vgg_cells


@pytest.fixture(scope="module")
def shipped():
  return vgg_cells.DEFAULT_ROOT


def test_shipped_copy_matches_shared_data(shipped, shared_data):
  root = shared_data("vgg_cells") / "cells"
  for name in ("001cell.png", "137dots.png", "200dots.png"):
    assert (shipped / name).read_bytes() == (root / name).read_bytes()


def test_reader_on_all_real_files(shipped):
  ids = vgg_cells.list_ids(shipped)
  assert ids == [f"{i:03d}" for i in range(1, 201)]
  total = 0
  for image_id in ids:
    dots = np.asarray(Image.open(shipped / f"{image_id}dots.png"))
    pts = vgg_cells.read_dots(shipped / f"{image_id}dots.png", (256, 256))
    assert len(pts) == np.count_nonzero(dots.any(-1))
    total += len(pts)
  assert total == 35192  # SOURCE.md / datasets.md invariant


def test_points_are_pixel_centres_of_the_dots(shipped):
  s = vgg_cells.read_sample(shipped, "001")
  assert s["image"].shape == (256, 256, 3) and s["image"].dtype == np.uint8
  dots = np.asarray(Image.open(shipped / "001dots.png"))
  cols = np.floor(s["points"][:, 0]).astype(int)
  rows = np.floor(s["points"][:, 1]).astype(int)
  assert np.all(dots[rows, cols].any(-1))
  np.testing.assert_array_equal(s["points"] % 1, 0.5)


def test_missing_and_bad_files_name_the_file(tmp_path, shipped):
  with pytest.raises(FileNotFoundError, match="001cell.png"):
    vgg_cells.read_sample(tmp_path, "001")
  (tmp_path / "001cell.png").write_bytes((shipped / "001cell.png").read_bytes())
  with pytest.raises(FileNotFoundError, match="001dots.png"):
    vgg_cells.read_sample(tmp_path, "001")
  (tmp_path / "001dots.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="001dots.png"):
    vgg_cells.read_sample(tmp_path, "001")
  Image.fromarray(np.zeros((100, 80, 3), np.uint8)).save(tmp_path / "001dots.png")
  with pytest.raises(ValueError, match="is \\(100, 80\\) but its image is"):
    vgg_cells.read_sample(tmp_path, "001")
  with pytest.raises(FileNotFoundError, match="no VGG cells images"):
    vgg_cells.list_ids(tmp_path / "empty")


def test_grayscale_image_converted_to_rgb(tmp_path):
  Image.fromarray(np.full((16, 16), 77, np.uint8)).save(tmp_path / "001cell.png")
  dots = np.zeros((16, 16), np.uint8)
  dots[3, 5] = 255
  Image.fromarray(dots).save(tmp_path / "001dots.png")
  s = vgg_cells.read_sample(tmp_path, "001")
  assert s["image"].shape == (16, 16, 3)
  assert np.all(s["image"] == 77)
  np.testing.assert_array_equal(s["points"], [[5.5, 3.5]])


def test_tfds_builder_round_trip(tmp_path, shipped):
  train = data.load("vgg_cells", "train", data_dir=tmp_path)
  test = data.load("vgg_cells", "test", data_dir=tmp_path)
  assert len(train) == 100 and len(test) == 100
  ids = sorted(train[i]["image_id"] for i in range(len(train)))
  assert ids == [f"{i:03d}" for i in range(1, 101)]
  ex = test[3]
  ref = vgg_cells.read_sample(shipped, ex["image_id"])
  np.testing.assert_array_equal(ex["image"], ref["image"])
  np.testing.assert_array_equal(ex["points"], ref["points"])
  assert ex["class_name"] == "cell" and ex["boxes"].shape == (0, 4)
  assert int(ex["image_id"]) > 100


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match="unknown data set 'nope'"):
    data.load("nope", "train")
