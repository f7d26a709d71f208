"""local_maxima against STEERER's official outputs and real point sets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from counting_jax.data import shanghaitech
from counting_jax.localization import local_maxima
from counting_jax.metrics import read_nwpu_gt


@pytest.mark.parametrize("case", ["lm_b20_clean", "lm_a1_noisy",
                                  "lm_a8_dense_pad"])
def test_matches_steerer(otm_ref, case):
  """STEERER's ``local_maximum_points`` (patch 32, threshold 0.2, clip to
  [0.2 g, 0.3 g]): the same points in the same (row-major) order; the last
  case is not a multiple of 32 (zero padding of the patch maxima)."""
  g = float(otm_ref["lm/gaussian_maximum"])
  density = otm_ref[f"{case}/density"][None]
  out = local_maxima(density, stride=1, patch_size=32, relative_threshold=0.2,
                     threshold=0.2 * g, max_threshold=0.3 * g,
                     center_offset=0.0, max_points=256)
  ref = otm_ref[f"{case}/points"]
  assert int(out.count[0]) == ref.shape[0] == int(otm_ref[f"{case}/num"])
  np.testing.assert_array_equal(np.asarray(out.points[0])[:ref.shape[0]], ref)
  assert not np.asarray(out.mask[0])[ref.shape[0]:].any()
  # Default centre: half a pixel further (this library's convention).
  centred = local_maxima(density, stride=1, patch_size=32,
                         relative_threshold=0.2, threshold=0.2 * g,
                         max_threshold=0.3 * g, max_points=256)
  np.testing.assert_array_equal(
      np.asarray(centred.points[0])[:ref.shape[0]], ref + 0.5)


def _isolated(points, stride, gap):
  """A greedy subset of the points (file order) whose cells are at least
  ``gap`` cells (Chebyshev) apart."""
  cells = np.floor(points / stride).astype(np.int64)
  kept = []
  for i, c in enumerate(cells):
    if all(np.abs(c - cells[j]).max() >= gap for j in kept):
      kept.append(i)
  return points[kept]


def _blurred_map(points, shape, stride, sigma_cells):
  h, w = shape
  dot = np.zeros((h, w), np.float32)
  cells = np.floor(points / stride).astype(np.int64)
  np.add.at(dot, (cells[:, 1], cells[:, 0]), 1.0)
  return ndimage.gaussian_filter(dot, sigma_cells, mode="constant")


def _real_point_sets(shared_data):
  sha = shared_data("shanghaitech") / "part_A" / "test_data" / "ground-truth"
  nwpu = read_nwpu_gt(shared_data("nwpu_crowd") / "eval" / "val_gt_loc.txt")
  sets = [shanghaitech.read_points(sha / "GT_IMG_1.mat"),
          nwpu[3110].points.astype(np.float64),
          nwpu[3250].points.astype(np.float64)]
  return [np.asarray(p, np.float64) for p in sets]


@pytest.mark.parametrize("stride", [1, 4, 8])
def test_recovers_isolated_real_points(shared_data, stride):
  """Maps built from real annotations (ShanghaiTech A, NWPU val): each
  isolated point gives exactly one peak, at the centre of its cell."""
  for points in _real_point_sets(shared_data):
    points = _isolated(points, stride, gap=4)
    assert len(points) > 20
    h = int(points[:, 1].max() // stride) + 3
    w = int(points[:, 0].max() // stride) + 3
    density = _blurred_map(points, (h, w), stride, 1.0)[None]
    out = local_maxima(density, stride=stride, threshold=1e-3,
                       max_points=len(points) + 8)
    found = np.asarray(out.points[0])[np.asarray(out.mask[0])]
    want = (np.floor(points / stride) + 0.5) * stride
    assert int(out.count[0]) == len(points)
    np.testing.assert_allclose(
        found[np.lexsort(found.T)], want[np.lexsort(want.T)], atol=1e-4)


def test_upsample_first_finds_peaks_near_points(shared_data):
  """GL's variant (bilinear x8 first): peaks within half a cell of the
  isolated points' cell centres, at least one per point."""
  points = _isolated(_real_point_sets(shared_data)[0], 8, gap=6)
  h = int(points[:, 1].max() // 8) + 3
  w = int(points[:, 0].max() // 8) + 3
  density = _blurred_map(points, (h, w), 8, 1.0)[None]
  out = local_maxima(density, stride=8, upsample=8, threshold=0.1,
                     max_points=8 * len(points))
  found = np.asarray(out.points[0])[np.asarray(out.mask[0])]
  centres = (np.floor(points / 8) + 0.5) * 8
  d = np.linalg.norm(found[:, None] - centres[None], axis=-1)
  assert d.min(1).max() <= 4.0
  assert (d.min(0) <= 4.0).all()


def test_bound_keeps_the_highest_peaks_in_row_major_order():
  density = np.zeros((1, 8, 8), np.float32)
  density[0, 1, 1], density[0, 1, 5], density[0, 5, 1] = 0.5, 0.9, 0.7
  out = local_maxima(density, stride=2, max_points=2)
  assert int(out.count[0]) == 3
  np.testing.assert_array_equal(np.asarray(out.points[0]),
                                [[11.0, 3.0], [3.0, 11.0]])
  assert np.asarray(out.mask).all()


def test_empty_and_batched():
  density = np.zeros((2, 6, 6), np.float32)
  density[1, 2, 3] = 1.0
  out = local_maxima(density, stride=4, max_points=3)
  np.testing.assert_array_equal(np.asarray(out.count), [0, 1])
  np.testing.assert_array_equal(np.asarray(out.mask),
                                [[False] * 3, [True, False, False]])
  np.testing.assert_array_equal(np.asarray(out.points[1, 0]), [14.0, 10.0])


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match="B, h, w"):
    local_maxima(np.zeros((4, 4)), stride=1)
  with pytest.raises(ValueError, match="odd"):
    local_maxima(np.zeros((1, 4, 4)), stride=1, window=2)
