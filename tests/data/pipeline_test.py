"""Batching: static shapes, masks, determinism per step."""

import numpy as np
import pytest

from counting_jax.data import pipeline
from counting_jax.data import sample as sample_lib


def _source(n=5, size=32):
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    k = int(rng.integers(0, 9))
    pts = rng.uniform(0, size, (k, 2))
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    out.append(sample_lib.make_sample(img, pts, f"{i:03d}"))
  return out


def test_pad_points_mask_and_overflow():
  s = _source()[0]
  s = dict(s, points=np.ones((3, 2), np.float32))
  p = pipeline.pad_points(s, 5)
  assert p["points"].shape == (5, 2) and p["point_mask"].tolist() == [1, 1, 1, 0, 0]
  assert np.all(p["points"][3:] == 0) and p["count"] == 3
  with pytest.raises(ValueError, match="000: 3 points exceed max_points=2"):
    pipeline.pad_points(s, 2)


def test_train_dataset_static_shapes_and_same_batch_per_step():
  src = _source()
  kw = dict(batch_size=4, max_points=16, seed=1, crop_size=(16, 16),
            flip=True, vflip=True, mean=(0.5,) * 3, std=(0.25,) * 3)
  ds = pipeline.train_dataset(src, **kw)
  again = pipeline.train_dataset(src, **kw)
  for step in (0, 1, 7):
    a, b = ds[step], again[step]
    assert a["image"].shape == (4, 16, 16, 3) and a["image"].dtype == np.float32
    assert a["points"].shape == (4, 16, 2) and a["point_mask"].dtype == bool
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["points"], b["points"])
    np.testing.assert_array_equal(a["count"], a["point_mask"].sum(1))
  assert not np.array_equal(ds[0]["image"], ds[1]["image"])


def test_train_dataset_epochs_visit_every_image():
  src = _source(n=4)
  ds = pipeline.train_dataset(src, batch_size=2, max_points=16, seed=0)
  ids = [i for step in range(2) for i in ds[step]["image_id"]]
  assert sorted(ids) == ["000", "001", "002", "003"]


def test_eval_batches_group_by_size_and_pad():
  src = _source(n=3) + [sample_lib.make_sample(
      np.zeros((20, 28, 3), np.uint8), [[1.0, 2.0]], "odd")]
  batches = list(pipeline.eval_batches(src, batch_size=2, pad_multiple=8))
  assert [len(b["image_id"]) for b in batches] == [2, 1, 1]
  assert batches[-1]["image"].shape == (1, 24, 32, 3)
  total = sum(b["count"].sum() for b in batches)
  assert total == sum(len(s["points"]) for s in src)


def _mix_two(sample, rng, draw):
  """Records which training images the sample drew."""
  others = draw(2)
  return dict(sample, image_id=sample["image_id"] + ">" + ",".join(
      o["image_id"] for o in others))


def test_mix_hook_draws_training_records_deterministically():
  from counting_jax.data.fields import BatchFields
  src = _source(n=6)
  kw = dict(batch_size=3, max_points=16, seed=4, crop_size=(16, 16),
            indices=[0, 2, 3, 5, 5], fields=BatchFields(mix=_mix_two))
  ds = pipeline.train_dataset(src, cache=True, **kw)
  uncached = pipeline.train_dataset(src, cache=False, **kw)
  other_seed = pipeline.train_dataset(src, cache=True, **{**kw, "seed": 5})
  drawn, ids, differ = [], [], False
  for step in range(8):
    batch = ds[step]
    np.testing.assert_array_equal(batch["image_id"],
                                  uncached[step]["image_id"])
    np.testing.assert_array_equal(batch["image"], uncached[step]["image"])
    differ |= list(batch["image_id"]) != list(other_seed[step]["image_id"])
    for name in batch["image_id"]:
      own, others = name.split(">")
      pair = others.split(",")
      assert len(set(pair)) == 2  # distinct within one draw
      ids.append(own)
      drawn += pair
  assert differ
  # Draws come from the training records only (each once in the pool),
  # every one of them drawn in 48 draws.
  assert set(drawn) == {"000", "002", "003", "005"}
  assert set(ids) == {"000", "002", "003", "005"}
  with pytest.raises(ValueError, match="2 other training images needed"):
    pipeline.train_dataset(src, batch_size=1, max_points=16, seed=0,
                           indices=[1], fields=BatchFields(mix=_mix_two))[0]
