"""Localizing a folder of images: points per image, NWPU file, panels.

:func:`localize_images` is independent of the trainer: it takes any callable
image -> density map, so ``counting-jax localize`` (``train.loop.localize``)
only has to build that callable from a checkpoint.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from counting_jax.data import files as files_lib
from counting_jax.localization._otm import ot_m
from counting_jax.localization._peaks import local_maxima
from counting_jax.metrics import nwpu_files

__all__ = ["METHODS", "localize_density", "localize_images",
           "nwpu_integer_points", "save_points_panel"]

METHODS = ("local_maxima", "ot_m")


def localize_density(density, *, stride: float, method: str = "local_maxima",
                     max_points: int = 4096, **kwargs) -> tuple:
  """Points of one density map: (float32 [n, 2] (x, y) input pixels, count).

  ``count`` is what the method found before the bound ``max_points``
  (``count > n`` means points were left out: raise ``max_points``).
  ``kwargs`` go to :func:`local_maxima` or :func:`ot_m`.

  Raises:
    ValueError: for an unknown ``method``.
  """
  if method not in METHODS:
    raise ValueError(f"unknown localization method {method!r}; valid: "
                     f"{list(METHODS)}")
  fn = local_maxima if method == "local_maxima" else ot_m
  out = fn(np.asarray(density, np.float32)[None], stride=stride,
           max_points=max_points, **kwargs)
  points = np.asarray(out.points[0])[np.asarray(out.mask[0])]
  return points, int(out.count[0])


def nwpu_integer_points(points, height: int, width: int) -> np.ndarray:
  """int64 [n, 2] pixel indices (floor(x), floor(y)) of continuous points,
  clipped into the image: the integer coordinates of the NWPU submission
  format (a point at x lies in pixel floor(x), see :mod:`counting_jax.grid`).
  """
  points = np.asarray(points, np.float64).reshape(-1, 2)
  ix = np.clip(np.floor(points[:, 0]), 0, width - 1)
  iy = np.clip(np.floor(points[:, 1]), 0, height - 1)
  return np.stack([ix, iy], axis=1).astype(np.int64)


def save_points_panel(path, image, density, points, *, title: str = ""):
  """PNG: the image with the points drawn | the density map.

  Args:
    path: output file.
    image: uint8 [H, W, 3].
    density: float [h, w].
    points: [n, 2] (x, y) in input-image pixels.
    title: figure title.
  """
  points = np.asarray(points).reshape(-1, 2)
  fig, axes = plt.subplots(1, 2, figsize=(9, 4.3))
  axes[0].imshow(image)
  axes[0].scatter(points[:, 0] - 0.5, points[:, 1] - 0.5, s=6, c="#00ff66",
                  edgecolors="black", linewidths=0.3)
  axes[0].set_title(f"{len(points)} points")
  axes[1].imshow(density, cmap="magma")
  axes[1].set_title(f"density  {float(np.sum(density)):.1f}")
  for ax in axes:
    ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def localize_images(density_fn: Callable[..., np.ndarray],
                    files: Sequence, out_dir, *, stride: float,
                    method: str = "local_maxima", max_points: int = 4096,
                    panels_too: bool = True, method_kwargs=None) -> dict:
  """Points of every image file, written as JSON, NWPU file and panels.

  Writes to ``out_dir``: ``<stem>.json`` per image (``{"image", "method",
  "stride", "count", "found", "points": [[x, y], ...]}``, points in
  input-image pixels with the top-left corner at (0, 0)), ``points.json``
  (all images), ``nwpu_pred.txt`` (the NWPU submission format
  ``id num x y ...`` with integer pixel indices, written when every file
  name is an integer id such as ``3110.jpg``) and, with ``panels_too``,
  ``<stem>_points.png``.

  Args:
    density_fn: (uint8 [H, W, 3] image, its path) -> float [h, w] density
      map of that image at ``stride`` (the path names the image for
      per-image inputs such as exemplar boxes) (density cell k covers input pixels
      [stride*k, stride*(k+1)); any padding the model needs is the
      callable's business, cells past the image are ignored).
    files: image paths.
    out_dir: output folder (created).
    stride: input pixels per density pixel.
    method: "local_maxima" or "ot_m".
    max_points: static bound per image (``found`` > ``count`` in the JSON
      means points were left out).
    panels_too: write the panels.
    method_kwargs: more arguments for the method.

  Returns:
    {file name: float32 [n, 2] points}.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  results, nwpu = {}, {}
  numeric = all(pathlib.Path(p).stem.isdigit() for p in files)
  for path in files:
    path = pathlib.Path(path)
    image = files_lib.read_rgb(path)
    height, width = image.shape[:2]
    density = np.asarray(density_fn(image, path), np.float32)
    density = density[:math.ceil(height / stride), :math.ceil(width / stride)]
    points, found = localize_density(density, stride=stride, method=method,
                                     max_points=max_points,
                                     **(method_kwargs or {}))
    results[path.name] = points
    record = {"image": path.name, "method": method, "stride": stride,
              "count": int(points.shape[0]), "found": found,
              "density_count": float(density.sum()),
              "points": np.round(points.astype(np.float64), 3).tolist()}
    (out_dir / f"{path.stem}.json").write_text(json.dumps(record))
    if numeric:
      nwpu[int(path.stem)] = nwpu_integer_points(points, height, width)
    if panels_too:
      save_points_panel(out_dir / f"{path.stem}_points.png", image, density,
                        points, title=f"{path.name}  {method}")
  (out_dir / "points.json").write_text(json.dumps(
      {name: np.round(p.astype(np.float64), 3).tolist()
       for name, p in results.items()}))
  if numeric and nwpu:
    nwpu_files.write_nwpu_pred(out_dir / "nwpu_pred.txt", nwpu)
  return results
