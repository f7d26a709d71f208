"""Transforms keep every point on the pixel it annotated."""

import itertools

import grain
import numpy as np
import pytest
from PIL import Image

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


def test_centre_padding_moves_points_boxes_and_masks():
  s = _marked(h=37, w=50)
  s["points"] = np.concatenate([s["points"], [[50.0, 37.0]]]).astype(
      np.float32)  # bottom-right corner: belongs to pixel (49, 36)
  s["image"][36, 49, 0] = 255
  s["masks"] = s["image"][..., :1].astype(np.float32)
  out = transforms.pad_to_multiple(s, 32, centre=True)
  top, left = (64 - 37) // 2, (64 - 50) // 2  # 13, 7
  assert out["image"].shape == (64, 64, 3)
  np.testing.assert_array_equal(out["image"][top:top + 37, left:left + 50],
                                s["image"])
  assert out["image"].sum() == s["image"].sum()  # the rest is zeros
  assert len(out["points"]) == len(s["points"])  # the count is kept
  np.testing.assert_allclose(out["points"][:-1],
                             s["points"][:-1] + [left, top])
  assert np.all(_on_red(out))  # the corner point too
  np.testing.assert_array_equal(out["boxes"],
                                [[2 + left, 3 + top, 10 + left, 12 + top]])
  np.testing.assert_array_equal(out["masks"][..., 0],
                                out["image"][..., 0].astype(np.float32))


def test_random_crop_pads_small_images():
  s = _marked(h=10, w=12)
  out = transforms.random_crop(s, (16, 16), np.random.default_rng(0))
  assert out["image"].shape == (16, 16, 3)
  assert len(out["points"]) == len(s["points"])


# Points exactly on all four borders and corners of a 10 x 12 image, each on
# its own pixel (x = W belongs to column W - 1, y = H to row H - 1).
_H, _W = 10, 12
_BORDER = np.array([[0, 5.5], [_W, 5.5], [6.5, 0], [6.5, _H], [0, 0],
                    [_W, _H], [0, _H], [_W, 0]], np.float32)


def _border_sample():
  """Each border point's pixel is marked with the point's id + 1 (red)."""
  col = np.minimum(np.floor(_BORDER[:, 0]), _W - 1).astype(int)
  row = np.minimum(np.floor(_BORDER[:, 1]), _H - 1).astype(int)
  image = np.zeros((_H, _W, 3), np.uint8)
  image[row, col, 0] = np.arange(1, len(_BORDER) + 1)
  return sample_lib.make_sample(image, _BORDER, "border")


def _check_on_marks(s):
  """Every point lies on its marked pixel and every mark still in the image
  has its point: no point lost, none moved off its pixel."""
  sample_lib.validate_sample(s)  # points inside the closed [0, W] x [0, H]
  h, w = s["image"].shape[:2]
  col = np.minimum(np.floor(s["points"][:, 0]), w - 1).astype(int)
  row = np.minimum(np.floor(s["points"][:, 1]), h - 1).astype(int)
  ids = s["image"][row, col, 0]
  assert np.all(ids > 0), s["points"][ids == 0]
  marks = s["image"][..., 0]
  assert sorted(ids.tolist()) == sorted(marks[marks > 0].tolist())


_FLIPS = {"none": lambda s: s, "h": transforms.hflip, "v": transforms.vflip,
          "hv": lambda s: transforms.vflip(transforms.hflip(s))}


@pytest.mark.parametrize("flip", sorted(_FLIPS))
def test_border_points_survive_flips_and_crops(flip):
  s = _FLIPS[flip](_border_sample())
  _check_on_marks(s)
  assert len(s["points"]) == len(_BORDER)
  # A full-size crop keeps every point; crops reaching each edge keep the
  # points on it; flipping back restores the original points.
  assert len(transforms.crop(s, 0, 0, _H, _W)["points"]) == len(_BORDER)
  np.testing.assert_array_equal(_FLIPS[flip](s)["points"], _BORDER)
  for top, bottom, left, right in itertools.product((0, 4), (6, _H), (0, 5),
                                                    (7, _W)):
    out = transforms.crop(s, top, left, bottom - top, right - left)
    _check_on_marks(out)
    _check_on_marks(transforms.hflip(out))
    _check_on_marks(transforms.vflip(out))


def test_border_points_survive_padding_then_crops_and_flips():
  s = transforms.pad_to_multiple(_border_sample(), 8)
  assert s["image"].shape == (16, 16, 3)
  _check_on_marks(s)
  for f in _FLIPS.values():
    _check_on_marks(f(s))
  # A crop ending at the old image edge keeps the old edge's points.
  out = transforms.crop(s, 0, 0, _H, _W)
  _check_on_marks(out)
  assert len(out["points"]) == len(_BORDER)
  rng = np.random.default_rng(0)
  for _ in range(20):
    _check_on_marks(transforms.random_flip(
        transforms.random_crop(_border_sample(), (13, 14), rng), rng,
        vertical=True))


def test_resize_maps_the_border_onto_the_border():
  s = _border_sample()
  for height, width in ((7, 9), (23, 31), (10, 12), (3, 5)):
    out = transforms.resize(s, height, width)
    sample_lib.validate_sample(out)
    np.testing.assert_allclose(out["points"],
                               _BORDER * np.array([width / _W, height / _H]),
                               rtol=1e-6)
    assert np.sum(out["points"][:, 0] == width) == 3
    assert len(transforms.crop(out, 0, 0, height, width)["points"]) == 8


def _colourful(h=24, w=32, seed=0):
  rng = np.random.default_rng(seed)
  s = sample_lib.make_sample(
      rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
      rng.uniform(0, [w, h], (9, 2)).astype(np.float32), "c",
      boxes=[[2.0, 3.0, 10.0, 12.0]])
  s["masks"] = rng.random((h, w, 2)).astype(np.float32)
  return s


def test_color_jitter_changes_only_colours_and_is_seeded():
  s = _colourful()
  kw = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2)
  a = transforms.color_jitter(s, np.random.default_rng(3), **kw)
  b = transforms.color_jitter(s, np.random.default_rng(3), **kw)
  c = transforms.color_jitter(s, np.random.default_rng(4), **kw)
  assert a["image"].dtype == np.uint8 and a["image"].shape == s["image"].shape
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(a["image"], s["image"])
  assert not np.array_equal(a["image"], c["image"])
  for k in ("points", "boxes", "masks"):
    np.testing.assert_array_equal(a[k], s[k])
  assert transforms.color_jitter(s, np.random.default_rng(0)) is s
  with pytest.raises(ValueError, match="hue"):
    transforms.color_jitter(s, np.random.default_rng(0), hue=0.6)


def test_color_jitter_closed_forms():
  s = _colourful()
  # Brightness alone: x * f, f the generator's first draw in [0.8, 1.2].
  f = np.random.default_rng(7).uniform(0.8, 1.2)
  out = transforms.color_jitter(s, np.random.default_rng(7), brightness=0.2)
  want = np.clip(s["image"].astype(np.float64) * f, 0, 255)
  assert np.abs(out["image"] - want).max() <= 1.0
  # Saturation and hue leave a grey image grey and unchanged.
  grey = dict(s, image=np.repeat(s["image"][..., :1], 3, -1))
  for seed in range(3):
    out = transforms.color_jitter(grey, np.random.default_rng(seed),
                                  saturation=0.2, hue=0.2)
    np.testing.assert_array_equal(out["image"], grey["image"])
  # Hue alone rotates PIL's 8-bit hue: pure red (hue 0) goes to hue
  # int(255 f) mod 256 (to 1 step after the 8-bit RGB round trip), full
  # saturation and value kept.
  red = dict(s, image=np.tile(np.array([255, 0, 0], np.uint8), (24, 32, 1)))
  for seed in (3, 4):  # f = -0.166, 0.177
    f = np.random.default_rng(seed).uniform(-0.2, 0.2)
    out = transforms.color_jitter(red, np.random.default_rng(seed), hue=0.2)
    hsv = np.asarray(Image.fromarray(out["image"]).convert("HSV"), np.int64)
    d = (hsv[..., 0] - int(255 * f)) % 256
    assert np.minimum(d, 256 - d).max() <= 1, (f, hsv[0, 0])
    assert (hsv[..., 1:] == 255).all()


def test_random_rescale_probability():
  """``prob``: about that share of samples rescaled; prob 1 draws no coin
  (the same factor as before); prob 0 leaves the sample as it is."""
  sample = {"image": np.zeros((20, 30, 3), np.uint8),
            "points": np.array([[10.0, 5.0]], np.float32),
            "boxes": np.zeros((0, 4), np.float32)}
  sizes = [transforms.random_rescale(sample, (1.5, 2.0),
                                     np.random.default_rng(s),
                                     prob=0.5)["image"].shape[0]
           for s in range(200)]
  share = np.mean([h != 20 for h in sizes])
  assert 0.4 < share < 0.6, share
  a = transforms.random_rescale(sample, (1.5, 2.0), np.random.default_rng(3))
  f = np.random.default_rng(3).uniform(1.5, 2.0)
  assert a["image"].shape[:2] == (round(20 * f), round(30 * f))
  assert transforms.random_rescale(
      sample, (1.5, 2.0), np.random.default_rng(3), prob=0.0) is sample
  with pytest.raises(ValueError, match="scale_prob"):
    transforms.random_rescale(sample, (1.5, 2.0), np.random.default_rng(3),
                              prob=1.5)


def test_density_map_moves_with_the_pixels():
  g = np.random.default_rng(0)
  img = g.integers(0, 255, (20, 30, 3), dtype=np.uint8)
  s = sample_lib.make_sample(img, [[3.0, 4.0]], "d")
  s["density"] = g.uniform(0, 1, (20, 30)).astype(np.float32)
  d = s["density"]
  np.testing.assert_array_equal(transforms.crop(s, 2, 5, 10, 12)["density"],
                                d[2:12, 5:17])
  np.testing.assert_array_equal(transforms.hflip(s)["density"], d[:, ::-1])
  np.testing.assert_array_equal(transforms.vflip(s)["density"], d[::-1])
  padded = transforms.pad_to_size(s, 24, 32, centre=True)["density"]
  np.testing.assert_array_equal(padded[2:22, 1:31], d)
  assert not padded[:2].any() and not padded[:, :1].any()
  # Bicubic resize scaled by the area ratio keeps the mass (up to the
  # interpolation), as the official cv2 resize divided by s².
  big = transforms.resize(s, 37, 55)["density"]
  assert big.shape == (37, 55)
  np.testing.assert_allclose(big.sum(), d.sum(), rtol=0.02)
