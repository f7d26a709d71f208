"""tensorflow-datasets builder for FSC-147-S (T2ICount's simple subset).

Build (TensorFlow-free, array_record)::

  from counting_jax import data
  data.load("fsc147_s", "test", manual_dir="/data/FSC147")

Splits ``test`` (v2, ``FSC-147-S.json``, 230 images) and ``v1`` (the
paper's ``FSC-147-S-v1.json``, 196), each present when its file is in the
manual folder. Features: the common ones (``counting_jax.data.features``;
``points`` and ``boxes`` empty, ``class_name`` = the subset's prompt,
``image_id`` '<id>') and ``count`` float32 (the GT count). Parsing:
``counting_jax.data.fsc147_s``.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow_datasets as tfds

from counting_jax.data import features as features_lib
from counting_jax.data import files
from counting_jax.data import fsc147_s

_CITATION = """@inproceedings{qian2025t2icount,
  title={T2ICount: Enhancing Cross-modal Understanding for Zero-Shot Counting},
  author={Qian, Yifei and others},
  booktitle={CVPR},
  year={2025}}"""


class Fsc147S(tfds.core.GeneratorBasedBuilder):
  """FSC-147-S: FSC-147 images with prompts of their minor classes."""

  name = "fsc147_s"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
The FSC-147 images (images_384_VarV2 of FSC147_384_V2.zip, see the fsc147
data set) and the subset files from https://github.com/cha15yq/T2ICount:
FSC-147-S.json (v2, split 'test') and/or asset/FSC-147-S-v1.json (v1, split
'v1'). Put them in the manual directory, at its top or up to two folders
deep, e.g.:

  FSC147/images_384_VarV2/2.jpg ...
  FSC147/FSC-147-S.json
  FSC147/FSC-147-S-v1.json            (optional)
"""

  def _info(self) -> tfds.core.DatasetInfo:
    common = features_lib.features(encoding_format="jpeg")
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            **dict(common.items()),
            "count": tfds.features.Tensor(shape=(), dtype=np.float32),
        }),
        homepage="https://github.com/cha15yq/T2ICount",
        citation=_CITATION)

  def _split_generators(self, dl_manager):
    paths = fsc147_s.find_files(dl_manager.manual_dir)
    out = {}
    for split in fsc147_s.FILES:
      if paths[split] is None:
        logging.warning("FSC-147-S: %s not found under %s; split %s skipped",
                        fsc147_s.FILES[split], dl_manager.manual_dir, split)
        continue
      entries = fsc147_s.read_subset(paths[split])
      if len(entries) != fsc147_s.SPLIT_SIZES[split]:
        logging.warning("FSC-147-S %s: %d images in %s, the released file "
                        "has %d", split, len(entries), paths[split],
                        fsc147_s.SPLIT_SIZES[split])
      out[split] = self._generate_examples(paths["images"], entries)
    return out

  def _generate_examples(self, image_dir, entries):
    for name, (prompt, count) in entries.items():
      sample, data = fsc147_s.read_sample(image_dir, name, prompt, count)
      yield sample["image_id"], files.example_from(sample, data)
