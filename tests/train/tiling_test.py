"""Tiled full-resolution prediction: coverage, mass, equality with untiled."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.train import predict as predict_lib
from counting_jax.train import tiling


class _ConvNet(nn.Module):
  """Translation-equivariant toy counter: 3 conv3x3 (receptive radius 3 px)
  then ``stride`` x ``stride`` average pooling."""
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    for width in (4, 4):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
    x = nn.Conv(1, (3, 3))(x)[..., 0]
    if self.stride > 1:
      x = nn.avg_pool(x[..., None], (self.stride,) * 2, (self.stride,) * 2)
      x = x[..., 0]
    return x


@pytest.fixture(scope="module", params=[1, 4])
def conv_model(request):
  model = _ConvNet(stride=request.param)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  return jax.jit(lambda x: model.apply(params, x)), request.param


@pytest.mark.parametrize("length,tile,overlap,multiple", [
    (100, 32, 8, 4), (64, 64, 16, 8), (40, 64, 16, 8), (1000, 256, 64, 8),
    (72, 32, 0, 8)])
def test_tile_starts_cover_with_overlap(length, tile, overlap, multiple):
  starts, size = tiling.tile_starts(length, tile, overlap, multiple)
  assert size == min(tile, length)
  assert starts[0] == 0 and starts[-1] + size == length
  assert all(s % multiple == 0 for s in starts)
  for a, b in zip(starts, starts[1:]):
    assert b > a and a + size - b >= overlap


@pytest.mark.parametrize("kw", [dict(length=100, tile=32, overlap=6),
                                dict(length=96, tile=32, overlap=32),
                                dict(length=96, tile=30, overlap=8)])
def test_tile_starts_rejects_bad_arguments(kw):
  with pytest.raises(ValueError):
    tiling.tile_starts(multiple=4, **kw)


@pytest.mark.parametrize("blend", ["core", "linear"])
@pytest.mark.parametrize("height,width,stride", [(96, 160, 1), (96, 136, 8),
                                                 (40, 200, 4)])
def test_weights_sum_to_one_and_constant_mass(blend, height, width, stride):
  boxes = tiling.tile_grid(height, width, tile=48, overlap=16, multiple=8)
  w = tiling.tile_weights(boxes, height, width, stride=stride, overlap=16,
                          blend=blend)
  total = np.zeros((height // stride, width // stride))
  for (y, x, h, ww), wt in zip(boxes, w):
    total[y // stride:(y + h) // stride, x // stride:(x + ww) // stride] += wt
  np.testing.assert_allclose(total, 1.0, atol=1e-12)
  # A constant-density model: the stitched mass is the map's exact sum.
  c = 0.37
  image = np.zeros((height, width, 3), np.float32)
  dens = tiling.predict_tiled(
      lambda t: np.full((len(t), t.shape[1] // stride, t.shape[2] // stride),
                        c), image, tile=48, overlap=16, stride=stride,
      multiple=8, blend=blend, batch_size=3)
  assert dens.shape == (height // stride, width // stride)
  np.testing.assert_allclose(dens.sum(), c * dens.size, rtol=1e-6)
  np.testing.assert_allclose(dens, c, rtol=1e-6)


def test_tiled_equals_untiled_for_equivariant_model(conv_model):
  fn, stride = conv_model
  image = np.asarray(jax.random.normal(jax.random.key(1), (72, 104, 3)))
  full = np.asarray(fn(image[None]))[0]
  # core: half the overlap (8 px) exceeds the receptive radius (3 px).
  core = tiling.predict_tiled(fn, image, tile=32, overlap=16, stride=stride,
                              multiple=8, blend="core")
  np.testing.assert_allclose(core, full, atol=1e-5)
  np.testing.assert_allclose(core.sum(), full.sum(), rtol=1e-5)
  # linear: exact away from tile seams, close (border effects) inside them.
  lin = tiling.predict_tiled(fn, image, tile=32, overlap=16, stride=stride,
                             multiple=8, blend="linear")
  boxes = tiling.tile_grid(72, 104, tile=32, overlap=16, multiple=8)
  seam = np.zeros(full.shape, bool)
  for y, x, h, w in boxes:
    for a, b in ((y, y + 3), (y + h - 3, y + h)):
      if 0 < a and b < 72:
        seam[a // stride:-(-b // stride), :] = True
    for a, b in ((x, x + 3), (x + w - 3, x + w)):
      if 0 < a and b < 104:
        seam[:, a // stride:-(-b // stride)] = True
  np.testing.assert_allclose(lin[~seam], full[~seam], atol=1e-5)
  scale = np.abs(full).max()
  assert np.abs(lin - full).max() < 0.25 * scale
  assert abs(lin.sum() - full.sum()) < 0.02 * np.abs(full).sum()


def test_stitch_rejects_wrong_tile_count():
  boxes = tiling.tile_grid(64, 64, tile=32, overlap=8, multiple=8)
  with pytest.raises(ValueError, match="densities"):
    tiling.stitch(np.zeros((2, 32, 32)), boxes, 64, 64, stride=1, overlap=8)
  with pytest.raises(ValueError, match="blend"):
    tiling.tile_weights(boxes, 64, 64, stride=1, overlap=8, blend="max")


def test_predict_densities_tiles_only_large_images(conv_model):
  fn, stride = conv_model
  calls = []

  def spy(inputs):
    calls.append(inputs["image"].shape)
    return fn(inputs["image"])

  images = np.asarray(jax.random.normal(jax.random.key(2), (2, 64, 96, 3)))
  whole = predict_lib.predict_densities(spy, images, stride=stride,
                                        multiple=8, max_size=96)
  assert calls == [(2, 64, 96, 3)]
  calls.clear()
  tiled = predict_lib.predict_densities(
      spy, images, stride=stride, multiple=8, max_size=64, tile_size=48,
      overlap=16, blend="core", tile_batch=2)
  assert all(c[1:] == (48, 48, 3) and c[0] <= 2 for c in calls)
  np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize("hw", [(32, 48), (64, 40)])
def test_nine_patch_core_stitch_is_the_official_central_regions(hw):
  # Official mPrompt stitching, written out: patch (i, j) gives rows
  # [0, 3H/8) / [3H/8, 5H/8) / [5H/8, H) for i = 0 / 1 / 2, columns alike.
  h, w = hw
  boxes = tiling.nine_patch_boxes(h, w)
  assert len(boxes) == 9 and boxes[4] == (h // 4, w // 4, h // 2, w // 2)
  dens = np.random.default_rng(0).random((9, h // 2, w // 2))
  got = tiling.stitch(dens, boxes, h, w, stride=1, overlap=h // 4,
                      blend="core")

  def part(r, n):
    return 0 if r < 3 * n // 8 else 1 if r < 5 * n // 8 else 2

  want = np.zeros((h, w))
  for r in range(h):
    for c in range(w):
      i, j = part(r, h), part(c, w)
      y0, x0 = boxes[3 * i + j][:2]
      want[r, c] = dens[3 * i + j, r - y0, c - x0]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Patches cut from one map stitch back to it (the same count).
  full = np.random.default_rng(1).random((h, w))
  cut = tiling.tile_image(full[..., None], boxes)[..., 0]
  np.testing.assert_allclose(
      tiling.stitch(cut, boxes, h, w, stride=1, overlap=h // 4,
                    blend="core"), full, rtol=1e-6)
  with pytest.raises(ValueError, match="multiples of 8"):
    tiling.nine_patch_boxes(36, 48)


def test_nine_patch_mode_of_predict_densities():
  images = np.random.default_rng(2).random((2, 32, 48, 3)).astype(np.float32)
  seen = []

  def predict(inputs):  # a pointwise model: stitching must give it back
    seen.append(inputs["image"].shape)
    return inputs["image"].sum(-1)

  got = predict_lib.predict_densities(predict, images, stride=1, multiple=8,
                                      max_size=None, tile_batch=4,
                                      mode="nine_patch")
  np.testing.assert_allclose(got, images.sum(-1), rtol=1e-6)
  assert seen == [(4, 16, 24, 3), (4, 16, 24, 3), (1, 16, 24, 3)] * 2
  with pytest.raises(ValueError, match="mode"):
    predict_lib.predict_densities(predict, images, stride=1, multiple=8,
                                  mode="ten_patch")
