"""Key maps of the Stable Diffusion 1.5 feature extractor (VAE encoder, UNet,
CLIP text encoder) in three layouts.

* diffusers (``vae/`` and ``unet/diffusion_pytorch_model.safetensors``):
  ``encoder.down_blocks.0.resnets.0.norm1.weight`` is the Flax path
  ``encoder/down_blocks_0/resnets_0/norm1/scale`` (indices joined by ``_``).
  The deprecated VAE attention names (``query``, ``key``, ``value``,
  ``proj_attn``, found in older SD-1.5 files) are accepted too.
* transformers (``text_encoder/model.safetensors``, or a whole ``CLIPModel``
  whose vision tower is ignored): ``text_model.encoder.layers.0.mlp.fc1`` is
  ``encoder/layers_0/mlp/fc1`` (the ``text_model.`` prefix is optional).
* ldm single-file checkpoints (SD-1.5 ``v1-5-pruned-emaonly``; T2ICount's
  ``Count`` state_dict): :func:`split_ldm` separates the parts by prefix
  (UNet ``model.diffusion_model.`` or ``unet.unet.diffusion_model.``; VAE
  ``first_stage_model.`` or ``vae.``; CLIP ``cond_stage_model.transformer.``
  or ``clip.transformer.``; T2ICount's counting head ``decoder.``, returned
  untouched). ldm UNet names: ``time_embed.{0,2}``,
  ``input_blocks.{i}.{0: ResBlock, 1: SpatialTransformer}`` and
  ``input_blocks.{i}.0.op`` (downsampler), ``middle_block.{0,1,2}``,
  ``output_blocks.{i}.{0, 1, 1|2 (upsampler .conv)}``, ResBlock
  ``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}``,
  ``skip_connection``; the transformer internals are named as in diffusers.
  ldm VAE: ``encoder.down.{b}.block.{l}`` (``nin_shortcut``),
  ``encoder.down.{b}.downsample.conv``, ``encoder.mid.{block_1, attn_1,
  block_2}`` with attention 1x1 convs ``q``/``k``/``v``/``proj_out`` and
  ``norm``, ``encoder.norm_out``.

Only the parts the models have are read: the VAE decoder, ``post_quant_conv``,
the UNet after its last tap (``conv_norm_out``, ``conv_out``, later output
blocks) and the diffusion schedule buffers are ignored.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from counting_jax.convert import torch as tc
from counting_jax.models.stable_diffusion.config import CLIPTextConfig
from counting_jax.models.stable_diffusion.config import UNetConfig
from counting_jax.models.stable_diffusion.config import VAEConfig

__all__ = ["vae_rules", "unet_rules", "clip_rules", "normalise_vae",
           "normalise_clip", "split_ldm", "LDM_PREFIXES", "LDM_BUFFERS"]

# (part, checkpoint prefix), tried in this order.
LDM_PREFIXES = (
    ("unet", "model.diffusion_model."),
    ("unet", "unet.unet.diffusion_model."),
    ("vae", "first_stage_model."),
    ("vae", "vae."),
    ("clip", "cond_stage_model.transformer."),
    ("clip", "clip.transformer."),
    ("decoder", "decoder."),
)
# Diffusion-schedule buffers and EMA bookkeeping of ldm checkpoints.
LDM_BUFFERS = frozenset((
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar",
    "model_ema.decay", "model_ema.num_updates"))


def _norm(source: str, target) -> list[tc.Rule]:
  return [tc.Rule(f"{source}.weight", ("params", *target, "scale")),
          tc.Rule(f"{source}.bias", ("params", *target, "bias"))]


def _linear(source: str, target, bias: bool = True) -> list[tc.Rule]:
  rules = [tc.Rule(f"{source}.weight", ("params", *target, "kernel"),
                   "linear")]
  if bias:
    rules.append(tc.Rule(f"{source}.bias", ("params", *target, "bias")))
  return rules


def _conv(source: str, target) -> list[tc.Rule]:
  return tc.conv_rules(source, target, bias=True)


def _resnet(source: str, target, *, shortcut: bool, temb: bool,
            ldm: bool = False, vae: bool = False) -> list[tc.Rule]:
  if ldm and not vae:
    names = {"norm1": "in_layers.0", "conv1": "in_layers.2",
             "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
             "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
  else:
    names = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj":
             "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
             "conv_shortcut": "nin_shortcut" if ldm else "conv_shortcut"}
  s = lambda n: f"{source}.{names[n]}"
  t = lambda n: (*target, n)
  rules = _norm(s("norm1"), t("norm1")) + _conv(s("conv1"), t("conv1"))
  if temb:
    rules += _linear(s("time_emb_proj"), t("time_emb_proj"))
  rules += _norm(s("norm2"), t("norm2")) + _conv(s("conv2"), t("conv2"))
  if shortcut:
    rules += _conv(s("conv_shortcut"), t("conv_shortcut"))
  return rules


def _transformer(source: str, target) -> list[tc.Rule]:
  """SpatialTransformer / Transformer2DModel (same names in both layouts)."""
  rules = _norm(f"{source}.norm", (*target, "norm"))
  rules += _conv(f"{source}.proj_in", (*target, "proj_in"))
  rules += _conv(f"{source}.proj_out", (*target, "proj_out"))
  bs, bt = f"{source}.transformer_blocks.0", (*target, "transformer_blocks_0")
  for n in ("norm1", "norm2", "norm3"):
    rules += _norm(f"{bs}.{n}", (*bt, n))
  for a in ("attn1", "attn2"):
    for p in ("to_q", "to_k", "to_v"):
      rules += _linear(f"{bs}.{a}.{p}", (*bt, a, p), bias=False)
    rules += _linear(f"{bs}.{a}.to_out.0", (*bt, a, "to_out_0"))
  rules += _linear(f"{bs}.ff.net.0.proj", (*bt, "ff", "net_0", "proj"))
  rules += _linear(f"{bs}.ff.net.2", (*bt, "ff", "net_2"))
  return rules


def unet_rules(config: UNetConfig, layout: str = "diffusers"):
  """(rules, ignored prefixes) of :class:`UNet` for a ``'diffusers'`` or an
  ``'ldm'`` UNet state_dict (ldm keys without ``model.diffusion_model.``).

  Raises:
    ValueError: for an unknown layout.
  """
  if layout not in ("diffusers", "ldm"):
    raise ValueError(f"unet_rules: layout must be 'diffusers' or 'ldm', got "
                     f"{layout!r}")
  ldm = layout == "ldm"
  chans, n = config.block_out_channels, len(config.block_out_channels)
  per = config.layers_per_block + 1
  rules = _conv("input_blocks.0.0" if ldm else "conv_in", ("conv_in",))
  for k in (1, 2):
    rules += _linear(f"time_embed.{2 * (k - 1)}" if ldm else
                     f"time_embedding.linear_{k}",
                     ("time_embedding", f"linear_{k}"))
  width = chans[0]
  skip_widths = [width]
  for b in range(n):
    t = f"down_blocks_{b}"
    for j in range(config.layers_per_block):
      i = 1 + b * per + j
      src = f"input_blocks.{i}" if ldm else f"down_blocks.{b}"
      rules += _resnet(f"{src}.0" if ldm else f"{src}.resnets.{j}",
                       (t, f"resnets_{j}"), shortcut=width != chans[b],
                       temb=True, ldm=ldm)
      width = chans[b]
      if config.attention[b]:
        rules += _transformer(f"{src}.1" if ldm else f"{src}.attentions.{j}",
                              (t, f"attentions_{j}"))
      skip_widths.append(width)
    if b < n - 1:
      rules += _conv(f"input_blocks.{(b + 1) * per}.0.op" if ldm else
                     f"down_blocks.{b}.downsamplers.0.conv",
                     (t, "downsamplers_0", "conv"))
      skip_widths.append(width)
  for j, name in enumerate(("resnets_0", "attentions_0", "resnets_1")):
    src = f"middle_block.{j}" if ldm else f"mid_block.{name.replace('_', '.')}"
    if name.startswith("resnets"):
      rules += _resnet(src, ("mid_block", name), shortcut=False, temb=True,
                       ldm=ldm)
    else:
      rules += _transformer(src, ("mid_block", name))
  for i in range(config.last_layer + 1):
    b, j = divmod(i, per)
    c, attn = chans[n - 1 - b], config.attention[n - 1 - b]
    t = f"up_blocks_{b}"
    src = f"output_blocks.{i}" if ldm else f"up_blocks.{b}"
    rules += _resnet(f"{src}.0" if ldm else f"{src}.resnets.{j}",
                     (t, f"resnets_{j}"),
                     shortcut=width + skip_widths.pop() != c, temb=True,
                     ldm=ldm)
    width = c
    if attn:
      rules += _transformer(f"{src}.1" if ldm else f"{src}.attentions.{j}",
                            (t, f"attentions_{j}"))
    if j == per - 1 and b < n - 1:
      rules += _conv(f"{src}.{2 if attn else 1}.conv" if ldm else
                     f"{src}.upsamplers.0.conv", (t, "upsamplers_0", "conv"))
  # Everything after the last tap.
  ignore = ["out.", "conv_norm_out.", "conv_out."] if not ldm else ["out."]
  total = n * per
  for i in range(config.last_layer + 1, total):
    b, j = divmod(i, per)
    if ldm:
      ignore.append(f"output_blocks.{i}.")
    else:
      ignore += [f"up_blocks.{b}.resnets.{j}.", f"up_blocks.{b}.attentions.{j}.",
                 f"up_blocks.{b}.upsamplers."]
  if config.last_layer % per != per - 1:  # stopped inside a block.
    b = config.last_layer // per
    if not ldm:
      ignore.append(f"up_blocks.{b}.upsamplers.")
  return rules, tuple(ignore)


def vae_rules(config: VAEConfig, layout: str = "diffusers"):
  """(rules, ignored prefixes) of :class:`VAEEncoder` for a
  ``'diffusers'`` ``AutoencoderKL`` or an ``'ldm'`` first-stage state_dict
  (keys without ``first_stage_model.``; attention 1x1 conv weights squeezed
  by :func:`normalise_vae`).

  Raises:
    ValueError: for an unknown layout.
  """
  if layout not in ("diffusers", "ldm"):
    raise ValueError(f"vae_rules: layout must be 'diffusers' or 'ldm', got "
                     f"{layout!r}")
  ldm = layout == "ldm"
  chans, n = config.block_out_channels, len(config.block_out_channels)
  e = ("encoder",)
  rules = _conv("encoder.conv_in", (*e, "conv_in"))
  width = chans[0]
  for b in range(n):
    t = (*e, f"down_blocks_{b}")
    for j in range(config.layers_per_block):
      src = (f"encoder.down.{b}.block.{j}" if ldm else
             f"encoder.down_blocks.{b}.resnets.{j}")
      rules += _resnet(src, (*t, f"resnets_{j}"), shortcut=width != chans[b],
                       temb=False, ldm=ldm, vae=True)
      width = chans[b]
    if b < n - 1:
      rules += _conv(f"encoder.down.{b}.downsample.conv" if ldm else
                     f"encoder.down_blocks.{b}.downsamplers.0.conv",
                     (*t, "downsamplers_0", "conv"))
  m = (*e, "mid_block")
  for j in (0, 1):
    rules += _resnet(f"encoder.mid.block_{j + 1}" if ldm else
                     f"encoder.mid_block.resnets.{j}", (*m, f"resnets_{j}"),
                     shortcut=False, temb=False, ldm=ldm, vae=True)
  a = (*m, "attentions_0")
  src = "encoder.mid.attn_1" if ldm else "encoder.mid_block.attentions.0"
  names = ({"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
            "to_out_0": "proj_out"} if ldm else
           {"group_norm": "group_norm", "to_q": "to_q", "to_k": "to_k",
            "to_v": "to_v", "to_out_0": "to_out.0"})
  rules += _norm(f"{src}.{names['group_norm']}", (*a, "group_norm"))
  for p in ("to_q", "to_k", "to_v", "to_out_0"):
    rules += _linear(f"{src}.{names[p]}", (*a, p))
  rules += _norm("encoder.norm_out" if ldm else "encoder.conv_norm_out",
                 (*e, "conv_norm_out"))
  rules += _conv("encoder.conv_out", (*e, "conv_out"))
  rules += _conv("quant_conv", ("quant_conv",))
  return rules, ("decoder.", "post_quant_conv.")


def clip_rules(config: CLIPTextConfig):
  """(rules, ignored prefixes) of :class:`CLIPTextEncoder` for a
  transformers ``CLIPTextModel`` state_dict normalised by
  :func:`normalise_clip` (no ``text_model.`` prefix)."""
  rules = [tc.Rule(f"embeddings.{n}.weight",
                   ("params", "embeddings", n, "embedding"))
           for n in ("token_embedding", "position_embedding")]
  rules.append(tc.Rule("embeddings.position_ids", None, optional=True))
  for i in range(config.num_layers):
    s, t = f"encoder.layers.{i}", ("encoder", f"layers_{i}")
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
      rules += _linear(f"{s}.self_attn.{p}", (*t, "self_attn", p))
    for n in ("layer_norm1", "layer_norm2"):
      rules += _norm(f"{s}.{n}", (*t, n))
    for f in ("fc1", "fc2"):
      rules += _linear(f"{s}.mlp.{f}", (*t, "mlp", f))
  rules += _norm("final_layer_norm", ("final_layer_norm",))
  # A whole CLIPModel: the vision tower and projections are not used.
  return rules, ("vision_model.", "visual_projection.", "text_projection.",
                 "logit_scale")


_OLD_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v",
                      "proj_attn": "to_out.0"}


def normalise_vae(state_dict: Mapping[str, np.ndarray]) -> dict:
  """A VAE state_dict with deprecated diffusers attention names renamed
  (``query`` -> ``to_q``, ..., ``proj_attn`` -> ``to_out.0``) and ldm 1x1
  attention conv weights [C, C, 1, 1] squeezed to linear [C, C]."""
  out = {}
  for key, value in state_dict.items():
    parts = key.split(".")
    if ".attentions." in key and len(parts) > 1 and (
        parts[-2] in _OLD_VAE_ATTENTION):
      parts[-2] = _OLD_VAE_ATTENTION[parts[-2]]
      key = ".".join(parts)
    if (".mid.attn_1." in key and parts[-2] in ("q", "k", "v", "proj_out")
        and parts[-1] == "weight" and np.ndim(value) == 4):
      value = np.asarray(value)[:, :, 0, 0]
    elif (".attentions." in key and parts[-1] == "weight" and
          np.ndim(value) == 4 and value.shape[2:] == (1, 1) and
          parts[-2] in ("to_q", "to_k", "to_v", "0")):
      value = np.asarray(value)[:, :, 0, 0]
    out[key] = value
  return out


def normalise_clip(state_dict: Mapping[str, np.ndarray]) -> dict:
  """A CLIP text state_dict without the ``text_model.`` prefix."""
  return {k[len("text_model."):] if k.startswith("text_model.") else k: v
          for k, v in state_dict.items()}


def split_ldm(state_dict: Mapping[str, np.ndarray]):
  """Splits an ldm single-file checkpoint into its parts.

  Returns:
    ``(parts, unknown)``: parts {"unet", "vae", "clip", "decoder"} ->
    {key without the part's prefix: array} (``decoder`` keeps its keys
    whole, e.g. ``decoder.upsample1.conv1.0.weight``: T2ICount's counting
    head, converted elsewhere), and the sorted list of keys that belong to
    no part and are not ldm schedule/EMA buffers (:data:`LDM_BUFFERS`).
  """
  parts = {"unet": {}, "vae": {}, "clip": {}, "decoder": {}}
  unknown = []
  for key, value in state_dict.items():
    for part, prefix in LDM_PREFIXES:
      if key.startswith(prefix):
        name = key if part == "decoder" else key[len(prefix):]
        parts[part][name] = value
        break
    else:
      last = key.rsplit(".", 1)[-1]
      if key not in LDM_BUFFERS and last not in LDM_BUFFERS:
        unknown.append(key)
  return parts, sorted(unknown)
