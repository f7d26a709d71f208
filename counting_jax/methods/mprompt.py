"""mPrompt: regressor-segmenter mutual prompt learning (Guo et al., CVPR 2024).

One network (``counting_jax.models.mprompt``, HRNet-W40 with a stride-1
second stem conv) predicts a density map y_hat and a segmentation map m_hat
at the full input resolution (stride 1); the segmenter's attention gates the
regressor. Targets are built on the host (``mprompt_targets``: the official
resize rule, density of 15 x 15 Gaussians of sigma 4, the offline prompt m
and the K-NN context mask m_K, stacked in ``batch["masks"]``); the loss
(``mprompt_loss``) adds the density, count, segmentation and context terms,
with the online prompt ``m <- (m | B(y_hat)) & m_K`` from epoch kappa (the
trainer passes ``batch["epoch"]``). Counts and localization read
``outputs["density"]`` (count units, stride 1).

Config fields read (``config.method``): ``name`` = "mprompt",
``resize_rule`` ("sha", "none", "large"; ``mprompt_targets.resize_shape``),
``prompt`` ("points" released, "boxes" paper's head-box pseudo masks,
"file"), ``knn_k`` (3), ``sigma`` (4.0), ``loss_weights`` ("code" = all 1
with the count term, or "paper" = eq. 4's 1 / 0.5 / 0.5 without it),
``context`` ("iou" official, no gradient; "soft" differentiable),
``online_after`` (kappa = 50 epochs; None: never). Also ``model.name``
(``mprompt_hrnet_w40``, ``mprompt_tiny``), ``model.kwargs``,
``compute_dtype``.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from counting_jax import models as models_lib
from counting_jax.methods import base
from counting_jax.methods import mprompt_loss
from counting_jax.methods import mprompt_targets

__all__ = ["build", "density", "DEFAULTS"]

# config.method fields and their defaults (the released code's choices).
DEFAULTS = dict(resize_rule="sha", prompt="points", knn_k=3, sigma=4.0,
                loss_weights="code", context="iou", online_after=50)


def density(outputs):
  """y_hat float32 [B, H, W], count units (stride 1)."""
  return outputs["density"]


def build(config) -> base.Method:
  """The mPrompt :class:`~counting_jax.methods.base.Method` of ``config``.

  Raises:
    ValueError: for an unknown model, resize rule, prompt, loss weights
      preset, context term or compute dtype.
  """
  opts = dict(DEFAULTS)
  opts.update({k: v for k, v in dict(config.method).items() if k != "name"})
  unknown = sorted(set(opts) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"unknown config.method fields {unknown} for mprompt; "
                     f"valid: {sorted(DEFAULTS)}")
  if opts["resize_rule"] not in mprompt_targets.RESIZE_RULES:
    raise ValueError(f"config.method.resize_rule must be one of "
                     f"{mprompt_targets.RESIZE_RULES}, got "
                     f"{opts['resize_rule']!r}")
  if opts["prompt"] not in ("points", "boxes", "file"):
    raise ValueError(f"config.method.prompt must be 'points', 'boxes' or "
                     f"'file', got {opts['prompt']!r}")
  if opts["loss_weights"] not in mprompt_loss.WEIGHTS:
    raise ValueError(f"config.method.loss_weights must be one of "
                     f"{sorted(mprompt_loss.WEIGHTS)}, got "
                     f"{opts['loss_weights']!r}")
  if opts["context"] not in mprompt_loss.CONTEXT_TERMS:
    raise ValueError(f"config.method.context must be one of "
                     f"{mprompt_loss.CONTEXT_TERMS}, got {opts['context']!r}")
  if config.model.name not in ("mprompt_hrnet_w40", "mprompt_tiny"):
    raise ValueError(f"mprompt needs model.name 'mprompt_hrnet_w40' (or the "
                     f"test-only 'mprompt_tiny'), got {config.model.name!r}")
  kwargs = dict(config.model.kwargs)
  if config.compute_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got "
                     f"{config.compute_dtype!r}")
  if config.compute_dtype != "float32":
    kwargs["dtype"] = jnp.dtype(config.compute_dtype)
  model = models_lib.get_model(config.model.name, **kwargs)
  online = opts["online_after"]
  return base.Method(
      name="mprompt", model=model,
      loss=functools.partial(
          mprompt_loss.mprompt_loss,
          weights=mprompt_loss.WEIGHTS[opts["loss_weights"]],
          context=opts["context"],
          online_after=None if online is None else int(online)),
      density=density,
      fields=base.BatchFields(before_augment=functools.partial(
          mprompt_targets.add_targets, rule=opts["resize_rule"],
          prompt=opts["prompt"], k=int(opts["knn_k"]),
          sigma=float(opts["sigma"]))))
