"""mPrompt's training targets, built on the host as the official constructor.

Guo et al., "Regressor-Segmenter Mutual Prompt Learning for Crowd Counting",
CVPR 2024 (mPrompt), section 3 and official code csguomy/mPrompt@e7ae00d
(its density generator and training data constructor). Everything here is
NumPy on the host (``BatchFields.before_augment``); the maps then move with
the pixels through the pipeline's crops and flips.

* **Resize rule** (:func:`resize_shape`), shared by training, evaluation and
  the density generator. ``"sha"`` (ShanghaiTech A): a side <= 416 is
  scaled up to 416 keeping the aspect (height first, then width), then both
  sides are rounded up to a multiple of 32. ``"none"`` (ShanghaiTech B):
  unchanged. ``"large"`` (UCF-QNRF, NWPU-Crowd): a side >= 2048 is scaled
  to 2048 (width first), then a side <= 512 to 512 (height first), an
  aspect ratio above 4 becomes exactly 2048 x 512, then multiples of 32.
  The paper's "max 2048 / min 416" is exact only for ShanghaiTech A.
* **Point rounding** (:func:`resize_points`): the official constructor
  rewrites the points in place as integers: ``p = round(p)`` (NumPy's round
  half to even) first, then ``x' = min(W' - 1, floor(x W'/W))`` and
  ``y' = min(H' - 1, floor(y H'/H))``: the pixel (row y', column x') that
  carries the point. (Our points are float32; the official code rounds the
  .mat's float64 values, which differs only for coordinates within float32
  precision of a half-integer.)
* **Density** (:func:`density_map`): a 15 x 15 Gaussian of sigma 4 (outer
  product of the normalised 1-D kernel) centred on pixel (y', x') per point,
  cut at the image border **without renormalisation** (border points lose
  mass), summed in float32 in point order and stored as float16 (the
  official generator saves float16; the constructor reads it back as
  float32). Density stride 1 (full input resolution), no scaling.
* **B(y)** (paper's "dilation" of the point map): ``density > 0``, the
  union of the 15 x 15 squares around the points (border-cut).
* **m_K**, the K-nearest-neighbour context mask (:func:`knn_mask`): for each
  point, the distances to its K = 3 nearest **non-coincident** points (zero
  distances skipped); r = d_K, and while r > 2 mean(d_1 .. d_{K-1}) the K
  is reduced (r = d_K again; with K = 1 the loop stops). A filled disc of
  radius floor(r) is drawn at the point's pixel; m_K is their union. Images
  with fewer than K + 1 points get m_K = all ones. The paper describes "the
  minimum circle covering the K nearest points"; the code centres the disc
  on the point, and so do we. Where a point has fewer than K non-coincident
  neighbours (many duplicated points; the official code raises an
  IndexError) we use the ones it has, and a radius of 0 (its own pixel) when
  it has none.
* **Offline prompt** m: as released, ``m = B(y)`` (the segmenter's pseudo
  mask m_p was disabled in the official code on 2025-11-10). Options: the
  paper's box pseudo mask m_p (1 inside the head boxes, data sets with boxes:
  NWPU-Crowd, JHU-Crowd) giving ``m = m_p | B(y)``, or any m_p array
  (e.g. a pre-trained segmenter's map, binarised at ``> 0.055`` as the
  pre-release code did), optionally restricted to m_K first (the
  pre-release order ``(m_p & m_K) | B(y)``).

:func:`add_targets` is the ``before_augment`` hook: it resizes the sample
and adds ``masks`` float32 [H', W', 3] = (density, m, m_K).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import spatial

from counting_jax.data import transforms

__all__ = ["RESIZE_RULES", "resize_shape", "resize_points", "gaussian_kernel",
           "density_map", "point_mask", "knn_radii", "knn_mask", "box_mask",
           "offline_prompt", "add_targets", "MASK_CHANNELS"]

RESIZE_RULES = ("sha", "none", "large")
# Channels of ``sample["masks"]`` after :func:`add_targets`.
MASK_CHANNELS = ("density", "prompt", "knn")


def resize_shape(height: int, width: int, rule: str) -> tuple[int, int]:
  """The official resized (height, width) of an image (module docstring).

  Args:
    height, width: the image size in pixels.
    rule: ``"sha"``, ``"none"`` or ``"large"``.

  Raises:
    ValueError: for an unknown rule or a non-positive size.
  """
  if rule not in RESIZE_RULES:
    raise ValueError(f"resize rule must be one of {RESIZE_RULES}, got "
                     f"{rule!r}")
  if height <= 0 or width <= 0:
    raise ValueError(f"image size must be positive, got {(height, width)}")
  h, w = float(height), float(width)
  if rule == "none":
    return int(height), int(width)
  if rule == "sha":
    if h <= 416:
      h, w = 416.0, (416.0 / h) * w
    if w <= 416:
      w, h = 416.0, (416.0 / w) * h
  else:
    if w >= 2048:
      w, h = 2048.0, (2048.0 / w) * h
    if h >= 2048:
      h, w = 2048.0, (2048.0 / h) * w
    if h <= 512:
      h, w = 512.0, (512.0 / h) * w
    if w <= 512:
      w, h = 512.0, (512.0 / w) * h
    if h < w:
      if w / h > 2048 / 512:
        w, h = 2048.0, 512.0
    elif h / w > 2048 / 512:
      h, w = 2048.0, 512.0
  return math.ceil(h / 32) * 32, math.ceil(w / 32) * 32


def resize_points(points, size_hw, resized_hw) -> np.ndarray:
  """The official integer pixel (x', y') of each point after resizing.

  Args:
    points: float [N, 2] (x, y) in pixels of the original image.
    size_hw: (H, W) of the original image.
    resized_hw: (H', W') of the resized image.

  Returns:
    int64 [N, 2] (column x', row y'): ``round`` first (half to even), then
    ``min(W' - 1, floor(x W'/W))``, likewise for y (module docstring).
  """
  (h, w), (rh, rw) = size_hw, resized_hw
  p = np.round(np.asarray(points, np.float64).reshape(-1, 2)).astype(np.int64)
  x = np.minimum(rw - 1, np.floor(p[:, 0] * (rw / w)).astype(np.int64))
  y = np.minimum(rh - 1, np.floor(p[:, 1] * (rh / h)).astype(np.int64))
  return np.stack([x, y], axis=1)


def gaussian_kernel(size: int = 15, sigma: float = 4.0) -> np.ndarray:
  """float64 [size, size]: outer product of the normalised 1-D Gaussian
  exp(-(i - c)^2 / (2 sigma^2)) / sum, c = (size - 1) / 2 (OpenCV's
  ``getGaussianKernel(size, sigma)`` squared)."""
  i = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-0.5 / (sigma * sigma) * i * i)
  g = g * (1.0 / g.sum())
  return np.outer(g, g)


def density_map(pixels, height: int, width: int, *, sigma: float = 4.0,
                size: int = 15, float16: bool = True) -> np.ndarray:
  """mPrompt's density map: a border-cut ``size`` x ``size`` Gaussian per
  point, without renormalisation.

  Args:
    pixels: int [N, 2] (x', y') pixel of each point (:func:`resize_points`);
      points with a negative coordinate are skipped (as the official code).
    height, width: map size (the resized image), pixels.
    sigma: Gaussian sigma in pixels (official ``fixed_value`` 4).
    size: kernel side (15: radius 7).
    float16: round the map through float16 as the official stored files.

  Returns:
    float32 [height, width], density stride 1, count units (each point
    carries mass 1 minus what the border cuts).
  """
  out = np.zeros((height, width), np.float32)
  kernel = gaussian_kernel(size, sigma)
  rad = size // 2
  for x, y in np.asarray(pixels, np.int64).reshape(-1, 2):
    if x < 0 or y < 0:
      continue
    y0, y1 = max(0, y - rad), min(height, y + rad + 1)
    x0, x1 = max(0, x - rad), min(width, x + rad + 1)
    # float32 += float64 rounds once per point, as the official loop.
    out[y0:y1, x0:x1] += kernel[y0 - y + rad:y1 - y + rad,
                                x0 - x + rad:x1 - x + rad]
  if float16:
    out = out.astype(np.float16).astype(np.float32)
  return out


def point_mask(density) -> np.ndarray:
  """B(y) = density > 0, bool [H, W] (paper's dilated point map)."""
  return np.asarray(density) > 0


def knn_radii(pixels, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """Per point, the K used and the disc radius r of the context mask.

  Args:
    pixels: int [N, 2] (x', y') pixels (:func:`resize_points`), N >= k + 1.
    k: the paper's K (3).

  Returns:
    (k_used int32 [N], r float64 [N]) by the official reduction rule (module
    docstring); distances in pixels.

  Raises:
    ValueError: when N < k + 1 (then m_K is all ones: see :func:`knn_mask`).
  """
  pts = np.asarray(pixels, np.float64).reshape(-1, 2)
  n = len(pts)
  if n < k + 1:
    raise ValueError(f"knn_radii needs at least k + 1 = {k + 1} points, got "
                     f"{n}")
  _, counts = np.unique(pts, axis=0, return_counts=True)
  query = min(n, k + int(counts.max()))
  dist, _ = spatial.cKDTree(pts).query(pts, k=query)
  dist = np.asarray(dist, np.float64).reshape(n, query)
  # The first k non-zero distances of each (sorted) row, NaN-padded.
  nonzero = dist > 0
  order = np.argsort(~nonzero, axis=1, kind="stable")
  d = np.take_along_axis(dist, order, axis=1)[:, :k]
  avail = np.minimum(nonzero.sum(1), k)
  d = np.where(np.arange(k) < avail[:, None], d, np.nan)
  kk = avail.astype(np.int32)
  rows = np.arange(n)
  r = np.where(kk > 0, d[rows, np.maximum(kk - 1, 0)], 0.0)
  while True:
    prefix = np.where(np.arange(k) < (kk - 1)[:, None], d, 0.0).sum(1)
    mean = np.where(kk > 1, prefix / np.maximum(kk - 1, 1), r)
    shrink = (kk > 1) & (r > 2 * mean)
    if not shrink.any():
      break
    kk = np.where(shrink, kk - 1, kk)
    r = np.where(shrink, d[rows, np.maximum(kk - 1, 0)], r)
  return kk, r


def _disc(radius: int) -> np.ndarray:
  i = np.arange(-radius, radius + 1)
  return i[:, None] ** 2 + i[None, :] ** 2 <= radius * radius


def knn_mask(pixels, height: int, width: int, k: int = 3) -> np.ndarray:
  """m_K, bool [height, width]: union of the discs of radius floor(r)
  centred on each point's pixel (:func:`knn_radii`); all True with fewer
  than k + 1 points."""
  pixels = np.asarray(pixels, np.int64).reshape(-1, 2)
  if len(pixels) < k + 1:
    return np.ones((height, width), bool)
  _, r = knn_radii(pixels, k)
  out = np.zeros((height, width), bool)
  discs = {}
  for (x, y), radius in zip(pixels, np.floor(r).astype(np.int64)):
    if radius not in discs:
      discs[radius] = _disc(int(radius))
    y0, y1 = max(0, y - radius), min(height, y + radius + 1)
    x0, x1 = max(0, x - radius), min(width, x + radius + 1)
    if y0 >= y1 or x0 >= x1:
      continue
    out[y0:y1, x0:x1] |= discs[radius][y0 - y + radius:y1 - y + radius,
                                       x0 - x + radius:x1 - x + radius]
  return out


def box_mask(boxes, height: int, width: int) -> np.ndarray:
  """The paper's box pseudo mask m_p: bool [height, width], True on the
  pixels whose centres lie inside a box (x1, y1, x2, y2) (input pixels)."""
  out = np.zeros((height, width), bool)
  for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
    c0, c1 = int(np.ceil(x1 - 0.5)), int(np.floor(x2 - 0.5))
    r0, r1 = int(np.ceil(y1 - 0.5)), int(np.floor(y2 - 0.5))
    out[max(0, r0):max(0, r1 + 1), max(0, c0):max(0, c1 + 1)] = True
  return out


def offline_prompt(point_mask_, pseudo_mask=None, knn=None) -> np.ndarray:
  """The offline prompt m, bool [H, W].

  ``B(y)`` alone (released code) when ``pseudo_mask`` is None; else
  ``m_p | B(y)`` (paper), or ``(m_p & m_K) | B(y)`` when ``knn`` is given
  (the pre-release official order).
  """
  m = np.asarray(point_mask_, bool)
  if pseudo_mask is None:
    return m
  mp = np.asarray(pseudo_mask, bool)
  if knn is not None:
    mp = mp & np.asarray(knn, bool)
  return mp | m


def add_targets(sample, *, rule: str, prompt: str = "points", k: int = 3,
                sigma: float = 4.0, pseudo_threshold: float = 0.055):
  """``before_augment`` hook: resize by ``rule`` and add the targets.

  Args:
    sample: a sample (``counting_jax.data.sample``); with ``prompt="file"``
      it must also hold ``pseudo_mask`` float [H, W] (the offline
      segmenter's map at the original size).
    rule: the resize rule (:func:`resize_shape`).
    prompt: offline prompt m: ``"points"`` (released: B(y)), ``"boxes"``
      (paper: head boxes | B(y)) or ``"file"`` (``pseudo_mask >
      pseudo_threshold`` resized nearest, | B(y)).
    k: K of m_K. sigma: density sigma (pixels).

  Returns:
    The resized sample (image bilinear, boxes scaled) whose ``points`` are
    the official pixels' centres (x' + 0.5, y' + 0.5), float32, with
    ``masks`` float32 [H', W', 3]: density, m (0/1), m_K (0/1).

  Raises:
    ValueError: naming the image for an unknown ``prompt``, a sample that
      already holds ``masks``, ``prompt="boxes"`` on a sample with points
      but no boxes (a data set without head boxes), or
      ``prompt="file"`` without ``pseudo_mask``.
  """
  sid = sample.get("image_id", "?")
  if prompt not in ("points", "boxes", "file"):
    raise ValueError(f"{sid}: prompt must be 'points', 'boxes' or 'file', "
                     f"got {prompt!r}")
  if "masks" in sample:
    raise ValueError(f"{sid}: sample already holds 'masks'")
  h, w = sample["image"].shape[:2]
  rh, rw = resize_shape(h, w, rule)
  pixels = resize_points(sample["points"], (h, w), (rh, rw))
  pseudo = sample.get("pseudo_mask")
  out = {key: v for key, v in sample.items() if key != "pseudo_mask"}
  if (rh, rw) != (h, w):
    out = transforms.resize(out, rh, rw)
  out["points"] = (pixels + 0.5).astype(np.float32)
  density = density_map(pixels, rh, rw, sigma=sigma)
  by = point_mask(density)
  knn = knn_mask(pixels, rh, rw, k)
  mp = None
  if prompt == "boxes":
    if len(out["boxes"]) == 0 and len(pixels):
      raise ValueError(f"{sid}: prompt='boxes' needs head boxes; the sample "
                       "has points but no boxes")
    mp = box_mask(out["boxes"], rh, rw)
  elif prompt == "file":
    if pseudo is None:
      raise ValueError(f"{sid}: prompt='file' needs sample['pseudo_mask']")
    pm = {"image": np.zeros((h, w, 3), np.uint8),
          "points": np.zeros((0, 2), np.float32),
          "boxes": np.zeros((0, 4), np.float32),
          "masks": (np.asarray(pseudo, np.float32) >
                    pseudo_threshold)[..., None].astype(np.float32)}
    mp = transforms.resize(pm, rh, rw)["masks"][..., 0] > 0.5
  m = offline_prompt(by, mp)
  out["masks"] = np.stack([density, m, knn], -1).astype(np.float32)
  return out
