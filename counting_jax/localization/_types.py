"""The result type shared by the localization functions."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

__all__ = ["Localization"]


class Localization(NamedTuple):
  """Points found in a batch of density maps.

  Attributes:
    points: float32 [B, K, 2] positions (x, y) in input-image pixels (the
      convention of :mod:`counting_jax.grid`); rows where ``mask`` is False
      are 0.
    mask: bool [B, K], True for the real points (they come first).
    count: int32 [B] the number of points the method found before the static
      bound K was applied (``count > K`` means points were left out; see each
      function for which).
  """
  points: jnp.ndarray
  mask: jnp.ndarray
  count: jnp.ndarray
