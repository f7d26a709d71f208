"""tensorflow-datasets builder for Seg-then-Count's synthetic two-class set.

Built from the user's FSC-147 folder (the files ``fsc147`` reads) by
``counting_jax.data.fsc147_synthetic.generate``: splits ``val`` (1,431
samples from FSC-147 val) and ``test`` (1,359 from FSC-147 test), each a
crop of an image of the class of interest beside a crop of an image of
another class. Seeds: ``seed`` for val, ``seed + 1`` for test; the same
seed gives the same bytes. Features: the common ones (PNG images: crops
are not re-compressed) plus ``half`` (0: objects of interest on the left),
``split_x`` (left crop width, pixels), ``count_other`` and
``other_class``. Source: Xu, Le & Samaras, WACV 2025, §4.2 (crop rule ours,
see ``fsc147_synthetic``).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from counting_jax.data import features as features_lib
from counting_jax.data import fsc147
from counting_jax.data import fsc147_synthetic as synthetic

__all__ = ["Fsc147Synthetic"]


class Fsc147Synthetic(tfds.core.GeneratorBasedBuilder):
  """Synthetic two-class images from FSC-147 (Seg-then-Count)."""

  name = "fsc147_synthetic"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
The FSC-147 release folder (images_384_VarV2, annotation_FSC147_384.json,
Train_Test_Val_FSC_147.json, ImageClasses_FSC147.txt), as for fsc147.
"""

  def __init__(self, *, sizes=None, seed: int = 0,
               crop_fraction: float = synthetic.CROP_FRACTION, **kwargs):
    self._sizes = dict(synthetic.SPLIT_SIZES if sizes is None else sizes)
    self._seed = int(seed)
    self._crop_fraction = float(crop_fraction)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    common = features_lib.features(encoding_format="png")
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            **dict(common.items()),
            "half": tfds.features.Scalar(dtype=np.int32),
            "split_x": tfds.features.Scalar(dtype=np.int32),
            "count_other": tfds.features.Scalar(dtype=np.int32),
            "other_class": tfds.features.Text(),
        }), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    paths = fsc147.find_files(dl_manager.manual_dir)
    annotations = fsc147.read_annotations(paths["annotations"])
    splits = fsc147.read_splits(paths["splits"])
    classes = fsc147.read_classes(paths["classes"])
    out = {}
    for i, split in enumerate(("val", "test")):
      names = splits[split]
      if split not in self._sizes or not names:
        continue
      out[split] = self._generate_examples(
          paths["images"], names, annotations, classes, self._sizes[split],
          self._seed + i)
    return out

  def _generate_examples(self, image_dir, names, annotations, classes, n,
                         seed):
    def get(i):
      name = names[i]
      if name not in annotations or name not in classes:
        raise ValueError(f"FSC-147: no annotation or class for {name}")
      return fsc147.read_sample(image_dir, name, annotations[name],
                                classes[name])[0]

    for k, s in enumerate(synthetic.generate(
        get, [classes.get(n_, "") for n_ in names], n, seed=seed,
        crop_fraction=self._crop_fraction)):
      example = features_lib.to_example(s, "png")
      yield f"{k:05d}", example
