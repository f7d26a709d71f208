"""mPrompt's host-side targets against the official constructor's values
(``../shared/reference/official_values/mprompt.npz``, 5 ShanghaiTech cases:
resize, in-place point rounding, density, B(y), K-NN mask with K and radius
per point, 400 x 400 crops)."""

from __future__ import annotations

import numpy as np
import pytest

from counting_jax.methods import mprompt_targets as mt

CASES = ("sha4_upscaled", "sha1", "shb2", "sha8_dense", "shb1_3points")


@pytest.fixture(scope="module")
def ref(official_values):
  return official_values("mprompt")


def _targets(ref, case):
  w, h = (int(v) for v in ref[f"{case}/image_wh"])
  rh, rw = mt.resize_shape(h, w, "sha" if case.startswith("sha") else "none")
  px = mt.resize_points(ref[f"{case}/points_orig"], (h, w), (rh, rw))
  return (rh, rw), px


@pytest.mark.parametrize("case", CASES)
def test_targets_equal_the_official_constructor(ref, case):
  (rh, rw), px = _targets(ref, case)
  assert (rh, rw) == tuple(ref[f"{case}/resized_hw"])
  np.testing.assert_array_equal(px, ref[f"{case}/points_resized"])
  density = mt.density_map(px, rh, rw)
  np.testing.assert_array_equal(
      density, ref[f"{case}/density_full_f16"].astype(np.float32))
  by = mt.point_mask(density)
  np.testing.assert_array_equal(by, ref[f"{case}/mask_full"].astype(bool))
  knn = mt.knn_mask(px, rh, rw)
  np.testing.assert_array_equal(knn,
                                ref[f"{case}/mask_knn_full"].astype(bool))
  if len(px) >= 4:
    k, r = mt.knn_radii(px)
    np.testing.assert_array_equal(k, ref[f"{case}/knn_k"])
    np.testing.assert_array_equal(r, ref[f"{case}/knn_radius"])
  else:
    assert knn.all() and ref[f"{case}/knn_k"].size == 0
    with pytest.raises(ValueError, match="at least k"):
      mt.knn_radii(px)
  top, left = (int(v) for v in ref[f"{case}/crop_rh_rw"])
  crop = np.s_[top:top + 400, left:left + 400]
  np.testing.assert_array_equal(density[crop],
                                ref[f"{case}/gt_map"][0].astype(np.float32))
  np.testing.assert_array_equal(by[crop], ref[f"{case}/mask"][0] > 0)
  np.testing.assert_array_equal(knn[crop], ref[f"{case}/mask_knn"][0] > 0)


def test_hook_resizes_and_stacks_the_targets(ref):
  case = "sha4_upscaled"
  w, h = (int(v) for v in ref[f"{case}/image_wh"])
  sample = {"image": np.zeros((h, w, 3), np.uint8),
            "points": ref[f"{case}/points_orig"].astype(np.float32),
            "boxes": np.zeros((0, 4), np.float32), "image_id": "a4",
            "class_name": ""}
  out = mt.add_targets(sample, rule="sha")
  assert out["image"].shape == (416, 640, 3)
  assert out["masks"].shape == (416, 640, 3)
  # Sample points are float32: x = 250.50000000001 (float64, .mat) becomes
  # 250.5 and rounds to 250 (half to even) instead of 251; the only change.
  px = mt.resize_points(sample["points"], (h, w), (416, 640))
  moved = (px != ref[f"{case}/points_resized"]).any(1)
  assert moved.sum() == 1
  np.testing.assert_array_equal(out["points"] - 0.5, px)
  np.testing.assert_array_equal(out["masks"][..., 0],
                                mt.density_map(px, 416, 640))
  np.testing.assert_array_equal(out["masks"][..., 1],
                                out["masks"][..., 0] > 0)
  np.testing.assert_array_equal(out["masks"][..., 2],
                                mt.knn_mask(px, 416, 640))
  far = np.ones((416, 640), bool)  # density away from the moved point
  x, y = px[moved][0]
  far[max(0, y - 60):y + 60, max(0, x - 60):x + 60] = False
  np.testing.assert_array_equal(
      out["masks"][..., 0][far],
      ref[f"{case}/density_full_f16"].astype(np.float32)[far])
  with pytest.raises(ValueError, match="a4: prompt='boxes' needs head boxes"):
    mt.add_targets(sample, rule="sha", prompt="boxes")
  with pytest.raises(ValueError, match="resize rule"):
    mt.add_targets(sample, rule="shc")


@pytest.mark.parametrize("hw, rule, want", [
    ((334, 500), "sha", (416, 640)),      # short side up to 416, x32
    ((700, 300), "sha", (992, 416)),      # width <= 416: 970.67 -> 992
    ((768, 1024), "none", (768, 1024)),
    ((3000, 4000), "large", (1536, 2048)),  # width 2048 first
    ((400, 600), "large", (512, 768)),      # short side up to 512
    ((300, 4000), "large", (512, 2048)),    # aspect above 4: 2048 x 512
    ((2100, 1000), "large", (2048, 992)),   # height 2048: 975.2 -> 992
])
def test_resize_rule_closed_forms(hw, rule, want):
  assert mt.resize_shape(*hw, rule) == want


def test_knn_rule_on_a_hand_made_layout():
  # Point 0 at the origin: neighbours at 1, 2 and 10 px. d3 = 10 > 2 * 1.5
  # -> K = 2, r = 2 (2 <= 2 * 1: stop). Duplicates (zero distance) skipped.
  px = np.array([[50, 50], [51, 50], [50, 52], [60, 50], [50, 50]])
  k, r = mt.knn_radii(px)
  assert (k[0], r[0]) == (2, 2.0) and (k[4], r[4]) == (2, 2.0)
  mask = mt.knn_mask(px, 100, 100)
  assert mask[50, 48] and not mask[50, 47]  # disc radius 2 around (50, 50)


def test_box_mask_and_offline_prompt():
  # Pixel centres inside: x 1.5, 2.5; y 2.5, 3.5.
  m = mt.box_mask([[1.0, 2.0, 3.0, 4.0]], 6, 6)
  assert m.sum() == 4 and m[2:4, 1:3].all()
  by = np.zeros((6, 6), bool)
  by[0, 0] = True
  knn = np.zeros((6, 6), bool)
  knn[2, 1] = True
  assert mt.offline_prompt(by).sum() == 1
  assert mt.offline_prompt(by, m).sum() == 5
  assert mt.offline_prompt(by, m, knn).sum() == 2


def test_kernel_is_normalised_and_border_mass_is_lost():
  k = mt.gaussian_kernel()
  assert k.shape == (15, 15) and abs(k.sum() - 1) < 1e-12
  d = mt.density_map(np.array([[0, 0], [20, 20]]), 40, 40, float16=False)
  # Corner point keeps the kernel's lower-right 8 x 8 block.
  np.testing.assert_allclose(d.sum(), 1 + k[7:, 7:].sum(), rtol=1e-6)


def test_box_prompt_in_the_hook():
  sample = {"image": np.zeros((64, 96, 3), np.uint8),
            "points": np.array([[10.2, 20.7]], np.float32),
            "boxes": np.array([[40, 30, 50, 44]], np.float32),
            "image_id": "b", "class_name": ""}
  out = mt.add_targets(sample, rule="none", prompt="boxes")
  m, by = out["masks"][..., 1] > 0, out["masks"][..., 0] > 0
  box = mt.box_mask(sample["boxes"], 64, 96)
  assert box.sum() == 10 * 14
  np.testing.assert_array_equal(m, by | box)
  np.testing.assert_array_equal(out["masks"][..., 2], 1.0)  # < 4 points
  empty = dict(sample, points=np.zeros((0, 2), np.float32),
               boxes=np.zeros((0, 4), np.float32))
  out = mt.add_targets(empty, rule="none", prompt="boxes")
  assert out["masks"][..., :2].sum() == 0
