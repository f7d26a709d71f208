"""tensorflow-datasets builder for the VGG synthetic cells data set.

Build (TensorFlow-free, array_record)::

  python -c "from counting_jax import data; data.prepare('vgg_cells')"

Splits: ``train`` = images 001-100 (the standard training pool) and ``test``
= images 101-200. By default it reads the copy shipped with the package
(``counting_jax/data/assets/vgg_cells``); pass ``manual_dir`` to read another.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from counting_jax.data import features as features_lib
from counting_jax.data import vgg_cells

_CITATION = """@inproceedings{lempitsky2010learning,
  title={Learning To Count Objects in Images},
  author={Lempitsky, Victor and Zisserman, Andrew},
  booktitle={Advances in Neural Information Processing Systems},
  year={2010}}"""


class VggCells(tfds.core.GeneratorBasedBuilder):
  """VGG synthetic fluorescence-microscopy cells (200 images, dot labels)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional: the package ships a copy. Otherwise download "
      "http://www.robots.ox.ac.uk/~vgg/research/counting/cells.zip, extract it "
      "and pass the folder holding 001cell.png ... 200dots.png as manual_dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=features_lib.features(),
        homepage="https://www.robots.ox.ac.uk/~vgg/research/counting/",
        citation=_CITATION)

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    ids = vgg_cells.list_ids(root)
    if len(ids) != vgg_cells.NUM_IMAGES:
      raise ValueError(f"{root}: expected {vgg_cells.NUM_IMAGES} VGG cells "
                       f"images, found {len(ids)}")
    return {"train": self._generate_examples(root, ids[:100]),
            "test": self._generate_examples(root, ids[100:])}

  def _generate_examples(self, root, ids):
    for image_id in ids:
      sample = vgg_cells.read_sample(root, image_id)
      yield image_id, features_lib.to_example(sample)
