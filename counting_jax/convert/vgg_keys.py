"""Key maps of the VGG family: torchvision VGG, BL / DM-Count / GL, PML-VGG.

torchvision numbers ``features`` layers in order (conv, [BN], ReLU per conv,
one max-pool between blocks): VGG19 convs at 0, 2, 5, 7, 10, ..., 34 (pools
4, 9, 18, 27, 36); VGG16-bn convs at 0, 3, 7, ..., 40 with BNs right after
(pools 6, 13, 23, 33, 43). The checkpoints (plain state_dicts, except
PML's trainer checkpoint ``{'model': state_dict, ...}``; BL, GL and DM-Count
omit only VGG19's final pool, so their ``features.N`` indices are
torchvision's; PML-VGG19 splits ``features`` at 27):

* torchvision ImageNet VGG: ``features.N.*`` (+ ``classifier.*``, ignored).
* BL, GL: ``features.N.*``, ``reg_layer.{0,2,4}.*``.
* DM-Count: ``features.N.*``, ``reg_layer.{0,2}.*``, ``density_layer.0.*``.
* PML-VGG: ``encoder.encoder.0.K`` = ``features.K`` before the pool that
  ends block 4, ``encoder.encoder.1.K`` = ``features.(split + K)`` after it;
  ``encoder.fuse_layer.fuse_layers.0.{conv_small,conv_large,fuse.0}.*``;
  ``decoders.{0.0,1.0,2}.*``.

Each public function takes the (unbound) model and returns
``(rules, ignore_prefixes)`` for :func:`counting_jax.convert.torch.apply_rules`.
"""

from __future__ import annotations

from typing import Sequence

from counting_jax.convert import torch as tc

__all__ = ["torchvision_layers", "vgg_backbone", "bl_vgg19", "dm_count_vgg19",
           "gl_vgg19", "pml_vgg"]

_VGG19_DEPTHS = (2, 2, 4, 4, 4)


def torchvision_layers(depths: Sequence[int], batch_norm: bool):
  """torchvision ``features`` indices of every conv (and BN) and pool.

  Returns:
    (layers, pools): ``layers`` a list of (block b, conv i, conv index, BN
    index or None), b and i 1-based as in the Flax names ``conv{b}_{i}``;
    ``pools`` the index of the max-pool that precedes each block 2..n.
  """
  layers, pools, index = [], [], 0
  for b, depth in enumerate(depths, 1):
    if b > 1:
      pools.append(index)
      index += 1
    for i in range(1, depth + 1):
      bn = index + 1 if batch_norm else None
      layers.append((b, i, index, bn))
      index += 3 if batch_norm else 2
  return layers, pools


def _features(depths, batch_norm, source_of) -> list[tc.Rule]:
  rules = []
  for b, i, conv_index, bn_index in torchvision_layers(depths, batch_norm)[0]:
    rules += tc.conv_rules(source_of(conv_index), (f"conv{b}_{i}",), bias=True)
    if bn_index is not None:
      rules += tc.bn_rules(source_of(bn_index), (f"bn{b}_{i}",))
  return rules


def vgg_backbone(model):
  """torchvision ``vgg*`` ImageNet weights -> :class:`VGG` (classifier dropped)."""
  rules = _features(model.depths, model.batch_norm, lambda k: f"features.{k}")
  return rules, ("classifier.",)


def _density(model, head_sources):
  rules = tc.prefixed(_features(_VGG19_DEPTHS, False, lambda k: f"features.{k}"),
                      target=("backbone",))
  for source, target in zip(head_sources, ("head_conv1", "head_conv2",
                                           "head_out")):
    rules += tc.conv_rules(source, (target,), bias=True)
  return rules, ()


def bl_vgg19(model):
  """BL (``reg_layer.{0,2,4}``) -> :class:`VGG19Density`."""
  return _density(model, ("reg_layer.0", "reg_layer.2", "reg_layer.4"))


def gl_vgg19(model):
  """GL (same names as BL) -> :class:`VGG19Density`."""
  return bl_vgg19(model)


def dm_count_vgg19(model):
  """DM-Count (``reg_layer.{0,2}``, ``density_layer.0``) -> VGG19Density."""
  return _density(model, ("reg_layer.0", "reg_layer.2", "density_layer.0"))


def pml_vgg(model):
  """PML ``Counter('vgg19')`` / ``Counter('vgg16_bn')`` -> :class:`PMLVGG`."""
  split = torchvision_layers(model.depths, model.batch_norm)[1][3]

  def source_of(k):
    return (f"encoder.encoder.0.{k}" if k < split else
            f"encoder.encoder.1.{k - split}")

  rules = tc.prefixed(_features(model.depths, model.batch_norm, source_of),
                      target=("backbone",))
  fuse = "encoder.fuse_layer.fuse_layers.0."
  for source, target in (("conv_small", "conv_small"),
                         ("conv_large", "conv_large"), ("fuse.0", "fuse_conv")):
    rules += tc.conv_rules(fuse + source, ("fuse", target), bias=True)
  for source, target in (("decoders.0.0", "conv1"), ("decoders.1.0", "conv2"),
                         ("decoders.2", "out")):
    rules += tc.conv_rules(source, ("decoder", target), bias=True)
  return rules, ()
