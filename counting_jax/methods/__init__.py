"""Counting methods: what each paper supplies to the one trainer.

Each module here is one method and has one ``build(config) -> Method``
(``counting_jax.methods.base.Method``: model, batch fields, loss on (model
outputs, batch), the density used for counting, parameter groups, hooks).
``config.method.name`` picks one (default ``"density"``):

================== ==========================================================
name               method
================== ==========================================================
density            image -> density map; a point loss of
                   ``counting_jax.losses`` (cells, BL, DM-Count, GL, PML)
exemplar_similarity image + exemplar boxes -> similarity -> density (a small
                   class-agnostic counter)
mprompt            image -> density + segmentation (HRNet-W40); mutual
                   prompt learning (Guo et al., CVPR 2024)
seg_then_count     Seg-then-Count (WACV 2025): ResNet-50 base counter, then
                   an exemplar segmenter trained on K-means pseudo masks
                   masks the similarity map (``method.stage``)
t2icount           image + text prompt -> density (T2ICount: one SD-1.5 UNet
                   step and the HSCM decoder)
================== ==========================================================
"""

from __future__ import annotations

from counting_jax.methods import density
from counting_jax.methods import exemplar_similarity
from counting_jax.methods import mprompt
from counting_jax.methods import seg_then_count
from counting_jax.methods import t2icount
from counting_jax.methods.base import BatchFields, Method, USER_INPUTS

METHODS = {
    "density": density.build,
    "exemplar_similarity": exemplar_similarity.build,
    "mprompt": mprompt.build,
    "seg_then_count": seg_then_count.build,
    "t2icount": t2icount.build,
}

__all__ = ["METHODS", "Method", "BatchFields", "USER_INPUTS", "build",
           "method_name"]


def method_name(config) -> str:
  """``config.method.name``, or ``"density"`` for configs without one."""
  method = config.get("method")
  return "density" if method is None else str(method.name)


def build(config) -> Method:
  """The :class:`Method` of ``config`` (``config.method.name``).

  Raises:
    ValueError: for an unknown method name (listing the valid ones).
  """
  name = method_name(config)
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r} (config.method.name); valid: "
                     f"{sorted(METHODS)}")
  return METHODS[name](config)
