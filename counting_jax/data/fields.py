"""The optional per-sample batch fields a method asks the data pipeline for.

A plain record (:class:`BatchFields`) read by ``counting_jax.data.pipeline``
and set by each method (``counting_jax.methods``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

__all__ = ["BatchFields"]


@dataclasses.dataclass(frozen=True)
class BatchFields:
  """Optional per-sample batch fields, built on the host with static shapes.

  Attributes:
    max_exemplars: when set, batches carry ``exemplars`` float32 [B, E, 4]
      (x1, y1, x2, y2 in input-image pixels, moved with the pixels by every
      transform; the first E boxes of the sample) and ``exemplar_mask`` bool
      [B, E] (False for missing boxes, e.g. cropped away).
    tokenize: when set, ``text -> int32 [L]`` token ids of a fixed length;
      batches carry ``tokens`` int32 [B, L] of the sample's ``class_name``
      (or of the user's ``--text`` at prediction).
    before_augment: ``sample -> sample`` on the host, on the stored sample
      before any transform (e.g. masks that depend on the full image: they
      go into ``sample["masks"]`` float32 [H, W, C] and move with the
      pixels).
    after_augment: ``sample -> sample`` on the host, after the transforms
      and padding (targets at the final size). Added array fields must have
      the same shape for every sample of a batch.
    mix: ``(sample, rng, draw) -> sample`` on the host, in training only,
      first of all (before ``before_augment``): a sample built from the
      stored one and others of the training set (mosaics, negative
      prompts). ``rng`` is the sample's seeded ``numpy.random.Generator``
      and ``draw(k)`` returns k distinct training records drawn uniformly
      with it (``counting_jax.data.pipeline``), so a seed gives the same
      samples on every run and worker.

  The hooks run in the input workers: they must be picklable (module-level
  functions or ``functools.partial`` of them) and deterministic.
  """
  max_exemplars: int | None = None
  tokenize: Callable[[str], np.ndarray] | None = None
  before_augment: Callable[[dict], dict] | None = None
  after_augment: Callable[[dict], dict] | None = None
  mix: Callable[..., dict] | None = None
