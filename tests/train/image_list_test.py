"""predict's inputs: files, folders, globs, natural order."""

from __future__ import annotations

import pytest

from counting_jax.train import image_list


def _touch(folder, *names):
  folder.mkdir(parents=True, exist_ok=True)
  for n in names:
    (folder / n).write_bytes(b"x")


def test_natural_order():
  names = ["IMG_10.jpg", "IMG_2.jpg", "img_1.png", "IMG_1b.jpg", "a.jpg"]
  assert sorted(names, key=image_list.natural_key) == [
      "a.jpg", "img_1.png", "IMG_1b.jpg", "IMG_2.jpg", "IMG_10.jpg"]


def test_files_folders_and_globs(tmp_path):
  _touch(tmp_path / "a", "IMG_10.jpg", "IMG_2.JPG", "notes.txt")
  _touch(tmp_path / "b", "IMG_1.png", "IMG_3.tif")
  _touch(tmp_path, "scan.data")
  got = image_list.expand([tmp_path / "a", str(tmp_path / "b" / "*.png"),
                           tmp_path / "scan.data",  # named: always taken
                           tmp_path / "a" / "IMG_2.JPG"])  # duplicate
  assert [p.name for p in got] == ["IMG_1.png", "IMG_2.JPG", "IMG_10.jpg",
                                   "scan.data"]
  assert [p.name for p in image_list.expand(str(tmp_path / "**"))] == [
      "IMG_1.png", "IMG_2.JPG", "IMG_3.tif", "IMG_10.jpg"]


def test_inputs_naming_no_image_are_named(tmp_path):
  _touch(tmp_path / "empty", "notes.txt")
  with pytest.raises(FileNotFoundError, match="no image files.*empty"):
    image_list.expand(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="not found: .*missing.jpg"):
    image_list.expand(tmp_path / "missing.jpg")
  with pytest.raises(FileNotFoundError, match=r"no image file matches .*\*"):
    image_list.expand(str(tmp_path / "*.jpg"))


def test_unreadable_error_lists_the_files():
  e = image_list.UnreadableImagesError({"a.png": 1.0},
                                       [("b.jpg", "truncated")])
  assert "1 of 2 images could not be read: b.jpg (truncated)" in str(e)
  assert e.counts == {"a.png": 1.0}
