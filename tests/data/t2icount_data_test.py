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


def _coded_sample(name, cls, h, w, n, part, rng):
  """An image whose pixel (r, c) is (r, c, 40 part): a tile of it says
  where it was cut from (h, w < 256)."""
  r, c = np.mgrid[:h, :w]
  img = np.stack([r, c, np.full_like(r, 40 * part)], -1).astype(np.uint8)
  pts = rng.uniform(0, [w, h], (n, 2)).astype(np.float32)
  s = make_sample(img, pts, name, class_name=cls)
  s["density"] = td.pixel_density(pts, h, w)
  return s


def test_mosaic_density_is_its_tiles_crops():
  rng = np.random.default_rng(1)
  parts = [_coded_sample("a", "apples", 250, 240, 30, 0, rng),
           _coded_sample("b", "cars", 230, 255, 20, 1, rng),
           _coded_sample("c", "apples", 240, 226, 25, 2, rng),
           _coded_sample("d", "birds", 224, 250, 10, 3, rng)]
  m = td.mosaic(parts[0], parts[1:], np.random.default_rng(5))
  assert m["image"].shape == (448, 448, 3) and m["class_name"] == "apples"
  assert m["density"].shape == (448, 448)
  seen, want_sum, want_pts = set(), 0.0, 0
  for r in range(2):
    for c in range(2):
      q = (slice(224 * r, 224 * (r + 1)), slice(224 * c, 224 * (c + 1)))
      top, left, code = (int(v) for v in m["image"][q][0, 0])
      p = parts[code // 40]
      seen.add(code // 40)
      window = (slice(top, top + 224), slice(left, left + 224))
      np.testing.assert_array_equal(m["image"][q], p["image"][window])
      same = p["class_name"] == "apples"
      want = p["density"][window] if same else np.zeros((224, 224))
      np.testing.assert_array_equal(m["density"][q], want)
      assert (m["masks"][q] == float(same)).all()
      if same:
        want_sum += p["density"][window].sum()
        x, y = p["points"][:, 0], p["points"][:, 1]
        want_pts += int(((x >= left) & (x < left + 224) & (y >= top)
                         & (y < top + 224)).sum())
  assert seen == {0, 1, 2, 3}
  assert len(m["points"]) == want_pts
  # The mass of objects cut by a tile border stays partly in the tile (as
  # the official cropped density files): not a whole 1 per point.
  np.testing.assert_allclose(m["density"].sum(), want_sum, rtol=1e-5)
  out = td.add_targets(m)
  np.testing.assert_allclose(out["gt_density"].sum(), 60 * want_sum,
                             rtol=1e-5)
  assert out["gt_density"].shape == out["region"].shape == (56, 56)
  with pytest.raises(ValueError, match="only some samples"):
    td.mosaic(parts[0], [{k: v for k, v in parts[1].items()
                          if k != "density"}] + parts[2:], rng)


def _draws(pool):
  def draw(k):
    return [dict(p) for p in pool[:k]]
  return draw


def test_official_mix_branches_and_negative_prompt():
  rng = np.random.default_rng(2)
  a = _coded_sample("a", "apples", 240, 240, 12, 0, rng)
  del a["density"]
  other = _coded_sample("b", "cars", 240, 240, 5, 1, rng)
  neg = td.official_mix(a, np.random.default_rng(0), _draws([other]),
                        negative_prob=1.0, mosaic_prob=0.0)
  assert neg["class_name"] == "cars" and len(neg["points"]) == 0
  assert not neg["density"].any() and not neg["masks"].any()
  out = td.add_targets(neg)
  assert not out["gt_density"].any() and not out["region"].any()
  # The drawn image has the same class: the sample is unchanged.
  same = td.official_mix(a, np.random.default_rng(0),
                         _draws([{**other, "class_name": "apples"}]),
                         negative_prob=1.0, mosaic_prob=0.0)
  assert same["class_name"] == "apples" and len(same["points"]) == 12
  np.testing.assert_allclose(same["density"], td.pixel_density(
      a["points"], 240, 240))
  # Branch frequencies: plain 0.5, negative 0.25, mosaic 0.25.
  small = make_sample(np.zeros((20, 20, 3), np.uint8), [[3.0, 3.0]], "s",
                      class_name="apples")
  pool = [make_sample(np.zeros((20, 20, 3), np.uint8), [], f"o{i}",
                      class_name="cars") for i in range(3)]
  kinds = []
  g = np.random.default_rng(3)
  for _ in range(2000):
    s = td.official_mix(small, g, _draws(pool), tile=8)
    kinds.append("mosaic" if s["image"].shape[0] == 16 else
                 "negative" if s["class_name"] == "cars" else "plain")
  freq = {k: kinds.count(k) / len(kinds) for k in set(kinds)}
  assert abs(freq["plain"] - 0.5) < 0.04, freq
  assert abs(freq["negative"] - 0.25) < 0.04, freq
  assert abs(freq["mosaic"] - 0.25) < 0.04, freq
  with pytest.raises(ValueError, match="negative_prob"):
    td.official_mix(small, g, _draws(pool), negative_prob=0.8,
                    mosaic_prob=0.3)
  with pytest.raises(ValueError, match="target_density"):
    td.official_mix(small, g, _draws(pool), density="famnet")


def test_carried_density_matches_official_transform(shared_dir):
  """The full-image map through the official rescale / crop / block sum /
  flip (``den_dataset`` of the official dataset code, from a stand-in
  full-image map of the same Gaussians; only its pixel discretisation and
  cv2's bicubic kernel differ from ours)."""
  z = np.load(shared_dir / "reference/official_values/t2icount.npz")
  from counting_jax.data import transforms as tr
  for case in ("fsc2287_plain", "fsc687_rescaled"):
    pts = z[f"{case}/fsc_points"]
    w, h = (int(v) for v in z[f"{case}/image_wh"])
    rescaled, s, top, left, flipped = z[f"{case}/transform"]
    smp = make_sample(np.zeros((h, w, 3), np.uint8), pts, case)
    smp["density"] = td.pixel_density(pts, h, w)
    if rescaled:
      smp = tr.resize(smp, int(h * s), int(w * s))
    smp = tr.crop(smp, int(top), int(left), 384, 384)
    if flipped:
      smp = tr.hflip(smp)
    got = td.add_targets(smp)["gt_density"] / 60
    want = z[f"{case}/den_dataset"][0]
    np.testing.assert_allclose(got.sum(), want.sum(), rtol=2e-3)
    # Measured: relative L1 0.057 / 0.078 and correlation 0.997 / 0.988;
    # a crop one cell off gives 0.52 / 0.48 and 0.77 / 0.58.
    assert np.abs(got - want).sum() < 0.1 * np.abs(want).sum(), case
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98, case
