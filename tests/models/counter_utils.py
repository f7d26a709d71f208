"""Helpers of the crowd-counter tests (not collected by pytest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(model, size: int = 64, seed: int = 0):
  """Variables with ``model.init``'s structure, filled without compiling init.

  Kernels He-normal, biases/means 0, scales/vars 1 (``jax.jit(model.init)``
  of an HRNet takes minutes to compile on a loaded 2-core CPU).
  """
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    else:
      value = rng.normal(size=leaf.shape) * 0.01
    return jnp.asarray(value, leaf.dtype)

  return abstract, jax.tree_util.tree_map_with_path(fill, abstract)


def random_image(shape=(2, 64, 64, 3), seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)
