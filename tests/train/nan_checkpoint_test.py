"""A diverged state is never checkpointed, even between logging steps."""

from __future__ import annotations

import pathlib
import sys

import jax.numpy as jnp
import pytest

from counting_jax.train import loop, step as step_lib

pytestmark = pytest.mark.usefixtures("fast_compiles")


def test_nan_between_logs_stops_before_the_next_save(tmp_path, monkeypatch):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  from configs import cells  # pylint: disable=g-import-not-at-top
  config = cells.get_config("smoke=True")
  config.total_steps, config.log_every, config.checkpoint_every = 6, 5, 1
  config.quiet = True
  real = step_lib.make_train_step

  def nan_at_step_3(*args, **kwargs):
    step = real(*args, **kwargs)

    def wrapped(state, batch):
      new, metrics = step(state, batch)
      metrics["loss"] = jnp.where(new.step == 3, jnp.nan, metrics["loss"])
      return new, metrics

    return wrapped

  monkeypatch.setattr(step_lib, "make_train_step", nan_at_step_3)
  with pytest.raises(FloatingPointError, match="at step 3"):
    loop.train_and_evaluate(config, tmp_path)
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved == [1, 2]
