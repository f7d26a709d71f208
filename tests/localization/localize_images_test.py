"""localize_images: JSON points, NWPU submission file, panels."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from scipy import ndimage

from counting_jax import metrics
from counting_jax.localization import localize_images, nwpu_integer_points


def _density_fn(points, stride):
  def fn(image, path):
    del path
    h, w = image.shape[:2]
    dot = np.zeros((-(-h // stride), -(-w // stride)), np.float32)
    cells = np.floor(np.asarray(points) / stride).astype(int)
    dot[cells[:, 1], cells[:, 0]] = 1.0
    return ndimage.gaussian_filter(dot, 1.0, mode="constant")
  return fn


def test_writes_points_nwpu_file_and_panels(tmp_path):
  stride = 4
  truth = np.array([[10.0, 9.0], [50.0, 30.0], [81.0, 41.0]])
  files = []
  for name in ("3110.png", "3111.png"):
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((48, 90, 3), np.uint8)).save(path)
    files.append(path)
  out = tmp_path / "out"
  for method, kwargs in (("local_maxima", {"threshold": 0.05}),
                         ("ot_m", {})):
    res = localize_images(_density_fn(truth, stride), files, out / method,
                          stride=stride, method=method, max_points=16,
                          method_kwargs=kwargs)
    found = res["3110.png"]
    assert found.shape == (3, 2)
    d = np.linalg.norm(found[:, None] - truth[None], axis=-1).min(0)
    assert d.max() <= stride, (method, found)
    record = json.loads((out / method / "3110.json").read_text())
    assert record["count"] == 3 and record["found"] == 3
    np.testing.assert_allclose(record["points"], found, atol=1e-3)
    pred = metrics.read_nwpu_pred(out / method / "nwpu_pred.txt")
    assert sorted(pred) == [3110, 3111]
    np.testing.assert_array_equal(pred[3110],
                                  nwpu_integer_points(found, 48, 90))
    assert (out / method / "3111_points.png").stat().st_size > 0


def test_integer_points_are_pixel_indices_inside_the_image():
  pts = np.array([[0.2, 0.9], [5.99, 3.0], [-1.0, 100.0], [90.0, 47.5]])
  np.testing.assert_array_equal(nwpu_integer_points(pts, 48, 90),
                                [[0, 0], [5, 3], [0, 47], [89, 47]])
