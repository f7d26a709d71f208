"""Localization speed on CPU: the NWPU metric and OT-M.

1. The NWPU-Crowd localization metric on the RAZ_loc prediction file (500
   val images, 196,238 heads): ``counting_jax.metrics`` next to a plain
   Python re-statement of the official ``eval/eval.py`` algorithm written
   below (dense float64 distance matrix per image, boolean candidate matrix,
   recursive augmenting-path search with the visited list cleared for every
   prediction), both from the same parsed files; the table prints both
   results (they must agree) and both times (goal: >= 10x faster).
2. OT-M per image (``counting_jax.localization.ot_m``, official defaults,
   one map per call, after compilation, median of ``--repeats`` calls)
   against map size and count: blurred point histograms of real
   ShanghaiTech A points (goal: a 1024x768 image at stride 8 with 1,000
   points under 1 s), next to the same CPU path without the separable
   large-ε passes (``separable=False``: one exp per pixel-point pair in
   every pass; same number of calls), next to the official algorithm as
   written (the whole map as one block, every pixel visited, no separable
   passes: the default off CPU; one call) and the largest point
   difference between the default and the official-style run (the random
   start is the same; OT-M's unconverged ε = 0.01 solve amplifies float32
   rounding, so a few tenths of a pixel up to ~11 px on a few points
   after several iterations are expected: one step from the same points
   agrees to 0.002 px).

  flock /tmp/heavy.lock env PYTHONPATH=. python benchmarks/localization.py \
      --shared ../shared [--skip-reference]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import numpy as np
from scipy import ndimage

from counting_jax import metrics
from counting_jax.data import shanghaitech
from counting_jax.localization import ot_m


def _reference_matching(candidates):
  """Augmenting paths, predictions in order, candidates in increasing
  index, visited list cleared per prediction (the official algorithm)."""
  n_pred, n_gt = candidates.shape
  adjacency = [list(np.nonzero(row)[0]) for row in candidates]
  owner = [-1] * n_gt
  visited = [False] * n_gt

  def augment(u):
    for v in adjacency[u]:
      if visited[v]:
        continue
      visited[v] = True
      if owner[v] == -1 or augment(owner[v]):
        owner[v] = u
        return True
    return False

  for u in range(n_pred):
    for v in range(n_gt):
      visited[v] = False
    augment(u)
  return owner


def reference_metric(pred, gt, ids):
  """Plain re-statement of the official evaluation (see module doc)."""
  sums = {s: [0, 0, 0, np.zeros(6), np.zeros(6)] for s in (0, 1)}
  for i in ids:
    g, p = gt[i], np.asarray(pred[i], np.float64).reshape(-1, 2)
    n, m = p.shape[0], len(g)
    for s in (0, 1):
      acc = sums[s]
      if n and m:
        d = np.sqrt(((p[:, None, :] - g.points[None, :, :]) ** 2).sum(-1))
        owner = _reference_matching(d <= g.sigma[None, :, s])
        matched = np.array([o >= 0 for o in owner])
      else:
        matched = np.zeros(m, bool)
      tp = int(matched.sum())
      acc[0] += tp
      acc[1] += n - tp
      acc[2] += m - tp
      for c in range(6):
        acc[3][c] += int(((g.level == c) & matched).sum())
        acc[4][c] += int(((g.level == c) & ~matched).sum())
  out = {}
  for s, name in ((0, "sigma_s"), (1, "sigma_l")):
    tp, fp, fn, tpc, fnc = sums[s]
    pr, rc = tp / (tp + fp + 1e-20), tp / (tp + fn + 1e-20)
    out[name] = {"f1": 2 * pr * rc / (pr + rc), "precision": pr,
                 "recall": rc,
                 "level_recall": list(tpc / (tpc + fnc + 1e-20))}
  return out


def bench_metric(shared, skip_reference):
  root = shared / "data" / "nwpu_crowd" / "eval"
  gt = metrics.read_nwpu_gt(root / "val_gt_loc.txt")
  pred = metrics.read_nwpu_pred(root / "Raz_loc_val_0.5.txt")
  ids = list(metrics.NWPU_VAL_IDS)
  t0 = time.perf_counter()
  mine = metrics.nwpu_localization_metrics(pred, gt, ids=ids)
  t_mine = time.perf_counter() - t0
  print("NWPU localization metric, RAZ_loc_val_0.5.txt (500 images)")
  print(f"{'':24}{'counting_jax':>16}{'plain Python':>16}")
  if skip_reference:
    ref, t_ref = None, float("nan")
  else:
    sys.setrecursionlimit(100000)
    t0 = time.perf_counter()
    ref = reference_metric(pred, gt, ids)
    t_ref = time.perf_counter() - t0
  for name in ("sigma_l", "sigma_s"):
    for key in ("f1", "precision", "recall"):
      r = f"{ref[name][key]:.6f}" if ref else "-"
      print(f"{name + ' ' + key:24}{mine[name][key]:>16.6f}{r:>16}")
    m = " ".join(f"{v:.4f}" for v in mine[name]["level_recall"])
    print(f"{name + ' A0-A5':24}  {m}")
    if ref:
      r = " ".join(f"{v:.4f}" for v in ref[name]["level_recall"])
      print(f"{'   (plain Python)':24}  {r}")
  print(f"{'seconds':24}{t_mine:>16.2f}{t_ref:>16.2f}"
        f"   ({t_ref / t_mine:.0f}x)")
  if ref:
    same = all(np.allclose(mine[n][k], ref[n][k], rtol=0, atol=1e-12)
               for n in ("sigma_l", "sigma_s")
               for k in ("f1", "precision", "recall", "level_recall"))
    print(f"same numbers: {same}")


def _map(points, height, width, stride, sigma_px=4.0):
  h, w = height // stride, width // stride
  dot = np.zeros((h, w), np.float32)
  cells = np.floor(points / stride).astype(np.int64)
  ok = (cells[:, 0] < w) & (cells[:, 1] < h)
  np.add.at(dot, (cells[ok, 1], cells[ok, 0]), 1.0)
  return ndimage.gaussian_filter(dot, sigma_px / stride, mode="constant")


def _time(run, density, repeats):
  out = jax.block_until_ready(run(density))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run(density))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), out


def bench_otm(shared, repeats, skip_reference):
  gt_dir = shared / "data" / "shanghaitech" / "part_A" / "test_data" / \
      "ground-truth"
  pts = shanghaitech.read_points(gt_dir / "GT_IMG_2.mat")  # 1,111 points
  pts = np.asarray(pts, np.float64)
  print("\nOT-M per image (official defaults), after compilation, seconds:")
  print("  default = this backend's path (CPU: separable large-ε passes,")
  print("  packed blocks of pixels with mass); one-exp = the same without the")
  print("  separable passes; official-style = the whole map in one block (the")
  print("  official algorithm as written, dense, every pixel); max |diff|:")
  print("  px between default and official-style")
  print(f"{'image':>10}{'stride':>8}{'map':>10}{'points':>8}"
        f"{'default':>10}{'one-exp':>10}{'official-style':>16}"
        f"{'max|diff|':>11}")
  cases = [(512, 512, 8, 100), (1024, 768, 8, 300), (1024, 768, 8, 1000),
           (512, 512, 2, 100), (512, 384, 2, 300)]
  for width, height, stride, n in cases:
    p = pts[(pts[:, 0] < width) & (pts[:, 1] < height)][:n]
    density = _map(p, height, width, stride)[None]
    k = len(p)
    run = jax.jit(lambda d, s=stride, k=k: ot_m(d, stride=s, max_points=k))
    t, out = _time(run, density, repeats)
    one_exp = jax.jit(lambda d, s=stride, k=k: ot_m(
        d, stride=s, max_points=k, separable=False))
    t_one, _ = _time(one_exp, density, repeats)
    t_ref, diff = float("nan"), float("nan")
    if not skip_reference:
      ref = jax.jit(lambda d, s=stride, k=k: ot_m(
          d, stride=s, max_points=k, block=1 << 30, separable=False))
      t_ref, out_ref = _time(ref, density, 1)
      diff = float(np.abs(np.asarray(out.points)
                          - np.asarray(out_ref.points)).max())
    size = f"{width}x{height}"
    shape = f"{density.shape[2]}x{density.shape[1]}"
    print(f"{size:>10}{stride:>8}{shape:>10}{k:>8}{t:>10.2f}{t_one:>10.2f}"
          f"{t_ref:>16.2f}{diff:>11.3f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shared", default=str(
      pathlib.Path(__file__).resolve().parents[1].parent / "shared"))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip-reference", action="store_true",
                      help="skip the ~40 s plain-Python metric and the "
                      "official-style OT-M runs")
  parser.add_argument("--only", choices=("metric", "otm"), default=None)
  args = parser.parse_args()
  shared = pathlib.Path(args.shared)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  if args.only != "otm":
    bench_metric(shared, args.skip_reference)
  if args.only != "metric":
    bench_otm(shared, args.repeats, args.skip_reference)


if __name__ == "__main__":
  main()
