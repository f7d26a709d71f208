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
