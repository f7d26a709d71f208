"""ot_m against the official OT-M outputs, on Gaussian maps, on bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import ndimage

from counting_jax.data import shanghaitech
from counting_jax.localization import ot_m
from counting_jax.metrics import localization_metrics_fixed_radius

CASES = ["b20_blur_s8", "a1_blur_s8", "a1_noisy_s8", "b2_blur_s2",
         "a8_dense_s8", "b1_single_s8", "official_real_s8"]


def _run(ref, case, init, max_iter=16, **kwargs):
  k = int(ref[f"{case}/num"])
  return ot_m(ref[f"{case}/density"][None],
              stride=float(ref[f"{case}/scale_factor"]), max_points=k,
              init_points=init[None].astype(np.float32), max_iter=max_iter,
              **kwargs)


def _two_maps(ref):
  """(cases, maps [2, h, w], init [2, K, 2], K): two official cases of
  different counts, K the larger, the smaller one's initial points padded."""
  cases = ["b20_blur_s8", "a1_blur_s8"]
  k = max(int(ref[f"{c}/num"]) for c in cases)
  maps = np.stack([ref[f"{c}/density"] for c in cases])
  init = np.zeros((2, k, 2), np.float32)
  for b, c in enumerate(cases):
    pts = ref[f"{c}/init_points"][:, ::-1]
    init[b, :len(pts)] = pts
  return cases, maps, init, k


@pytest.mark.parametrize("case", CASES)
def test_matches_official_points(otm_ref, case):
  """From the official initial points ((row, col) -> (x, y)), the official
  output points within 0.1 px (float32 noise of the unconverged ε=0.01
  solve: moving the start by 1e-3 px moves the output by ~0.02 px)."""
  out = _run(otm_ref, case, otm_ref[f"{case}/init_points"][:, ::-1])
  ref = otm_ref[f"{case}/points"][:, ::-1]
  assert int(out.count[0]) == ref.shape[0]
  assert np.asarray(out.mask).all()
  np.testing.assert_allclose(np.asarray(out.points[0]), ref, atol=0.1)


@pytest.mark.parametrize("case", ["a1_noisy_s8", "a8_dense_s8"])
def test_one_step_matches_official_iterations(otm_ref, case):
  """Each official OT-M step, started from the official previous points."""
  iters = otm_ref[f"{case}/points_iter"][..., ::-1]
  for i in range(1, iters.shape[0]):
    out = _run(otm_ref, case, iters[i - 1], max_iter=1)
    np.testing.assert_allclose(np.asarray(out.points[0]), iters[i],
                               atol=1e-2)


def test_empty_map_gives_no_points(otm_ref):
  density = otm_ref["b1_empty_s8/density"]
  assert int(otm_ref["b1_empty_s8/num"]) == 0
  out = ot_m(density[None], stride=8, max_points=4)
  assert int(out.count[0]) == 0 and not np.asarray(out.mask).any()


def test_terminates_on_bad_maps():
  """NaN, negative, all-zero maps: no points; more objects than K: K points
  and the true count."""
  bad = np.zeros((4, 16, 16), np.float32)
  bad[0, 3, 3] = np.nan
  bad[1] = -1.0
  bad[3] = 1.0  # 256 objects, K = 8
  out = ot_m(bad, stride=4, max_points=8)
  np.testing.assert_array_equal(np.asarray(out.count), [0, 0, 0, 256])
  np.testing.assert_array_equal(np.asarray(out.mask).sum(1), [0, 0, 0, 8])
  assert np.isfinite(np.asarray(out.points)).all()


def _gaussian_map(points, shape, stride, sigma_px):
  """Point histogram on the stride grid, blurred by sigma_px."""
  h, w = shape
  dot = np.zeros((h, w), np.float32)
  cells = np.floor(points / stride).astype(np.int64)
  np.add.at(dot, (cells[:, 1], cells[:, 0]), 1.0)
  return ndimage.gaussian_filter(dot, sigma_px / stride, mode="constant")


def test_recovers_points_from_gaussian_maps(shared_data):
  """Real ShanghaiTech B points, Gaussian maps at stride 8 and 2 (batched,
  different counts): F1 >= 0.9 at an 8 px radius, and the batch gives what
  each map gives alone."""
  gt_dir = shared_data("shanghaitech") / "part_B" / "test_data" / \
      "ground-truth"
  sets = [shanghaitech.read_points(gt_dir / f"GT_IMG_{i}.mat")
          for i in (1, 2)]
  sets = [p[(p[:, 0] < 256) & (p[:, 1] < 256)] for p in sets]
  for stride in (8, 2):
    maps = np.stack([_gaussian_map(p, (256 // stride, 256 // stride),
                                   stride, 4.0) for p in sets])
    k = max(len(p) for p in sets) + 4
    out = ot_m(maps, stride=stride, max_points=k, key=jax.random.key(1))
    found = [np.asarray(out.points[b])[np.asarray(out.mask[b])]
             for b in range(2)]
    assert [len(f) for f in found] == [len(p) for p in sets]
    m = localization_metrics_fixed_radius(found, sets, 8.0)
    assert m["f1"] >= 0.9, (stride, m)


@pytest.mark.parametrize("separable", [None, True])
def test_batch_equals_single_maps(otm_ref, separable):
  """Two maps of different counts in one batch (K = the larger count, the
  smaller one padded) give the points of each map run alone, also through
  the separable passes (padded points)."""
  cases, maps, init, k = _two_maps(otm_ref)
  out = ot_m(maps, stride=8, max_points=k, init_points=init,
             separable=separable)
  for b, c in enumerate(cases):
    n = int(otm_ref[f"{c}/num"])
    alone = _run(otm_ref, c, otm_ref[f"{c}/init_points"][:, ::-1])
    assert np.asarray(out.mask[b]).sum() == n
    np.testing.assert_allclose(np.asarray(out.points[b, :n]),
                               np.asarray(alone.points[0]), atol=1e-2)


@pytest.mark.parametrize("case", ["a1_noisy_s8", "b2_blur_s2"])
def test_block_sizes_agree(otm_ref, case):
  """Small packed blocks (the CPU path: 256 pixels, several blocks) and one
  block holding the whole map (the default on GPU / TPU) both give the
  official points."""
  init = otm_ref[f"{case}/init_points"][:, ::-1]
  ref = otm_ref[f"{case}/points"][:, ::-1]
  for block in (256, 1 << 20):
    out = _run(otm_ref, case, init, block=block)
    np.testing.assert_allclose(np.asarray(out.points[0]), ref, atol=0.1,
                               err_msg=f"block={block}")


def test_bad_block():
  with pytest.raises(ValueError, match="block"):
    ot_m(np.ones((1, 4, 4), np.float32), stride=4, max_points=4, block=0)


def test_max_shifted_fallback_agrees(otm_ref, monkeypatch):
  """An empty accepted range forces every OT step onto the max-shifted
  passes (the fallback of the one-exp passes): both give the official
  points and agree with each other."""
  from counting_jax.localization import _otm
  case = "a1_noisy_s8"
  init = otm_ref[f"{case}/init_points"][:, ::-1]
  fast = np.asarray(_run(otm_ref, case, init).points[0])
  monkeypatch.setattr(_otm, "_LOG_RANGE", -1.0)
  jax.clear_caches()
  try:
    exact = np.asarray(_run(otm_ref, case, init).points[0])
  finally:
    jax.clear_caches()
  ref = otm_ref[f"{case}/points"][:, ::-1]
  np.testing.assert_allclose(exact, ref, atol=0.1)
  np.testing.assert_allclose(fast, exact, atol=0.05)
  assert not np.array_equal(fast, exact)  # the fallback did run


def test_off_cpu_path_agrees(otm_ref, monkeypatch):
  """The default off CPU (vmap over the batch, one block) gives the points
  of the CPU default (one map after the other, packed blocks)."""
  _, maps, init, k = _two_maps(otm_ref)
  cpu = ot_m(maps, stride=8, max_points=k, init_points=init, block=256)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  jax.clear_caches()
  try:
    other = ot_m(maps, stride=8, max_points=k, init_points=init)
  finally:
    jax.clear_caches()
  np.testing.assert_array_equal(np.asarray(cpu.mask), np.asarray(other.mask))
  np.testing.assert_allclose(np.asarray(cpu.points), np.asarray(other.points),
                             atol=0.05)


def test_separable_pass_equals_max_shifted_pass(otm_ref):
  """The separable pass (two matrix products over the grid) gives the
  softmins of the max-shifted pass to float32 rounding of the potentials'
  scale, from zero and from annealed potentials, and reports failure at
  ε = 0.01 (where its factors underflow) instead of returning a value."""
  from counting_jax import ot
  from counting_jax.localization import _otm
  case = "official_real_s8"
  density = otm_ref[f"{case}/density"].astype(np.float32)
  k = int(otm_ref[f"{case}/num"])
  stride = float(otm_ref[f"{case}/scale_factor"])
  h, w = density.shape
  a = density.reshape(-1) * k / density.sum()
  mass = a > 1e-12
  log_a = np.where(mass, np.log(np.where(mass, a, 1.0)), -np.inf)
  log_a = log_a.astype(np.float32)
  src = np.asarray(ot.pixel_centers(h, w, stride=stride))
  pts = (otm_ref[f"{case}/init_points"][:, ::-1] + 0.5).astype(np.float32)
  grid = (src[:w, 0], src[::w, 1], log_a.reshape(h, w))
  f, g = np.zeros(h * w, np.float32), np.zeros(k, np.float32)
  for eps in (2000.0, 100.0, 10.0):
    f_ref, g_ref = _otm._softmins_blocked(
        src[None], log_a[None], f[None], pts, np.zeros(k, np.float32), g,
        eps, 1, 1 / 64)
    f_ref, g_ref = np.asarray(f_ref).reshape(-1), np.asarray(g_ref)
    f_sep, g_sep, ok = _otm._softmins_separable(
        grid, f.reshape(h, w), pts, g, eps, 1 / 64, np.ones(k, bool))
    assert bool(ok), eps
    scale = np.abs(f_ref[mass]).max()
    np.testing.assert_allclose(np.asarray(f_sep).reshape(-1)[mass],
                               f_ref[mass], rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(np.asarray(g_sep), g_ref, rtol=0,
                               atol=1e-6 * np.abs(g_ref).max())
    f = np.where(mass, 0.5 * (f + f_ref), f).astype(np.float32)
    g = (0.5 * (g + g_ref)).astype(np.float32)
  _, _, ok = _otm._softmins_separable(grid, f.reshape(h, w), pts, g, 0.01,
                                      1 / 64, np.ones(k, bool))
  assert not bool(ok)


@pytest.mark.parametrize("case", ["official_real_s8", "a1_noisy_s8"])
def test_separable_passes_agree(otm_ref, case):
  """OT-M with and without the separable passes (the CPU default for large
  maps and the default elsewhere), on a real model's map and on a map with
  noise everywhere: both give the official points, and they differ (so the
  separable passes did run) only by float32 noise."""
  init = otm_ref[f"{case}/init_points"][:, ::-1]
  ref = otm_ref[f"{case}/points"][:, ::-1]
  out = {sep: np.asarray(_run(otm_ref, case, init, separable=sep).points[0])
         for sep in (False, True)}
  for sep, points in out.items():
    np.testing.assert_allclose(points, ref, atol=0.1, err_msg=f"{sep}")
  assert not np.array_equal(out[False], out[True])
  np.testing.assert_allclose(out[True], out[False], atol=0.15)
