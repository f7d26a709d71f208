"""T2ICount (Qian et al., CVPR 2025): text-guided zero-shot counting.

Model: ``counting_jax.models.t2icount.T2ICount`` (frozen SD-1.5 VAE encoder
and CLIP text encoder, trainable UNet and HSCM decoder). Batches carry
``image`` (normalised to [-1, 1]: ``input.mean = input.std = 0.5``),
``tokens`` int32 [B, 77] (CLIP ids of the raw class name, no template;
``predict --text``) and the host-side targets of
``counting_jax.data.t2icount.add_targets`` (``gt_density`` x60 at stride 8,
``region``). Loss: ``counting_jax.losses.t2icount_loss`` (L_reg + 0.01
L_RRC per level, as the official trainer). Density: the model's map / 60.

Parameter groups (``param_labels``): ``vae`` and ``clip`` (frozen in the
official recipe: ``optim.groups.vae.frozen = True``), ``unet`` (AdamW lr
5e-6, wd 5e-6 officially: 0.1 x the decoder's lr and weight decay, set as
``optim.groups.unet.lr`` / ``.weight_decay``) and ``decoder`` (lr 5e-5, wd
5e-5).

Training samples (``counting_jax.data.t2icount.official_mix``, the
pipeline's ``mix`` hook): the plain image, a negative prompt (another
training image's class, GT 0, R 0) or a mosaic of four 224² tiles, with
the official probabilities 0.5 / 0.25 / 0.25, the GT density the
full-image map moved with the pixels.

Config fields read: ``model.kwargs`` (``size``: "sd15" or "tiny";
``decoder_dims``, ``decoder_heads``, ``timestep``), ``compute_dtype``,
``loss.kwargs`` (``t2icount_loss`` options), ``method.negative_prob``
(0.25), ``method.mosaic_prob`` (0.25; both 0: plain images only),
``method.mosaic_tile`` (224), ``method.target_density`` ("image": the
official full-image map moved with the pixels; "points": rebuilt from the
final crop's points).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from counting_jax.data import t2icount as t2i_data
from counting_jax.losses import _t2icount as t2i_loss
from counting_jax.methods import base
from counting_jax.models import t2icount as t2i_model
from counting_jax.models.stable_diffusion import (CLIPTextConfig, UNetConfig,
                                                  VAEConfig)
from counting_jax.text import clip_tokenizer

__all__ = ["build", "build_model", "param_labels", "GROUPS"]

GROUPS = ("vae", "clip", "unet", "decoder")


def build_model(size: str = "sd15", *, dtype=jnp.float32, **kwargs):
  """A :class:`~counting_jax.models.t2icount.T2ICount` of ``size``
  ("sd15": SD-1.5 + CLIP ViT-L/14; "tiny": small random-weight parts of
  the same structure, with the full CLIP vocabulary so real prompts run).

  Raises:
    ValueError: for another ``size``.
  """
  if size == "sd15":
    vae, unet, clip = (VAEConfig.sd15(), UNetConfig.sd15(),
                       CLIPTextConfig.clip_vit_l14())
  elif size == "tiny":
    unet = UNetConfig.tiny()
    vae = VAEConfig.tiny()
    clip = CLIPTextConfig(vocab_size=49408, hidden_size=24, num_layers=1,
                          num_heads=2, intermediate_size=48)
    if unet.cross_attention_dim != clip.hidden_size:
      unet = dataclasses.replace(unet, cross_attention_dim=clip.hidden_size)
    kwargs.setdefault("decoder_dims", (32, 16, 16))
    kwargs.setdefault("decoder_heads", 2)
  else:
    raise ValueError(f"model.kwargs.size must be 'sd15' or 'tiny', got "
                     f"{size!r}")
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in kwargs.items()}
  return t2i_model.T2ICount(vae=vae, unet=unet, clip=clip, dtype=dtype,
                            **kwargs)


def param_labels(params):
  """The group of every parameter: its top-level module (``vae``, ``clip``,
  ``unet``, ``decoder``).

  Raises:
    ValueError: for a parameter outside these modules.
  """
  def label(path, _):
    top = getattr(path[0], "key", str(path[0]))
    if top not in GROUPS:
      raise ValueError(f"T2ICount parameter {jax.tree_util.keystr(path)} is "
                       f"outside the groups {GROUPS}")
    return top
  return jax.tree_util.tree_map_with_path(label, params)


def _density(outputs):
  return outputs["density"] / t2i_data.DENSITY_SCALE


def _loss(outputs, batch, *, loss_kwargs):
  if "fused_attention" not in outputs:
    raise KeyError("T2ICount loss needs the model's train=True outputs "
                   "(fused_attention)")
  for key in ("gt_density", "region"):
    if key not in batch:
      raise KeyError(f"T2ICount loss needs batch[{key!r}] (the "
                     "counting_jax.data.t2icount.add_targets hook)")
  return t2i_loss.t2icount_loss(
      outputs["density"], outputs["sim_x2"], outputs["sim_x1"],
      batch["gt_density"], outputs["fused_attention"], batch["region"],
      **loss_kwargs)


def build(config) -> base.Method:
  """The T2ICount :class:`~counting_jax.methods.base.Method`."""
  kwargs = dict(config.model.kwargs)
  size = kwargs.pop("size", "sd15")
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  model = build_model(size, dtype=dtype, **kwargs)
  loss_kwargs = dict(config.loss.get("kwargs", {}))
  m = config.method
  mix_kwargs = dict(negative_prob=float(m.get("negative_prob", 0.25)),
                    mosaic_prob=float(m.get("mosaic_prob", 0.25)),
                    tile=int(m.get("mosaic_tile", 224)),
                    density=str(m.get("target_density", "image")))
  # Checked here, not first in an input worker.
  t2i_data.official_mix(None, None, None, check_only=True, **mix_kwargs)
  return base.Method(
      name="t2icount", model=model,
      loss=functools.partial(_loss, loss_kwargs=loss_kwargs),
      density=_density, inputs=("image", "tokens"),
      fields=base.BatchFields(tokenize=clip_tokenizer.encode,
                              after_augment=t2i_data.add_targets,
                              mix=functools.partial(t2i_data.official_mix,
                                                    **mix_kwargs)),
      param_labels=param_labels)
