"""The batch-of-one path of the losses against the official values.

``losses._checks.map_images`` calls a loss's per-image function directly
(no ``vmap``) when the batch holds one image, the official BL / GL trainers'
batch. The official-value tests of each loss run all cases in one batch (the
``vmap`` path); here every case runs alone, as a batch of one, and must
match the official per-case loss and gradient with the same tolerances.
Points are padded to the same N for every case (one compile per loss).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.losses import dm_count_loss, generalized_loss, pml_loss

# name: (official file, loss, keyword arguments, per-case loss key,
# per-case gradient key); PML's values are the official code as it is.
_CASES = {
    "dm_count": ("dmcount", dm_count_loss, {"stride": 8}, "total",
                 "grad_total"),
    "gl": ("gl", generalized_loss, {"stride": 8}, "loss", "grad"),
    "pml": ("pml", pml_loss, {"stride": 2, "official_count_bug": True},
            "loss_asis", "grad_asis"),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_batch_of_one_matches_official_values(official_cases, name):
  file, fn, kwargs, loss_key, grad_key = _CASES[name]
  z, _, names, pts, mask = official_cases(file)
  run = jax.jit(jax.value_and_grad(lambda d, p, m: fn(d, p, m, **kwargs)[0]))
  for b, c in enumerate(names):
    density = z[f"{c}/density"][None]
    loss, grad = run(jnp.asarray(density), pts[b:b + 1], mask[b:b + 1])
    ref_loss, ref_grad = z[f"{c}/{loss_key}"], z[f"{c}/{grad_key}"]
    if name == "pml":  # terms of both signs cancel: relative to their size
      magnitude = np.abs(density[0] * ref_grad).sum() + abs(ref_loss)
      assert abs(float(loss) - ref_loss) <= 1e-5 * magnitude, c
    else:
      np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6,
                                 err_msg=c)
    np.testing.assert_allclose(grad[0], ref_grad, rtol=0,
                               atol=1e-5 * np.abs(ref_grad).max(), err_msg=c)
