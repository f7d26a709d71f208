"""From a random-access source of samples to fixed-shape batches.

Training: source -> (cache) -> shuffle per epoch -> the method's ``mix``
(mosaics, negative prompts: other training records drawn with the sample's
generator from a :class:`RecordPool`) -> its ``before_augment`` -> augment
(random_map, one seeded generator per element)
-> the method's ``after_augment`` -> method fields -> pad points -> batch ->
normalise. The result is a grain ``MapDataset`` of batches indexed by step:
``ds[step]`` is always the same batch for the same seed, which makes resumed
runs see exactly the data an uninterrupted run would. :func:`iterate` reads
it from any step on, decoding and augmenting in worker processes with
prefetching (grain ``mp_prefetch``), so a split is never held in memory
unless ``cache`` asks for it.

Batches are dicts of numpy arrays with static shapes:
``image`` float32 [B, H, W, 3] (normalised), ``points`` float32 [B, N, 2]
(x, y) input pixels, ``point_mask`` bool [B, N] (padded rows are zero),
``count`` float32 [B] and ``image_id`` str [B]; and, when the method's
``BatchFields`` (``counting_jax.data.fields``) ask for them, ``exemplars``
float32 [B, E, 4] (x1, y1, x2, y2 input pixels) with ``exemplar_mask`` bool
[B, E], ``tokens`` int32 [B, L], ``masks`` float32 [B, H, W, C] and what the
method's hooks add. Evaluation batches add ``image_size`` int32 [B, 2], each
image's (height, width) before padding (count only the density cells that
cover it: ``counting_jax.density.count_in_image``).
"""

from __future__ import annotations

import functools
from typing import Sequence

import grain
import numpy as np
from absl import flags

from counting_jax.data import transforms
from counting_jax.data.fields import BatchFields

__all__ = ["pad_points", "add_fields", "normalize", "train_dataset",
           "iterate", "eval_batches", "RecordPool", "IMAGENET_MEAN",
           "IMAGENET_STD",
           "NO_FIELDS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_FIELDS = BatchFields()


def pad_points(sample, max_points: int):
  """Adds ``point_mask`` and pads ``points`` to [max_points, 2] with zeros;
  ``count`` is the number of points, or the sample's own ``count`` when
  its source gives counts without points (FSC-147-S, evaluation only).

  Raises:
    ValueError: naming the image when it has more than ``max_points`` points
      (points are never dropped silently; raise ``max_points``).
  """
  pts = sample["points"]
  n = len(pts)
  if n > max_points:
    raise ValueError(f"{sample.get('image_id', '?')}: {n} points exceed "
                     f"max_points={max_points}; raise max_points")
  padded = np.zeros((max_points, 2), np.float32)
  padded[:n] = pts
  mask = np.zeros((max_points,), bool)
  mask[:n] = True
  out = {k: v for k, v in sample.items() if k not in ("boxes", "class_name")}
  count = np.float32(sample["count"] if "count" in sample else n)
  out.update(points=padded, point_mask=mask, count=count)
  return out


def add_fields(sample, fields: BatchFields = NO_FIELDS):
  """Adds the per-sample fields ``fields`` asks for (see module docstring):
  ``exemplars`` / ``exemplar_mask`` from the first ``max_exemplars`` boxes,
  ``tokens`` from ``tokenize(class_name)``.

  Raises:
    ValueError: naming the image when the token ids are not 1-D.
  """
  out = dict(sample)
  if fields.max_exemplars:
    e = int(fields.max_exemplars)
    boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)[:e]
    out["exemplars"] = np.zeros((e, 4), np.float32)
    out["exemplars"][:len(boxes)] = boxes
    out["exemplar_mask"] = np.arange(e) < len(boxes)
  if fields.tokenize is not None:
    tokens = np.asarray(fields.tokenize(sample.get("class_name", "")),
                        np.int32)
    if tokens.ndim != 1:
      raise ValueError(f"{sample.get('image_id', '?')}: tokenize must give "
                       f"1-D token ids, got shape {tokens.shape}")
    out["tokens"] = tokens
  if "masks" in out:
    out["masks"] = np.asarray(out["masks"], np.float32)
  return out


def _prepare(sample, fields, max_points):
  return pad_points(add_fields(sample, fields), max_points)


def normalize(image, mean, std):
  """uint8 [..., 3] -> float32 ((x / 255) - mean) / std."""
  x = image.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _finish(batch, mean, std):
  batch = dict(batch)
  batch["image"] = normalize(batch["image"], mean, std)
  return batch


class RecordPool:
  """Random access to the training records, for ``mix`` hooks that build a
  sample from several (``counting_jax.data.fields.BatchFields.mix``).

  Picklable when its source is (grain workers receive a copy); draws
  depend only on the generator passed in, so a seeded generator gives the
  same records in every process.
  """

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def draw(self, rng: np.random.Generator, k: int) -> list:
    """``k`` distinct records (copies of the sample dicts), drawn uniformly
    without replacement with ``rng`` (as Python's ``random.sample`` over
    the image list in the T2ICount code; the sample being built may be
    among them).

    Raises:
      ValueError: when the pool holds fewer than ``k`` records.
    """
    n = len(self._source)
    if k > n:
      raise ValueError(f"mix: {k} other training images needed, the "
                       f"training set has {n}")
    return [dict(self._source[int(i)])
            for i in rng.choice(n, size=k, replace=False)]


def _augment(sample, rng, *, crop_size, flip, vflip, scale_range,
             pad_multiple, before=None, after=None, color_jitter=None,
             scale_prob=1.0, mix=None, pool=None):
  if mix is not None:
    sample = mix(sample, rng, functools.partial(pool.draw, rng))
  if before is not None:
    sample = before(sample)
  if color_jitter is not None:
    sample = transforms.color_jitter(sample, rng, **color_jitter)
  if scale_range is not None:
    sample = transforms.random_rescale(sample, scale_range, rng,
                                       prob=scale_prob)
  if crop_size is not None:
    sample = transforms.random_crop(sample, crop_size, rng)
  sample = transforms.random_flip(sample, rng, horizontal=flip,
                                  vertical=vflip)
  sample = transforms.pad_to_multiple(sample, pad_multiple)
  return sample if after is None else after(sample)


def train_dataset(source, *, batch_size: int, max_points: int, seed: int,
                  indices: Sequence[int] | None = None, crop_size=None,
                  flip: bool = True, vflip: bool = False, scale_range=None,
                  pad_multiple: int = 1, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD, cache: bool = True,
                  fields: BatchFields = NO_FIELDS,
                  color_jitter=None,
                  scale_prob: float = 1.0) -> grain.MapDataset:
  """An endless grain MapDataset of training batches; ``ds[step]`` is the
  batch of that step.

  Args:
    source: random-access samples (``counting_jax.data.load``).
    batch_size: images per batch (global batch on one host).
    max_points: static point capacity per image (see :func:`pad_points`).
    seed: shuffling and augmentation seed.
    indices: subset of ``source`` to train on (default all).
    crop_size: (h, w) random crop in input pixels, or None for full images
      (then all images must share one size).
    flip, vflip: random horizontal / vertical flips.
    scale_range: (lo, hi) random rescale factor, or None.
    scale_prob: probability of that rescale (T2ICount officially 0.5).
    pad_multiple: pad H, W up to a multiple of this (model down-sampling).
    mean, std: per-channel normalisation of x / 255.
    cache: hold the decoded samples in memory (small data sets); else
      every batch decodes its images again (in :func:`iterate`'s workers).
    fields: the method's batch fields and host hooks.
    color_jitter: None, or ``transforms.color_jitter``'s keyword arguments
      (brightness, contrast, saturation, hue), applied after the method's
      ``before_augment`` hook and before rescaling, cropping and flips (the
      order of the mPrompt code).

  Raises:
    ValueError: for empty ``indices`` or unknown ``color_jitter`` keys.
  """
  if color_jitter is not None:
    color_jitter = dict(color_jitter)
    unknown = set(color_jitter) - {"brightness", "contrast", "saturation",
                                   "hue"}
    if unknown:
      raise ValueError(f"color_jitter: unknown keys {sorted(unknown)}")
  indices = list(range(len(source))) if indices is None else list(indices)
  if not indices:
    raise ValueError("train_dataset: no training images (indices is empty)")
  distinct = list(dict.fromkeys(indices))  # a repeated index draws once
  if cache:
    held = {i: source[i] for i in distinct}
    ds = grain.MapDataset.source([held[i] for i in indices])
    pool = RecordPool([held[i] for i in distinct])
  else:
    ds = grain.MapDataset.source(_Subset(source, indices))
    pool = RecordPool(_Subset(source, distinct))
  if len(indices) < batch_size:
    ds = ds.repeat(-(-batch_size // len(indices)))
  augment = functools.partial(
      _augment, crop_size=None if crop_size is None else tuple(crop_size),
      flip=flip, vflip=vflip, scale_range=scale_range,
      scale_prob=scale_prob,
      pad_multiple=pad_multiple, before=fields.before_augment,
      after=fields.after_augment, color_jitter=color_jitter,
      mix=fields.mix, pool=pool if fields.mix is not None else None)
  ds = (ds.shuffle(seed=seed).repeat(None)
        .random_map(augment, seed=seed + 1)
        .map(functools.partial(_prepare, fields=fields,
                               max_points=max_points))
        .batch(batch_size, drop_remainder=True)
        .map(functools.partial(_finish, mean=mean, std=std)))
  return ds


def iterate(ds, start: int = 0, *, process_index: int = 0,
            process_count: int = 1, num_workers: int = 0,
            prefetch: int = 2):
  """Iterator over this process's batches of global steps ``start``,
  ``start + 1``, ... of a :func:`train_dataset` built with the local batch
  size: element i is ``ds[(start + i) * process_count + process_index]``
  (``counting_jax.train.sharding.process_batch_index``), so a resumed run
  reads exactly what an uninterrupted one would, without iterator state in
  the checkpoint.

  Args:
    ds: the ``MapDataset`` of :func:`train_dataset`.
    start: the first global step.
    process_index, process_count: this process and the number of processes.
    num_workers: worker processes decoding and augmenting batches in
      parallel (grain ``mp_prefetch``); 0 = in this process, on a
      background thread.
    prefetch: batches read ahead (per worker with workers).

  Raises:
    ValueError: for a negative ``start`` or ``num_workers``.
  """
  if start < 0 or num_workers < 0:
    raise ValueError(f"start={start} and num_workers={num_workers} must be "
                     ">= 0")
  sub = ds[start * process_count + process_index::process_count]
  it = sub.to_iter_dataset(grain.ReadOptions(
      num_threads=1 if num_workers else 2,
      prefetch_buffer_size=max(1, prefetch)))
  if num_workers:
    if not flags.FLAGS.is_parsed():
      # grain's workers read absl flags (their defaults): outside an absl
      # app (a notebook, a test) nothing has parsed them.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(1, prefetch)))
  return iter(it)


class _Subset:
  """Random access to ``source[indices[i]]``."""

  def __init__(self, source, indices):
    self._source, self._indices = source, list(indices)

  def __len__(self):
    return len(self._indices)

  def __getitem__(self, i):
    return self._source[self._indices[i]]


def eval_batches(source, *, batch_size: int, pad_multiple: int = 1,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, indices=None,
                 fields: BatchFields = NO_FIELDS):
  """Yields full-resolution evaluation batches in source order.

  Consecutive images are batched while they share a size (each batch is
  padded to the largest point count in it, rounded up to a multiple of 64 to
  limit recompilation); images are zero-padded at the bottom/right to
  ``pad_multiple`` (padding carries no points; ``image_size`` int32 [B, 2]
  keeps each real (height, width), so counts can leave the padding out:
  ``counting_jax.density.count_in_image``).
  """
  indices = range(len(source)) if indices is None else indices
  pending = []

  def flush():
    n_max = max(len(s["points"]) for s in pending)
    cap = max(64, -(-n_max // 64) * 64)
    items = [_prepare(s, fields, cap) for s in pending]
    batch = {k: np.stack([it[k] for it in items]) for k in items[0]}
    pending.clear()
    return _finish(batch, mean, std)

  for i in indices:
    s = dict(source[i])
    if fields.before_augment is not None:
      s = fields.before_augment(s)
    s["image_size"] = np.asarray(s["image"].shape[:2], np.int32)
    s = transforms.pad_to_multiple(s, pad_multiple)
    if fields.after_augment is not None:
      s = fields.after_augment(s)
    if pending and (s["image"].shape != pending[0]["image"].shape
                    or len(pending) == batch_size):
      yield flush()
    pending.append(s)
  if pending:
    yield flush()
