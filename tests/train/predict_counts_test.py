"""Counts leave out the zero padding: evaluation batches, tiled and whole.

The toy counter's density is a pointwise function of the pixels (sum-pooled
to the stride), non-zero on the black padding band, so the whole padded map
changes with the padding while the cells covering the real image do not.
"""

from __future__ import annotations

import numpy as np
import pytest

from counting_jax.data import pipeline
from counting_jax.data import sample as sample_lib
from counting_jax.train import predict as predict_lib
from counting_jax.train import published


def _pointwise(stride):
  def predict(inputs):
    x = np.asarray(inputs["image"])[..., 0] + 3.0  # padding (normalised 0)
    b, h, w = x.shape
    return x.reshape(b, h // stride, stride, w // stride, stride).sum((2, 4))
  return predict


def _counts(stride, multiple, **tiling):
  g = np.random.default_rng(0)
  source = [sample_lib.make_sample(
      g.integers(0, 256, (h, w, 3), dtype=np.uint8), [[1.0, 1.0]], str(i))
            for i, (h, w) in enumerate([(50, 70), (50, 70), (33, 64)])]
  out, whole = [], []
  for batch in pipeline.eval_batches(source, batch_size=2,
                                     pad_multiple=multiple):
    assert batch["image_size"].dtype == np.int32
    dens, counts = predict_lib.predict_counts(
        _pointwise(stride), batch["image"], batch["image_size"],
        stride=stride, multiple=multiple, **tiling)
    out.extend(counts)
    whole.extend(dens.sum((1, 2)))
  return np.array(out), np.array(whole)


@pytest.mark.parametrize("stride", [1, 4])
def test_padding_does_not_change_counts(stride):
  base, base_whole = _counts(stride, 8)
  for multiple in (16, 64):
    counts, whole = _counts(stride, multiple)
    np.testing.assert_allclose(counts, base, rtol=1e-6)
    # The whole padded map does change: the test would catch a plain sum.
    assert np.all(np.abs(whole - base_whole) > 10)
  # Tiles (64-px windows over the 64-padded images) count the same.
  tiled, _ = _counts(stride, 16, max_size=32, tile_size=32, overlap=16,
                     blend="linear")
  np.testing.assert_allclose(tiled, base, rtol=1e-5)


def test_eval_batches_keep_the_real_image_size():
  source = [sample_lib.make_sample(np.zeros((20, 28, 3), np.uint8), [], "a")]
  batch = next(pipeline.eval_batches(source, batch_size=1, pad_multiple=8))
  assert batch["image"].shape == (1, 24, 32, 3)
  np.testing.assert_array_equal(batch["image_size"], [[20, 28]])


def test_published_table_only_for_its_data_set_and_protocol():
  from configs import cells  # pylint: disable=g-import-not-at-top
  config = cells.get_config()
  protocol, rows = published.published_table(config)
  assert "VGG cells" in protocol and rows[0][0].startswith("Lempitsky")
  for key, value in (("name", "dot_folder"), ("test_split", "test[:10]"),
                     ("num_train", 64)):
    other = cells.get_config()
    other.dataset[key] = value
    assert published.published_table(other) is None, key
  assert published.published_table(cells.get_config("smoke=True")) is None
  del config.published_dataset
  assert published.published_table(config) is None
