"""The pure train step: accumulation, EMA, bfloat16 compute, metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax import methods
from counting_jax.train import sharding, step as step_lib

import _train_worker as worker  # pylint: disable=g-import-not-at-top


pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(jax.devices()[:1])


@pytest.fixture(scope="module")
def batches():
  ds = worker.dataset(8)
  return [ds[0], ds[1]]


def test_split_micro_batches_interleaves_rows():
  x = {"a": np.arange(12).reshape(6, 2)}
  out = step_lib.split_micro_batches(x, 3)["a"]
  assert out.shape == (3, 2, 2)
  np.testing.assert_array_equal(out[1], [[2, 3], [8, 9]])  # rows 1 and 4
  with pytest.raises(ValueError, match="accum_steps=4"):
    step_lib.split_micro_batches(x, 4)


def test_accumulation_equals_full_batch_without_batch_norm(mesh, batches):
  full, m_full = worker.run_steps(mesh, batches, batch_norm=False)
  acc, m_acc = worker.run_steps(mesh, batches, batch_norm=False,
                                accum_steps=4)
  initial = worker.run_steps(mesh, [], batch_norm=False)[0]
  assert worker.max_diff(full.params, initial.params) > 1e-3
  assert worker.max_diff(full.params, acc.params) < 1e-6
  for key in ("loss", "mae", "grad_norm", "param_norm"):
    np.testing.assert_allclose([r[key] for r in m_acc],
                               [r[key] for r in m_full], rtol=1e-5)


def test_ema_follows_its_recursion(mesh, batches):
  decay = 0.7
  initial = worker.run_steps(mesh, [], ema_decay=decay)[0]
  one = worker.run_steps(mesh, batches[:1], ema_decay=decay)[0]
  two = worker.run_steps(mesh, batches, ema_decay=decay)[0]
  expected = jax.tree.map(
      lambda p0, p1, p2: decay ** 2 * np.asarray(p0, np.float64)
      + decay * (1 - decay) * np.asarray(p1) + (1 - decay) * np.asarray(p2),
      initial.params, one.params, two.params)
  assert worker.max_diff(two.ema_params, expected) < 1e-6
  assert worker.max_diff(two.ema_params, two.params) > 1e-4
  np.testing.assert_array_equal(int(two.step), 2)


def test_bfloat16_compute_keeps_float32_params_and_loss(mesh, batches):
  f32, m32 = worker.run_steps(mesh, batches[:1])
  bf16, m16 = worker.run_steps(mesh, batches[:1], dtype="bfloat16")
  for leaf in jax.tree.leaves((bf16.params, bf16.opt_state, bf16.batch_stats)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  assert all(isinstance(v, float) and np.isfinite(v) for v in m16[0].values())
  np.testing.assert_allclose(m16[0]["loss"], m32[0]["loss"], rtol=5e-2)
  assert 0 < worker.max_diff(bf16.params, f32.params) < 1e-2


def test_metrics_are_global_batch_means(mesh, batches):
  _, rows = worker.run_steps(mesh, batches[:1])
  model = worker.tiny_model()
  state = worker._compiled(mesh, "gaussian_l2", ())[1]  # pylint: disable=protected-access
  dens, _ = model.apply({"params": state.params,
                         "batch_stats": state.batch_stats},
                        batches[0]["image"], train=True,
                        mutable=["batch_stats"])
  pred = np.asarray(dens, np.float64).sum((1, 2))
  true = batches[0]["point_mask"].sum(-1)
  np.testing.assert_allclose(rows[0]["mae"], np.mean(np.abs(pred - true)),
                             rtol=1e-5)
  assert set(rows[0]) >= {"loss", "mae", "grad_norm", "param_norm",
                          "loss/l2", "loss/count"}


def test_eval_step_uses_ema_when_asked(batches):
  model, _, tx = worker.build()
  from counting_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0),
                                       (1, 16, 16, 3), ema=True)
  state = state.replace(ema_params=jax.tree.map(jnp.zeros_like, state.params))
  x = batches[0]["image"][:2]
  method = methods.density.from_model(model, None)
  plain = step_lib.make_eval_step(method)(state, {"image": x})
  ema = step_lib.make_eval_step(method, use_ema=True)(state, {"image": x})
  assert not np.allclose(plain, ema)
  # zero weights: the output is softplus(0) * 0.05 everywhere.
  np.testing.assert_allclose(ema, np.log(2.0) * 0.05, rtol=1e-6)
