"""Per-group optimiser settings (``optim.make_optimizer(groups=...)``)
against the closed form of one AdamW step."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from counting_jax.train import optim


def test_adamw_step_with_per_group_lr_and_weight_decay():
  params = {"unet": jnp.array([1.0, -2.0, 3.0]),
            "decoder": jnp.array([0.5, 4.0]),
            "other": jnp.array([-1.5])}
  grads = {"unet": jnp.array([0.3, -0.1, 2.0]),
           "decoder": jnp.array([-0.7, 0.2]),
           "other": jnp.array([0.4])}
  tx = optim.make_optimizer(
      "adamw", lr=0.1, total_steps=1, weight_decay=0.2,
      groups={"unet": {"lr": 0.01, "weight_decay": 0.5},
              "decoder": {"weight_decay": 0.05}},
      param_labels=lambda p: {k: k for k in p})
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  eps = 1e-8
  # First AdamW step: m_hat = g, v_hat = g^2, so
  # p' = p - lr * (g / (|g| + eps) + wd * p) (decoupled, as PyTorch).
  # (A wrong weight decay moves a parameter by >= 1e-3, far above rtol.)
  for key, lr, wd in (("unet", 0.01, 0.5), ("decoder", 0.1, 0.05),
                      ("other", 0.1, 0.2)):
    p, g = np.asarray(params[key]), np.asarray(grads[key])
    want = p - lr * (g / (np.abs(g) + eps) + wd * p)
    np.testing.assert_allclose(new[key], want, rtol=1e-5, err_msg=key)


def test_unknown_group_key_names_the_valid_ones():
  with pytest.raises(ValueError, match="frozen, lr, weight_decay"):
    optim.make_optimizer("adamw", lr=1.0, total_steps=1,
                         groups={"a": {"wd": 1.0}}, param_labels=lambda p: p)
