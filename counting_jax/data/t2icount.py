"""T2ICount's host-side training data: targets, negative prompts, mosaics.

Official data recipe (T2ICount, CVPR 2025, its training dataset), per
sample: with p = 0.5 the plain image (region map R = 1); else with p = 0.25
overall a **negative prompt** (:func:`negative_prompt`: the class name of
another image; when the classes differ the GT is empty and R = 0); else
with p = 0.25 a **mosaic** (:func:`mosaic`: four random 224² crops, the
anchor's and three other images', shuffled on a 448² canvas; tiles of
another class lose their points and get R = 0; the prompt is the anchor's
class). Then a random rescale by s ~ U[1, 2) with p = 0.5, a random 384²
crop and a horizontal flip (the shared transforms; ``input.scale_range``,
``scale_prob``,
``crop_size``, ``flip``), and the targets at stride 8
(:func:`add_targets`, the ``after_augment`` hook):

* ``gt_density`` float32 [H/8, W/8]: 60 x the density summed over 8 x 8
  blocks. The official maps are FamNet's precomputed adaptive Gaussians at
  full resolution, rescaled with the image; here the density is rebuilt
  from the points of the final crop (:func:`block_density`: per point an
  integrated Gaussian, σ = clip(0.3 x mean distance to the 3 nearest
  points, 1, 12) px, truncated at ±4σ and normalised there, clipped at the
  crop border), so objects just outside the crop put no mass inside it.
* ``region`` float32 [H/8, W/8]: R at the cell centres (nearest), from
  ``sample["masks"][..., 0]`` when a mosaic / negative sample set it, else
  ones.

The region map travels as channel 0 of ``sample["masks"]`` (float32
[H, W, 1]) so the shared crop / flip / rescale transforms move it with the
pixels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["block_density", "add_targets", "negative_prompt", "mosaic",
           "read_fsc147_s", "DENSITY_SCALE", "STRIDE"]

DENSITY_SCALE = 60.0
STRIDE = 8


def _sigmas(points: np.ndarray, k: int = 3, beta: float = 0.3,
            lo: float = 1.0, hi: float = 12.0) -> np.ndarray:
  n = len(points)
  if n < 2:
    return np.full((n,), hi, np.float64)
  d = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  kk = min(k, n - 1)
  near = np.sort(d, axis=1)[:, :kk]
  return np.clip(beta * near.mean(1), lo, hi)


def _profiles(coord, sigma, length: int) -> np.ndarray:
  """[N, length]: each point's Gaussian integrated over the pixels, within
  ±4σ, normalised over that window (before clipping at the border)."""
  edges = np.arange(length + 1, dtype=np.float64)
  c, s = coord[:, None], sigma[:, None]
  lo = np.maximum(edges[:-1][None], c - 4 * s)
  hi = np.minimum(edges[1:][None], c + 4 * s)
  cdf = lambda x: 0.5 * (1 + special.erf((x - c) / (s * math.sqrt(2))))
  mass = np.where(hi > lo, cdf(hi) - cdf(lo), 0.0)
  return mass / (special.erf(4 / math.sqrt(2)))


def block_density(points, height: int, width: int, *, stride: int = STRIDE,
                  scale: float = DENSITY_SCALE) -> np.ndarray:
  """``scale`` x the point density summed over ``stride`` blocks.

  Args:
    points: float [N, 2] (x, y) input-image pixels.
    height, width: image size in pixels, multiples of ``stride``.

  Returns:
    float32 [height / stride, width / stride]; its sum is ``scale`` x the
    number of points up to the mass outside the image.

  Raises:
    ValueError: if the size is not a multiple of ``stride``.
  """
  if height % stride or width % stride:
    raise ValueError(f"block_density: size {(height, width)} is not a "
                     f"multiple of stride {stride}")
  pts = np.asarray(points, np.float64).reshape(-1, 2)
  h, w = height // stride, width // stride
  if not len(pts):
    return np.zeros((h, w), np.float32)
  sigma = _sigmas(pts)
  gx = _profiles(pts[:, 0], sigma, width).reshape(-1, w, stride).sum(-1)
  gy = _profiles(pts[:, 1], sigma, height).reshape(-1, h, stride).sum(-1)
  return (scale * np.einsum("nh,nw->hw", gy, gx)).astype(np.float32)


def add_targets(sample: dict, *, stride: int = STRIDE,
                scale: float = DENSITY_SCALE) -> dict:
  """The ``after_augment`` hook: adds ``gt_density`` and ``region`` (see
  module docstring) and drops ``masks``.

  Raises:
    ValueError: naming the image when its size is not a multiple of
      ``stride``.
  """
  h, w = sample["image"].shape[:2]
  if h % stride or w % stride:
    raise ValueError(f"{sample.get('image_id', '?')}: image {h}x{w} is not a "
                     f"multiple of the density stride {stride}")
  out = dict(sample)
  out["gt_density"] = block_density(sample["points"], h, w, stride=stride,
                                    scale=scale)
  masks = out.pop("masks", None)
  if masks is None:
    out["region"] = np.ones((h // stride, w // stride), np.float32)
  else:
    centre = stride // 2
    out["region"] = np.asarray(masks, np.float32)[centre::stride,
                                                  centre::stride, 0]
  return out


def _region(sample, value: float) -> np.ndarray:
  h, w = sample["image"].shape[:2]
  if "masks" in sample:
    return np.asarray(sample["masks"], np.float32)[..., :1]
  return np.full((h, w, 1), value, np.float32)


def negative_prompt(sample: dict, other_class: str) -> dict:
  """The sample prompted with ``other_class``: when it differs from the
  sample's class, no points (empty GT) and R = 0; else unchanged (R = 1)."""
  out = dict(sample)
  if other_class == sample.get("class_name", ""):
    out["masks"] = _region(sample, 1.0)
    return out
  out["class_name"] = other_class
  out["points"] = np.zeros((0, 2), np.float32)
  out["masks"] = np.zeros(sample["image"].shape[:2] + (1,), np.float32)
  return out


def mosaic(anchor: dict, others, rng: np.random.Generator, *,
           tile: int = 224) -> dict:
  """Four ``tile``² random crops (``anchor`` and three ``others``) in a
  random order on a 2·tile square canvas; tiles whose class differs from
  the anchor's lose their points and get R = 0 (the prompt stays the
  anchor's class). Images smaller than ``tile`` are resized up first
  (bilinear, points scaled).

  Raises:
    ValueError: unless exactly three ``others`` are given.
  """
  from counting_jax.data import transforms  # local: avoids an import cycle
  others = list(others)
  if len(others) != 3:
    raise ValueError(f"mosaic needs 3 other samples, got {len(others)}")
  parts = [anchor] + others
  order = rng.permutation(4)
  canvas = np.zeros((2 * tile, 2 * tile, 3), np.uint8)
  region = np.zeros((2 * tile, 2 * tile, 1), np.float32)
  points = []
  for slot, idx in enumerate(order):
    s = parts[idx]
    h, w = s["image"].shape[:2]
    if h < tile or w < tile:
      f = tile / min(h, w)
      s = transforms.resize(s, max(tile, math.ceil(h * f)),
                            max(tile, math.ceil(w * f)))
    s = transforms.random_crop(s, (tile, tile), rng)
    r, c = divmod(slot, 2)
    canvas[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = s["image"]
    same = s.get("class_name", "") == anchor.get("class_name", "")
    if same:
      region[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = 1.0
      points.append(np.asarray(s["points"], np.float32)
                    + np.array([c * tile, r * tile], np.float32))
  out = dict(anchor)
  out.update(image=canvas, masks=region,
             points=(np.concatenate(points) if points
                     else np.zeros((0, 2), np.float32)),
             boxes=np.zeros((0, 4), np.float32))
  return out


def read_fsc147_s(path) -> dict[str, tuple[str, int]]:
  """FSC-147-S (T2ICount's simple subset; ``FSC-147-S.json`` v2, 230
  images, or the paper's v1 with 196): ``{file: {"class": str, "count":
  int}}`` -> ``{file: (prompt, count)}``. The images are FSC-147's (any
  split); the prompt is the json's class (never the image's FSC-147 class)
  and the GT is its count; evaluation tiles as
  ``counting_jax.train.t2icount_tiling``.

  Raises:
    ValueError: naming the file and entry that lacks a class or count.
  """
  import json  # local: only this reader needs it
  import pathlib
  raw = json.loads(pathlib.Path(path).read_text())
  out = {}
  for name, entry in raw.items():
    if not isinstance(entry, dict) or "class" not in entry or \
        "count" not in entry:
      raise ValueError(f"{path}: entry {name!r} needs 'class' and 'count', "
                       f"got {entry!r}")
    out[str(name)] = (str(entry["class"]), int(entry["count"]))
  return out
