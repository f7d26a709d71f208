"""The trainer's CPU compile options (YNNPACK for dots only)."""

import jax
import jax.numpy as jnp
import numpy as np

from counting_jax.models.backbones import _ops
from counting_jax.train import compile_options


def test_options_per_platform():
  assert compile_options.compiler_options(platform="cpu") == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
  assert compile_options.compiler_options(None, platform="cpu") is None
  assert compile_options.compiler_options(platform="gpu") is None


def _ops_of(options, f, *args):
  """Where the convolutions of ``f`` run: a subset of {"ynn", "xla"}."""
  text = jax.jit(f, compiler_options=options).lower(*args).compile().as_text()
  entry = text[text.index("ENTRY"):]
  return {("ynn" if "ynn_fusion" in line.split("=")[0] else "xla")
          for line in entry.splitlines()
          if "conv_general_dilated" in line and "=" in line}


def test_options_keep_convolutions_out_of_ynnpack():
  """The premise of the options: XLA's defaults send a VGG-sized conv to
  YNNPACK, the trainer's options keep it in XLA (Eigen)."""
  x = jnp.ones((1, 32, 32, 64))
  k = jnp.ones((3, 3, 64, 64))
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert _ops_of({}, conv, x, k) == {"ynn"}
  assert _ops_of(compile_options.compiler_options(platform="cpu"), conv, x,
                 k) == {"xla"}


def test_conv_and_its_gradient_match_float64():
  """A 3x3 conv (forward, input and kernel gradients) compiled with the
  options matches a float64 reference to 1e-5."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 12, 12, 8)).astype(np.float32)
  k = (0.2 * rng.normal(size=(3, 3, 8, 16))).astype(np.float32)
  dy = rng.normal(size=(2, 12, 12, 16)).astype(np.float32)

  def f(x, k):
    y = _ops.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(y * dy), y

  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = [xp[:, i:i + 12, j:j + 12] for i in range(3) for j in range(3)]
  y64 = sum(np.einsum("bhwc,co->bhwo", p, k.reshape(9, 8, 16)[t])
            for t, p in enumerate(patches))
  gk64 = np.stack([np.einsum("bhwc,bhwo->co", p, dy)
                   for p in patches]).reshape(3, 3, 8, 16)
  opts = compile_options.compiler_options(platform="cpu")
  (_, y), (gx, gk) = jax.jit(jax.value_and_grad(f, argnums=(0, 1),
                                                has_aux=True),
                             compiler_options=opts)(x, k)
  np.testing.assert_allclose(y, y64, rtol=0, atol=1e-5 * np.abs(y64).max())
  np.testing.assert_allclose(gk, gk64, rtol=0,
                             atol=1e-5 * np.abs(gk64).max())
  dyp = np.pad(dy.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  gx64 = sum(np.einsum("bhwo,co->bhwc", dyp[:, 2 - i:14 - i, 2 - j:14 - j],
                       k[i, j]) for i in range(3) for j in range(3))
  np.testing.assert_allclose(gx, gx64, rtol=0,
                             atol=1e-5 * np.abs(gx64).max())
