"""Official T2ICount evaluation tiling against a PyTorch re-statement of
the official procedure (bilinear x8, / 64, overlap averaging)."""

from __future__ import annotations

import numpy as np
import pytest

from counting_jax.train import t2icount_tiling as tt


def test_tile_starts():
  assert tt.official_tile_starts(384) == [0]
  assert tt.official_tile_starts(500) == [0, 116]
  assert tt.official_tile_starts(768) == [0, 384]
  assert tt.official_tile_starts(1280) == [0, 384, 768, 896]
  assert tt.official_tile_starts(200) == [0]


def test_matches_torch_restatement():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  g = np.random.default_rng(0)
  h, w = 400, 800
  image = g.normal(size=(h, w, 3)).astype(np.float32)

  def predict(tiles):  # a tile-dependent fake 48² map, x60 domain
    pooled = tiles.reshape(len(tiles), 48, 8, 48, 8, 3).mean((2, 4, 5))
    return 60.0 * np.abs(pooled)

  got = tt.official_tiled_density(predict, image, chunk=4)
  total = torch.zeros(1, 1, h, w, dtype=torch.float64)
  count = torch.zeros(1, 1, h, w, dtype=torch.float64)
  for t in (0, 16):
    for l in (0, 384, 416):
      m = torch.from_numpy(predict(image[None, t:t + 384, l:l + 384]))
      up = F.interpolate(m[:, None], scale_factor=8, mode="bilinear",
                         align_corners=False) / 64
      total[..., t:t + 384, l:l + 384] += up.double()
      count[..., t:t + 384, l:l + 384] += 1
  want = (total / count / 60)[0, 0].numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert got.shape == (h, w)


def test_small_image_is_padded_and_cropped():
  got = tt.official_tiled_density(
      lambda t: np.full((len(t), 48, 48), 60.0, np.float32),
      np.zeros((300, 384, 3), np.float32))
  assert got.shape == (300, 384)
  np.testing.assert_allclose(got, 1 / 64, rtol=1e-6)
  with pytest.raises(ValueError, match="H, W, 3"):
    tt.official_tiled_density(lambda t: t, np.zeros((8, 8)))


def test_eval_mode_t2icount_equals_the_official_function():
  """``predict_counts`` with ``eval_tiling.mode = "t2icount"`` (what eval
  and predict call) on a tiny Flax model that reads image and tokens: the
  count of a padded image equals the official tiling of the real image."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from counting_jax.configs import fsc147_t2icount  # pylint: disable=g-import-not-at-top
  from counting_jax.train import predict as predict_lib  # pylint: disable=g-import-not-at-top

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, image, tokens):
      x = nn.Conv(4, (3, 3))(image)
      x = nn.Conv(1, (8, 8), strides=8)(jnp.tanh(x))[..., 0]
      return jax.nn.softplus(x) * (1.0 + tokens[:, :1, None] / 10.0)

  model = Tiny()
  g = np.random.default_rng(1)
  image = np.zeros((1, 128, 192, 3), np.float32)  # padded to 64
  image[0, :70, :150] = g.normal(size=(70, 150, 3))
  tokens = np.array([[3, 5]], np.int32)
  params = model.init(jax.random.key(0), image[:, :32, :32], tokens)
  apply = jax.jit(model.apply)

  def predict(inputs):
    return np.asarray(apply(params, inputs["image"], inputs["tokens"]))

  tiling_kwargs = dict(fsc147_t2icount.get_config().eval_tiling)
  assert tiling_kwargs["mode"] == "t2icount"
  tiling_kwargs.update(tile_size=32, tile_batch=4)
  size = np.array([[70, 150]], np.int32)
  dens, counts = predict_lib.predict_counts(
      predict, {"image": image, "tokens": tokens}, size, stride=8,
      multiple=64, **tiling_kwargs)
  want = tt.official_tiled_density(
      lambda t: predict({"image": t, "tokens": np.repeat(tokens, len(t), 0)}),
      image[0, :70, :150], tile=32, stride=8, chunk=4, density_scale=1.0)
  assert dens.shape == (1, 16, 24)
  np.testing.assert_allclose(counts[0], want.sum(), rtol=1e-5)
  full = np.zeros((128, 192), np.float32)
  full[:70, :150] = want
  np.testing.assert_allclose(
      dens[0], full.reshape(16, 8, 24, 8).sum((1, 3)), rtol=1e-5, atol=1e-7)
  # The shared tiler gives another count here (no shifted last tile).
  shared = dict(tiling_kwargs, mode="tiles", max_size=32)
  _, other = predict_lib.predict_counts(
      predict, {"image": image, "tokens": tokens}, size, stride=8,
      multiple=32, **shared)
  assert abs(other[0] - counts[0]) > 1e-3 * abs(counts[0])
  with pytest.raises(ValueError, match="eval_tiling.mode"):
    predict_lib.predict_counts(predict, {"image": image, "tokens": tokens},
                               size, stride=8, multiple=64, mode="bogus")
