"""FCRN-A and the small U-Net: shapes, strides, parameter counts, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax import models


def _n_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", ["fcrn_a", "unet", "fcrn_a_tiny", "unet_tiny"])
def test_output_is_a_density_map_at_stride_1(name):
  model = models.get_model(name)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 48, 3))))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 48, 3))),
                       shapes)
  assert out.shape == (2, 32, 48) and out.dtype == jnp.float32
  assert model.stride == 1


def test_fcrn_a_parameter_count_matches_the_architecture():
  # convs 3-32-64-128-512, then 512-128-64-32 and a 1x1 to 1, no conv biases
  # (BatchNorm): weights + BN scale/bias + final conv bias.
  widths = [(3, 32), (32, 64), (64, 128), (128, 512), (512, 128), (128, 64),
            (64, 32)]
  expect = sum(9 * i * o + 2 * o for i, o in widths) + 32 + 1
  model = models.get_model("fcrn_a")
  v = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                        jnp.zeros((1, 16, 16, 3))))
  assert _n_params(v["params"]) == expect


def test_bad_image_shapes_raise():
  model = models.get_model("unet_tiny")
  with pytest.raises(ValueError, match="multiples of 2"):
    model.init(jax.random.key(0), jnp.zeros((1, 15, 16, 3)))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16)))
  with pytest.raises(ValueError, match="unknown model 'vgg99'"):
    models.get_model("vgg99")


def test_bfloat16_compute_keeps_float32_params_and_output():
  model = models.get_model("unet_tiny", dtype=jnp.bfloat16)
  v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v["params"]))
  out = model.apply(v, jnp.ones((1, 8, 8, 3)))
  assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
