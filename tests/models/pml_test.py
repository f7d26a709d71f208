"""The PML counters: interface, stride, BatchNorm updates, init, dtypes.

Numerical parity with the official PyTorch modules is tested in
``tests/convert/vgg_keys_test.py`` and ``tests/convert/hrnet_keys_test.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax import models
from counting_jax.models import pml

import counter_utils  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope="module")
def hrnet_tiny():
  model = models.get_model("pml_hrnet_tiny")
  _, variables = counter_utils.random_variables(model)
  return model, variables


def test_registered_variants():
  for name in ("pml_vgg19", "pml_vgg16_bn", "pml_hrnet_w48", "pml_hrnet_w40",
               "pml_vgg19_tiny", "pml_hrnet_tiny"):
    assert models.get_model(name).stride == 2
  assert models.get_model("pml_hrnet_w48").fuse_upsample == "bilinear"


def test_full_size_structure():
  model = models.get_model("pml_hrnet_w48")
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  fuse = abstract["params"]["fuse"]
  assert fuse["conv_small"]["kernel"].shape == (1, 1, 96, 48)
  assert "bias" not in fuse["conv_small"]  # bn=True: convs without bias.
  assert abstract["params"]["decoder"]["out"]["kernel"].shape == (1, 1, 48, 4)
  assert "post_bn" in abstract["batch_stats"]["fuse"]
  vgg = models.get_model("pml_vgg19")
  abstract = jax.eval_shape(lambda: vgg.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert abstract["params"]["decoder"]["out"]["kernel"].shape == (1, 1, 512,
                                                                   16)
  assert "bias" in abstract["params"]["fuse"]["conv_small"]


def test_hrnet_train_mode_updates_batch_stats(hrnet_tiny):
  model, variables = hrnet_tiny
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                           mutable=["batch_stats"]))
  density, updates = apply(variables, counter_utils.random_image())
  assert density.shape == (2, 32, 32) and density.dtype == jnp.float32
  assert float(density.min()) >= 0
  old = variables["batch_stats"]["fuse"]["post_bn"]["mean"]
  new = updates["batch_stats"]["fuse"]["post_bn"]["mean"]
  # Flax momentum 0.9 (PyTorch 0.1) in the fuse BNs: new = 0.9 old + 0.1 m.
  assert float(jnp.abs(new - old).max()) > 0
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])


def test_hrnet_bfloat16(hrnet_tiny):
  model, variables = hrnet_tiny
  image = counter_utils.random_image()
  reference = jax.jit(model.apply)(variables, image)
  bf16 = models.get_model("pml_hrnet_tiny", dtype=jnp.bfloat16)
  density = jax.jit(bf16.apply)(variables, image)
  assert density.dtype == jnp.float32
  scale = float(jnp.abs(reference).max())
  assert scale > 0
  assert float(jnp.abs(density - reference).max()) < 0.1 * scale


def test_vgg_density_shape():
  model = models.get_model("pml_vgg19_tiny")
  _, variables = counter_utils.random_variables(model)
  density = jax.jit(model.apply)(variables,
                                 counter_utils.random_image((1, 48, 80, 3)))
  assert density.shape == (1, 24, 40)


def test_decoder_init_is_small_and_unbiased():
  """Official init: last conv weights / 100, biases 0 (``decoder.py``)."""
  decoder = pml.PMLDecoder(64, 2)
  variables = jax.jit(decoder.init)(jax.random.key(0), jnp.zeros((1, 4, 4, 64)))
  out = np.asarray(variables["params"]["out"]["kernel"])
  hidden = np.asarray(variables["params"]["conv1"]["kernel"])
  # PyTorch default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in = 64 here.
  assert np.abs(out).max() <= 1 / 8 / 100 and np.abs(out).max() > 1 / 8 / 200
  assert np.abs(hidden).max() <= 1 / np.sqrt(9 * 64)
  for name in ("conv1", "conv2", "out"):
    assert not np.any(variables["params"][name]["bias"])


def test_rejects_bad_image(hrnet_tiny):
  model, variables = hrnet_tiny
  with pytest.raises(ValueError, match="multiples of 32"):
    model.apply(variables, jnp.zeros((1, 48, 64, 3)))
