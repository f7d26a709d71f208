"""Seg-then-Count's synthetic two-class set on the real FSC-147 images:
count of interest and half right for every sample, same seed same bytes,
and the TFDS builder over the release folder."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from counting_jax.data import fsc147_synthetic as synthetic
from counting_jax.data.builders.fsc147_synthetic import Fsc147Synthetic
from counting_jax import metrics


@pytest.fixture(scope="module")
def source(fsc147_release):
  from counting_jax.data import fsc147  # pylint: disable=g-import-not-at-top
  manual, _ = fsc147_release
  paths = fsc147.find_files(manual)
  ann = fsc147.read_annotations(paths["annotations"])
  classes = fsc147.read_classes(paths["classes"])
  names = fsc147.read_splits(paths["splits"])["test"]
  samples = [fsc147.read_sample(paths["images"], n, ann[n], classes[n])[0]
             for n in names]
  return manual, samples


def _check(s, by_id):
  a_id, b_id = s["image_id"].split("_")
  a, b = by_id[a_id], by_id[b_id]
  assert a["class_name"] != b["class_name"] == s["other_class"]
  h, w = s["image"].shape[:2]
  wa = int(round(0.5 * a["image"].shape[1]))
  wb = int(round(0.5 * b["image"].shape[1]))
  assert h == 384 and w == wa + wb
  assert s["split_x"] == (wb if s["half"] else wa)
  lo, hi = ((s["split_x"], w) if s["half"] else (0, s["split_x"]))
  # Every point of interest lies in its half; recover the crop offset from
  # the image bytes and count a's points independently.
  crop = s["image"][:, lo:hi]
  offsets = [x for x in range(a["image"].shape[1] - crop.shape[1] + 1)
             if np.array_equal(a["image"][:, x:x + crop.shape[1]], crop)]
  assert offsets
  x0 = offsets[0]
  px = a["points"][:, 0]
  expected = int(((px >= x0) & (px < x0 + crop.shape[1])).sum())
  assert len(s["points"]) == expected
  if expected:
    assert s["points"][:, 0].min() >= lo and s["points"][:, 0].max() < hi
  assert len(s["boxes"]) >= 1
  assert (s["boxes"][:, 0] >= lo).all() and (s["boxes"][:, 2] <= hi).all()


def test_counts_and_halves_are_right_for_every_sample(source):
  _, samples = source
  by_id = {s["image_id"]: s for s in samples}
  out = list(synthetic.generate(lambda i: samples[i],
                                [s["class_name"] for s in samples], 12,
                                seed=3))
  assert {s["half"] for s in out} == {0, 1}
  for s in out:
    _check(s, by_id)


def test_same_seed_same_bytes_other_seed_other_images(source):
  _, samples = source
  classes = [s["class_name"] for s in samples]

  def digest(seed):
    h = hashlib.sha256()
    for s in synthetic.generate(lambda i: samples[i], classes, 4, seed=seed):
      h.update(s["image"].tobytes() + s["points"].tobytes()
               + s["image_id"].encode() + bytes([s["half"]]))
    return h.hexdigest()

  assert digest(7) == digest(7) != digest(8)


def test_bad_inputs_are_refused(source):
  _, samples = source
  a, b = samples[0], dict(samples[1])
  b["image"] = b["image"][:100]
  with pytest.raises(ValueError, match="differ in height"):
    synthetic.make_pair(a, b, np.random.default_rng(0))
  with pytest.raises(ValueError, match="two classes"):
    list(synthetic.generate(lambda i: a, ["x", "x"], 1, seed=0))


def test_builder_writes_the_same_bytes_twice(source, tmp_path):
  manual, samples = source
  by_id = {s["image_id"]: s for s in samples}
  rows = []
  for run in ("a", "b"):
    b = Fsc147Synthetic(data_dir=str(tmp_path / run), sizes={"test": 3},
                        file_format="array_record")
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual)))
    src = b.as_data_source("test")
    rows.append([src[i] for i in range(len(src))])
  assert len(rows[0]) == 3
  for x, y in zip(*rows):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["points"], y["points"])
    s = dict(x, image_id=x["image_id"].decode()
             if isinstance(x["image_id"], bytes) else x["image_id"])
    s["other_class"] = (s["other_class"].decode()
                        if isinstance(s["other_class"], bytes)
                        else s["other_class"])
    s["class_name"] = by_id[s["image_id"].split("_")[0]]["class_name"]
    _check(s, by_id)


def test_synthetic_error_adds_the_count_in_the_other_half():
  density = np.zeros((4, 8))
  density[:, :3] = 0.25  # left: 3 columns x 4 rows x 0.25 = 3
  density[:, 3:] = 0.1   # right: 20 x 0.1 = 2
  assert metrics.half_counts(density, 6, 0, stride=2) == pytest.approx(
      (3.0, 2.0))
  assert metrics.half_counts(density, 6, 1, stride=2) == pytest.approx(
      (2.0, 3.0))
  with pytest.raises(ValueError, match="multiple of stride"):
    metrics.half_counts(density, 5, 0, stride=2)
  m = metrics.synthetic_counting_metrics([3.0, 10.0], [2.0, 0.0], [4.0, 8.0])
  err = np.array([1 + 2, 2 + 0])
  assert m["mae"] == pytest.approx(err.mean())
  assert m["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()))
  assert m["nae"] == pytest.approx((err / [4, 8]).mean())
  assert m["sre"] == pytest.approx(np.sqrt((err ** 2 / [4, 8]).mean()))


def test_eval_batches_carry_the_halves_for_the_synthetic_error(source):
  """``half`` / ``split_x`` reach the centre-padded evaluation batch and
  ``loop.half_counts`` splits a density there: the true density scores 0,
  mass added in the other half counts as error."""
  from counting_jax import density as density_lib  # pylint: disable=g-import-not-at-top
  from counting_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from counting_jax.methods import base  # pylint: disable=g-import-not-at-top
  from counting_jax.methods import seg_then_count  # pylint: disable=g-import-not-at-top
  from counting_jax.train import loop  # pylint: disable=g-import-not-at-top
  _, samples = source
  gen = list(synthetic.generate(lambda i: samples[i],
                                [s["class_name"] for s in samples], 3,
                                seed=1))
  fields = base.BatchFields(
      max_exemplars=3, before_augment=lambda s: seg_then_count
      .centre_pad_hook(s, multiple=32))
  pin, pout, true = [], [], []
  for s, batch in zip(gen, pipeline.eval_batches(gen, batch_size=1,
                                                 pad_multiple=32,
                                                 fields=fields)):
    h, w = batch["image"].shape[1:3]
    left = (w - s["image"].shape[1]) // 2
    assert int(batch["split_x"][0]) == s["split_x"] + left
    assert int(batch["half"][0]) == s["half"]
    dens = np.array(density_lib.gaussian_density(
        batch["points"][0], batch["point_mask"][0], (h // 8, w // 8), 1.0,
        stride=8))
    side = (slice(None), slice(0, 1)) if s["half"] else (slice(None),
                                                          slice(-1, None))
    dens[side] += 2.0 / h * 8  # 2 objects of the other half, one column
    i, o = loop.half_counts(dens, batch, 0, 8)
    pin.append(i), pout.append(o), true.append(float(batch["count"][0]))
  np.testing.assert_allclose(pin, true, atol=0.05)
  np.testing.assert_allclose(pout, 2.0, atol=0.05)
  m = metrics.synthetic_counting_metrics(pin, pout, true)
  assert abs(m["mae"] - 2.0) < 0.1
