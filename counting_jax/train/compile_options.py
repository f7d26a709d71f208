"""XLA compiler options for the jitted train, eval and predict steps.

jaxlib 0.10's XLA:CPU hands convolutions, dots and large reductions to
YNNPACK by default (debug option ``xla_cpu_experimental_ynn_fusion_type``).
For the VGG19 counter at 512x512 on 2 cores, XLA's own (Eigen) convolutions
are faster: restricting YNNPACK to dots (``LIBRARY_FUSION_TYPE_DOT``, the
trainer's default) ran it 1.29x faster forward and 1.07x faster forward +
backward than the defaults (batch 2: 2.73 vs 3.53 s and 9.05 vs 9.68 s;
``benchmarks/models.py --xla-defaults`` compares them). It also moves the
reductions back to XLA, which makes most losses slower (up to 1.8x for PML,
``benchmarks/losses.py`` runs them with the defaults), a few milliseconds
against seconds of the network per step. The option is passed per function
(``jax.jit(..., compiler_options=...)``), so nothing global changes and
other backends are untouched.
"""

from __future__ import annotations

import jax

from counting_jax.train import defaults

__all__ = ["compiler_options", "DEFAULT_YNN_FUSION_TYPE"]

# XLA's enum names; several are joined with "," (e.g. "..._DOT,..._REDUCE").
DEFAULT_YNN_FUSION_TYPE = defaults.DEFAULT_YNN_FUSION_TYPE


def compiler_options(ynn_fusion_type: str | None = DEFAULT_YNN_FUSION_TYPE,
                     platform: str | None = None):
  """``compiler_options`` for ``jax.jit`` on ``platform`` (default backend).

  Args:
    ynn_fusion_type: on CPU, the operations XLA may hand to YNNPACK (config
      key ``xla_cpu_ynn_fusion_type``): "LIBRARY_FUSION_TYPE_DOT" (default:
      dots only, Eigen convolutions), any comma-separated list of XLA's
      ``LIBRARY_FUSION_TYPE_*`` names, or None for XLA's defaults
      (convolutions, dots and reductions).
    platform: "cpu", "gpu", "tpu"; default ``jax.default_backend()``.

  Returns:
    A dict of XLA debug options, or None when there is nothing to set.
  """
  platform = platform or jax.default_backend()
  if ynn_fusion_type and platform == "cpu":
    return {"xla_cpu_experimental_ynn_fusion_type": ynn_fusion_type}
  return None
