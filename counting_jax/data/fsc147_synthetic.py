"""Seg-then-Count's synthetic two-class images from FSC-147 (§4.2).

Xu, Le & Samaras (WACV 2025) take two FSC-147 images of different classes,
crop a part of each and concatenate the crops side by side; the objects of
interest (the exemplars' class) lie in one half only. The paper gives the
set sizes (val 1,431, test 1,359) but not the crop rule; ours (arguments):

* each crop keeps the full height and ``crop_fraction`` (0.5) of the width
  of its image (at least 1 pixel), at a uniformly drawn offset; for the
  image of interest the offset is drawn among those that keep its first
  exemplar box whole (any offset when none does);
* which half holds the class of interest is drawn uniformly;
* the sample's ``points`` are the points of interest inside their crop, its
  ``boxes`` the exemplar boxes lying wholly inside the crop (the first box
  clipped to the crop when none does), both moved with the crop; its
  ``class_name`` is the class of interest; ``half`` (0 left, 1 right),
  ``split_x`` (the left crop's width, input pixels), ``count_other`` (the
  other image's points in its crop) and ``other_class`` are recorded.

Both images must have the same height (FSC-147 stores every image 384 px
high). :func:`generate` is deterministic: the same samples and seed give the
same images, byte for byte.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from counting_jax.data import sample as sample_lib

__all__ = ["make_pair", "generate", "CROP_FRACTION", "SPLIT_SIZES"]

CROP_FRACTION = 0.5
SPLIT_SIZES = {"val": 1431, "test": 1359}


def _crop_x(width: int, crop: int, box, rng) -> int:
  lo, hi = 0, width - crop
  if box is not None:
    blo, bhi = int(np.ceil(box[2])) - crop, int(np.floor(box[0]))
    blo, bhi = max(lo, blo), min(hi, bhi)
    if blo <= bhi:
      lo, hi = blo, bhi
  return int(rng.integers(lo, hi + 1))


def _inside(points, x0, crop):
  x = points[:, 0]
  return points[(x >= x0) & (x < x0 + crop)]


def make_pair(a: dict, b: dict, rng: np.random.Generator, *,
              crop_fraction: float = CROP_FRACTION) -> dict:
  """One synthetic sample: a crop of ``a`` (class of interest) beside a
  crop of ``b``.

  Args:
    a, b: samples (``image`` uint8 [H, W, 3], ``points`` float32 [N, 2]
      (x, y), ``boxes`` float32 [K, 4], ``class_name``, ``image_id``).
    rng: the generator (drawn: a's offset, b's offset, the half).
    crop_fraction: share of each image's width kept, in (0, 1].

  Returns:
    a sample with ``image`` uint8 [H, w_a + w_b, 3], ``points``, ``boxes``,
    ``class_name``, ``image_id`` '<a>_<b>', ``half`` int, ``split_x`` int,
    ``count_other`` int, ``other_class`` str.

  Raises:
    ValueError: naming both images when their heights differ, or for a
      ``crop_fraction`` outside (0, 1].
  """
  if not 0 < crop_fraction <= 1:
    raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
  ia, ib = np.asarray(a["image"]), np.asarray(b["image"])
  if ia.shape[0] != ib.shape[0]:
    raise ValueError(f"images {a['image_id']} and {b['image_id']} differ in "
                     f"height ({ia.shape[0]} vs {ib.shape[0]})")
  ca = max(1, int(round(crop_fraction * ia.shape[1])))
  cb = max(1, int(round(crop_fraction * ib.shape[1])))
  boxes = np.asarray(a["boxes"], np.float32).reshape(-1, 4)
  xa = _crop_x(ia.shape[1], ca, boxes[0] if len(boxes) else None, rng)
  xb = _crop_x(ib.shape[1], cb, None, rng)
  half = int(rng.integers(2))
  crop_a, crop_b = ia[:, xa:xa + ca], ib[:, xb:xb + cb]
  shift = -xa + (cb if half else 0)
  pts = _inside(np.asarray(a["points"], np.float32).reshape(-1, 2), xa, ca)
  pts = pts + np.array([shift, 0], np.float32)
  keep = (boxes[:, 0] >= xa) & (boxes[:, 2] <= xa + ca)
  kept = boxes[keep]
  if not len(kept) and len(boxes):
    kept = boxes[:1].copy()
    kept[:, [0, 2]] = np.clip(kept[:, [0, 2]], xa, xa + ca)
  kept = kept + np.array([shift, 0, shift, 0], np.float32)
  other = _inside(np.asarray(b["points"], np.float32).reshape(-1, 2), xb, cb)
  image = np.concatenate([crop_b, crop_a] if half else [crop_a, crop_b], 1)
  out = sample_lib.make_sample(
      np.ascontiguousarray(image), pts,
      f"{a['image_id']}_{b['image_id']}", boxes=kept,
      class_name=str(a["class_name"]))
  out.update(half=half, split_x=cb if half else ca,
             count_other=int(len(other)), other_class=str(b["class_name"]))
  return out


def generate(get: Callable[[int], dict], classes: Sequence[str], n: int, *,
             seed: int, crop_fraction: float = CROP_FRACTION):
  """Yields ``n`` synthetic samples, deterministically from ``seed``.

  Args:
    get: ``index -> sample`` of the source split (e.g. an FSC-147 data
      source); only the drawn samples are read.
    classes: the class name of every source sample (drawing pairs of
      different classes without reading images).
    n: number of samples.
    seed: the generator's seed.
    crop_fraction: see :func:`make_pair`.

  Raises:
    ValueError: when the source has fewer than two classes.
  """
  classes = [str(c) for c in classes]
  if len(set(classes)) < 2:
    raise ValueError("the synthetic set needs images of two classes or more")
  rng = np.random.default_rng(seed)
  for _ in range(n):
    ia = int(rng.integers(len(classes)))
    ib = int(rng.integers(len(classes)))
    while classes[ib] == classes[ia]:
      ib = int(rng.integers(len(classes)))
    yield make_pair(get(ia), get(ib), rng, crop_fraction=crop_fraction)
