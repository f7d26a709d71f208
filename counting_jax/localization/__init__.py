"""Localization: points from density maps (local maxima, OT-M).

Both functions take a batch of density maps [B, h, w] and return a
:class:`Localization` (points [B, K, 2] (x, y) in input-image pixels, a mask
and the number of points found), jit-compiled with K a static bound.
:func:`localize_images` runs a density model over image files and writes the
points (JSON, NWPU submission format) and panels.
"""

from __future__ import annotations

from counting_jax.localization._images import (
    METHODS, localize_density, localize_images, nwpu_integer_points,
    save_points_panel)
from counting_jax.localization._otm import ot_m
from counting_jax.localization._peaks import local_maxima
from counting_jax.localization._types import Localization

__all__ = ["METHODS", "Localization", "local_maxima", "localize_density",
           "localize_images", "nwpu_integer_points", "ot_m",
           "save_points_panel"]
