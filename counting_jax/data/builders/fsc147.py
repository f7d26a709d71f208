"""tensorflow-datasets builder for FSC-147 with FSC-147-D descriptions.

Build (TensorFlow-free, array_record)::

  python -c "from counting_jax import data; data.load('fsc147', 'val', manual_dir='/data/FSC147')"

Splits ``train`` (3,659), ``val`` (1,286), ``test`` (1,190) from
``Train_Test_Val_FSC_147.json`` (the COCO subsets ``val_coco``/``test_coco``
are lists of ``val``/``test`` ids, see ``fsc147.read_splits``). Common
features (``counting_jax.data.features``): the original 384-high JPEG bytes,
all dot ``points``, the exemplar ``boxes`` (x1, y1, x2, y2; 3 or more),
``class_name`` from ``ImageClasses_FSC147.txt``, ``image_id`` '<id>'. Extra
feature ``description`` (text): the FSC-147-D phrase ("the sea shells") when
``FSC-147-D.json`` is present, else "" (a warning is logged). The released
adaptive density maps (``gt_density_map_adaptive_384_VarV2``) are not
stored. Parsing and coordinates: ``counting_jax.data.fsc147``.

Licence: research use (web images); annotation repository and FSC-147-D
under MIT.
"""

from __future__ import annotations

import logging

import tensorflow_datasets as tfds

from counting_jax.data import features as features_lib
from counting_jax.data import files
from counting_jax.data import fsc147

_CITATION = """@inproceedings{ranjan2021learning,
  title={Learning To Count Everything},
  author={Ranjan, Viresh and Sharma, Udbhav and Nguyen, Thu and Hoai, Minh},
  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={3394--3403},
  year={2021}}
@inproceedings{amininaieni2023openworld,
  title={Open-world Text-specified Object Counting},
  author={Amini-Naieni, Niki and Amini-Naieni, Kiana and Han, Tengda and Zisserman, Andrew},
  booktitle={British Machine Vision Conference (BMVC)},
  year={2023}}"""


class Fsc147(tfds.core.GeneratorBasedBuilder):
  """FSC-147: class-agnostic counting, 6,135 images, 147 classes."""

  name = "fsc147"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
From https://github.com/cvlab-stonybrook/LearningToCountEverything (research
use) download FSC147_384_V2.zip (the images_384_VarV2 folder, linked in the
README) and the files annotation_FSC147_384.json,
Train_Test_Val_FSC_147.json and ImageClasses_FSC147.txt (repository folder
data/). Optionally add FSC-147-D.json from
https://github.com/niki-amini-naieni/CounTX (MIT) for the text descriptions.
Put them in the manual directory (default
~/tensorflow_datasets/downloads/manual/, or pass manual_dir=...), at its top
or up to two folders deep, e.g.:

  FSC147/images_384_VarV2/2.jpg ...
  FSC147/annotation_FSC147_384.json
  FSC147/Train_Test_Val_FSC_147.json
  FSC147/ImageClasses_FSC147.txt
  FSC147/FSC-147-D.json               (optional)
"""

  def _info(self) -> tfds.core.DatasetInfo:
    common = features_lib.features(encoding_format="jpeg")
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            **dict(common.items()),
            "description": tfds.features.Text(),
        }),
        homepage="https://github.com/cvlab-stonybrook/LearningToCountEverything",
        citation=_CITATION)

  def _split_generators(self, dl_manager):
    paths = fsc147.find_files(dl_manager.manual_dir)
    annotations = fsc147.read_annotations(paths["annotations"])
    splits = fsc147.read_splits(paths["splits"])
    classes = fsc147.read_classes(paths["classes"])
    descriptions = {}
    if paths["descriptions"] is None:
      logging.warning("FSC-147: %s not found under %s; 'description' is empty",
                      fsc147.DESCRIPTION_FILE, dl_manager.manual_dir)
    else:
      descriptions = fsc147.read_descriptions(paths["descriptions"])
    out = {}
    for split in fsc147.SPLITS:
      names = splits[split]
      if not names:
        logging.warning("FSC-147: split %s is empty in %s; skipped", split,
                        paths["splits"])
        continue
      for name in names:
        if name not in annotations:
          raise ValueError(f"{paths['annotations']}: no entry for {name} "
                           f"({split} in {paths['splits']})")
        if name not in classes:
          raise ValueError(f"{paths['classes']}: no class for {name}")
        got = descriptions.get(name, ("missing",))[0] if descriptions else split
        if got != split:
          raise ValueError(f"{paths['descriptions']}: {name} is {got!r}, but "
                           f"{split!r} in {paths['splits']}")
      if len(names) != fsc147.SPLIT_SIZES[split]:
        logging.warning("FSC-147 %s: %d images listed, the official split "
                        "has %d", split, len(names),
                        fsc147.SPLIT_SIZES[split])
      out[split] = self._generate_examples(paths["images"], names,
                                           annotations, classes, descriptions)
    return out

  def _generate_examples(self, image_dir, names, annotations, classes,
                         descriptions):
    for name in names:
      sample, data = fsc147.read_sample(image_dir, name, annotations[name],
                                        classes[name])
      text = descriptions.get(name, ("", ""))[1]
      yield sample["image_id"], files.example_from(sample, data,
                                                   description=text)
