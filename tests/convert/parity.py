"""Helpers of the PyTorch -> Flax parity tests (not collected by pytest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from counting_jax import convert

TOLERANCE = 1e-4  # max abs difference, float32.


def random_image(shape=(2, 3, 64, 64), seed=0) -> torch.Tensor:
  return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def flax_outputs(model_name: str, torch_module: torch.nn.Module,
                 image: torch.Tensor, **model_kwargs):
  """Converts ``torch_module``'s weights and runs the Flax model (jitted).

  Returns the Flax output(s) as numpy arrays (NHWC feature maps, or the
  [B, h, w] density).
  """
  variables = convert.convert_state_dict(state_dict(torch_module), model_name,
                                         **model_kwargs)
  model = convert.build_model(model_name, **model_kwargs)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  x = jnp.asarray(image.permute(0, 2, 3, 1).numpy())
  return jax.tree.map(np.asarray, apply(variables, x))


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().permute(0, 2, 3, 1).numpy()


def assert_close(actual, expected, atol=TOLERANCE):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  diff = float(np.max(np.abs(actual - expected)))
  scale = float(np.max(np.abs(expected)))
  assert scale > 1e-2, f"reference output is too small to test: {scale}"
  assert diff <= atol, f"max abs difference {diff} > {atol} (scale {scale})"


def meta_state_dict(make) -> dict[str, np.ndarray]:
  """Zero-memory arrays with the shapes of ``make()``'s state_dict."""
  with torch.device("meta"):
    module = make()
  zero = np.zeros((), np.float32)
  return {k: np.broadcast_to(zero, tuple(v.shape))
          for k, v in module.state_dict().items()}
