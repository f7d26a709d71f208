"""tensorflow-datasets builder for NWPU-Crowd.

Build (TensorFlow-free, array_record)::

  python -c "from counting_jax import data; data.load('nwpu_crowd', 'val', manual_dir='/data')"

Splits ``train`` (3,109) and ``val`` (500); the 1,500 test images have no
public labels (the benchmark server scores them) and are not built. Common
features (``counting_jax.data.features``): original JPEG bytes at full
resolution, head ``points``, the json's head ``boxes`` (x1, y1, x2, y2; none
when only a .mat exists), class 'person', ``image_id`` '3110'. The
localization radii σ_s/σ_l of the val images come from the sample code's
``val_gt_loc.txt`` (``nwpu_crowd.read_localization_gt``), not from this
builder. Parsing and coordinates: ``counting_jax.data.nwpu_crowd``.

Licence: research use only (NWPU-Crowd terms).
"""

from __future__ import annotations

import logging

import tensorflow_datasets as tfds

from counting_jax.data import features as features_lib
from counting_jax.data import files
from counting_jax.data import nwpu_crowd

_CITATION = """@article{wang2020nwpu,
  title={NWPU-Crowd: A Large-Scale Benchmark for Crowd Counting and Localization},
  author={Wang, Qi and Gao, Junyu and Lin, Wei and Li, Xuelong},
  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},
  volume={43}, number={6}, pages={2141--2149},
  year={2020}}"""


class NwpuCrowd(tfds.core.GeneratorBasedBuilder):
  """NWPU-Crowd: 5,109 images, 2.13 M heads (train/val labelled)."""

  name = "nwpu_crowd"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download NWPU-Crowd from https://gjy3035.github.io/NWPU-Crowd-Sample-Code/
(research use only): images_part1.zip ... images_part5.zip, jsons.zip,
(optionally mats.zip), train.txt, val.txt, test.txt. Extract them into one
folder NWPU-Crowd inside the manual directory (default
~/tensorflow_datasets/downloads/manual/, or pass manual_dir=...):

  NWPU-Crowd/images/0001.jpg ...      (or images_part1/ ... images_part5/)
  NWPU-Crowd/jsons/0001.json ...
  NWPU-Crowd/mats/0001.mat ...        (optional)
  NWPU-Crowd/train.txt, val.txt
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=features_lib.features(encoding_format="jpeg"),
        homepage="https://gjy3035.github.io/NWPU-Crowd-Sample-Code/",
        citation=_CITATION)

  def _split_generators(self, dl_manager):
    root = nwpu_crowd.root_dir(dl_manager.manual_dir)
    splits = {}
    for split in ("train", "val"):
      if not (root / f"{split}.txt").is_file():
        logging.warning("NWPU-Crowd: no %s.txt in %s; split skipped", split,
                        root)
        continue
      ids = nwpu_crowd.read_split(root, split)
      if len(ids) != nwpu_crowd.SPLIT_SIZES[split]:
        logging.warning("NWPU-Crowd %s: %s.txt lists %d images, the official "
                        "split has %d", split, split, len(ids),
                        nwpu_crowd.SPLIT_SIZES[split])
      splits[split] = self._generate_examples(root, ids)
    if not splits:
      raise FileNotFoundError(f"no train.txt / val.txt in {root}")
    return splits

  def _generate_examples(self, root, ids):
    for image_id in ids:
      sample, data = nwpu_crowd.read_sample(root, image_id)
      yield image_id, files.example_from(sample, data)
