"""Transforms keep every point on the pixel it annotated."""

import grain
import numpy as np
import pytest

from counting_jax.data import sample as sample_lib
from counting_jax.data import transforms


def _marked(h=40, w=56, n=12, seed=0):
  """An image whose annotated pixels are red, everything else black."""
  rng = np.random.default_rng(seed)
  rows = rng.integers(0, h, n)
  cols = rng.integers(0, w, n)
  image = np.zeros((h, w, 3), np.uint8)
  image[rows, cols, 0] = 255
  pts = np.stack([cols + 0.5, rows + 0.5], -1)
  return sample_lib.make_sample(image, pts, "m",
                                boxes=[[2.0, 3.0, 10.0, 12.0]])


def _on_red(s):
  c = np.floor(s["points"][:, 0]).astype(int)
  r = np.floor(s["points"][:, 1]).astype(int)
  return s["image"][r, c, 0] > 127


def test_flips_keep_points_on_pixels():
  s = _marked()
  for f in (transforms.hflip, transforms.vflip):
    out = f(s)
    assert np.all(_on_red(out)) and len(out["points"]) == len(s["points"])
    np.testing.assert_allclose(f(out)["points"], s["points"])
  b = transforms.hflip(s)["boxes"][0]
  np.testing.assert_allclose(b, [56 - 10, 3, 56 - 2, 12])


def test_crop_keeps_inside_points_and_drops_outside():
  s = _marked()
  out = transforms.crop(s, 5, 7, 20, 30)
  assert out["image"].shape == (20, 30, 3)
  assert np.all(_on_red(out))
  inside = ((s["points"][:, 0] >= 7) & (s["points"][:, 0] < 37)
            & (s["points"][:, 1] >= 5) & (s["points"][:, 1] < 25))
  assert len(out["points"]) == inside.sum()
  assert int((out["image"][..., 0] > 0).sum()) == inside.sum()
  with pytest.raises(ValueError, match="outside"):
    transforms.crop(s, 30, 0, 20, 10)


def test_random_crop_and_flip_inside_grain_are_reproducible():
  s = _marked()
  ds = grain.MapDataset.source([s] * 6).random_map(
      lambda x, rng: transforms.random_flip(
          transforms.random_crop(x, (16, 16), rng), rng, vertical=True),
      seed=3)
  first = [ds[i] for i in range(6)]
  again = [ds[i] for i in range(6)]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    assert np.all(_on_red(a))
    assert int((a["image"][..., 0] > 0).sum()) == len(a["points"])


def test_resize_scales_points_exactly():
  s = _marked(h=40, w=56)
  out = transforms.resize(s, 80, 112)  # x2: pixel (r, c) -> 2x2 block
  np.testing.assert_allclose(out["points"], s["points"] * 2)
  assert np.all(_on_red(out))
  small = transforms.random_rescale(s, (0.5, 0.5), np.random.default_rng(0))
  assert small["image"].shape == (20, 28, 3)
  assert len(small["points"]) == len(s["points"])


def test_pad_to_multiple_keeps_points():
  s = _marked(h=37, w=50)
  out = transforms.pad_to_multiple(s, 8)
  assert out["image"].shape == (40, 56, 3)
  np.testing.assert_array_equal(out["points"], s["points"])
  assert np.all(_on_red(out))


def test_random_crop_pads_small_images():
  s = _marked(h=10, w=12)
  out = transforms.random_crop(s, (16, 16), np.random.default_rng(0))
  assert out["image"].shape == (16, 16, 3)
  assert len(out["points"]) == len(s["points"])
