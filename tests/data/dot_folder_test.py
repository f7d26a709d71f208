"""dot_folder: a user's own folder, on the shipped VGG cells and made files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from counting_jax import data
from counting_jax.data import dot_folder, vgg_cells
from counting_jax.data.builders.dot_folder import DotFolder

VGG_OPTIONS = dict(image_suffix="cell", dots_suffix="dots", class_name="cell")


def _vgg_list(path):
  path.write_text("".join(f"{i:03d} {'train' if i <= 100 else 'test'}\n"
                          for i in range(1, 201)))
  return path


def _by_id(source):
  return {source[i]["image_id"]: source[i] for i in range(len(source))}


def test_vgg_cells_copy_gives_the_dedicated_builders_samples(tmp_path):
  opts = dict(VGG_OPTIONS, split_list=str(_vgg_list(tmp_path / "split.txt")))
  for split in ("train", "test"):
    mine = data.load("dot_folder", split, data_dir=tmp_path / "tfds",
                     manual_dir=vgg_cells.DEFAULT_ROOT, options=opts)
    ref = data.load("vgg_cells", split, data_dir=tmp_path / "tfds")
    assert len(mine) == len(ref) == 100
    # Same keys, same order, same values.
    assert [mine[i]["image_id"] for i in range(100)] == [
        ref[i]["image_id"] for i in range(100)]
    for i in range(100):
      a, b = mine[i], ref[i]
      assert sorted(a) == sorted(b)
      for key in a:
        if isinstance(a[key], np.ndarray):
          assert a[key].dtype == b[key].dtype
          np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
          assert a[key] == b[key], key


def _write_dots(path, shape, cells, fmt="PNG", gray=False, **kw):
  dots = np.zeros((*shape, 3), np.uint8)
  for r, c in cells:
    dots[r, c] = (255, 0, 0)
  Image.fromarray(dots[..., 0] if gray else dots).save(path, format=fmt, **kw)


def _folder(root, n=6, shape=(20, 24), seed=0):
  """n images with random one-pixel dot maps; returns {id: [(r, c)]}."""
  g = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  truth = {}
  for i in range(n):
    image_id = f"im{i}"
    Image.fromarray(g.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(
        root / f"{image_id}.png")
    flat = g.choice(shape[0] * shape[1], size=3 + i, replace=False)
    cells = sorted((int(f // shape[1]), int(f % shape[1])) for f in flat)
    _write_dots(root / f"{image_id}_dots.png", shape, cells)
    truth[image_id] = cells
  return truth


def test_dot_maps_read_as_pixel_centres(tmp_path):
  truth = _folder(tmp_path)
  s = dot_folder.read_sample(tmp_path / "im2.png", "im2")
  want = [(c + 0.5, r + 0.5) for r, c in truth["im2"]]
  np.testing.assert_array_equal(s["points"], np.float32(want))
  assert s["image"].shape == (20, 24, 3) and s["image_id"] == "im2"


def test_jpeg_dots_raise_naming_the_file_and_the_fix(tmp_path):
  shape = (40, 48)
  cells = [(5, 5), (5, 30), (20, 12), (33, 40), (30, 20)]
  Image.fromarray(np.full((*shape, 3), 90, np.uint8)).save(tmp_path / "a.png")
  # White one-pixel dots on black, saved as JPEG (quality 75).
  _write_dots(tmp_path / "a_dots.jpg", shape, cells, fmt="JPEG", gray=True,
              quality=75)
  # Compression noise: many more non-zero pixels than dots.
  noisy = np.count_nonzero(np.asarray(Image.open(tmp_path / "a_dots.jpg")))
  assert noisy > 4 * len(cells)
  with pytest.raises(ValueError, match=r"a_dots\.jpg.*JPEG.*blob_centres"
                     r".*dot_threshold"):
    dot_folder.read_sample(tmp_path / "a.png", "a")
  # Without the file-type check (a PNG copy of the JPEG's pixels), the
  # pixel/blob ratio catches it.
  Image.open(tmp_path / "a_dots.jpg").save(tmp_path / "b_dots.png")
  (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
  with pytest.raises(ValueError, match=r"b_dots\.png has \d+ dot pixels but "
                     r"only \d+ connected blobs.*blob_centres"):
    dot_folder.read_sample(tmp_path / "b.png", "b")
  # The fix the message names recovers the dots.
  s = dot_folder.read_sample(tmp_path / "a.png", "a", dict(
      blob_centres=True, dot_threshold=127))
  want = np.float32([(c + 0.5, r + 0.5) for r, c in cells])
  got = s["points"][np.lexsort(s["points"].T[::-1])]
  want = want[np.lexsort(want.T[::-1])]
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=0.5)


def test_disc_dots_need_blob_centres(tmp_path):
  dots = np.zeros((30, 30), np.uint8)
  dots[4:7, 4:7] = 255       # centre pixel (5, 5)
  dots[20:23, 10:13] = 255   # centre pixel (21, 11)
  Image.fromarray(dots).save(tmp_path / "d.png")
  with pytest.raises(ValueError, match="d.png has 18 dot pixels but only 2"):
    dot_folder.read_dot_map(tmp_path / "d.png")
  pts = dot_folder.read_dot_map(tmp_path / "d.png", blob_centres=True)
  np.testing.assert_array_equal(pts, [[5.5, 5.5], [11.5, 21.5]])


def test_threshold_and_channels(tmp_path):
  dots = np.zeros((10, 10, 4), np.uint8)
  dots[..., 3] = 255
  dots[1, 2] = (200, 0, 0, 255)   # red dot
  dots[3, 4] = (0, 200, 0, 255)   # green dot
  dots[5, 6] = (0, 0, 30, 255)    # faint blue: below threshold 50
  Image.fromarray(dots).save(tmp_path / "m.png")
  read = lambda **kw: dot_folder.read_dot_map(tmp_path / "m.png", **kw)
  assert len(read()) == 3
  np.testing.assert_array_equal(read(dot_threshold=50), [[2.5, 1.5],
                                                         [4.5, 3.5]])
  np.testing.assert_array_equal(read(dot_channels="g"), [[4.5, 3.5]])
  with pytest.raises(ValueError, match="100 dot pixels but only 1"):
    read(dot_channels="a")  # opaque everywhere: one 10x10 blob
  Image.fromarray(dots[..., :3]).save(tmp_path / "rgb.png")
  with pytest.raises(ValueError, match="rgb.png has no alpha"):
    dot_folder.read_dot_map(tmp_path / "rgb.png", dot_channels="a")


def test_point_files_csv_and_json(tmp_path):
  Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "a.png")
  for name in ("b", "c", "d", "e"):
    (tmp_path / f"{name}.tif").write_bytes(
        _tiff(np.full((10, 20), 1000, np.uint16)))
  (tmp_path / "a.csv").write_text(" ,X,Y\n1,3,4\n2,19.5,0\n")  # ImageJ
  (tmp_path / "b.csv").write_text("3,4\n5,6\n")
  (tmp_path / "c.json").write_text(json.dumps({"points": [[3, 4]]}))
  (tmp_path / "d.json").write_text(json.dumps([{"x": 3, "y": 4}]))
  (tmp_path / "e.csv").write_text("")
  suffix = dict(a="png", b="tif", c="tif", d="tif", e="tif")
  got = {i: dot_folder.read_sample(tmp_path / f"{i}.{s}", i)["points"].tolist()
         for i, s in suffix.items()}
  assert got == {"a": [[3, 4], [19.5, 0]], "b": [[3, 4], [5, 6]],
                 "c": [[3, 4]], "d": [[3, 4]], "e": []}
  s = dot_folder.read_sample(tmp_path / "b.tif", "b", dict(point_offset=0.5))
  assert s["points"].tolist() == [[3.5, 4.5], [5.5, 6.5]]
  # 16-bit image scaled from [0, max] to [0, 255].
  assert np.all(s["image"] == 255)
  (tmp_path / "b.csv").write_text("x,y\n3,40\n")
  with pytest.raises(ValueError, match="b.csv: 1 point"):
    dot_folder.read_sample(tmp_path / "b.tif", "b")
  (tmp_path / "b.csv").write_text("x,y\n3,four\n")
  with pytest.raises(ValueError, match="b.csv: row 1"):
    dot_folder.read_sample(tmp_path / "b.tif", "b")


def _tiff(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="TIFF")
  return buf.getvalue()


def test_missing_or_double_annotation_names_the_image(tmp_path):
  _folder(tmp_path, n=2)
  (tmp_path / "im0_dots.png").unlink()
  with pytest.raises(FileNotFoundError, match="no annotation for image .*"
                     "im0.png.*im0_dots.png"):
    dot_folder.read_sample(tmp_path / "im0.png", "im0")
  (tmp_path / "im1.csv").write_text("1,1\n")
  with pytest.raises(ValueError, match="im1.png has several annotations"):
    dot_folder.read_sample(tmp_path / "im1.png", "im1")


def test_splits_folders_list_fraction(tmp_path):
  _folder(tmp_path / "f" / "train", n=3)
  _folder(tmp_path / "f" / "test", n=2, seed=1)
  with pytest.raises(ValueError, match="image id 'im0' in two splits"):
    dot_folder.find_images(tmp_path / "f")
  for p in (tmp_path / "f" / "test").iterdir():
    p.rename(p.with_name("t" + p.name))
  splits = dot_folder.find_images(tmp_path / "f")
  assert {k: sorted(v) for k, v in splits.items()} == {
      "test": ["tim0", "tim1"], "train": ["im0", "im1", "im2"]}
  _folder(tmp_path / "f", n=2, seed=2)  # images beside the sub-folders
  with pytest.raises(ValueError, match="itself holds images.*im0.png"):
    dot_folder.find_images(tmp_path / "f", dict(split="folders"))
  s = dot_folder.find_images(tmp_path / "f")  # auto: fraction of f itself
  assert sorted(s["train"]) + sorted(s["test"]) in (["im0", "im1"],
                                                    ["im1", "im0"])

  _folder(tmp_path / "g", n=10)
  a = dot_folder.find_images(tmp_path / "g", dict(test_fraction=0.3))
  b = dot_folder.find_images(tmp_path / "g", dict(test_fraction=0.3))
  c = dot_folder.find_images(tmp_path / "g", dict(test_fraction=0.3,
                                                  split_seed=1))
  assert a == b and len(a["test"]) == 3 and len(a["train"]) == 7
  assert sorted(a["test"]) + sorted(a["train"]) != sorted(c["test"]) + sorted(
      c["train"])
  assert set(a["test"]) | set(a["train"]) == {f"im{i}" for i in range(10)}

  lst = tmp_path / "g" / "split.txt"
  lst.write_text("# id split\n" + "".join(
      f"im{i}, {'val' if i < 2 else 'train'}\n" for i in range(10)))
  s = dot_folder.find_images(tmp_path / "g", dict(split_list="split.txt"))
  assert sorted(s["val"]) == ["im0", "im1"] and len(s["train"]) == 8
  lst.write_text("im0 train\n")
  with pytest.raises(ValueError, match="9 image.*not listed.*im1.png"):
    dot_folder.find_images(tmp_path / "g", dict(split_list="split.txt"))
  lst.write_text("nope train\n")
  with pytest.raises(ValueError, match="split.txt:1: no image with id"):
    dot_folder.find_images(tmp_path / "g", dict(split_list="split.txt"))
  with pytest.raises(ValueError, match="unknown option 'dots'"):
    dot_folder.find_images(tmp_path / "g", dict(dots="x"))


def test_rescale_moves_points_with_pixels(tmp_path):
  truth = _folder(tmp_path, n=1, shape=(20, 24))
  s = dot_folder.read_sample(tmp_path / "im0.png", "im0", dict(rescale=0.5))
  assert s["image"].shape == (10, 12, 3)
  want = np.float32([((c + 0.5) / 2, (r + 0.5) / 2) for r, c in
                     truth["im0"]])
  np.testing.assert_array_equal(s["points"], want)


def test_prepared_copy_depends_on_options_and_files(tmp_path):
  _folder(tmp_path / "f", n=4)
  name = lambda **kw: DotFolder.make_config(tmp_path / "f", kw).name
  assert name() == name() and name() != name(test_fraction=0.5)
  before = name()
  (tmp_path / "f" / "im0_dots.png").unlink()
  _write_dots(tmp_path / "f" / "im0_dots.png", (20, 24), [(1, 1)])
  assert name() != before
  with pytest.raises(ValueError, match="dot_folder needs manual_dir"):
    data.load("dot_folder", "train", data_dir=tmp_path / "tfds")
  with pytest.raises(ValueError, match="'vgg_cells' takes no options"):
    data.load("vgg_cells", "train", data_dir=tmp_path / "tfds",
              options=dict(rescale=2.0))
  src = data.load("dot_folder", "train", data_dir=tmp_path / "tfds",
                  manual_dir=tmp_path / "f", options=dict(test_fraction=0.25))
  assert len(src) == 3
