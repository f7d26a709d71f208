"""data.load: prepared data remember their source; missing splits named;
ShanghaiTech copies holding a subset of the images."""

from __future__ import annotations

import json

import pytest

from counting_jax import data


def _shb_copy(root, src, ids, *, extra_mats=()):
  """Part B test_data with images ``ids`` (symlinks) and their .mat files,
  plus .mat files ``extra_mats`` without images."""
  split = root / "part_B" / "test_data"
  (split / "images").mkdir(parents=True)
  (split / "ground-truth").mkdir()
  for k in ids:
    (split / "images" / f"IMG_{k}.jpg").symlink_to(
        src / "images" / f"IMG_{k}.jpg")
  for k in [*ids, *extra_mats]:
    (split / "ground-truth" / f"GT_IMG_{k}.mat").symlink_to(
        src / "ground-truth" / f"GT_IMG_{k}.mat")
  return root


@pytest.fixture
def src(shared_data):
  path = shared_data("shanghaitech") / "part_B" / "test_data"
  if not (path / "images" / "IMG_3.jpg").is_file():
    pytest.skip("../shared/data/shanghaitech has no Part B test images")
  return path


def _ids(source):
  return sorted(source[i]["image_id"] for i in range(len(source)))


def test_prepared_data_follow_their_source(tmp_path, src, capsys):
  tfds_dir = tmp_path / "tfds"
  one = _shb_copy(tmp_path / "one", src, [1, 2], extra_mats=[5])
  source = data.load("shanghaitech_b", "test", data_dir=tfds_dir,
                     manual_dir=one)
  assert _ids(source) == ["IMG_1", "IMG_2"]  # GT_IMG_5 has no image
  record = json.loads(next(tfds_dir.rglob(data.SOURCE_RECORD)).read_text())
  assert record["manual_dir"] == str(one.resolve())
  assert record["fingerprint"] == data.source_fingerprint(one)
  # Another folder: rebuilt, not the first one's cache passed off as it.
  two = _shb_copy(tmp_path / "two", src, [1, 2, 3])
  source = data.load("shanghaitech_b", "test", data_dir=tfds_dir,
                     manual_dir=two)
  assert _ids(source) == ["IMG_1", "IMG_2", "IMG_3"]
  assert "rebuilding" in capsys.readouterr().err
  # The same folder again: used as prepared; no manual_dir: used, and said.
  data.load("shanghaitech_b", "test", data_dir=tfds_dir, manual_dir=two)
  assert "preparing" not in capsys.readouterr().err
  source = data.load("shanghaitech_b", "test", data_dir=tfds_dir)
  assert len(source) == 3
  assert str(two.resolve()) in capsys.readouterr().err
  # A folder of the wrong layout: refused, the prepared copy kept.
  (tmp_path / "wrong").mkdir()
  (tmp_path / "wrong" / "IMG_1.jpg").write_bytes(b"x")
  with pytest.raises(FileNotFoundError, match="part_B"):
    data.load("shanghaitech_b", "test", data_dir=tfds_dir,
              manual_dir=tmp_path / "wrong")
  assert len(data.load("shanghaitech_b", "test", data_dir=tfds_dir,
                       manual_dir=two)) == 3
  # Data prepared before sources were recorded: used, with a note.
  next(tfds_dir.rglob(data.SOURCE_RECORD)).unlink()
  data._ANNOUNCED.clear()  # pylint: disable=protected-access
  assert len(data.load("shanghaitech_b", "test", data_dir=tfds_dir,
                       manual_dir=one)) == 3
  assert "no record of their source" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match="manual_dir not found"):
    data.load("shanghaitech_b", "test", data_dir=tfds_dir,
              manual_dir=tmp_path / "nowhere")


def test_missing_split_is_named_with_the_prepared_ones(tmp_path, src):
  root = _shb_copy(tmp_path / "m", src, [1])
  with pytest.raises(ValueError, match=r"no split 'train' \(prepared "
                     r"splits: \['test'\], from .*m\)"):
    data.load("shanghaitech_b", "train[:4]", data_dir=tmp_path / "tfds",
              manual_dir=root)


def test_fingerprint_sees_names_and_sizes(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "x.png").write_bytes(b"12")
  before = data.source_fingerprint(tmp_path)
  (tmp_path / "a" / "x.png").write_bytes(b"123")
  grown = data.source_fingerprint(tmp_path)
  (tmp_path / "a" / "x.png").rename(tmp_path / "a" / "y.png")
  assert len({before, grown, data.source_fingerprint(tmp_path)}) == 3
