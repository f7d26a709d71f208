"""tensorflow-datasets builder for JHU-Crowd++ v2.0.

Build (TensorFlow-free, array_record)::

  python -c "from counting_jax import data; data.load('jhu_crowd', 'val', manual_dir='/data')"

Splits ``train`` (2,272), ``val`` (500), ``test`` (1,600). Besides the common
features (``counting_jax.data.features``; original JPEG bytes, head points,
no boxes, class 'person') each example carries the official labels:

==========  ================  ===========================================
key         type              meaning
==========  ================  ===========================================
head_sizes  float32 [N, 2]    approximate head (w, h), pixels, per point
occlusion   int32 [N]         1 visible, 2 partial, 3 full occlusion
blur        int32 [N]         0 sharp, 1 blurred
scene       text              scene type from ``image_labels.txt``
weather     int32             0 none, 1 fog/haze, 2 rain, 3 snow
distractor  bool              True for distractor images
==========  ================  ===========================================

Parsing, checks (gt rows == ``total``) and coordinates:
``counting_jax.data.jhu_crowd``.

Licence: academic / non-commercial research only (official ``License``).
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow_datasets as tfds

from counting_jax.data import features as features_lib
from counting_jax.data import files
from counting_jax.data import jhu_crowd

_CITATION = """@inproceedings{sindagi2019pushing,
  title={Pushing the Frontiers of Unconstrained Crowd Counting: New Dataset and Benchmark Method},
  author={Sindagi, Vishwanath A and Yasarla, Rajeev and Patel, Vishal M},
  booktitle={IEEE International Conference on Computer Vision (ICCV)},
  pages={1221--1231},
  year={2019}}
@article{sindagi2020jhu,
  title={JHU-CROWD++: Large-Scale Crowd Counting Dataset and A Benchmark Method},
  author={Sindagi, Vishwanath A and Yasarla, Rajeev and Patel, Vishal M},
  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year={2020}}"""


class JhuCrowd(tfds.core.GeneratorBasedBuilder):
  """JHU-Crowd++ v2.0: 4,372 images, 1.51 M heads, with image labels."""

  name = "jhu_crowd"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request and download jhu_crowd_v2.0.zip from http://www.crowd-counting.com/
(academic / non-commercial use only) and extract it into the manual directory
(default ~/tensorflow_datasets/downloads/manual/, or pass manual_dir=...), so
that it contains, at its top or up to two folders deep:

  jhu_crowd_v2.0/{train,val,test}/images/0001.jpg ...
  jhu_crowd_v2.0/{train,val,test}/gt/0001.txt ...
  jhu_crowd_v2.0/{train,val,test}/image_labels.txt
"""

  def _info(self) -> tfds.core.DatasetInfo:
    common = features_lib.features(encoding_format="jpeg")
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            **dict(common.items()),
            "head_sizes": tfds.features.Tensor(shape=(None, 2),
                                               dtype=np.float32),
            "occlusion": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "blur": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "scene": tfds.features.Text(),
            "weather": tfds.features.Scalar(dtype=np.int32),
            "distractor": tfds.features.Scalar(dtype=np.bool_),
        }),
        homepage="http://www.crowd-counting.com/",
        citation=_CITATION)

  def _split_generators(self, dl_manager):
    root = jhu_crowd.root_dir(dl_manager.manual_dir)
    splits = {}
    for split in jhu_crowd.SPLITS:
      split_root = root / split
      if not split_root.is_dir():
        logging.warning("JHU-Crowd++: no %s folder in %s; split skipped",
                        split, root)
        continue
      ids, labels = jhu_crowd.list_ids(split_root)
      if len(ids) != jhu_crowd.SPLIT_SIZES[split]:
        logging.warning("JHU-Crowd++ %s: %d images in %s, the official split "
                        "has %d", split, len(ids), split_root,
                        jhu_crowd.SPLIT_SIZES[split])
      splits[split] = self._generate_examples(split_root, ids, labels)
    if not splits:
      raise FileNotFoundError(f"no train/val/test folder in {root}")
    return splits

  def _generate_examples(self, split_root, ids, labels):
    for image_id in ids:
      sample, data, extra = jhu_crowd.read_sample(split_root, image_id,
                                                  labels[image_id])
      yield image_id, files.example_from(sample, data, **extra)
