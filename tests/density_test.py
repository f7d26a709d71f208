"""Density maps: mass preservation, pooling, agreement with closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage, spatial, special

from counting_jax import density, grid

_density = jax.jit(density.gaussian_density,
                   static_argnames=("shape", "stride", "kernel", "scale",
                                    "method"))


def _points(rng, n, size):
  return rng.uniform(0, size, (n, 2)).astype(np.float32)


@pytest.mark.parametrize("kernel", ["integrated", "sampled"])
@pytest.mark.parametrize("stride", [1, 4])
def test_mass_equals_count_including_border_points(kernel, stride):
  rng = np.random.default_rng(0)
  pts = np.concatenate([_points(rng, 20, 64),
                        [[0.1, 0.1], [63.9, 32.0], [0.0, 63.99]]]).astype(np.float32)
  mask = np.ones(len(pts), bool)
  d = _density(pts, mask, shape=(64 // stride, 64 // stride), sigma=6.0,
               stride=stride, kernel=kernel)
  np.testing.assert_allclose(float(d.sum()), len(pts), rtol=1e-5)
  assert np.all(np.asarray(d) >= 0)


def test_mask_and_outside_points_contribute_nothing():
  pts = np.array([[10.5, 10.5], [100.0, 5.0], [-1.0, 3.0], [20.0, 20.0]],
                 np.float32)
  mask = np.array([True, True, True, False])
  d = _density(pts, mask, shape=(32, 32), sigma=2.0, stride=1,
               kernel="integrated")
  np.testing.assert_allclose(float(d.sum()), 1.0, rtol=1e-6)


def test_integrated_at_stride_equals_sum_pool_of_full_resolution():
  rng = np.random.default_rng(1)
  pts = _points(rng, 30, 64)
  mask = np.ones(30, bool)
  full = _density(pts, mask, shape=(64, 64), sigma=3.0, stride=1,
                  kernel="integrated")
  coarse = _density(pts, mask, shape=(8, 8), sigma=3.0, stride=8,
                    kernel="integrated")
  np.testing.assert_allclose(np.asarray(density.sum_pool(full, 8)),
                             np.asarray(coarse), atol=1e-5)


def test_integrated_kernel_matches_erf_closed_form_far_from_border():
  x, y, s = 20.3, 31.7, 2.5
  d = np.asarray(_density(np.array([[x, y]], np.float32), np.array([True]),
                          shape=(64, 64), sigma=s, stride=1,
                          kernel="integrated"), np.float64)
  e = np.arange(65, dtype=np.float64)
  px = np.diff(special.ndtr((e - x) / s))
  py = np.diff(special.ndtr((e - y) / s))
  np.testing.assert_allclose(d, np.outer(py, px), atol=2e-6)


def test_sampled_kernel_matches_gaussian_filter_of_dot_map():
  dots = np.zeros((48, 48))
  pts = np.array([[20.5, 24.5], [30.5, 10.5]], np.float32)  # pixel centres
  for x, y in pts:
    dots[int(y), int(x)] = 1
  ref = ndimage.gaussian_filter(dots, 3.0, mode="constant", truncate=8.0)
  d = _density(pts, np.ones(2, bool), shape=(48, 48), sigma=3.0, stride=1,
               kernel="sampled")
  np.testing.assert_allclose(np.asarray(d), ref, atol=1e-5)


def test_scale_multiplies_the_map():
  pts = np.array([[5.0, 5.0]], np.float32)
  d1 = _density(pts, np.array([True]), shape=(16, 16), sigma=1.0)
  d100 = _density(pts, np.array([True]), shape=(16, 16), sigma=1.0,
                  scale=100.0)
  np.testing.assert_allclose(np.asarray(d100), 100 * np.asarray(d1),
                             rtol=1e-5)


def test_per_point_sigma_and_no_points():
  d = _density(np.zeros((3, 2), np.float32), np.zeros(3, bool),
               shape=(8, 8), sigma=np.array([1.0, 2.0, 3.0], np.float32))
  assert float(jnp.abs(d).sum()) == 0.0


def test_knn_sigma_matches_brute_force():
  rng = np.random.default_rng(2)
  pts = _points(rng, 40, 100)
  dist = spatial.distance.cdist(pts, pts)
  np.fill_diagonal(dist, np.inf)
  ref = 0.3 * np.sort(dist, axis=1)[:, :3].mean(1)
  np.testing.assert_allclose(density.knn_sigma(pts), ref, rtol=1e-5)
  assert density.knn_sigma(pts[:1], isolated_sigma=7.0).tolist() == [7.0]
  assert density.knn_sigma(np.zeros((0, 2))).shape == (0,)
  two = density.knn_sigma(pts[:2], k=3, beta=1.0)  # fewer than k neighbours
  np.testing.assert_allclose(two, np.linalg.norm(pts[0] - pts[1]), rtol=1e-5)


def test_sum_pool_rejects_indivisible_shape():
  with pytest.raises(ValueError, match="stride 3"):
    density.sum_pool(jnp.ones((8, 8)), 3)


def test_grid_conventions():
  np.testing.assert_allclose(grid.cell_centers(3, 8), [4, 12, 20])
  np.testing.assert_allclose(grid.cell_centers(3, 8, offset=8), [8, 16, 24])
  np.testing.assert_array_equal(
      grid.cell_index(jnp.array([[7.99, 8.0]]), 8), [[0, 1]])
  # On the map's right / bottom edge: the last cell, with the map's shape.
  edge = jnp.array([[24.0, 16.0], [0.0, 16.0], [24.0, 17.0]])
  np.testing.assert_array_equal(grid.cell_index(edge, 8, shape=(2, 3)),
                                [[2, 1], [0, 1], [2, 2]])
  np.testing.assert_array_equal(grid.cell_index(edge, 8),
                                [[3, 2], [0, 2], [3, 2]])


def test_bad_points_shape_raises():
  with pytest.raises(ValueError, match="points must be"):
    density.gaussian_density(np.zeros((3, 3)), np.ones(3, bool), (4, 4), 1.0)


def test_adaptive_sigma_matches_knn_sigma_with_padding():
  rng = np.random.default_rng(3)
  pts = _points(rng, 25, 80)
  padded = np.concatenate([pts, np.zeros((7, 2), np.float32)])
  mask = np.arange(32) < 25
  got = jax.jit(density.adaptive_sigma)(padded, mask)
  np.testing.assert_allclose(np.asarray(got)[:25], density.knn_sigma(pts),
                             rtol=1e-5)
  lone = density.adaptive_sigma(padded, np.arange(32) < 1, isolated_sigma=9.0)
  assert float(lone[0]) == 9.0


@pytest.mark.parametrize("kernel", ["integrated", "sampled"])
@pytest.mark.parametrize("stride,sigma", [(1, 1.5), (2, 4.0), (8, 4.0)])
def test_windowed_fixed_sigma_equals_dense(kernel, stride, sigma):
  """A fixed σ takes the ±5.5σ windowed scatter by default; the dense
  product is asked for explicitly. Same map to float32 rounding, border, outside and padded points
  included."""
  rng = np.random.default_rng(stride)
  side = 128 // stride
  pts = np.concatenate([_points(rng, 60, 128),
                        [[0.0, 0.0], [127.9, 64.0], [3.0, 127.99],
                         [-5.0, 20.0], [40.0, 200.0]]]).astype(np.float32)
  mask = np.ones(len(pts), bool)
  mask[5] = False
  windowed = jax.jit(lambda p, m: density.gaussian_density(
      p, m, (side, side), sigma, stride=stride, kernel=kernel))(pts, mask)
  dense = _density(pts, mask, shape=(side, side), sigma=sigma,
                   stride=stride, kernel=kernel, method="dense")
  np.testing.assert_allclose(windowed, dense, rtol=0,
                             atol=2e-6 * float(np.max(dense)))
  np.testing.assert_allclose(float(windowed.sum()), 62.0, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["integrated", "sampled"])
def test_windowed_equals_dense_on_a_flat_map(kernel):
  """A 6 x 40 map at stride 8, σ = 2: the window (5 cells, widened to 6, not
  8, by the map's height) is shifted inside the map at its borders."""
  rng = np.random.default_rng(7)
  pts = np.concatenate([rng.uniform((0, 0), (320, 48), (30, 2)),
                        [[0.0, 0.0], [319.9, 47.9], [160.0, 0.5]]])
  pts = pts.astype(np.float32)
  mask = np.ones(len(pts), bool)
  windowed = density.gaussian_density(pts, mask, (6, 40), 2.0, stride=8,
                                      kernel=kernel)
  dense = density.gaussian_density(pts, mask, (6, 40), 2.0, stride=8,
                                   kernel=kernel, method="dense")
  np.testing.assert_allclose(windowed, dense, rtol=0,
                             atol=2e-6 * float(np.max(dense)))
  np.testing.assert_allclose(float(windowed.sum()), 33.0, rtol=1e-5)


def test_count_in_image_masks_padding_counts_straddling_cells():
  # 300 x 300 image padded to 304 (pad_multiple 8) at stride 8: 38 x 38
  # cells, the last row/column straddling the edge (296..304).
  dens = np.ones((2, 40, 40), np.float32)
  size = np.array([[300, 300], [17, 300]], np.int32)
  counts = np.asarray(density.count_in_image(dens, size, 8))
  # Straddling cells count in full: ceil(300 / 8) = 38, ceil(17 / 8) = 3.
  np.testing.assert_array_equal(counts, [38 * 38, 3 * 38])
  mask = np.asarray(density.image_mask((40, 40), size, 8))
  assert mask[0, 37, 37] and not mask[0, 38, 0] and not mask[1, 3, 0]
  crop = density.crop_to_image(dens[1], size[1], 8)
  assert crop.shape == (3, 38)
  # Stride 1: exactly the real pixels.
  d = np.random.default_rng(0).random((1, 24, 32)).astype(np.float32)
  np.testing.assert_allclose(
      density.count_in_image(d, [[20, 27]], 1), [d[0, :20, :27].sum()],
      rtol=1e-6)
  with pytest.raises(ValueError, match="more cells than the density map"):
    density.count_in_image(d, [[30, 27]], 1)


def test_median_nearest_distance_and_spacing_sigma():
  # A square lattice of spacing 5: every nearest distance is 5.
  xs, ys = np.meshgrid(np.arange(4) * 5.0, np.arange(3) * 5.0)
  lattice = np.stack([xs.ravel(), ys.ravel()], -1)
  assert density.median_nearest_distance([lattice, [[1.0, 1.0]]]) == 5.0
  assert density.spacing_sigma([lattice], fraction=0.4) == 2.0
  with pytest.raises(ValueError, match="no image has two points"):
    density.median_nearest_distance([np.zeros((1, 2))])


def _border_points(h, w):
  """Points on all four borders and corners of an h x w image (pixels)."""
  return np.array([[0, h / 2 + 0.5], [w, h / 2 + 0.5], [w / 2 + 0.5, 0],
                   [w / 2 + 0.5, h], [0, 0], [w, h], [0, h], [w, 0]],
                  np.float32)


@pytest.mark.parametrize("method", ["windowed", "dense"])
@pytest.mark.parametrize("kernel", ["integrated", "sampled"])
@pytest.mark.parametrize("stride", [1, 4])
def test_points_on_every_border_keep_their_mass(method, kernel, stride):
  """x = 0, x = W, y = 0, y = H (corners too) each carry mass 1, and the map
  of the flipped points is the flipped map (x -> W - x)."""
  h, w = 32, 48
  pts = _border_points(h, w)
  mask = np.ones(len(pts), bool)
  run = jax.jit(lambda p, m: density.gaussian_density(
      p, m, (h // stride, w // stride), 2.0, stride=stride, kernel=kernel,
      method=method))
  d = np.asarray(run(pts, mask))
  np.testing.assert_allclose(d.sum(), len(pts), rtol=1e-5)
  # Each point's kernel on its own: mass 1 (no point half-counted).
  for p in pts:
    np.testing.assert_allclose(
        float(run(p[None], np.ones(1, bool)).sum()), 1.0,
        rtol=1e-5)
  if kernel == "integrated":  # cell edges are symmetric under the flips
    hflipped = pts * [-1, 1] + [w, 0]
    vflipped = pts * [1, -1] + [0, h]
    np.testing.assert_allclose(run(hflipped, mask), d[:, ::-1], atol=2e-6)
    np.testing.assert_allclose(run(vflipped, mask), d[::-1], atol=2e-6)
  # Just outside the closed region: no mass.
  out = np.array([[w + 1e-3, 3.0], [3.0, h + 1e-3], [-1e-3, 3.0]],
                 np.float32)
  assert float(run(out, np.ones(3, bool)).sum()) == 0.0


def test_method_follows_sigma_value_not_its_python_type(monkeypatch):
  """Python, NumPy and 0-d JAX σ take the windowed path by default; arrays
  per point and traced σ the dense one; "windowed" refuses those."""
  calls = []
  real = density._windowed
  monkeypatch.setattr(density, "_windowed",
                      lambda *a: calls.append(1) or real(*a))
  pts = np.array([[10.0, 12.0], [30.5, 3.0]], np.float32)
  mask = np.ones(2, bool)
  ref = density.gaussian_density(pts, mask, (32, 40), 2.0, method="dense")
  for sigma in (2.0, 2, np.float32(2.0), np.float64(2.0), jnp.float32(2.0),
                np.array(2.0, np.float32)):
    calls.clear()
    d = density.gaussian_density(pts, mask, (32, 40), sigma)
    assert calls, type(sigma)
    np.testing.assert_allclose(d, ref, atol=2e-6)
  for sigma in (np.full(2, 2.0, np.float32), jnp.full(2, 2.0)):
    calls.clear()
    d = density.gaussian_density(pts, mask, (32, 40), sigma)
    assert not calls
    np.testing.assert_allclose(d, ref, atol=2e-6)
    with pytest.raises(ValueError, match="windowed"):
      density.gaussian_density(pts, mask, (32, 40), sigma, method="windowed")
  calls.clear()
  traced = jax.jit(lambda s: density.gaussian_density(pts, mask, (32, 40), s))
  np.testing.assert_allclose(traced(2.0), ref, atol=2e-6)
  assert not calls
  with pytest.raises(ValueError, match="method"):
    density.gaussian_density(pts, mask, (32, 40), 2.0, method="fast")
