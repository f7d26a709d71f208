"""CARPK reader and builder on the real labels.

The labels available are SAFECount's conversion of the official files
(JSON lines, boxes (y1, x1, y2, x2)); they are written back into the official
layout (``Annotations/<name>.txt`` rows ``x1 y1 x2 y2 1``, ``ImageSets``).
No CARPK image is available: blank 1280x720 PNGs are synthesised where the
builder needs them (the tests are about annotations).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from counting_jax import data
from counting_jax.data import carpk

# SAFECount's converted labels (../shared/data/safecount_converted_other).
TOTALS = {"train": (989, 42274), "test": (459, 47500)}


@pytest.fixture(scope="module")
def devkit(tmp_path_factory, shared_data):
  src = shared_data("safecount_converted_other") / "data" / "CARPK_devkit"
  root = tmp_path_factory.mktemp("manual") / "CARPK_devkit" / "data"
  for d in ("Images", "Annotations", "ImageSets"):
    (root / d).mkdir(parents=True)
  labels = {}
  for split in ("train", "test"):
    names = []
    for line in (src / f"{split}.json").read_text().splitlines():
      entry = json.loads(line)
      name = entry["filename"].rsplit(".", 1)[0]
      yx = np.asarray(entry["boxes"], np.float64).reshape(-1, 4)
      labels[name] = yx[:, [1, 0, 3, 2]]
      (root / "Annotations" / f"{name}.txt").write_text("".join(
          f"{x1:g} {y1:g} {x2:g} {y2:g} 1\n" for x1, y1, x2, y2 in
          labels[name]))
      names.append(name)
    (root / "ImageSets" / f"{split}.txt").write_text("\n".join(names) + "\n")
  return root, labels


def test_all_annotations_parse_with_official_totals(devkit):
  root, labels = devkit
  for split, (n_images, n_cars) in TOTALS.items():
    names = carpk.read_split(root, split)
    boxes = [carpk.read_boxes(root / "Annotations" / f"{n}.txt")
             for n in names]
    assert (len(names), sum(len(b) for b in boxes)) == (n_images, n_cars)
  name = names[0]
  np.testing.assert_array_equal(boxes[0], labels[name])


def test_bad_row_names_the_file(tmp_path):
  path = tmp_path / "a.txt"
  path.write_text("1 2 30 40 1\n5 6 5 9 1\n")
  with pytest.raises(ValueError, match="a.txt:2: bad annotation row"):
    carpk.read_boxes(path)


def test_builder_round_trip(devkit, tmp_path_factory):
  root, labels = devkit
  names = carpk.read_split(root, "test")[:2]
  split_root = tmp_path_factory.mktemp("subset")
  sub = split_root / "CARPK_devkit" / "data"
  for d in ("Images", "Annotations", "ImageSets"):
    (sub / d).mkdir(parents=True)
  for i, n in enumerate(names):
    (sub / "Annotations" / f"{n}.txt").symlink_to(
        root / "Annotations" / f"{n}.txt")
    yy, xx = np.indices((720, 1280))
    channels = [xx % 256, yy % 256, (xx + yy) % 256, 200 + 0 * xx][:3 + i]
    pixels = np.stack(channels, axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(sub / "Images" / f"{n}.png")
  (sub / "ImageSets" / "test.txt").write_text("\n".join(names))
  source = data.load("carpk", "test", manual_dir=split_root,
                     data_dir=tmp_path_factory.mktemp("tfds"))
  assert len(source) == 2
  for i in range(2):
    ex = source[i]
    xyxy = labels[ex["image_id"]]
    np.testing.assert_allclose(ex["boxes"], xyxy)
    np.testing.assert_allclose(ex["points"],
                               (xyxy[:, :2] + xyxy[:, 2:]) / 2)
    assert ex["class_name"] == "car" and ex["image"].shape == (720, 1280, 3)
    with Image.open(sub / "Images" / f"{ex['image_id']}.png") as im:
      # PNG is lossless: RGB files are stored as is, RGBA converted to RGB.
      np.testing.assert_array_equal(ex["image"],
                                    np.asarray(im.convert("RGB")))


def test_sampled_exemplars_are_deterministic_and_drop_nothing(devkit):
  from counting_jax.data import sample as sample_lib  # pylint: disable=g-import-not-at-top
  _, labels = devkit
  names = sorted(labels)[:2]
  samples = []
  for n in names:
    boxes = carpk.read_boxes(devkit[0] / "Annotations" / f"{n}.txt")
    samples.append(sample_lib.make_sample(
        np.zeros((720, 1280, 3), np.uint8),
        np.clip(0.5 * (boxes[:, :2] + boxes[:, 2:]), 0, [1280, 720]), n,
        boxes=boxes))
  for s in samples:
    a = carpk.sample_exemplars(s, 3, seed=0)
    assert np.array_equal(a["boxes"],
                          carpk.sample_exemplars(s, 3, seed=0)["boxes"])
    np.testing.assert_array_equal(a["points"], s["points"])
    # a permutation of all boxes: nothing dropped, nothing invented
    key = lambda b: b[np.lexsort(b.T[::-1])]
    np.testing.assert_array_equal(key(a["boxes"]), key(s["boxes"]))
    firsts = [carpk.sample_exemplars(s, 3, seed=k)["boxes"][:3]
              for k in range(4)]
    assert any(not np.array_equal(f, s["boxes"][:3]) for f in firsts)
  with pytest.raises(ValueError, match=names[0]):
    carpk.sample_exemplars(samples[0], 0)
