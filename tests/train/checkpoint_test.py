"""Checkpoints: exact round trip; partial folders are never restored."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np

from counting_jax.train import checkpoint
from counting_jax.train.state import TrainState


def _state(step, value):
  return TrainState(step=jnp.int32(step),
                    params={"w": jnp.full((3,), value, jnp.float32)},
                    batch_stats={}, opt_state=(jnp.float32(value),),
                    rng=jax.random.PRNGKey(0),
                    ema_params={"w": jnp.full((3,), -value, jnp.float32)})


def test_round_trip_and_partial_folders_are_ignored(tmp_path):
  manager = checkpoint.make_manager(tmp_path, max_to_keep=3)
  checkpoint.save(manager, _state(3, 1.5), meta={"step": 3, "pending": [
      {"loss": 0.25}]})
  checkpoint.save(manager, _state(5, 2.5), meta={"step": 5})
  manager.close()
  # What a kill leaves behind: orbax's temporary folder of a step being
  # written; and a step folder that was never finalised (no metadata).
  (tmp_path / "7.orbax-checkpoint-tmp-1234").mkdir()
  (tmp_path / "9").mkdir()
  shutil.copytree(tmp_path / "5", tmp_path / "11")
  (tmp_path / "11" / "_CHECKPOINT_METADATA").unlink()
  manager = checkpoint.make_manager(tmp_path, max_to_keep=3)
  assert checkpoint.complete_steps(manager) == [3, 5]
  state, meta = checkpoint.restore_latest(manager, _state(0, 0.0))
  assert meta == {"step": 5}
  assert int(state.step) == 5
  np.testing.assert_array_equal(state.params["w"], [2.5] * 3)
  np.testing.assert_array_equal(state.ema_params["w"], [-2.5] * 3)
  assert float(state.opt_state[0]) == 2.5


def test_a_corrupt_newest_step_falls_back_to_the_previous(tmp_path):
  manager = checkpoint.make_manager(tmp_path, max_to_keep=3)
  checkpoint.save(manager, _state(3, 1.5), meta={"step": 3})
  checkpoint.save(manager, _state(5, 2.5), meta={"step": 5})
  manager.close()
  shutil.rmtree(tmp_path / "5" / "state")
  manager = checkpoint.make_manager(tmp_path, max_to_keep=3)
  state, meta = checkpoint.restore_latest(manager, _state(0, 0.0))
  assert meta == {"step": 3} and int(state.step) == 3


def test_empty_folder_restores_nothing(tmp_path):
  manager = checkpoint.make_manager(tmp_path)
  assert checkpoint.restore_latest(manager, _state(0, 0.0)) == (None, None)
