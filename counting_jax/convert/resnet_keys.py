"""Key map of torchvision ResNet (Bottleneck) -> :class:`ResNet`.

torchvision names: ``conv1``, ``bn1``, ``layer{l}.{k}.conv{1,2,3}``,
``layer{l}.{k}.bn{1,2,3}``, ``layer{l}.0.downsample.{0,1}`` (1x1 conv, BN),
``fc.*`` (torchvision ``resnet.py``; the stride of a Bottleneck sits on its
3x3 ``conv2``). The classifier, and the layers after ``model.num_layers``,
are ignored.
"""

from __future__ import annotations

from counting_jax.convert import torch as tc

__all__ = ["bottleneck_rules", "resnet_backbone"]


def bottleneck_rules(source: str, target: tuple[str, ...], *,
                     project: bool) -> list[tc.Rule]:
  """One torchvision Bottleneck at ``source`` -> Flax ``Bottleneck`` ``target``."""
  rules = []
  for n in (1, 2, 3):
    rules += tc.conv_rules(f"{source}.conv{n}", (*target, f"conv{n}"),
                           bias=False)
    rules += tc.bn_rules(f"{source}.bn{n}", (*target, f"bn{n}"))
  if project:
    rules += tc.conv_rules(f"{source}.downsample.0",
                           (*target, "downsample_conv"), bias=False)
    rules += tc.bn_rules(f"{source}.downsample.1", (*target, "downsample_bn"))
  return rules


def resnet_backbone(model):
  """torchvision ``resnet50`` ImageNet weights -> :class:`ResNet`."""
  rules = tc.conv_rules("conv1", ("conv1",), bias=False)
  rules += tc.bn_rules("bn1", ("bn1",))
  for layer in range(model.num_layers):
    for k in range(model.stage_sizes[layer]):
      rules += bottleneck_rules(f"layer{layer + 1}.{k}",
                                (f"layer{layer + 1}_{k}",), project=k == 0)
  ignore = ["fc."] + [f"layer{l + 1}." for l in
                      range(model.num_layers, len(model.stage_sizes))]
  return rules, tuple(ignore)
