"""The CPU tricks of ``_ops`` (3x3 kernel gradient, reshape max-pool) and
the standard ``lax.conv_general_dilated`` / ``nn.max_pool`` agree: values,
gradients, and forward-mode derivatives where the path has them."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.models.backbones import _ops
from counting_jax.models.backbones import vgg

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(cpu):
  return functools.partial(_ops.conv_general_dilated, window_strides=(1, 1),
                           padding=((1, 1), (1, 1)), dimension_numbers=_DN,
                           cpu_kernel_grad=cpu)


def test_default_follows_the_backend_and_the_context():
  on_cpu = jax.default_backend() == "cpu"
  assert _ops.cpu_tricks_enabled() == on_cpu
  with _ops.cpu_tricks(not on_cpu):
    assert _ops.cpu_tricks_enabled() == (not on_cpu)
    assert _ops.cpu_tricks_enabled(on_cpu) == on_cpu  # explicit flag wins
    with _ops.cpu_tricks(None):
      assert _ops.cpu_tricks_enabled() == on_cpu
  assert _ops.cpu_tricks_enabled() == on_cpu


def test_conv_paths_agree_in_value_gradient_and_jvp():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 10, 12, 5)), jnp.float32)
  k = jnp.asarray(0.3 * rng.normal(size=(3, 3, 5, 7)), jnp.float32)
  dx = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  dk = jnp.asarray(rng.normal(size=k.shape), jnp.float32)
  dy = jnp.asarray(rng.normal(size=(2, 10, 12, 7)), jnp.float32)
  cpu, std = _conv(True), _conv(False)
  y_cpu, vjp_cpu = jax.vjp(lambda a, b: cpu(a, b), x, k)
  y_std, vjp_std = jax.vjp(lambda a, b: std(a, b), x, k)
  np.testing.assert_array_equal(y_cpu, y_std)  # the same forward conv
  for g_cpu, g_std in zip(vjp_cpu(dy), vjp_std(dy)):
    np.testing.assert_allclose(g_cpu, g_std, rtol=0,
                               atol=1e-5 * float(jnp.abs(g_std).max()))
  # Forward mode: the standard path's jvp is the adjoint of the CPU path's
  # vjp, <J (dx, dk), dy> = <(dx, dk), J^T dy>, and linear in (dx, dk).
  y, tangent = jax.jvp(lambda a, b: std(a, b), (x, k), (dx, dk))
  np.testing.assert_array_equal(y, y_std)
  gx, gk = vjp_cpu(dy)
  lhs = float(jnp.vdot(tangent, dy))
  rhs = float(jnp.vdot(gx, dx) + jnp.vdot(gk, dk))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-5)
  # the CPU path is reverse-mode only (a custom_vjp)
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(lambda a, b: cpu(a, b), (x, k), (dx, dk))


def test_max_pool_paths_agree_in_value_gradient_and_jvp():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 8, 3)), jnp.float32)  # odd H
  dx = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  dy = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  outs = {}
  for reshape in (True, False):
    pool = functools.partial(_ops.max_pool2, reshape=reshape)
    y, vjp = jax.vjp(pool, x)
    _, tangent = jax.jvp(pool, (x,), (dx,))
    outs[reshape] = (y, vjp(dy)[0], tangent)
  for a, b in zip(outs[True], outs[False]):
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def tiny_vgg():
  model = vgg.VGG(depths=(1, 2), widths=(4, 6))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 16, 12, 3)),
                  jnp.float32)
  params = model.init(jax.random.key(0), x)["params"]
  return model, params, x


def test_a_model_traced_with_and_without_the_tricks_agrees(tiny_vgg):
  model, params, x = tiny_vgg

  def loss(p, x):
    a, b = model.apply({"params": p}, x)
    return jnp.sum(jnp.sin(a)) + jnp.sum(b * b)

  results = {}
  for on in (True, False):
    with _ops.cpu_tricks(on):
      results[on] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
          params, x)
  (v1, g1), (v0, g0) = results[True], results[False]
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=0,
                               atol=1e-5 * float(jnp.abs(b).max()))
  # Forward mode through the whole model on the standard path.
  direction = jax.tree.map(jnp.ones_like, params)
  with _ops.cpu_tricks(False):
    _, tangent = jax.jvp(lambda p: loss(p, x), (params,), (direction,))
  expected = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(g0[0]),
                                                jax.tree.leaves(direction)))
  np.testing.assert_allclose(tangent, expected, rtol=1e-4)
  # ... which the CPU path (really taken inside the model) cannot do.
  with _ops.cpu_tricks(True):
    with pytest.raises(TypeError, match="custom_vjp"):
      jax.jvp(lambda p: loss(p, x), (params,), (direction,))
