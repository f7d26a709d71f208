"""tensorflow-datasets builder for CARPK.

Build (TensorFlow-free, array_record)::

  python -c "from counting_jax import data; data.load('carpk', 'test', manual_dir='/data')"

Splits ``train`` (989) and ``test`` (459) from ``ImageSets``. Common features
(``counting_jax.data.features``, PNG): the original PNG bytes (1280x720),
``points`` = car box centres, ``boxes`` = all car boxes (x1, y1, x2, y2),
``class_name`` 'car', ``image_id`` = the image name. Parsing and coordinates:
``counting_jax.data.carpk``.

Licence: research / non-commercial use only.
"""

from __future__ import annotations

import logging

import tensorflow_datasets as tfds

from counting_jax.data import carpk
from counting_jax.data import features as features_lib
from counting_jax.data import files

_CITATION = """@inproceedings{hsieh2017drone,
  title={Drone-based Object Counting by Spatially Regularized Regional Proposal Network},
  author={Hsieh, Meng-Ru and Lin, Yen-Liang and Hsu, Winston H},
  booktitle={IEEE International Conference on Computer Vision (ICCV)},
  pages={4145--4153},
  year={2017}}"""


class Carpk(tfds.core.GeneratorBasedBuilder):
  """CARPK: 1,448 drone images of parking lots, 89,777 car boxes."""

  name = "carpk"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download CARPK.zip (link on https://lafi.github.io/LPN/; research /
non-commercial use only) and extract it into the manual directory (default
~/tensorflow_datasets/downloads/manual/, or pass manual_dir=...), so that it
contains, at its top or up to two folders deep:

  CARPK_devkit/data/Images/<name>.png ...
  CARPK_devkit/data/Annotations/<name>.txt ...
  CARPK_devkit/data/ImageSets/train.txt, test.txt
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=features_lib.features(encoding_format="png"),
        homepage="https://lafi.github.io/LPN/",
        citation=_CITATION)

  def _split_generators(self, dl_manager):
    root = carpk.root_dir(dl_manager.manual_dir)
    out = {}
    for split in ("train", "test"):
      if not (root / "ImageSets" / f"{split}.txt").is_file():
        logging.warning("CARPK: no ImageSets/%s.txt in %s; split skipped",
                        split, root)
        continue
      names = carpk.read_split(root, split)
      if len(names) != carpk.SPLIT_SIZES[split]:
        logging.warning("CARPK %s: %d images listed, the official split has "
                        "%d", split, len(names), carpk.SPLIT_SIZES[split])
      out[split] = self._generate_examples(root, names)
    if not out:
      raise FileNotFoundError(f"no ImageSets/train.txt or test.txt in {root}")
    return out

  def _generate_examples(self, root, names):
    for name in names:
      sample, data = carpk.read_sample(root, name)
      yield name, files.example_from(sample, data)
