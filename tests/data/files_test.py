"""Shared file helpers of the native readers (counting_jax.data.files)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from counting_jax.data import files


def test_clip_points_clips_counts_and_raises(caplog):
  pts = np.array([[-0.5, 3.0], [10.0, 20.9], [4.0, 5.0], [10.0, 20.0]])
  with caplog.at_level(logging.WARNING):
    out, n = files.clip_points(pts, 10, 20, source="a.mat")
  assert n == 2 and out.dtype == np.float32
  np.testing.assert_array_equal(out, [[0, 3], [10, 20], [4, 5], [10, 20]])
  assert "a.mat: clipped 2 point(s)" in caplog.text
  out, n = files.clip_points(np.zeros((0, 2)), 10, 20, source="a.mat")
  assert n == 0 and out.shape == (0, 2)
  with pytest.raises(ValueError, match="b.mat: 1 point.*10x20"):
    files.clip_points([[11.5, 1.0]], 10, 20, source="b.mat")
  with pytest.raises(ValueError, match="c.mat: annotation contains NaN"):
    files.clip_points([[np.nan, 1.0]], 10, 20, source="c.mat")


def test_find_dir_and_file_below(tmp_path):
  (tmp_path / "a" / "Part_B").mkdir(parents=True)
  (tmp_path / "a" / "x" / "part_B_final").mkdir(parents=True)
  (tmp_path / "a" / "x" / "f.json").write_text("{}")
  assert files.find_dir(tmp_path, ["part_b_final", "part_b"]) == (
      tmp_path / "a" / "Part_B")  # shallower wins, case-insensitive
  assert files.find_file_below(tmp_path, "f.json") == (
      tmp_path / "a" / "x" / "f.json")
  with pytest.raises(FileNotFoundError, match="f.json not found"):
    files.find_file_below(tmp_path, "f.json", depth=1)
  with pytest.raises(FileNotFoundError, match=r"\['nope'\]"):
    files.find_dir(tmp_path, ["nope"])


def test_read_image_keeps_rgb_bytes_and_converts_others(tmp_path):
  rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=90)
  image, data = files.read_image(tmp_path / "a.jpg", "jpeg")
  assert data == (tmp_path / "a.jpg").read_bytes()
  assert image.shape == (4, 6, 3)
  Image.fromarray(rgb).save(tmp_path / "a.png")
  image, data = files.read_image(tmp_path / "a.png", "jpeg")  # re-encoded
  np.testing.assert_array_equal(image, rgb)
  with Image.open(io.BytesIO(data)) as im:
    assert im.format == "JPEG" and im.mode == "RGB"
  Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
  image, data = files.read_image(tmp_path / "g.png", "png")
  np.testing.assert_array_equal(image, np.repeat(rgb[..., :1], 3, -1))
  with Image.open(io.BytesIO(data)) as im:
    np.testing.assert_array_equal(np.asarray(im), image)
  (tmp_path / "bad.jpg").write_bytes(b"xx")
  with pytest.raises(ValueError, match="cannot read image .*bad.jpg"):
    files.read_image(tmp_path / "bad.jpg")
  with pytest.raises(FileNotFoundError, match="missing.jpg"):
    files.read_image(tmp_path / "missing.jpg")
