"""T2ICount host-side data: x60 block density, targets hook, negative
prompts and mosaics (region map R, dropped points)."""

from __future__ import annotations

import numpy as np
import pytest

from counting_jax.data import t2icount as td
from counting_jax.data.sample import make_sample


def test_block_density_mass_and_placement():
  pts = np.array([[100.0, 100.0], [180.0, 60.0], [184.0, 64.0]],
                 np.float32)
  d = td.block_density(pts, 192, 256)
  assert d.shape == (24, 32) and d.dtype == np.float32
  # Far from the border all mass stays inside: 60 per point (the ±4σ
  # window is normalised to 1).
  np.testing.assert_allclose(d.sum(), 180.0, rtol=1e-5)
  # A tight cluster: σ = 0.3 x mean 3-NN distance (4 px apart -> 1.4 px),
  # so most of its mass lies in the cell holding it (a lone point's σ of
  # 12 px would leave it about a quarter).
  cluster = np.array([[98, 98], [102, 98], [98, 102], [102, 102]],
                     np.float32)
  c = td.block_density(cluster, 192, 256)
  assert c[12, 12] > 0.75 * 240
  assert np.unravel_index(d[:, :16].argmax(), (24, 16)) == (12, 12)
  # A lone point gets σ = 12 px; a point on the border loses half its mass.
  edge = td.block_density(np.array([[0.0, 128.0]]), 256, 64)
  np.testing.assert_allclose(edge.sum(), 30.0, rtol=1e-4)
  assert not td.block_density(np.zeros((0, 2)), 64, 64).any()
  with pytest.raises(ValueError, match="multiple of stride"):
    td.block_density(pts, 60, 64)


def test_add_targets_region_from_masks():
  image = np.zeros((64, 64, 3), np.uint8)
  s = make_sample(image, [[10.0, 10.0]], "a", class_name="apples")
  out = td.add_targets(s)
  np.testing.assert_array_equal(out["region"], np.ones((8, 8)))
  masks = np.zeros((64, 64, 1), np.float32)
  masks[:, 32:] = 1.0
  out = td.add_targets({**s, "masks": masks})
  assert "masks" not in out
  np.testing.assert_array_equal(out["region"][:, :4], 0.0)
  np.testing.assert_array_equal(out["region"][:, 4:], 1.0)
  with pytest.raises(ValueError, match="a: image 60x64"):
    td.add_targets({**s, "image": np.zeros((60, 64, 3), np.uint8)})


def test_negative_prompt_and_mosaic():
  rng = np.random.default_rng(0)
  def sample(name, cls, n):
    img = rng.integers(0, 255, (300, 260, 3), np.uint8)
    pts = rng.uniform(0, 250, (n, 2)).astype(np.float32)
    return make_sample(img, pts, name, class_name=cls)
  a = sample("a", "apples", 40)
  neg = td.negative_prompt(a, "cars")
  assert neg["class_name"] == "cars" and len(neg["points"]) == 0
  assert not neg["masks"].any()
  same = td.negative_prompt(a, "apples")
  assert len(same["points"]) == 40 and same["masks"].all()
  others = [sample("b", "cars", 30), sample("c", "apples", 30),
            sample("d", "birds", 30)]
  m = td.mosaic(a, others, rng)
  assert m["image"].shape == (448, 448, 3) and m["class_name"] == "apples"
  r = m["masks"][..., 0]
  # Two tiles (the anchor's and c's) keep R = 1 and their points.
  assert r.sum() == 2 * 224 * 224
  px = m["points"].astype(int).clip(0, 447)
  assert r[px[:, 1], px[:, 0]].all()
  with pytest.raises(ValueError, match="3 other"):
    td.mosaic(a, others[:2], rng)


def test_read_fsc147_s(tmp_path):
  path = tmp_path / "FSC-147-S.json"
  path.write_text('{"7.jpg": {"class": "red apples", "count": 3}, '
                  '"9.jpg": {"class": "cups", "count": 117}}')
  assert td.read_fsc147_s(path) == {"7.jpg": ("red apples", 3),
                                    "9.jpg": ("cups", 117)}
  path.write_text('{"7.jpg": {"class": "red apples"}}')
  with pytest.raises(ValueError, match="'7.jpg' needs"):
    td.read_fsc147_s(path)
