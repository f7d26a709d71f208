"""tensorflow-datasets builders for ShanghaiTech Part A and Part B.

Build (TensorFlow-free, array_record)::

  python -c "from counting_jax import data; data.load('shanghaitech_b', 'test', manual_dir='/data/ShanghaiTech')"

Splits ``train`` and ``test`` (the official ones; DM-Count, P2PNet and PML
select checkpoints on ``test``). Examples follow the common feature spec
(``counting_jax.data.features``): the original JPEG bytes (grayscale Part A
images re-encoded as RGB JPEG), ``points`` (x, y) from ``GT_IMG_<k>.mat``,
no boxes, ``class_name`` 'person', ``image_id`` 'IMG_<k>'. Parsing and
coordinate conventions: ``counting_jax.data.shanghaitech``.

Licence: research use only; see the module docstring of the reader.
"""

from __future__ import annotations

import logging

import tensorflow_datasets as tfds

from counting_jax.data import features as features_lib
from counting_jax.data import files
from counting_jax.data import shanghaitech

_CITATION = """@inproceedings{zhang2016single,
  title={Single-Image Crowd Counting via Multi-Column Convolutional Neural Network},
  author={Zhang, Yingying and Zhou, Desen and Chen, Siqin and Gao, Shenghua and Ma, Yi},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={589--597},
  year={2016}}"""

_INSTRUCTIONS = """\
Download ShanghaiTech_Crowd_Counting_Dataset.zip (links in
https://github.com/desenzhou/ShanghaiTechDataset; research use only) and
extract it into the manual directory (default
~/tensorflow_datasets/downloads/manual/, or pass manual_dir=...), so that it
contains, at its top or up to two folders deep:

  part_{part}_final/train_data/images/IMG_1.jpg ...
  part_{part}_final/train_data/ground-truth/GT_IMG_1.mat ...
  part_{part}_final/test_data/images/IMG_1.jpg ...
  part_{part}_final/test_data/ground-truth/GT_IMG_1.mat ...

Mirror layouts are accepted: part_{part} instead of part_{part}_final,
ground_truth instead of ground-truth, .JPG instead of .jpg.
"""


class _ShanghaiTech(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """ShanghaiTech crowd counting, one part."""

  PART = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=features_lib.features(encoding_format="jpeg"),
        homepage="https://github.com/desenzhou/ShanghaiTechDataset",
        citation=_CITATION)

  def _split_generators(self, dl_manager):
    part_root = shanghaitech.part_dir(dl_manager.manual_dir, self.PART)
    splits = {}
    for split in ("train", "test"):
      try:
        root = shanghaitech.split_dir(part_root, split)
      except FileNotFoundError:
        logging.warning("ShanghaiTech %s: no %s_data folder in %s; split "
                        "skipped", self.PART, split, part_root)
        continue
      images = root / "images"
      if not images.is_dir() or not any(images.iterdir()):
        logging.warning("ShanghaiTech %s: no images in %s; split %s skipped",
                        self.PART, images, split)
        continue
      # A subset of the images (e.g. a test copy) is accepted with a warning.
      ids = shanghaitech.list_ids(root, allow_missing_images=True)
      expected = shanghaitech.SPLIT_SIZES[(self.PART, split)]
      if len(ids) != expected:
        logging.warning("ShanghaiTech %s %s: %d images in %s, the official "
                        "split has %d", self.PART, split, len(ids), root,
                        expected)
      splits[split] = self._generate_examples(root, ids)
    if not splits:
      raise FileNotFoundError(f"no train_data/test_data folder in {part_root}")
    return splits

  def _generate_examples(self, root, ids):
    for image_id in ids:
      sample, data = shanghaitech.read_sample(root, image_id)
      yield image_id, files.example_from(sample, data)


class ShanghaiTechA(_ShanghaiTech):
  """ShanghaiTech Part A: 482 web images of dense crowds (300 / 182)."""

  name = "shanghaitech_a"
  PART = "A"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(part="A")


class ShanghaiTechB(_ShanghaiTech):
  """ShanghaiTech Part B: 716 street images, 1024x768 (400 / 316)."""

  name = "shanghaitech_b"
  PART = "B"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(part="B")
