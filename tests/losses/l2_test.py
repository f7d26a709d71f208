"""gaussian_l2 against a float64 NumPy reference; adaptive σ; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from counting_jax import density as density_lib
from counting_jax.losses import gaussian_l2_loss


def _reference(dens, pts, mask, sigma, stride, scale):
  """Σ_pixels (s·(d − t))² averaged over images, t from erf integrals."""
  b, h, w = dens.shape
  total = 0.0
  for i in range(b):
    t = np.zeros((h, w))
    for (x, y), m, s in zip(pts[i], mask[i], sigma[i]):
      if not m:
        continue
      px = np.diff(special.ndtr((np.arange(w + 1) * stride - x) / s))
      py = np.diff(special.ndtr((np.arange(h + 1) * stride - y) / s))
      t += np.outer(py, px) / (px.sum() * py.sum())
    total += np.sum((scale * (dens[i] - t)) ** 2)
  return total / b


@pytest.mark.parametrize("stride", [1, 4])
def test_value_and_gradient_match_float64_reference(stride):
  rng = np.random.default_rng(0)
  pts = rng.uniform(0, 32, (2, 6, 2)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 0, 0], [0] * 6], bool)
  dens = rng.uniform(0, 0.1, (2, 32 // stride, 32 // stride)).astype(np.float32)
  sigma = np.full((2, 6), 3.0)
  fn = jax.jit(jax.value_and_grad(
      lambda d: gaussian_l2_loss(d, pts, mask, stride=stride, sigma=3.0,
                                 scale=10.0)[0]))
  loss, grad = fn(jnp.asarray(dens))
  ref = _reference(dens.astype(np.float64), pts, mask, sigma, stride, 10.0)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  eps = 1e-3
  direction = rng.normal(size=dens.shape)
  fd = (_reference(dens + eps * direction, pts, mask, sigma, stride, 10.0)
        - _reference(dens - eps * direction, pts, mask, sigma, stride, 10.0)
        ) / (2 * eps)
  np.testing.assert_allclose(float(jnp.sum(grad * direction)), fd, rtol=1e-4)


def test_adaptive_sigma_uses_knn_distances():
  rng = np.random.default_rng(1)
  pts = rng.uniform(0, 64, (1, 10, 2)).astype(np.float32)
  mask = np.ones((1, 10), bool)
  dens = np.zeros((1, 64, 64), np.float32)
  loss, _ = gaussian_l2_loss(dens, pts, mask, stride=1, sigma="adaptive")
  sig = density_lib.knn_sigma(pts[0])[None]
  ref = _reference(dens, pts, mask, sig, 1, 1.0)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-4)


def test_empty_image_and_bad_arguments():
  grad = jax.grad(lambda d: gaussian_l2_loss(
      d, jnp.zeros((1, 3, 2)), jnp.zeros((1, 3), bool), stride=2)[0])(
          jnp.ones((1, 4, 4)))
  np.testing.assert_allclose(np.asarray(grad), 2.0)  # d/dd Σ d², batch 1
  with pytest.raises(ValueError, match="reduction"):
    gaussian_l2_loss(jnp.ones((1, 4, 4)), jnp.zeros((1, 1, 2)),
                     jnp.ones((1, 1), bool), stride=1, reduction="max")
  with pytest.raises(ValueError, match="sigma must be"):
    gaussian_l2_loss(jnp.ones((1, 4, 4)), jnp.zeros((1, 1, 2)),
                     jnp.ones((1, 1), bool), stride=1, sigma="knn")
