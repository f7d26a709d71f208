"""One jitted train step lowers the loss; checkpoints round-trip exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from counting_jax import losses, methods, models
from counting_jax.train import checkpoint, optim, state as state_lib, step as step_lib


@pytest.fixture(scope="module")
def setup():
  model = models.get_model("unet_tiny")
  tx = optim.make_optimizer("adam", lr=1e-2, total_steps=20)
  loss_fn = losses.get_loss("gaussian_l2", sigma=2.0, scale=10.0)
  method = methods.density.from_model(model, loss_fn, density_scale=10.0)
  step = jax.jit(step_lib.make_train_step(method, tx))
  rng = np.random.default_rng(0)
  pts = rng.uniform(0, 16, (2, 8, 2)).astype(np.float32)
  mask = np.array([[True] * 5 + [False] * 3, [False] * 8])  # 2nd: no points
  image = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  batch = dict(image=jnp.asarray(image), points=jnp.asarray(pts),
               point_mask=jnp.asarray(mask))
  state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0),
                                       image.shape)
  return model, tx, step, state, batch


def test_train_steps_lower_the_loss_with_finite_metrics(setup):
  _, _, step, state, batch = setup
  losses_seen = []
  for _ in range(12):
    state, metrics = step(state, batch)
    losses_seen.append(float(metrics["loss"]))
    assert all(np.isfinite(float(v)) for v in metrics.values())
  assert int(state.step) == 12
  assert losses_seen[-1] < 0.5 * losses_seen[0]
  assert {"loss", "mae", "grad_norm", "param_norm", "loss/l2"} <= set(metrics)


def test_batch_stats_are_updated(setup):
  _, _, step, state, batch = setup
  new, _ = step(state, batch)
  before = jax.tree.leaves(state.batch_stats)
  after = jax.tree.leaves(new.batch_stats)
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_checkpoint_round_trip_is_exact(setup, tmp_path):
  _, _, step, state, batch = setup
  state, _ = step(state, batch)
  manager = checkpoint.make_manager(tmp_path / "ckpt")
  checkpoint.save(manager, state, meta={"note": "x"})
  restored, meta = checkpoint.restore_latest(manager, state)
  manager.close()
  assert meta == {"note": "x"}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The optax state keeps its structure: the next step runs on it.
  nxt, _ = step(restored, batch)
  ref, _ = step(state, batch)
  chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, b), nxt.params,
                            ref.params)
  assert all(jax.tree.leaves(chex_equal))


def test_empty_manager_restores_nothing(setup, tmp_path):
  manager = checkpoint.make_manager(tmp_path / "none")
  assert checkpoint.restore_latest(manager, setup[3]) == (None, None)
  manager.close()


def test_optimizer_and_schedule_errors():
  with pytest.raises(ValueError, match="optimizer must be"):
    optim.make_optimizer("lamb", lr=1.0, total_steps=10)
  with pytest.raises(ValueError, match="schedule must be"):
    optim.make_schedule(1.0, schedule="poly", total_steps=10)
  lr = optim.make_schedule(1.0, schedule="cosine", total_steps=10,
                           warmup_steps=2)
  assert float(lr(0)) == 0.0 and float(lr(2)) == pytest.approx(1.0)
  assert float(lr(10)) == pytest.approx(0.0, abs=1e-6)


def test_step_schedule_is_torch_multisteplr():
  # PyTorch MultiStepLR(milestones=[4, 7], gamma=0.5) after a 2-step
  # warm-up: the rate of step s is lr * 0.5 ** (number of milestones <= s).
  lr = optim.make_schedule(2.0, schedule="step", total_steps=10,
                           warmup_steps=2, step_boundaries=(4, 7),
                           step_factor=0.5)
  got = [float(lr(s)) for s in range(10)]
  assert got == pytest.approx([0.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0,
                               0.5, 0.5, 0.5])
  for bad in ((7, 4), (2, 5), (4, 4)):
    with pytest.raises(ValueError, match="step_boundaries"):
      optim.make_schedule(1.0, schedule="step", total_steps=10,
                          warmup_steps=2, step_boundaries=bad)
