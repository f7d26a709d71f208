"""Counting metrics against hand-computed values (Seg-then-Count §4.2);
the NWPU-Crowd localization metric against the official evaluation."""

import json
import math

import numpy as np
import pytest

from counting_jax import metrics
from counting_jax.localization import cli as loc_cli


def test_values_match_definitions():
  pred, true = [12.0, 7.0, 30.0], [10.0, 8.0, 25.0]
  m = metrics.counting_metrics(pred, true)
  err = np.array([2.0, 1.0, 5.0])
  assert m["mae"] == pytest.approx(err.mean())
  assert m["rmse"] == pytest.approx(math.sqrt((err ** 2).mean()))
  assert m["nae"] == pytest.approx(np.mean(err / np.array(true)))
  assert m["sre"] == pytest.approx(math.sqrt(np.mean(err ** 2 / np.array(true))))
  assert m["n"] == 3 and m["n_zero"] == 0


def test_zero_counts_excluded_from_relative_metrics():
  m = metrics.counting_metrics([1.0, 11.0], [0.0, 10.0])
  assert m["mae"] == pytest.approx(1.0)
  assert m["nae"] == pytest.approx(0.1)
  assert m["n_zero"] == 1


def test_rejects_mismatched_or_empty():
  with pytest.raises(ValueError):
    metrics.counting_metrics([1.0], [1.0, 2.0])
  with pytest.raises(ValueError):
    metrics.counting_metrics([], [])


# NWPU-Crowd localization metric ------------------------------------------

_GOLDEN = {  # the official eval.py on the repository's files (issue #11)
    "Raz_loc_val_0.5.txt": {
        "sigma_l": (0.6249, 0.6929, 0.5690,
                    (.0352, .2635, .5446, .8166, .6067, .2257)),
        "sigma_s": (0.5452, 0.6046, 0.4965, None),
        "counting": (128.71, 665.39, 0.508)},
    "TinyFaces_loc_0.8_0.3.txt": {
        "sigma_l": (0.5982, 0.5427, 0.6662,
                    (.0400, .2215, .6538, .9273, .9233, .9114)),
        "sigma_s": (0.5537, 0.5024, 0.6167, None),
        "counting": (240.35, 736.21, 0.962)},
}


@pytest.fixture(scope="module")
def nwpu_eval(shared_data):
  root = shared_data("nwpu_crowd") / "eval"
  return root, metrics.read_nwpu_gt(root / "val_gt_loc.txt")


@pytest.mark.parametrize("name", sorted(_GOLDEN))
def test_nwpu_metric_on_real_prediction_files(nwpu_eval, name):
  root, gt = nwpu_eval
  assert sorted(gt) == sorted(metrics.NWPU_VAL_IDS)
  r = metrics.nwpu_localization_metrics(
      metrics.read_nwpu_pred(root / name), gt, ids=metrics.NWPU_VAL_IDS)
  for key in ("sigma_l", "sigma_s"):
    f1, p, rec, levels = _GOLDEN[name][key]
    assert round(r[key]["f1"], 4) == f1
    assert round(r[key]["precision"], 4) == p
    assert round(r[key]["recall"], 4) == rec
    if levels is not None:
      assert tuple(round(v, 4) for v in r[key]["level_recall"]) == levels
  mae, rmse, nae = _GOLDEN[name]["counting"]
  assert r["counting"]["mae"] == pytest.approx(mae, abs=5e-3)
  assert r["counting"]["rmse"] == pytest.approx(rmse, abs=5e-3)
  assert r["counting"]["nae"] == pytest.approx(nae, abs=5e-4)


def test_nwpu_metric_matches_official_pairs(official_values):
  """nwpu_loc.npz: per image TP/FP/FN, per-level counts and the official
  matched pairs (which maximum matching) at both sigmas; data-set values."""
  z = official_values("nwpu_loc")
  ids = [int(i) for i in z["image_ids"]]
  gt, pred = {}, {}
  for i in ids:
    gt[i] = metrics.NwpuGroundTruth(
        points=z[f"img{i}/gt_points"].reshape(-1, 2).astype(np.int64),
        sigma=z[f"img{i}/gt_sigma"].reshape(-1, 2).astype(np.int64),
        level=z[f"img{i}/gt_level"].reshape(-1).astype(np.int64))
    pred[i] = z[f"img{i}/pred_points"].reshape(-1, 2)
  r = metrics.nwpu_localization_metrics(pred, gt, ids=ids,
                                        return_per_image=True)
  for i in ids:
    mine = r["per_image"][i]
    for s in ("s", "l"):
      for field in ("tp", "fp", "fn"):
        assert mine[f"{field}_{s}"] == int(z[f"img{i}/{field}_{s}"]), (i, s)
      np.testing.assert_array_equal(mine[f"tp_c_{s}"], z[f"img{i}/tp_c_{s}"])
      np.testing.assert_array_equal(mine[f"fn_c_{s}"], z[f"img{i}/fn_c_{s}"])
      np.testing.assert_array_equal(
          mine[f"match_{s}"], z[f"img{i}/match_{s}"].reshape(-1, 2))
  for s in ("s", "l"):
    assert r[f"sigma_{s}"]["precision"] == z[f"dataset/ap_{s}"]
    assert r[f"sigma_{s}"]["recall"] == z[f"dataset/ar_{s}"]
    assert r[f"sigma_{s}"]["f1"] == z[f"dataset/f1m_{s}"]
    np.testing.assert_array_equal(r[f"sigma_{s}"]["level_recall"],
                                  z[f"dataset/ar_c_{s}"])
  assert r["counting"]["mae"] == pytest.approx(float(z["dataset/mae"]))
  assert r["counting"]["rmse"] == pytest.approx(float(z["dataset/mse"]))
  assert r["counting"]["nae"] == pytest.approx(float(z["dataset/nae"]))


def test_nwpu_ground_truth_against_itself(nwpu_eval):
  _, gt = nwpu_eval
  r = metrics.nwpu_localization_metrics({i: g.points for i, g in gt.items()},
                                        gt)
  for key in ("sigma_l", "sigma_s"):
    assert r[key]["precision"] == r[key]["recall"] == r[key]["f1"] == 1.0
    assert r[key]["fp"] == r[key]["fn"] == 0
    assert r[key]["level_recall"] == [1.0] * 6
  assert r["counting"] == {"mae": 0.0, "rmse": 0.0, "nae": 0.0}


def _gt(points, sigma, level):
  return metrics.NwpuGroundTruth(np.asarray(points, np.int64).reshape(-1, 2),
                                 np.asarray(sigma, np.int64).reshape(-1, 2),
                                 np.asarray(level, np.int64).reshape(-1))


def test_nwpu_edge_cases():
  gt = {1: _gt([[10, 10], [50, 50]], [[2, 4], [2, 4]], [0, 3]),
        2: _gt([], [], []),
        3: _gt([[100, 100]], [[3, 5]], [0])}
  pred = {1: np.zeros((0, 2)),                        # no predictions
          2: np.array([[5, 5], [6, 6]]),              # no ground truth
          3: np.array([[103, 104], [103, 104], [100, 100]])}  # duplicates
  r = metrics.nwpu_localization_metrics(pred, gt, return_per_image=True)
  per = r["per_image"]
  assert (per[1]["tp_l"], per[1]["fn_l"], per[1]["fp_l"]) == (0, 2, 0)
  assert (per[2]["tp_l"], per[2]["fp_l"], per[2]["fn_l"]) == (0, 2, 0)
  # One head, three candidates (two duplicates at distance exactly 5 =
  # sigma_l, within: "<="): one TP, the first prediction in file order.
  assert (per[3]["tp_l"], per[3]["fp_l"]) == (1, 2)
  np.testing.assert_array_equal(per[3]["match_l"], [[0, 0]])
  np.testing.assert_array_equal(per[3]["match_s"], [[2, 0]])  # 5 > 3
  assert r["sigma_l"]["tp"] == 1 and r["sigma_l"]["fp"] == 4
  assert r["sigma_l"]["fn"] == 2
  assert r["counting"]["mae"] == pytest.approx((2 + 2 + 2) / 3)
  assert r["counting"]["nae"] == pytest.approx((1.0 + 2.0) / 2)  # id 2 skipped
  # Level recall: level 0 has heads {1: 1, 3: 1}, one matched; level 3: 0/1;
  # levels without heads get 0 (official +1e-20 denominators).
  assert r["sigma_l"]["level_recall"] == [0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
  # Nothing matched anywhere: precision = recall = 0, F1 = nan (0/0).
  r0 = metrics.nwpu_localization_metrics({1: np.zeros((0, 2))}, {1: gt[1]})
  assert r0["sigma_l"]["recall"] == 0.0 and math.isnan(r0["sigma_l"]["f1"])


def test_nwpu_levels_come_from_the_file():
  """Level-0 heads whose box area is exactly a power of ten (a 2 x 5 box:
  area 10, on the A0/A1 border; sigma_s = 1, sigma_l = int(sqrt(29) / 2) = 2)
  count in the level the file gives, whatever their size says."""
  gt = {7: _gt([[20, 20], [40, 40]], [[1, 2], [1, 2]], [0, 1])}
  r = metrics.nwpu_localization_metrics({7: np.array([[20, 22], [41, 41]])},
                                        gt)
  assert r["sigma_l"]["level_recall"][:2] == [1.0, 1.0]
  assert r["sigma_s"]["level_recall"][:2] == [0.0, 0.0]  # 2 > 1, sqrt 2 > 1


def test_nwpu_matching_is_the_official_augmenting_path_one():
  """Prediction 0 can take head 0 or 1, prediction 1 only head 0: Kuhn's
  search in file order moves prediction 0 to head 1 (another maximum
  matching would leave head 0 with prediction 0 and match nothing else)."""
  pairs = metrics.match_points([[0, 0], [-3, 0]], [[-2, 0], [2, 0]], 2.5)
  np.testing.assert_array_equal(pairs, [[0, 1], [1, 0]])


def test_fixed_radius_metric():
  m = metrics.localization_metrics_fixed_radius(
      [np.array([[0.0, 0.0], [10.0, 0.0]]), np.zeros((0, 2))],
      [np.array([[0.0, 3.0]]), np.array([[5.0, 5.0]])], radius=4.0)
  assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)
  assert m["precision"] == pytest.approx(0.5) and m["f1"] == pytest.approx(0.5)
  with pytest.raises(ValueError):
    metrics.localization_metrics_fixed_radius([np.zeros((0, 2))], [], 4.0)


def test_nwpu_files_errors_name_file_and_line(tmp_path):
  bad = tmp_path / "pred.txt"
  bad.write_text("3110 1 4 5\n3111 2 1 2 3.5 4\n")
  with pytest.raises(ValueError, match=r"pred.txt:2: field '3.5'"):
    metrics.read_nwpu_pred(bad)
  bad.write_text("3110 2 4 5\n")
  with pytest.raises(ValueError, match=r"pred.txt:1: id 3110 declares num=2"):
    metrics.read_nwpu_pred(bad)
  bad.write_text("3110 0\n3110 0\n")
  with pytest.raises(ValueError, match=r"pred.txt:2: id 3110 already on "
                     "line 1"):
    metrics.read_nwpu_pred(bad)
  gt_file = tmp_path / "gt.txt"
  gt_file.write_text("1 1 4 5 2 3 7\n")
  with pytest.raises(ValueError, match=r"gt.txt:1: id 1 has a level"):
    metrics.read_nwpu_gt(gt_file)
  gt_file.write_text("1 1 4 5 2 3 1\n2 0\n")
  pred_file = tmp_path / "p.txt"
  pred_file.write_text("1 0\n")
  with pytest.raises(KeyError, match=r"no line for image id\(s\) \[2\]"):
    metrics.nwpu_localization_metrics(metrics.read_nwpu_pred(pred_file),
                                      metrics.read_nwpu_gt(gt_file))


def test_nwpu_files_round_trip(tmp_path):
  gt = {5: _gt([[1, 2], [3, 4]], [[5, 6], [7, 8]], [0, 5]),
        6: _gt([], [], [])}
  metrics.write_nwpu_gt(tmp_path / "g.txt", gt)
  back = metrics.read_nwpu_gt(tmp_path / "g.txt")
  assert list(back) == [5, 6] and len(back[6]) == 0
  np.testing.assert_array_equal(back[5].sigma, gt[5].sigma)
  metrics.write_nwpu_pred(tmp_path / "p.txt", {5: np.array([[1.0, 2.0]]),
                                                6: np.zeros((0, 2))})
  assert (tmp_path / "p.txt").read_text() == "5 1 1 2\n6 0\n"
  with pytest.raises(ValueError, match="must be integers"):
    metrics.write_nwpu_pred(tmp_path / "q.txt", {5: np.array([[1.5, 2.0]])})


def test_localization_metrics_command(nwpu_eval, tmp_path, capsys):
  root, _ = nwpu_eval
  out = tmp_path / "raz.json"
  code = loc_cli.main(["--gt", str(root / "val_gt_loc.txt"), "--pred",
                       str(root / "Raz_loc_val_0.5.txt"), "--json", str(out)])
  assert code == 0
  assert "F1 0.6249" in capsys.readouterr().out
  result = json.loads(out.read_text())
  assert set(result["sigma_l"]) >= {"f1", "precision", "recall",
                                    "level_recall"}
  assert len(result["sigma_s"]["level_recall"]) == 6
  assert set(result["counting"]) == {"mae", "rmse", "nae"}
  bad = tmp_path / "bad.txt"
  bad.write_text("3110 1 1.5 2\n")
  assert loc_cli.main(["--gt", str(root / "val_gt_loc.txt"), "--pred",
                       str(bad)]) == 2
  assert "bad.txt:1" in capsys.readouterr().err
