"""Key map of T2ICount's HSCM decoder (official ``Count.decoder``).

The official checkpoint is a plain ``state_dict`` of ``Count``; the decoder
lives under ``decoder.`` (``decoder.upsample{1,2,3}.*``,
``decoder.regressor.*``), 168 tensors. Flax names
(``counting_jax.models.t2icount_decoder``) follow the official tree with
``conv1.0`` -> ``conv1``, ``mlp.net.0.0`` / ``mlp.net.2`` -> ``mlp_fc1`` /
``mlp_fc2``, ``reg_head.N`` -> ``reg_head_N``; depthwise positional convs
(C, 1, 3, 3) become Flax kernels (3, 3, 1, C) with ``feature_group_count
= C``; LayerNorm ``weight`` -> ``scale``.
"""

from __future__ import annotations

from counting_jax.convert import torch as tc

__all__ = ["hscm_decoder_rules", "layer_norm_rules"]


def layer_norm_rules(source: str, target) -> list[tc.Rule]:
  """Rules for ``nn.LayerNorm`` ``source`` -> Flax ``nn.LayerNorm``."""
  return [tc.Rule(f"{source}.weight", ("params", *target, "scale")),
          tc.Rule(f"{source}.bias", ("params", *target, "bias"))]


def _attention(source: str, target) -> list[tc.Rule]:
  rules = []
  for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
    rules += tc.linear_rules(f"{source}.{p}", (*target, p))
  return rules


def _fusion(source: str, target) -> list[tc.Rule]:
  rules = tc.conv_rules(f"{source}.img_pe_transform",
                        (*target, "img_pe_transform"), bias=True)
  rules += _attention(f"{source}.txt2img", (*target, "txt2img"))
  rules += _attention(f"{source}.img2txt", (*target, "img2txt"))
  for n in ("norm1", "norm2", "norm3"):
    rules += layer_norm_rules(f"{source}.{n}", (*target, n))
  rules += tc.linear_rules(f"{source}.mlp.net.0.0", (*target, "mlp_fc1"))
  rules += tc.linear_rules(f"{source}.mlp.net.2", (*target, "mlp_fc2"))
  return rules


def hscm_decoder_rules(source: str = "decoder.",
                       target: tuple[str, ...] = ()) -> list[tc.Rule]:
  """Rules from official decoder keys (prefix ``source``; ``""`` for a
  bare ``Decoder`` state_dict) to :class:`HSCMDecoder` params under
  ``target`` (a submodule path, e.g. ``("decoder",)``)."""
  rules = []
  for level in ("upsample1", "upsample2", "upsample3"):
    convs = ("conv1", "conv2") + (("conv3",) if level != "upsample3" else ())
    for conv in convs:
      rules += tc.conv_rules(f"{level}.{conv}.0", (level, conv), bias=True)
    if level == "upsample3":
      continue
    rules += tc.linear_rules(f"{level}.text_conv", (level, "text_conv"))
    rules += layer_norm_rules(f"{level}.norm1", (level, "norm1"))
    for f in ("img_txt_fusion1", "img_txt_fusion2"):
      rules += _fusion(f"{level}.{f}", (level, f))
  reg = "regressor"
  rules += tc.conv_rules(f"{reg}.conv.0", (reg, "conv"), bias=True)
  for i in (1, 2):
    rules += tc.conv_rules(f"{reg}.img_pe_transform{i}",
                           (reg, f"img_pe_transform{i}"), bias=True)
    rules += _attention(f"{reg}.self_attn{i}", (reg, f"self_attn{i}"))
    rules += layer_norm_rules(f"{reg}.norm{i}", (reg, f"norm{i}"))
  for i in (0, 2, 4):
    rules += tc.conv_rules(f"{reg}.reg_head.{i}", (reg, f"reg_head_{i}"),
                           bias=True)
  return tc.prefixed(rules, source, target)
