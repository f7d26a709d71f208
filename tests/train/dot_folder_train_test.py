"""Training on a user's own folder (``dot_folder``) end to end.

A folder of 44x52 images (not a multiple of the pad multiple 8) with dot
maps and CSV point files, split by a seeded fraction, trains a few steps of
the smoke cells config through ``loop.train_and_evaluate``; the test counts
must be the density summed over the cells that cover each real image, which
an independent forward pass checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from counting_jax import data, density
from counting_jax.data import pipeline
from counting_jax.train import loop
from counting_jax.train import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("fast_compiles")


def _make_folder(root, n=8, shape=(44, 52)):
  g = np.random.default_rng(0)
  root.mkdir()
  for i in range(n):
    image = np.full((*shape, 3), 20, np.uint8)
    pts = g.uniform(2, np.array(shape[::-1]) - 2, (3 + i, 2))
    for x, y in pts:
      image[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 230
    Image.fromarray(image).save(root / f"img{i}.png")
    if i % 2:
      dots = np.zeros(shape, np.uint8)
      dots[pts[:, 1].astype(int), pts[:, 0].astype(int)] = 255
      Image.fromarray(dots).save(root / f"img{i}_dots.png")
    else:
      np.savetxt(root / f"img{i}.csv", pts, delimiter=",", header="x,y",
                 comments="")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  from configs import cells  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp("own")
  _make_folder(tmp / "mine")
  config = cells.get_config("smoke=True")
  config.dataset.name = "dot_folder"
  config.dataset.manual_dir = str(tmp / "mine")
  config.dataset.data_dir = str(tmp / "tfds")
  config.dataset.test_split = "test"
  config.dataset.dot_folder.test_fraction = 0.25
  config.total_steps = 3
  config.checkpoint_every = 3
  config.quiet = True
  workdir = tmp / "run"
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = loop.train_and_evaluate(config, workdir)
  return config, workdir, result, out.getvalue()


def test_trains_and_evaluates_on_the_test_fraction(run):
  config, workdir, result, stdout = run
  assert result["n"] == 2 and np.isfinite(result["mae"])
  counts = json.loads((workdir / "counts.json").read_text())
  test = data.load("dot_folder", "test", data_dir=config.dataset.data_dir,
                   manual_dir=config.dataset.manual_dir,
                   options=config.dataset.dot_folder)
  assert sorted(counts) == sorted(test[i]["image_id"] for i in range(2))
  assert {c["true"] for c in counts.values()} == {
      float(len(test[i]["points"])) for i in range(2)}
  train_ids = json.loads((workdir / "train_ids.json").read_text())
  assert not set(train_ids) & set(counts) and len(train_ids) == 4
  # The cells config's published table is VGG cells'; not printed here.
  assert "test dot_folder/test: MAE" in stdout
  assert "published" not in stdout


def test_counts_leave_out_the_padding(run):
  config, workdir, _, _ = run
  # pylint: disable-next=protected-access
  method, state = loop._restore_for_eval(config, workdir)
  eval_step = jax.jit(step_lib.make_eval_step(method))
  test = data.load("dot_folder", "test", data_dir=config.dataset.data_dir,
                   manual_dir=config.dataset.manual_dir,
                   options=config.dataset.dot_folder)
  counts = json.loads((workdir / "counts.json").read_text())
  batch = next(pipeline.eval_batches(
      test, batch_size=2, pad_multiple=8, mean=config.input.mean,
      std=config.input.std))
  assert batch["image"].shape[1:3] == (48, 56)
  dens = np.asarray(eval_step(jax.device_get(state),
                              {"image": batch["image"]}))
  inside = np.asarray(density.count_in_image(dens, batch["image_size"],
                                             method.stride))
  for b, image_id in enumerate(batch["image_id"]):
    assert counts[image_id]["pred"] == pytest.approx(inside[b], rel=1e-4,
                                                     abs=1e-4)
    # The padded band carries mass: a plain sum would count it.
    assert abs(dens[b].sum() - inside[b]) > 1e-3


def test_command_line_reaches_the_builder_options():
  code = ("import sys; from absl import flags; "
          "from ml_collections import config_flags; "
          "c = config_flags.DEFINE_config_file('config'); "
          "flags.FLAGS(sys.argv); d = c.value.dataset; "
          "print(d.name, d.manual_dir, d.dot_folder.blob_centres, "
          "d.dot_folder.rescale, d.dot_folder.dot_threshold)")
  proc = subprocess.run(
      [sys.executable, "-c", code, "--config", "configs/cells.py",
       "--config.dataset.name=dot_folder", "--config.dataset.manual_dir=/d",
       "--config.dataset.dot_folder.blob_centres=True",
       "--config.dataset.dot_folder.rescale=0.5",
       "--config.dataset.dot_folder.dot_threshold=127"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["dot_folder", "/d", "True", "0.5", "127"]
