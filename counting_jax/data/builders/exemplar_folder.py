"""tensorflow-datasets builder for a user's folder of images with exemplars.

Build (TensorFlow-free, array_record)::

  python -c "from counting_jax import data; \\
      data.load('exemplar_folder', 'test', manual_dir='DIR')"

or evaluate a trained exemplar counter on it::

  counting-jax eval --workdir runs/stc_seg \\
      --config.dataset.name=exemplar_folder --config.dataset.manual_dir=DIR \\
      --config.dataset.test_split=test

One split, ``test``: every ``<id>.<image>`` + ``<id>.json`` pair of the
folder (layout and coordinates: ``counting_jax.data.exemplar_folder``).
Common features (``counting_jax.data.features``, PNG: the decoded pixels,
lossless), ``points`` = the objects of the class of interest only,
``boxes`` = its exemplar boxes. Editing the folder prepares it again
(``counting_jax.data`` compares its listing).
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from counting_jax.data import exemplar_folder
from counting_jax.data import features as features_lib
from counting_jax.data import files

__all__ = ["ExemplarFolder"]


class ExemplarFolder(tfds.core.GeneratorBasedBuilder):
  """A user's images, each with the points and exemplar boxes of one
  class."""

  name = "exemplar_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Pass the folder of your images and their <id>.json annotations "
      "({\"points\": [[x, y], ...], \"boxes\": [[x1, y1, x2, y2], ...]}) as "
      "manual_dir (--config.dataset.manual_dir=DIR); see "
      "counting_jax.data.exemplar_folder.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=features_lib.features(encoding_format="png"),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    pairs = exemplar_folder.find_pairs(dl_manager.manual_dir)
    return {exemplar_folder.SPLIT: self._generate_examples(pairs)}

  def _generate_examples(self, pairs):
    for image_id, image, annotation in pairs:
      sample, data = exemplar_folder.read_sample(image, annotation, image_id)
      yield image_id, files.example_from(sample, data)
