"""Run folders remember their config: save / load / differences."""

from __future__ import annotations

import ml_collections
import pytest

from counting_jax.configs import cells, crowd_shb
from counting_jax.train import run_folder


@pytest.mark.parametrize("make", [
    lambda: cells.get_config(), lambda: cells.get_config("smoke=True"),
    lambda: crowd_shb.get_config("loss=bayesian"),
    lambda: crowd_shb.get_config("loss=pml,smoke=True")])
def test_saved_config_loads_back_identical(make, tmp_path):
  config = make()
  path = run_folder.save(config, tmp_path)
  assert path == tmp_path / "config.py"
  loaded = run_folder.load(tmp_path)
  assert run_folder.differences(config, loaded) == []
  assert loaded.to_dict() == config.to_dict()
  # Tuples stay tuples (shapes, means), typed placeholders keep their type.
  assert isinstance(loaded.input.crop_size, tuple)
  assert isinstance(loaded.input.mean, tuple)
  if "num_train" in config.dataset and config.dataset.num_train is None:
    assert loaded.dataset.get_type("num_train") is int


def test_no_saved_config_loads_as_none(tmp_path):
  assert run_folder.load(tmp_path) is None


def test_differences_name_fields_and_honour_ignore():
  a = cells.get_config()
  b = cells.get_config("model=fcrn_a")
  b.unlock()
  b.total_steps = 10
  b.dataset.manual_dir = "/elsewhere"
  diff = run_folder.differences(a, b)
  # U-Net kwargs emptied for FCRN-A: one name for the emptied sub-config.
  assert diff == ["dataset.manual_dir", "model.kwargs", "model.name",
                  "total_steps"]
  assert run_folder.differences(a, b, ignore=("dataset", "model")) == [
      "total_steps"]
  assert run_folder.differences(a, cells.get_config()) == []


def test_a_value_that_is_not_a_literal_is_refused(tmp_path):
  config = ml_collections.ConfigDict({"f": object()})
  with pytest.raises(ValueError, match=r"\['f'\]"):
    run_folder.save(config, tmp_path)
  assert not (tmp_path / "config.py").exists()


def test_has_checkpoint_needs_a_step_folder(tmp_path):
  assert not run_folder.has_checkpoint(tmp_path)
  (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1").mkdir(parents=True)
  assert not run_folder.has_checkpoint(tmp_path)
  (tmp_path / "checkpoints" / "3").mkdir()
  assert run_folder.has_checkpoint(tmp_path)
