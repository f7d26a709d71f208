"""ShanghaiTech reader and builders on the real .mat files and test images."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from counting_jax import data
from counting_jax.data import shanghaitech

# Measured on all 1,198 official .mat files (../shared/data/shanghaitech).
TOTALS = {("A", "train"): (300, 162413), ("A", "test"): (182, 78862),
          ("B", "train"): (400, 49151), ("B", "test"): (316, 39121)}


def _write_gt(path, location, number=None):
  """A .mat in the official schema: image_info{1}.location / .number."""
  loc = np.asarray(location, np.float64).reshape(-1, 2)
  struct = np.empty((1, 1), dtype=[("location", "O"), ("number", "O")])
  struct[0, 0]["location"] = loc
  struct[0, 0]["number"] = np.array(
      [[len(loc) if number is None else number]], np.uint16)
  cell = np.empty((1, 1), dtype=object)
  cell[0, 0] = struct
  scipy.io.savemat(path, {"image_info": cell})


def _layout(root, src, part, ids, *, final=True, gt="ground-truth"):
  """Official (or mirror) folder layout for ``ids`` of ``src`` test_data."""
  split = root / f"part_{part}{'_final' if final else ''}" / "test_data"
  (split / "images").mkdir(parents=True)
  (split / gt).mkdir()
  for k in ids:
    (split / "images" / f"IMG_{k}.jpg").symlink_to(
        src / "test_data" / "images" / f"IMG_{k}.jpg")
    (split / gt / f"GT_IMG_{k}.mat").symlink_to(
        src / "test_data" / "ground-truth" / f"GT_IMG_{k}.mat")
  return split


def test_all_mat_files_number_matches_location_and_totals(shared_data):
  root = shared_data("shanghaitech")
  for (part, split), (n_files, total) in TOTALS.items():
    gt_dir = root / f"part_{part}" / f"{split}_data" / "ground-truth"
    mats = sorted(gt_dir.glob("GT_IMG_*.mat"))
    counts = [len(shanghaitech.read_points(p)) for p in mats]
    assert (len(mats), sum(counts)) == (n_files, total), (part, split)


def test_read_points_matches_scipy_and_is_xy(shared_data):
  path = (shared_data("shanghaitech") / "part_B" / "test_data" /
          "ground-truth" / "GT_IMG_1.mat")
  ref = scipy.io.loadmat(path)["image_info"][0, 0][0, 0]["location"]
  pts = shanghaitech.read_points(path)
  assert pts.dtype == np.float32 and pts.shape == (23, 2)
  np.testing.assert_allclose(pts, ref, rtol=1e-6)
  # Part B is 1024 wide x 768 high: x spans more than 768 somewhere.
  assert pts[:, 0].max() <= 1024 and pts[:, 1].max() <= 768


@pytest.fixture(scope="module")
def shb_test(tmp_path_factory, shared_data):
  """Part B test split (IMG_1..10) in the official layout, built with tfds."""
  src = shared_data("shanghaitech") / "part_B"
  manual = tmp_path_factory.mktemp("manual")
  _layout(manual / "ShanghaiTech", src, "B", range(1, 11))
  data_dir = tmp_path_factory.mktemp("tfds")
  return src, data.load("shanghaitech_b", "test", data_dir=data_dir,
                        manual_dir=manual)


def test_shb_builder_round_trip(shb_test):
  src, source = shb_test
  assert len(source) == 10
  seen = {}
  for i in range(len(source)):
    ex = source[i]
    k = int(ex["image_id"].split("_")[1])
    ref = scipy.io.loadmat(src / "test_data" / "ground-truth" /
                           f"GT_IMG_{k}.mat")["image_info"][0, 0][0, 0]
    assert ex["image"].shape == (768, 1024, 3)
    assert ex["image"].dtype == np.uint8
    np.testing.assert_allclose(ex["points"], ref["location"], rtol=1e-6)
    assert len(ex["points"]) == int(ref["number"][0, 0])
    assert ex["boxes"].shape == (0, 4) and ex["class_name"] == "person"
    with Image.open(src / "test_data" / "images" / f"IMG_{k}.jpg") as im:
      # The original JPEG bytes are stored: decoding gives identical pixels.
      np.testing.assert_array_equal(ex["image"], np.asarray(im))
    seen[k] = len(ex["points"])
  assert sorted(seen) == list(range(1, 11))
  assert seen[1] == 23 and seen[2] == 52


def test_mirror_layout_and_grayscale_to_rgb(tmp_path, shared_data):
  src = shared_data("shanghaitech") / "part_A"
  split = _layout(tmp_path, src, "A", [1, 2], final=False, gt="ground_truth")
  # A grayscale variant of IMG_2 with an upper-case extension.
  (split / "images" / "IMG_2.jpg").unlink()
  with Image.open(src / "test_data" / "images" / "IMG_2.jpg") as im:
    gray = np.asarray(im.convert("L"))
  Image.fromarray(gray).save(split / "images" / "IMG_2.JPG", quality=95)
  part = shanghaitech.part_dir(tmp_path, "A")
  assert part.name == "part_A"
  root = shanghaitech.split_dir(part, "test")
  assert shanghaitech.list_ids(root) == ["IMG_1", "IMG_2"]
  sample, data_bytes = shanghaitech.read_sample(root, "IMG_2")
  with Image.open(split / "images" / "IMG_2.JPG") as im:
    assert im.mode == "L"
    stored_gray = np.asarray(im)
  assert sample["image"].shape == gray.shape + (3,)
  for c in range(3):
    np.testing.assert_array_equal(sample["image"][..., c], stored_gray)
  # The stored bytes are an RGB JPEG re-encoding (quality 95) of it.
  with Image.open(io.BytesIO(data_bytes)) as im:
    assert im.mode == "RGB" and im.format == "JPEG"
    err = np.abs(np.asarray(im, np.float64) - sample["image"])
  assert err.mean() < 1.0
  assert len(sample["points"]) == 1111


def test_number_mismatch_names_the_file(tmp_path):
  path = tmp_path / "GT_IMG_1.mat"
  _write_gt(path, [[1, 2], [3, 4]], number=3)
  with pytest.raises(ValueError, match="GT_IMG_1.mat.*'number' is 3.*2"):
    shanghaitech.read_points(path)


def test_missing_image_or_annotation_raises(tmp_path, shared_data):
  src = shared_data("shanghaitech") / "part_B"
  split = _layout(tmp_path, src, "B", [1, 2])
  (split / "images" / "IMG_2.jpg").unlink()
  with pytest.raises(FileNotFoundError, match="GT_IMG_2.mat has no image"):
    shanghaitech.list_ids(split)
  shutil.copy(src / "test_data" / "images" / "IMG_2.jpg",
              split / "images" / "IMG_2.jpg")
  (split / "ground-truth" / "GT_IMG_1.mat").unlink()
  with pytest.raises(FileNotFoundError, match="IMG_1.jpg has no annotation"):
    shanghaitech.list_ids(split)


def test_points_outside_image(tmp_path, shared_data):
  src = shared_data("shanghaitech") / "part_B"
  split = _layout(tmp_path, src, "B", [1])
  gt = split / "ground-truth" / "GT_IMG_1.mat"
  gt.unlink()
  _write_gt(gt, [[10.0, 10.0], [1024.6, 300.0], [-0.3, 767.9]])
  sample, _ = shanghaitech.read_sample(split, "IMG_1")
  # Overshoots < 1 px are clipped onto the border, never dropped.
  np.testing.assert_allclose(sample["points"],
                             [[10, 10], [1024, 300], [0, 767.9]], rtol=1e-6)
  gt.unlink()
  _write_gt(gt, [[10.0, 10.0], [1030.0, 300.0]])
  with pytest.raises(ValueError, match="GT_IMG_1.mat: 1 point.*1024x768"):
    shanghaitech.read_sample(split, "IMG_1")
