"""XLA compiler options for the jitted train, eval and predict steps.

On CPU, XLA's default convolutions and matrix products (Eigen) are slower
than PyTorch's oneDNN kernels; XLA can instead hand dots and convolutions to
YNNPACK, an experimental option in jaxlib 0.10 that is off by default. With
it the VGG19 counter runs ~1.4x faster forward and ~1.2x faster forward +
backward at 512x512 on 2 cores (``benchmarks/models.py``), and convolutions
are as accurate (max relative error vs float64 4e-7 instead of 1e-6 on a
64-channel 3x3 conv). The option is passed per function
(``jax.jit(..., compiler_options=...)``), so nothing global changes and
other backends are untouched.
"""

from __future__ import annotations

import jax

__all__ = ["compiler_options"]

_YNN_DOT = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def compiler_options(ynnpack: bool = True, platform: str | None = None):
  """``compiler_options`` for ``jax.jit`` on ``platform`` (default backend).

  Args:
    ynnpack: on CPU, run dots and convolutions through YNNPACK (config key
      ``xla_cpu_ynnpack``); False keeps XLA's defaults.
    platform: "cpu", "gpu", "tpu"; default ``jax.default_backend()``.

  Returns:
    A dict of XLA debug options, or None when there is nothing to set.
  """
  platform = platform or jax.default_backend()
  if ynnpack and platform == "cpu":
    return dict(_YNN_DOT)
  return None
