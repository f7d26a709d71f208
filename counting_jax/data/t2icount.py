"""T2ICount's host-side training data: targets, negative prompts, mosaics.

Official data recipe (T2ICount, CVPR 2025, its training dataset), per
sample (:func:`official_mix`, the ``mix`` hook of the pipeline, which
draws the other images from the training set with the sample's seeded
generator): with p = 0.5 the plain image (region map R = 1); else with
p = 0.25 overall a **negative prompt** (:func:`negative_prompt`: the class
name of one image drawn uniformly from the training set, possibly the
sample itself; when the classes differ the GT is empty, R = 0 and the
prompt is that class, else the sample is unchanged); else with p = 0.25 a
**mosaic** (:func:`mosaic`: a random 224² crop of the anchor and of three
distinct images drawn uniformly from the training set, shuffled into the
quadrants of a 448² canvas; tiles of another class get GT 0 and R = 0; the
prompt is the anchor's class). Then a random rescale by s ~ U[1, 2) with
p = 0.5, a random 384² crop and a horizontal flip (the shared transforms;
``input.scale_range``, ``scale_prob``, ``crop_size``, ``flip``), and the
targets at stride 8 (:func:`add_targets`, the ``after_augment`` hook):

* ``gt_density`` float32 [H/8, W/8]: 60 x the density summed over 8 x 8
  blocks. Officially the density is FamNet's precomputed full-image map
  (``gt_density_map_adaptive_384_VarV2``), moved with the pixels (cv2
  bicubic rescale / s², crops, mosaic tiles). By default
  (``density="image"`` in :func:`official_mix`) we do the same with the
  map rebuilt from the points (:func:`pixel_density`, the Gaussians of
  :func:`block_density` at stride 1; FamNet's files are not in the
  releases we read), carried as ``sample["density"]``, so objects just
  outside a crop or tile put their part of the mass inside it as
  officially. ``density="points"`` instead rebuilds the map from the
  points of the final crop (:func:`block_density`), so no mass crosses a
  crop border.
* ``region`` float32 [H/8, W/8]: R sampled at the top-left pixel of every
  8 x 8 block (cv2 nearest resize, as the official code), from
  ``sample["masks"][..., 0]`` when a mosaic / negative sample set it, else
  ones.

The region map travels as channel 0 of ``sample["masks"]`` (float32
[H, W, 1]) so the shared crop / flip / rescale transforms move it with the
pixels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import spatial
from scipy import special

__all__ = ["block_density", "pixel_density", "add_targets",
           "negative_prompt", "mosaic", "official_mix", "read_fsc147_s",
           "DENSITY_SCALE", "STRIDE", "DENSITY_MODES"]

DENSITY_SCALE = 60.0
STRIDE = 8
DENSITY_MODES = ("image", "points")


def _sigmas(points: np.ndarray, k: int = 3, beta: float = 0.3,
            lo: float = 1.0, hi: float = 12.0) -> np.ndarray:
  n = len(points)
  if n < 2:
    return np.full((n,), hi, np.float64)
  kk = min(k, n - 1)
  # k-d tree: O(N log N) memory and time (dense FSC-147 images hold ~3,700
  # points, whose full distance matrix would take ~300 MB).
  near, _ = spatial.cKDTree(points).query(points, k=kk + 1)
  return np.clip(beta * near[:, 1:].mean(1), lo, hi)


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


def pixel_density(points, height: int, width: int) -> np.ndarray:
  """The full-image density map: :func:`block_density` at stride 1 and
  scale 1 (objects per pixel).

  Args:
    points: float [N, 2] (x, y) input-image pixels.
    height, width: image size in pixels.

  Returns:
    float32 [height, width]; its sum is the number of points up to the mass
    outside the image.
  """
  return block_density(points, height, width, stride=1, scale=1.0)


def add_targets(sample: dict, *, stride: int = STRIDE,
                scale: float = DENSITY_SCALE) -> dict:
  """The ``after_augment`` hook: adds ``gt_density`` and ``region`` (see
  module docstring) and drops ``masks`` and ``density``.

  ``gt_density`` is ``scale`` x ``sample["density"]`` summed over
  ``stride`` blocks when the sample carries a pixel density map, else
  ``block_density`` of its points.

  Raises:
    ValueError: naming the image when its size is not a multiple of
      ``stride`` or its ``density`` map has another size.
  """
  h, w = sample["image"].shape[:2]
  sid = sample.get("image_id", "?")
  if h % stride or w % stride:
    raise ValueError(f"{sid}: image {h}x{w} is not a multiple of the "
                     f"density stride {stride}")
  out = dict(sample)
  density = out.pop("density", None)
  if density is None:
    out["gt_density"] = block_density(sample["points"], h, w,
                                      stride=stride, scale=scale)
  else:
    density = np.asarray(density, np.float64)
    if density.shape != (h, w):
      raise ValueError(f"{sid}: density map {density.shape} does not match "
                       f"the {h}x{w} image")
    out["gt_density"] = (scale * density.reshape(
        h // stride, stride, w // stride, stride).sum((1, 3))).astype(
            np.float32)
  masks = out.pop("masks", None)
  if masks is None:
    out["region"] = np.ones((h // stride, w // stride), np.float32)
  else:
    out["region"] = np.asarray(masks, np.float32)[::stride, ::stride, 0]
  return out


def _region(sample, value: float) -> np.ndarray:
  h, w = sample["image"].shape[:2]
  if "masks" in sample:
    return np.asarray(sample["masks"], np.float32)[..., :1]
  return np.full((h, w, 1), value, np.float32)


def negative_prompt(sample: dict, other_class: str) -> dict:
  """The sample prompted with ``other_class``: when it differs from the
  sample's class, no points, a zero ``density`` map (when it carries one),
  R = 0 and ``class_name`` = ``other_class``; else the sample with R = 1
  (the official negative-prompt branch)."""
  out = dict(sample)
  if other_class == sample.get("class_name", ""):
    out["masks"] = _region(sample, 1.0)
    return out
  out["class_name"] = other_class
  out["points"] = np.zeros((0, 2), np.float32)
  out["masks"] = np.zeros(sample["image"].shape[:2] + (1,), np.float32)
  if "density" in sample:
    out["density"] = np.zeros(sample["image"].shape[:2], np.float32)
  return out


def mosaic(anchor: dict, others, rng: np.random.Generator, *,
           tile: int = 224) -> dict:
  """The official mosaic: a uniformly placed ``tile``² crop of ``anchor``
  and of each of the three ``others``, in a random order (a uniform
  permutation) in the quadrants of a 2·tile square canvas (row-major:
  top-left, top-right, bottom-left, bottom-right). Tiles whose class
  differs from the anchor's get no points, a zero density and R = 0;
  the others keep their points, their ``density`` crop (when the samples
  carry pixel density maps) and R = 1. The prompt stays the anchor's
  class; ``boxes`` are dropped (they belong to the anchor's full image).

  The official code crops every image as it is (its images are at least
  224 px on each side); images smaller than ``tile`` are resized up here
  first (bilinear, points scaled, density kept).

  Raises:
    ValueError: unless exactly three ``others`` are given, or when only
      some of the four samples carry a ``density`` map.
  """
  from counting_jax.data import transforms  # local: avoids an import cycle
  others = list(others)
  if len(others) != 3:
    raise ValueError(f"mosaic needs 3 other samples, got {len(others)}")
  parts = [anchor] + others
  with_density = ["density" in p for p in parts]
  if any(with_density) and not all(with_density):
    raise ValueError("mosaic: only some samples carry a density map ("
                     + ", ".join(str(p.get("image_id", "?")) for p in parts)
                     + ")")
  crops = []
  for s in parts:
    s = {k: v for k, v in s.items() if k != "masks"}
    h, w = s["image"].shape[:2]
    if h < tile or w < tile:
      f = tile / min(h, w)
      s = transforms.resize(s, max(tile, math.ceil(h * f)),
                            max(tile, math.ceil(w * f)))
    crops.append(transforms.random_crop(s, (tile, tile), rng))
  order = rng.permutation(4)
  canvas = np.zeros((2 * tile, 2 * tile, 3), np.uint8)
  region = np.zeros((2 * tile, 2 * tile, 1), np.float32)
  density = np.zeros((2 * tile, 2 * tile), np.float32)
  points = []
  for slot, idx in enumerate(order):
    s = crops[idx]
    r, c = divmod(slot, 2)
    rows, cols = slice(r * tile, (r + 1) * tile), slice(c * tile,
                                                        (c + 1) * tile)
    canvas[rows, cols] = s["image"]
    if idx == 0 or s.get("class_name", "") == anchor.get("class_name", ""):
      region[rows, cols] = 1.0
      points.append(np.asarray(s["points"], np.float32)
                    + np.array([c * tile, r * tile], np.float32))
      if all(with_density):
        density[rows, cols] = s["density"]
  out = {k: v for k, v in anchor.items() if k != "density"}
  out.update(image=canvas, masks=region,
             points=(np.concatenate(points) if points
                     else np.zeros((0, 2), np.float32)),
             boxes=np.zeros((0, 4), np.float32))
  if all(with_density):
    out["density"] = density
  return out


def _with_density(sample: dict) -> dict:
  h, w = sample["image"].shape[:2]
  return {**sample, "density": pixel_density(sample["points"], h, w)}


def official_mix(sample: dict, rng: np.random.Generator, draw, *,
                 negative_prob: float = 0.25, mosaic_prob: float = 0.25,
                 tile: int = 224, density: str = "image",
                 check_only: bool = False) -> dict | None:
  """The pipeline's ``mix`` hook: T2ICount's per-sample choice between the
  plain image, a negative prompt and a mosaic (module docstring; the
  official probabilities are 0.5 / 0.25 / 0.25).

  Args:
    sample: the stored training sample (the anchor).
    rng: its seeded generator (every draw comes from it).
    draw: ``draw(k) -> list of k samples``, distinct training records drawn
      uniformly with ``rng`` (``counting_jax.data.pipeline``).
    negative_prob, mosaic_prob: probabilities of the negative prompt and
      of the mosaic (the rest is the plain image).
    tile: the mosaic tile side in pixels.
    density: "image" (official: full-image density maps moved with the
      pixels, ``sample["density"]``) or "points" (rebuilt from the final
      crop's points).
    check_only: only check the arguments (returns None).

  Raises:
    ValueError: for probabilities outside [0, 1] or summing above 1, a
      tile that is not positive, or an unknown ``density``.
  """
  if (min(negative_prob, mosaic_prob) < 0
      or negative_prob + mosaic_prob > 1):
    raise ValueError(f"method.negative_prob={negative_prob} and "
                     f"mosaic_prob={mosaic_prob} must be >= 0 with a sum "
                     "<= 1")
  if density not in DENSITY_MODES:
    raise ValueError(f"method.target_density must be one of "
                     f"{DENSITY_MODES}, got {density!r}")
  if tile <= 0:
    raise ValueError(f"method.mosaic_tile must be positive, got {tile}")
  if check_only:
    return None
  prep = _with_density if density == "image" else (lambda s: s)
  u = rng.random()
  if u < negative_prob:
    other = draw(1)[0]
    return prep(negative_prompt(sample, other.get("class_name", "")))
  if u < negative_prob + mosaic_prob:
    return mosaic(prep(sample), [prep(o) for o in draw(3)], rng,
                  tile=tile)
  return prep(sample)


def read_fsc147_s(path) -> dict[str, tuple[str, int]]:
  """FSC-147-S (T2ICount's simple subset; ``FSC-147-S.json`` v2, 230
  images, or the paper's v1 with 196): ``{file: {"class": str, "count":
  int}}`` -> ``{file: (prompt, count)}``; as
  ``counting_jax.data.fsc147_s.read_subset`` (the ``fsc147_s`` data set
  reads the images with it).

  Raises:
    FileNotFoundError, ValueError: as ``read_subset``.
  """
  from counting_jax.data import fsc147_s  # local: only this reader needs it
  return fsc147_s.read_subset(path)
