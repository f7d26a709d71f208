"""The crowd main job (configs/crowd_shb.py) end to end on the real
ShanghaiTech Part B test files in ../shared/data, with a tiny counter and a
few steps, for each paper's loss."""

import json

import pytest

from configs import crowd_shb
from counting_jax.train import loop


@pytest.fixture(scope="module")
def shb_root(tmp_path_factory, shared_data):
  src = shared_data("shanghaitech") / "part_B" / "test_data"
  if not (src / "images" / "IMG_1.jpg").is_file():
    pytest.skip("../shared/data/shanghaitech has no Part B test images")
  root = tmp_path_factory.mktemp("shb")
  split = root / "part_B_final" / "test_data"
  (split / "images").mkdir(parents=True)
  (split / "ground-truth").mkdir()
  for k in range(1, 11):
    (split / "images" / f"IMG_{k}.jpg").symlink_to(
        src / "images" / f"IMG_{k}.jpg")
    (split / "ground-truth" / f"GT_IMG_{k}.mat").symlink_to(
        src / "ground-truth" / f"GT_IMG_{k}.mat")
  return root, tmp_path_factory.mktemp("tfds")


@pytest.mark.parametrize("loss", ["dm_count", "bayesian", "gl", "pml"])
def test_crowd_config_trains_and_evaluates(loss, shb_root, tmp_path):
  root, data_dir = shb_root
  config = crowd_shb.get_config(f"loss={loss},smoke=True")
  config.dataset.manual_dir = str(root)
  config.dataset.data_dir = str(data_dir)
  config.quiet = True
  result = loop.train_and_evaluate(config, tmp_path / loss)
  assert result["n"] == 2
  assert result["mae"] >= 0
  rows = [json.loads(l) for l in
          (tmp_path / loss / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train/loss" in r]
  assert len(train_rows) == 2
  assert all(isinstance(r["train/loss"], float) for r in train_rows)


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
