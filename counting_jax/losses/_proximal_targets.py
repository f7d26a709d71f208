"""PML's proximal targets p* of one point-neighbour cell, for study.

For one GT point y and the ñ density pixels of its nearest-neighbour cell
with masses a and transport costs c (e.g. ‖x_i − y‖), PML (Lin & Chan, ICLR
2025, §3.2) defines the target of a loss as the proximal mapping

.. math:: p^* = \\arg\\min_{p \\in ξ,\\, 1^T p = 1} c^T p + τ D_φ(p, a).

These are small pure functions of ``a`` and ``c`` (shape [..., ñ], any
leading batch axes) with an optional boolean ``mask`` [..., ñ] selecting the
cell's pixels (entries outside the mask get p* = 0 and are ignored). They are
not losses on density maps; see :mod:`counting_jax.losses` for those.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["l2_target", "l2_proximal_loss", "bayesian_target",
           "dm_count_target", "dm_count_proximal_loss"]


def _prep(a, c, mask):
  a = jnp.asarray(a, jnp.float32)
  c = jnp.asarray(c, jnp.float32)
  if a.shape != c.shape:
    raise ValueError(f"a and c must have the same shape, got {a.shape} and "
                     f"{c.shape}")
  if mask is None:
    mask = jnp.ones(a.shape, bool)
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), a.shape)
  return jnp.where(mask, a, 0.0), jnp.where(mask, c, 0.0), mask


def _l2_with_inv_tau(a, c, mask, inv_tau):
  n = jnp.maximum(mask.sum(-1, keepdims=True), 1)
  base = a - inv_tau * c
  eta = (1.0 - jnp.where(mask, base, 0.0).sum(-1, keepdims=True)) / n
  return jnp.where(mask, base + eta, 0.0)


def l2_target(a, c, *, tau: float, mask=None):
  """p* of the dynamic L2 loss, PML eq. 7.

  .. math:: p^* = a - c/τ + η, \\qquad
     η = \\frac{1}{ñ}\\big[1 - 1^T(a - c/τ)\\big]

  (D_φ = ½‖p − a‖², no positivity constraint). τ → 0 concentrates on the
  cheapest pixel only through ξ (PML §4.1); τ → ∞ gives a + (1 − 1ᵀa)/ñ.

  Args:
    a: float [..., ñ] density of the cell. c: float [..., ñ] cost.
    tau: τ > 0. mask: optional bool [..., ñ].

  Returns:
    float32 [..., ñ] p* (sums to 1 over the mask).
  """
  a, c, mask = _prep(a, c, mask)
  return _l2_with_inv_tau(a, c, mask, 1.0 / tau)


def l2_proximal_loss(a, c, *, tau: float, mask=None):
  """min_p cᵀp + τ/2 ‖p − a‖² s.t. 1ᵀp = 1 (PML eq. 6), value at p*.

  Its gradient in a is c − τη (PML eq. 8), i.e. (c − c̄) + τ/ñ (1ᵀa − 1)
  (eq. 13): the loss equals (c − c̄)ᵀa + τ/(2ñ)(1ᵀa − 1)² up to a term
  independent of a.

  Returns:
    float32 [...] loss.
  """
  a, c, mask = _prep(a, c, mask)
  p = jax.lax.stop_gradient(_l2_with_inv_tau(a, c, mask, 1.0 / tau))
  # Envelope theorem: differentiate with p* fixed.
  value = (c * p).sum(-1) + 0.5 * tau * jnp.where(
      mask, jnp.square(p - a), 0.0).sum(-1)
  return value


def bayesian_target(a, c, *, mask=None):
  """p* of BL seen as a dynamic-τ L2 loss with an L1 count term, PML eq. 14.

  .. math:: p^* = a - \\tfrac12 |1^T a - 1|\\, c + η

  i.e. :func:`l2_target` with τ = 2 / |1ᵀa − 1| (detached); at 1ᵀa = 1 it is
  a + (1 − 1ᵀa)/ñ = a.

  Returns:
    float32 [..., ñ] p*.
  """
  a, c, mask = _prep(a, c, mask)
  inv_tau = jax.lax.stop_gradient(
      0.5 * jnp.abs(a.sum(-1, keepdims=True) - 1.0))
  return _l2_with_inv_tau(a, c, mask, inv_tau)


def dm_count_target(a, c, *, tau: float, mask=None):
  """p* of the KL-proximal (DM-Count-like) loss with finite τ, PML eq. 22.

  .. math:: p^*_i = \\frac{a_i e^{-c_i/τ}}{η}, \\qquad
     η = \\sum_j a_j e^{-c_j/τ}

  computed as a softmax of log a − c/τ. τ → ∞ gives a / ‖a‖₁ (eq. 23). An
  all-zero a (η = 0) returns the limit of a uniform a, softmax(−c/τ).

  Returns:
    float32 [..., ñ] p* (≥ 0, sums to 1 over the mask).
  """
  a, c, mask = _prep(a, c, mask)
  pos = mask & (a > 0)
  any_pos = pos.any(-1, keepdims=True)
  log_a = jnp.log(jnp.where(pos, a, 1.0))
  logits = jnp.where(any_pos, jnp.where(pos, log_a, -jnp.inf), 0.0) - c / tau
  logits = jnp.where(mask, logits, -jnp.inf)
  return jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)


def dm_count_proximal_loss(a, c, *, tau: float, mask=None):
  """PML eq. 35: 1ᵀa − log η with η = aᵀ exp(−c/τ).

  It is eq. 34, τ(1ᵀa − log η − 1) = min_p cᵀp + τ KL(p | a) (eq. 31 at
  p*), divided by τ and shifted by 1. Its gradient in a is
  1 − exp(−c/τ)/η. Returns +inf when η = 0 (all-zero a).

  Returns:
    float32 [...] loss.
  """
  a, c, mask = _prep(a, c, mask)
  log_eta = jax.nn.logsumexp(jnp.where(mask, -c / tau, -jnp.inf), axis=-1,
                             b=jnp.where(mask, a, 0.0))
  return a.sum(-1) - log_eta
