"""The BL / DM-Count / GL VGG19 counters: interface, options, dtypes.

Numerical parity with the official PyTorch modules is tested in
``tests/convert/vgg_keys_test.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax import models
from counting_jax.models.vgg19_density import normalize_density

import counter_utils  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope="module")
def bl_tiny():
  model = models.get_model("bl_vgg19_tiny")
  _, variables = counter_utils.random_variables(model)
  return model, variables


@pytest.mark.parametrize("name,upsample,activation", [
    ("bl_vgg19", "bilinear", "abs"),
    ("dm_count_vgg19", "bilinear", "relu"),
    ("gl_vgg19", "nearest", "abs"),
])
def test_registered_variants(name, upsample, activation):
  for suffix in ("", "_tiny"):
    model = models.get_model(name + suffix)
    assert (model.upsample, model.activation, model.stride) == (
        upsample, activation, 8)


def test_full_size_parameters():
  model = models.get_model("bl_vgg19")
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  params = abstract["params"]
  assert set(abstract) == {"params"}  # No BatchNorm.
  assert params["backbone"]["conv5_4"]["kernel"].shape == (3, 3, 512, 512)
  assert params["head_conv1"]["kernel"].shape == (3, 3, 512, 256)
  assert params["head_out"]["kernel"].shape == (1, 1, 128, 1)
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == 20_024_384 + 1_179_904 + 295_040 + 129  # VGG19 + head.


def test_density_shape_and_sign(bl_tiny):
  model, variables = bl_tiny
  density = jax.jit(model.apply)(variables, counter_utils.random_image())
  assert density.shape == (2, 8, 8) and density.dtype == jnp.float32
  assert float(density.min()) >= 0 and float(density.max()) > 0


def test_bfloat16_compute(bl_tiny):
  model, variables = bl_tiny
  image = counter_utils.random_image()
  reference = jax.jit(model.apply)(variables, image)
  bf16 = models.get_model("bl_vgg19_tiny", dtype=jnp.bfloat16)
  density = jax.jit(bf16.apply)(variables, image)
  assert density.dtype == jnp.float32
  scale = float(jnp.abs(reference).max())
  assert float(jnp.abs(density - reference).max()) < 0.05 * scale
  assert float(jnp.abs(density - reference).max()) > 0  # really bfloat16.


def test_gradients_reach_every_parameter(bl_tiny):
  model, variables = bl_tiny
  image = counter_utils.random_image()

  def total(params):
    return model.apply({"params": params}, image, train=True).sum()

  grads = jax.jit(jax.grad(total))(variables["params"])
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert bool(jnp.all(jnp.isfinite(g))), path
    assert float(jnp.abs(g).max()) > 0, path


def test_normalize_density():
  density = jnp.asarray(np.random.default_rng(0).random((3, 4, 5)))
  density = density.at[1].set(0.0)
  normed = normalize_density(density)
  np.testing.assert_allclose(normed.sum(axis=(1, 2)), [1, 0, 1], atol=1e-5)
  np.testing.assert_allclose(normed[0], density[0] / (density[0].sum() + 1e-6),
                             rtol=1e-6)


def test_rejects_bad_images_and_options(bl_tiny):
  model, variables = bl_tiny
  with pytest.raises(ValueError, match="multiples of 16"):
    model.apply(variables, jnp.zeros((1, 40, 64, 3)))
  bad = models.get_model("bl_vgg19_tiny", upsample="cubic")
  with pytest.raises(ValueError, match="upsample must be"):
    bad.apply(variables, jnp.zeros((1, 64, 64, 3)))
