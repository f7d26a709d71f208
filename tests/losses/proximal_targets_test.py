"""PML proximal targets: closed forms, optimality and the paper's identities."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.losses._proximal_targets import (bayesian_target,
                                                   dm_count_proximal_loss,
                                                   dm_count_target,
                                                   l2_proximal_loss,
                                                   l2_target)


@pytest.fixture(scope="module")
def cell():
  rng = np.random.default_rng(0)
  a = rng.gamma(1.0, 0.2, (3, 12)).astype(np.float32)
  c = rng.uniform(0.0, 2.0, (3, 12)).astype(np.float32)
  mask = np.ones((3, 12), bool)
  mask[1, 8:] = False
  return a, c, mask


def test_l2_target_closed_form_and_kkt(cell):
  a, c, mask = cell
  tau = 3.0
  p = np.asarray(l2_target(a, c, tau=tau, mask=mask), np.float64)
  for b in range(3):
    m = mask[b]
    ad, cd = a[b][m].astype(np.float64), c[b][m].astype(np.float64)
    eta = (1 - (ad - cd / tau).sum()) / m.sum()
    np.testing.assert_allclose(p[b][m], ad - cd / tau + eta, atol=1e-6)
    assert (p[b][~m] == 0).all()
    # KKT: c + τ(p − a) is constant on the cell.
    k = cd + tau * (p[b][m] - ad)
    np.testing.assert_allclose(k, k.mean(), atol=1e-5)
  np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)


def test_l2_gradient_eq8_eq13(cell):
  a, c, mask = cell
  tau = 2.0
  grad = jax.grad(lambda x: l2_proximal_loss(x, c, tau=tau, mask=mask)
                  .sum())(jnp.asarray(a))
  for b in range(3):
    m = mask[b]
    n = m.sum()
    ad, cd = a[b][m].astype(np.float64), c[b][m].astype(np.float64)
    eta = (1 - (ad - cd / tau).sum()) / n
    np.testing.assert_allclose(grad[b][m], cd - tau * eta, atol=1e-5)
    np.testing.assert_allclose(
        grad[b][m], cd - cd.mean() + tau / n * (ad.sum() - 1), atol=1e-5)


def test_l2_target_is_the_minimiser(cell):
  a, c, mask = cell
  rng = np.random.default_rng(1)
  tau = 1.5
  p = np.asarray(l2_target(a[0], c[0], tau=tau), np.float64)
  obj = lambda q: c[0] @ q + tau / 2 * ((q - a[0]) ** 2).sum()
  for _ in range(20):
    d = rng.normal(size=12)
    d -= d.mean()                     # stay on 1ᵀp = 1
    assert obj(p + 0.01 * d) > obj(p)


def test_bayesian_target_eq14(cell):
  a, c, mask = cell
  p = bayesian_target(a, c, mask=mask)
  tau = 2.0 / np.abs(np.where(mask, a, 0).sum(1) - 1.0)
  for b in range(3):
    np.testing.assert_allclose(
        p[b], l2_target(a[b], c[b], tau=tau[b], mask=mask[b]), atol=1e-6)
  # At 1ᵀa = 1 the target is a itself.
  a1 = a[0] / a[0].sum()
  np.testing.assert_allclose(bayesian_target(a1, c[0]), a1, atol=1e-6)


def test_dm_count_target_eq22_and_limit(cell):
  a, c, mask = cell
  tau = 0.7
  p = np.asarray(dm_count_target(a, c, tau=tau, mask=mask), np.float64)
  for b in range(3):
    m = mask[b]
    w = a[b][m].astype(np.float64) * np.exp(-c[b][m] / tau)
    np.testing.assert_allclose(p[b][m], w / w.sum(), rtol=1e-5)
    assert (p[b][~m] == 0).all()
  big = dm_count_target(a[0], c[0], tau=1e7)
  np.testing.assert_allclose(big, a[0] / a[0].sum(), rtol=1e-5)
  zero = dm_count_target(np.zeros(12), c[0], tau=tau)
  np.testing.assert_allclose(zero, jax.nn.softmax(-c[0] / tau), rtol=1e-6)


def test_dm_count_loss_eq31_to_eq35(cell):
  """eq. 31 at p* = τ(1ᵀa − log η − 1) = τ(eq. 35 − 1); ∂eq35/∂a."""
  a, c, _ = cell
  tau = 0.9
  a0, c0 = a[0].astype(np.float64), c[0].astype(np.float64)
  p = np.asarray(dm_count_target(a0, c0, tau=tau), np.float64)
  kl = (p * np.log(p / a0)).sum() - p.sum() + a0.sum()
  eq31 = c0 @ p + tau * kl
  eq35 = float(dm_count_proximal_loss(a0, c0, tau=tau))
  np.testing.assert_allclose(eq31, tau * (eq35 - 1.0), rtol=1e-5)
  # p* minimises eq. 21 on the simplex.
  rng = np.random.default_rng(2)
  for _ in range(20):
    q = rng.dirichlet(np.ones(12))
    kl_q = (q * np.log(q / a0)).sum() - 1.0 + a0.sum()
    assert c0 @ q + tau * kl_q >= eq31 - 1e-6
  grad = jax.grad(lambda x: dm_count_proximal_loss(x, c0, tau=tau))(
      jnp.asarray(a[0]))
  eta = (a0 * np.exp(-c0 / tau)).sum()
  np.testing.assert_allclose(grad, 1.0 - np.exp(-c0 / tau) / eta, rtol=1e-5)


def test_bad_shapes():
  with pytest.raises(ValueError, match="same shape"):
    l2_target(np.ones(3), np.ones(4), tau=1.0)
