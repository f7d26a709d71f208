"""The crowd main job (configs/crowd_shb.py) end to end on the real
ShanghaiTech Part B test files in ../shared/data (used as they are), with a
tiny counter and a few steps, for each paper's loss."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import crowd_shb
from counting_jax.train import loop

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shb_root(tmp_path_factory, shared_data):
  """The shared ShanghaiTech copy as it is (all .mat files, Part B test
  images IMG_1..10 only): the builder keeps the images present."""
  root = shared_data("shanghaitech")
  if not (root / "part_B" / "test_data" / "images" / "IMG_1.jpg").is_file():
    pytest.skip("../shared/data/shanghaitech has no Part B test images")
  return root, tmp_path_factory.mktemp("tfds")


def test_documented_short_crowd_run(shb_root, tmp_path):
  """experiments/crowd_shb/README.md's short command (dm_count), as a user
  runs it: on the shared files as they are, saying that the counter starts
  from random weights."""
  root, data_dir = shb_root
  env = dict(os.environ, COUNTING_JAX_DATA_DIR=str(data_dir))
  proc = subprocess.run(
      [sys.executable, "-m", "counting_jax.main", "train", "--config",
       "crowd_shb:smoke=True", "--workdir", str(tmp_path / "shb_smoke"),
       f"--config.dataset.manual_dir={root}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "starts from random weights" in proc.stdout
  assert "test shanghaitech_b/test[:2]: MAE" in proc.stdout
  assert "published" not in proc.stdout
  metrics = json.loads((tmp_path / "shb_smoke" / "metrics.json").read_text())
  assert metrics["n"] == 2 and metrics["step"] == 2


@pytest.mark.parametrize("loss", ["bayesian", "gl", "pml"])
def test_crowd_config_trains_and_evaluates(loss, shb_root, tmp_path,
                                          capsys):
  root, data_dir = shb_root
  config = crowd_shb.get_config(f"loss={loss},smoke=True")
  config.dataset.manual_dir = str(root)
  config.dataset.data_dir = str(data_dir)
  config.quiet = True
  result = loop.train_and_evaluate(config, tmp_path / loss)
  assert result["n"] == 2
  # The published table belongs to the full protocol, not to a smoke run.
  assert "published" not in capsys.readouterr().out
  assert result["mae"] >= 0
  rows = [json.loads(l) for l in
          (tmp_path / loss / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train/loss" in r]
  assert len(train_rows) == 2
  assert all(isinstance(r["train/loss"], float) for r in train_rows)


def test_published_table_only_for_the_full_protocol():
  from counting_jax.train import published  # pylint: disable=g-import-not-at-top
  assert len(published.published_table(
      crowd_shb.get_config("loss=gl"))[1]) == 4
  assert published.published_table(
      crowd_shb.get_config("loss=gl,smoke=True")) is None


def test_unknown_loss_is_refused():
  with pytest.raises(ValueError, match="loss must be one of"):
    crowd_shb.get_config("loss=mse")


def test_eval_of_a_converted_checkpoint_without_training(shb_root, tmp_path):
  """``counting-jax convert`` output evaluated directly: all-zero weights give
  an all-zero density, so the MAE is the mean true count."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from counting_jax import convert  # pylint: disable=g-import-not-at-top
  root, data_dir = shb_root
  config = crowd_shb.get_config("loss=dm_count,smoke=True")
  config.dataset.manual_dir = str(root)
  config.dataset.data_dir = str(data_dir)
  model = convert.build_model(config.model.name)
  zeros = jax.tree.map(lambda x: np.zeros(x.shape, np.float32),
                       convert.abstract_variables(model))
  config.init_checkpoint = str(convert.save_variables(zeros, tmp_path / "w"))
  result = loop.evaluate(config, tmp_path / "run")
  counts = json.loads((tmp_path / "run" / "counts.json").read_text())
  trues = [v["true"] for v in counts.values()]
  assert all(v["pred"] == 0 for v in counts.values())
  assert result["mae"] == np.mean(trues) > 0
