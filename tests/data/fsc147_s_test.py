"""FSC-147-S: the reader, the tfds builder over real FSC-147 images and a
subset file in the released format, and GT counts without points through
the evaluation batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from counting_jax import data
from counting_jax.data import fsc147_s, pipeline

# Entries in the released format (prompt of a minor class, its count).
SUBSET = {"7.jpg": {"class": "people", "count": 1},
          "2287.jpg": {"class": "leaves", "count": 3},
          "22.jpg": {"class": "plates", "count": 12}}


@pytest.fixture(scope="module")
def manual(tmp_path_factory, shared_data):
  root = tmp_path_factory.mktemp("fsc147_s") / "FSC147"
  root.mkdir()
  (root / "images_384_VarV2").symlink_to(
      shared_data("fsc147") / "images_384_VarV2")
  (root / "FSC-147-S.json").write_text(json.dumps(SUBSET))
  return root


def test_read_subset_errors(tmp_path):
  path = tmp_path / "s.json"
  path.write_text('{"7.jpg": {"class": "cups", "count": 2.5}}')
  with pytest.raises(ValueError, match="'7.jpg' has count 2.5"):
    fsc147_s.read_subset(path)
  path.write_text('[1, 2]')
  with pytest.raises(ValueError, match="json object"):
    fsc147_s.read_subset(path)
  with pytest.raises(FileNotFoundError, match="FSC-147-S file not found"):
    fsc147_s.read_subset(tmp_path / "missing.json")
  (tmp_path / "images_384_VarV2").mkdir()
  with pytest.raises(FileNotFoundError, match="cha15yq/T2ICount"):
    fsc147_s.find_files(tmp_path)


def test_builder_samples_and_eval_counts(manual, tmp_path):
  source = data.load("fsc147_s", "test", data_dir=tmp_path, manual_dir=manual)
  assert len(source) == 3
  got = {s["image_id"]: s for s in (source[i] for i in range(3))}
  assert set(got) == {"7", "2287", "22"}
  s = got["2287"]
  assert s["class_name"] == "leaves" and s["count"] == 3
  assert s["points"].shape == (0, 2) and s["image"].shape[0] == 384
  with pytest.raises(ValueError, match="no split 'v1'"):
    data.load("fsc147_s", "v1", data_dir=tmp_path, manual_dir=manual)
  counts = {}
  for batch in pipeline.eval_batches(source, batch_size=1, pad_multiple=64):
    counts[str(batch["image_id"][0])] = float(batch["count"][0])
    assert not batch["point_mask"].any()
  assert counts == {"7": 1.0, "2287": 3.0, "22": 12.0}
