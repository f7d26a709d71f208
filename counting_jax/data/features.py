"""The one tensorflow-datasets feature spec that every builder emits.

It mirrors :mod:`counting_jax.data.sample`: ``image`` (encoded bytes, decoded
to uint8 [H, W, 3] by tfds with PIL, no TensorFlow), ``points`` float32
[N, 2] (x, y), ``boxes`` float32 [K, 4] (x1, y1, x2, y2), ``class_name`` and
``image_id`` text. Builders pass images as encoded bytes from
:func:`encode_image` (tfds cannot encode numpy arrays without TensorFlow).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

__all__ = ["features", "encode_image", "to_example"]


def features(encoding_format: str = "png") -> tfds.features.FeaturesDict:
  """The common FeaturesDict; ``encoding_format`` of the stored images."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3),
                                   encoding_format=encoding_format),
      "points": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
      "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "class_name": tfds.features.Text(),
      "image_id": tfds.features.Text(),
  })


def encode_image(image: np.ndarray, encoding_format: str = "png") -> bytes:
  """Encodes uint8 RGB [H, W, 3] as PNG (lossless) or JPEG bytes."""
  buf = io.BytesIO()
  fmt = {"png": "PNG", "jpeg": "JPEG"}[encoding_format]
  kwargs = {"quality": 95} if fmt == "JPEG" else {"compress_level": 1}
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def to_example(sample: dict, encoding_format: str = "png") -> dict:
  """A validated sample dict -> the example dict the feature spec encodes."""
  out = dict(sample)
  out["image"] = encode_image(sample["image"], encoding_format)
  return out
