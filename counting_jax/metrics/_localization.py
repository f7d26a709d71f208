"""The NWPU-Crowd localization metric, equal to the official evaluation.

Source: Wang et al., "NWPU-Crowd: A Large-Scale Benchmark for Crowd Counting
and Localization" (TPAMI 2020), §5 (localization metric), and its official
``eval/eval.py`` (gjy3035/NWPU-Crowd-Sample-Code-for-Localization). Per
image, prediction i may match ground-truth head j iff their Euclidean
distance is <= sigma_j (sigma_s or sigma_l of *that* head); a maximum
one-to-one matching gives TP; FP = #pred - TP, FN = #GT - TP. TP, FP, FN are
summed over the data set, then P = TP / (TP + FP + 1e-20),
R = TP / (TP + FN + 1e-20), F1 = 2PR / (P + R) (no epsilon: nan when TP = 0
everywhere). Per head-size level c (0-5) the recall is
sum tp_c / (sum tp_c + sum fn_c + 1e-20), so a level without heads gets 0.
Counting MAE, RMSE (the official script prints it as "MSE") and NAE come from
the number of points; NAE skips images without heads.

Which heads are matched (hence the per-level recalls, not TP) depends on the
maximum matching found. The official one is Kuhn's augmenting-path search:
predictions in file order, each one's candidate heads in increasing index, a
depth-first search with a visited set reset per prediction. ``match_points``
reproduces exactly that matching, but builds the candidate pairs with a k-d
tree instead of a dense distance matrix and stamps the visited set instead of
clearing it per prediction (the official script spends most of its time
there), so the whole validation set takes about a second instead of ~40 s.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import spatial

from counting_jax.metrics.nwpu_files import NwpuGroundTruth

__all__ = ["NUM_LEVELS", "NWPU_VAL_IDS", "localization_metrics_fixed_radius",
           "match_points", "nwpu_localization_metrics"]

NUM_LEVELS = 6
# The official evaluation's id list: val ids 3110-3609, with 3098 in place of
# 3169 (the official script's ``id_std[59] = 3098``).
NWPU_VAL_IDS = tuple(3098 if i == 3169 else i for i in range(3110, 3610))


def _candidates(pred, gt, radius):
  """CSR candidate lists: for each prediction the heads within their radius,
  in increasing head index."""
  n_pred = pred.shape[0]
  if n_pred == 0 or gt.shape[0] == 0:
    return np.zeros(n_pred + 1, np.int64), np.zeros(0, np.int64)
  r_max = float(radius.max())
  tree_gt = spatial.cKDTree(gt)
  tree_pred = spatial.cKDTree(pred)
  # The tree's own distances may round differently from the official
  # ``scipy.spatial.distance_matrix``: search slightly wider, then decide
  # every pair with the official float64 formula sqrt(dx^2 + dy^2) <= sigma.
  pairs = tree_pred.query_ball_tree(tree_gt, r_max * (1 + 1e-9) + 1e-9)
  counts = np.fromiter((len(p) for p in pairs), np.int64, n_pred)
  rows = np.repeat(np.arange(n_pred), counts)
  cols = np.fromiter((j for p in pairs for j in p), np.int64, counts.sum())
  diff = pred[rows] - gt[cols]
  dist = np.sqrt(diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1])
  keep = dist <= radius[cols]
  rows, cols = rows[keep], cols[keep]
  order = np.lexsort((cols, rows))
  rows, cols = rows[order], cols[order]
  indptr = np.zeros(n_pred + 1, np.int64)
  np.cumsum(np.bincount(rows, minlength=n_pred), out=indptr[1:])
  return indptr, cols


def _kuhn(indptr, indices, n_gt):
  """Kuhn's augmenting-path matching in the official visiting order.

  Returns int64 [n_gt]: the prediction matched to each head, or -1.
  """
  indptr = indptr.tolist()
  indices = indices.tolist()
  match = [-1] * n_gt
  stamp = [-1] * n_gt  # stamp[v] == a: head v visited while placing a.
  for a in range(len(indptr) - 1):
    start, end = indptr[a], indptr[a + 1]
    if start == end:
      continue
    # Fast path: the first free, unvisited candidate (the search's first
    # steps, unchanged, when no augmenting is needed before it).
    frames_u, frames_p, path_v = [a], [start], []
    while frames_u:
      u = frames_u[-1]
      p, end = frames_p[-1], indptr[u + 1]
      descended = False
      while p < end:
        v = indices[p]
        p += 1
        if stamp[v] == a:
          continue
        stamp[v] = a
        w = match[v]
        if w == -1:
          match[v] = u
          for k in range(len(path_v)):
            match[path_v[k]] = frames_u[k]
          frames_u = []
          descended = True
          break
        frames_p[-1] = p
        path_v.append(v)
        frames_u.append(w)
        frames_p.append(indptr[w])
        descended = True
        break
      if not descended:
        frames_u.pop()
        frames_p.pop()
        if path_v:
          path_v.pop()
  return np.asarray(match, np.int64)


def match_points(pred_points, gt_points, radius) -> np.ndarray:
  """The official NWPU maximum one-to-one matching of one image.

  Args:
    pred_points: [n, 2] predicted points (x, y), in the order of the
      prediction file (the order decides which maximum matching is found).
    gt_points: [m, 2] ground-truth points (x, y), same units.
    radius: scalar or [m] matching radius of each ground-truth point, same
      units: a pair may match iff distance <= radius (``<=`` as official).

  Returns:
    int64 [k, 2] matched (prediction index, ground-truth index) pairs sorted
    by prediction index; k is the maximum matching size (TP).

  Raises:
    ValueError: on arrays that are not [n, 2] / [m, 2] or a radius of the
      wrong length.
  """
  pred = _as_points(pred_points, "pred_points")
  gt = _as_points(gt_points, "gt_points")
  radius = np.broadcast_to(np.asarray(radius, np.float64), (gt.shape[0],)) \
      if np.ndim(radius) == 0 else np.asarray(radius, np.float64)
  if radius.shape != (gt.shape[0],):
    raise ValueError(f"radius has shape {radius.shape}; expected a scalar or "
                     f"({gt.shape[0]},)")
  indptr, indices = _candidates(pred, gt, radius)
  match = _kuhn(indptr, indices, gt.shape[0])
  gt_idx = np.nonzero(match >= 0)[0]
  pairs = np.stack([match[gt_idx], gt_idx], axis=1)
  return pairs[np.argsort(pairs[:, 0], kind="stable")]


def _as_points(points, name):
  points = np.asarray(points, np.float64)
  if points.size == 0:
    return np.zeros((0, 2), np.float64)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f"{name} has shape {points.shape}; expected [n, 2] "
                     "points (x, y)")
  return points


def _rates(tp, fp, fn):
  precision = tp / (tp + fp + 1e-20)
  recall = tp / (tp + fn + 1e-20)
  with np.errstate(invalid="ignore", divide="ignore"):
    f1 = float(np.float64(2 * precision * recall) /
               np.float64(precision + recall))
  return float(precision), float(recall), f1


def nwpu_localization_metrics(
    predictions: Mapping[int, np.ndarray],
    ground_truth: Mapping[int, NwpuGroundTruth],
    *,
    ids: Sequence[int] | None = None,
    return_per_image: bool = False,
) -> dict:
  """The official NWPU-Crowd localization and counting evaluation.

  Args:
    predictions: image id -> [n, 2] predicted points (x, y) in
      original-image pixels (see :func:`read_nwpu_pred`), in file order.
    ground_truth: image id -> :class:`NwpuGroundTruth` (see
      :func:`read_nwpu_gt`).
    ids: the images to evaluate; default every id of ``ground_truth`` in its
      order (for the official val file the same set as
      :data:`NWPU_VAL_IDS`).
    return_per_image: also return ``per_image``: id -> dict of ``tp_s``,
      ``fp_s``, ``fn_s``, ``tp_c_s``, ``fn_c_s`` (and ``_l``), ``match_s``,
      ``match_l`` (the matched pairs, as :func:`match_points`).

  Returns:
    dict with ``sigma_l`` and ``sigma_s``, each ``{"f1", "precision",
    "recall", "level_recall" (6 floats, levels A0-A5), "tp", "fp", "fn"}``,
    and ``counting``: ``{"mae", "rmse", "nae"}`` from the number of points
    (RMSE is what the official script prints as "MSE"; NAE skips images
    without heads), plus ``num_images``.

  Raises:
    KeyError: naming the ids missing from ``predictions`` or
      ``ground_truth``.
  """
  ids = list(ground_truth) if ids is None else [int(i) for i in ids]
  missing_gt = [i for i in ids if i not in ground_truth]
  if missing_gt:
    raise KeyError(f"ground truth has no image id(s) {missing_gt[:10]}"
                   f"{' ...' if len(missing_gt) > 10 else ''}")
  missing = [i for i in ids if i not in predictions]
  if missing:
    raise KeyError(f"predictions have no line for image id(s) {missing[:10]}"
                   f"{' ...' if len(missing) > 10 else ''} "
                   f"({len(missing)} of {len(ids)} missing)")
  sums = {s: {"tp": 0, "fp": 0, "fn": 0, "tp_c": np.zeros(NUM_LEVELS),
              "fn_c": np.zeros(NUM_LEVELS)} for s in ("s", "l")}
  abs_err, sq_err, rel_err = [], [], []
  per_image = {}
  for image_id in ids:
    gt = ground_truth[image_id]
    pred = _as_points(predictions[image_id], f"predictions[{image_id}]")
    record = {}
    for k, name in enumerate(("s", "l")):
      if len(gt) and pred.shape[0]:
        pairs = match_points(pred, gt.points, gt.sigma[:, k])
      else:
        pairs = np.zeros((0, 2), np.int64)
      tp = pairs.shape[0]
      matched = np.zeros(len(gt), bool)
      matched[pairs[:, 1]] = True
      level = np.asarray(gt.level, np.int64)
      tp_c = np.bincount(level[matched], minlength=NUM_LEVELS)[:NUM_LEVELS]
      fn_c = np.bincount(level[~matched], minlength=NUM_LEVELS)[:NUM_LEVELS]
      acc = sums[name]
      acc["tp"] += tp
      acc["fp"] += pred.shape[0] - tp
      acc["fn"] += len(gt) - tp
      acc["tp_c"] += tp_c
      acc["fn_c"] += fn_c
      record.update({f"tp_{name}": tp, f"fp_{name}": pred.shape[0] - tp,
                     f"fn_{name}": len(gt) - tp, f"tp_c_{name}": tp_c,
                     f"fn_c_{name}": fn_c, f"match_{name}": pairs})
    per_image[image_id] = record
    err = abs(len(gt) - pred.shape[0])
    abs_err.append(err)
    sq_err.append(err * err)
    if len(gt):
      rel_err.append(err / len(gt))
  out = {}
  for name in ("s", "l"):
    acc = sums[name]
    precision, recall, f1 = _rates(acc["tp"], acc["fp"], acc["fn"])
    level_recall = acc["tp_c"] / (acc["tp_c"] + acc["fn_c"] + 1e-20)
    out[f"sigma_{name}"] = {
        "f1": f1, "precision": precision, "recall": recall,
        "level_recall": [float(v) for v in level_recall],
        "tp": int(acc["tp"]), "fp": int(acc["fp"]), "fn": int(acc["fn"])}
  out["counting"] = {
      "mae": float(np.mean(abs_err)) if abs_err else float("nan"),
      "rmse": float(np.sqrt(np.mean(sq_err))) if sq_err else float("nan"),
      "nae": float(np.mean(rel_err)) if rel_err else float("nan")}
  out["num_images"] = len(ids)
  if return_per_image:
    out["per_image"] = per_image
  return out


def localization_metrics_fixed_radius(pred_points: Sequence[np.ndarray],
                                      gt_points: Sequence[np.ndarray],
                                      radius: float) -> dict:
  """Precision, recall and F1 of point sets at one fixed matching radius.

  For data sets without per-head sigma: the NWPU rule (a prediction may match
  a ground-truth point within ``radius``, maximum one-to-one matching, TP/FP/
  FN summed over images) with the same radius for every point.

  Args:
    pred_points: per image, [n_i, 2] predicted points (x, y), input pixels.
    gt_points: per image, [m_i, 2] ground-truth points (x, y), same units.
    radius: matching radius in the same units (input-image pixels).

  Returns:
    dict ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``,
    ``radius``.

  Raises:
    ValueError: if the two sequences differ in length or radius < 0.
  """
  if len(pred_points) != len(gt_points):
    raise ValueError(f"{len(pred_points)} prediction sets for "
                     f"{len(gt_points)} ground-truth sets")
  if not radius >= 0:
    raise ValueError(f"radius must be >= 0, got {radius}")
  tp = fp = fn = 0
  for pred, gt in zip(pred_points, gt_points):
    pred = _as_points(pred, "pred_points")
    gt = _as_points(gt, "gt_points")
    k = match_points(pred, gt, radius).shape[0] if len(pred) and len(gt) \
        else 0
    tp += k
    fp += pred.shape[0] - k
    fn += gt.shape[0] - k
  precision, recall, f1 = _rates(tp, fp, fn)
  return {"precision": precision, "recall": recall, "f1": f1, "tp": tp,
          "fp": fp, "fn": fn, "radius": float(radius)}
