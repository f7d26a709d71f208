"""Key maps of HRNet: official HRNet-Image-Classification / timm, PML-HRNet.

Official names (``cls_hrnet.py``, hence ``hrnetv2_w48_imagenet_pretrained.pth``
and timm ``hrnet_w48``, which copies the official key names):
stem ``conv1``, ``bn1``, ``conv2``, ``bn2``; ``layer1.{k}`` Bottlenecks;
``transition{t}.{i}.{0,1}`` (conv, BN) for a branch whose width changes and
``transition{t}.{i}.{j}.{0,1}`` for the stride-2 chain of a new branch;
``stage{s}.{m}.branches.{b}.{k}.{conv,bn}{1,2}``;
``stage{s}.{m}.fuse_layers.{i}.{j}.{0,1}`` (j > i) and
``stage{s}.{m}.fuse_layers.{i}.{j}.{k}.{0,1}`` (j < i). The classification
head (``incre_modules``, ``downsamp_modules``, ``final_layer``,
``classifier``) is ignored. PML prefixes the backbone with
``encoder.encoder.`` and adds ``encoder.fuse_layer.fuse_layers.0.{conv_small,
conv_large, fuse.0, fuse.1}``, ``encoder.fuse_layer.post_process.{0,1}`` and
``decoders.{0.0,1.0,2}``.
"""

from __future__ import annotations

from typing import Sequence

from counting_jax.convert import torch as tc
from counting_jax.convert.resnet_keys import bottleneck_rules

__all__ = ["hrnet_rules", "hrnet_backbone", "pml_hrnet"]

_IMAGENET_HEAD = ("incre_modules.", "downsamp_modules.", "final_layer.",
                  "classifier.")


def _conv_bn(source: str, target: tuple[str, ...]) -> list[tc.Rule]:
  return (tc.conv_rules(f"{source}.0", (*target, "conv"), bias=False) +
          tc.bn_rules(f"{source}.1", (*target, "bn")))


def hrnet_rules(widths: Sequence[int], *, layer1_planes: int = 64,
                layer1_blocks: int = 4, stage_modules=(1, 4, 3),
                num_blocks: int = 4, **unused) -> list[tc.Rule]:
  """Rules for an HRNet backbone with these (``HRNet``) attributes."""
  del unused  # stem width/strides, fuse_upsample, momentum: no keys.
  rules = []
  for n in (1, 2):
    rules += tc.conv_rules(f"conv{n}", (f"conv{n}",), bias=False)
    rules += tc.bn_rules(f"bn{n}", (f"bn{n}",))
  for k in range(layer1_blocks):
    rules += bottleneck_rules(f"layer1.{k}", (f"layer1_{k}",), project=k == 0)
  previous = [4 * layer1_planes]
  for stage, modules in zip((2, 3, 4), stage_modules):
    current, t = list(widths[:stage]), stage - 1
    for i, width in enumerate(current):
      if i < len(previous):
        if width != previous[i]:
          rules += _conv_bn(f"transition{t}.{i}", (f"transition{t}_{i}",))
      else:
        for j in range(i + 1 - len(previous)):
          rules += _conv_bn(f"transition{t}.{i}.{j}",
                            (f"transition{t}_{i}_{j}",))
    for m in range(modules):
      source, target = f"stage{stage}.{m}", f"stage{stage}_{m}"
      for b in range(stage):
        for k in range(num_blocks):
          for n in (1, 2):
            rules += tc.conv_rules(f"{source}.branches.{b}.{k}.conv{n}",
                                   (target, f"branches_{b}_{k}", f"conv{n}"),
                                   bias=False)
            rules += tc.bn_rules(f"{source}.branches.{b}.{k}.bn{n}",
                                 (target, f"branches_{b}_{k}", f"bn{n}"))
      for i in range(stage):
        for j in range(stage):
          if j > i:
            rules += _conv_bn(f"{source}.fuse_layers.{i}.{j}",
                              (target, f"fuse_{i}_{j}"))
          for k in range(i - j):
            rules += _conv_bn(f"{source}.fuse_layers.{i}.{j}.{k}",
                              (target, f"fuse_{i}_{j}_{k}"))
    previous = current
  return rules


def _attributes(model) -> dict:
  names = ("layer1_planes", "layer1_blocks", "stage_modules", "num_blocks")
  return {n: getattr(model, n) for n in names}


def hrnet_backbone(model):
  """Official / timm ImageNet HRNet -> :class:`HRNet` (head ignored)."""
  return hrnet_rules(model.widths, **_attributes(model)), _IMAGENET_HEAD


def pml_hrnet(model):
  """PML ``Counter('hrnet_w48')`` -> :class:`PMLHRNet`."""
  rules = tc.prefixed(hrnet_rules(model.widths, **dict(model.hrnet)),
                      source="encoder.encoder.", target=("backbone",))
  fuse = "encoder.fuse_layer."
  for source, target in (("conv_small", "conv_small"),
                         ("conv_large", "conv_large"),
                         ("fuse.0", "fuse_conv")):
    rules += tc.conv_rules(f"{fuse}fuse_layers.0.{source}", ("fuse", target),
                           bias=False)
  rules += tc.bn_rules(f"{fuse}fuse_layers.0.fuse.1", ("fuse", "fuse_bn"))
  rules += tc.conv_rules(f"{fuse}post_process.0", ("fuse", "post_conv"),
                         bias=False)
  rules += tc.bn_rules(f"{fuse}post_process.1", ("fuse", "post_bn"))
  for source, target in (("decoders.0.0", "conv1"), ("decoders.1.0", "conv2"),
                         ("decoders.2", "out")):
    rules += tc.conv_rules(source, ("decoder", target), bias=True)
  return rules, ()
