"""tensorflow-datasets builder for UCF-QNRF.

Build (TensorFlow-free, array_record)::

  python -c "from counting_jax import data; data.load('ucf_qnrf', 'test', manual_dir='/data')"

Splits ``train`` (1,201) and ``test`` (334). Images are stored at full
resolution (original JPEG bytes); the short-side [512, 2048] resize of
BL/DM-Count/GL is a preprocessing preset (``counting_jax.data.presets``),
not part of the stored data. BL and DM-Count validate on a random subset of
``train`` given by their own list files (not shipped here). Parsing and
coordinates: ``counting_jax.data.ucf_qnrf``.

Licence: research use only (CRCV terms of use).
"""

from __future__ import annotations

import logging

import tensorflow_datasets as tfds

from counting_jax.data import features as features_lib
from counting_jax.data import files
from counting_jax.data import ucf_qnrf

_CITATION = """@inproceedings{idrees2018composition,
  title={Composition Loss for Counting, Density Map Estimation and Localization in Dense Crowds},
  author={Idrees, Haroon and Tayyab, Muhmmad and Athrey, Kishan and Zhang, Dong and Al-Maadeed, Somaya and Rajpoot, Nasir and Shah, Mubarak},
  booktitle={European Conference on Computer Vision (ECCV)},
  pages={532--546},
  year={2018}}"""


class UcfQnrf(tfds.core.GeneratorBasedBuilder):
  """UCF-QNRF: 1,535 dense-crowd images with 1.25 M head points."""

  name = "ucf_qnrf"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download UCF-QNRF_ECCV18.zip from https://www.crcv.ucf.edu/data/ucf-qnrf/
(research use only) and extract it into the manual directory (default
~/tensorflow_datasets/downloads/manual/, or pass manual_dir=...), so that it
contains, at its top or up to two folders deep:

  UCF-QNRF_ECCV18/Train/img_0001.jpg, img_0001_ann.mat, ...
  UCF-QNRF_ECCV18/Test/img_0001.jpg, img_0001_ann.mat, ...
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=features_lib.features(encoding_format="jpeg"),
        homepage="https://www.crcv.ucf.edu/data/ucf-qnrf/",
        citation=_CITATION)

  def _split_generators(self, dl_manager):
    root = ucf_qnrf.root_dir(dl_manager.manual_dir)
    splits = {}
    for split in ("train", "test"):
      try:
        split_root = ucf_qnrf.split_dir(root, split)
      except FileNotFoundError:
        logging.warning("UCF-QNRF: no %s folder in %s; split skipped",
                        split.capitalize(), root)
        continue
      ids = ucf_qnrf.list_ids(split_root)
      if len(ids) != ucf_qnrf.SPLIT_SIZES[split]:
        logging.warning("UCF-QNRF %s: %d images in %s, the official split "
                        "has %d", split, len(ids), split_root,
                        ucf_qnrf.SPLIT_SIZES[split])
      splits[split] = self._generate_examples(split_root, ids)
    if not splits:
      raise FileNotFoundError(f"no Train/Test folder in {root}")
    return splits

  def _generate_examples(self, split_root, ids):
    for image_id in ids:
      sample, data = ucf_qnrf.read_sample(split_root, image_id)
      yield image_id, files.example_from(sample, data)
