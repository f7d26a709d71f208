"""Backbones (feature extractors) in the PyTorch weights' layouts, by name.

A backbone is a linen module called as ``backbone.apply(variables, image,
train=...)`` on ``image`` float [B, H, W, 3] and returning a list of feature
maps [B, h_k, w_k, C_k] (see each class for strides). Counters build them as
a submodule named ``backbone``, so converted ImageNet weights (see
:mod:`counting_jax.convert`) can replace ``params['backbone']`` and
``batch_stats['backbone']`` of a counter.
"""

from __future__ import annotations

from counting_jax.models.backbones.hrnet import HRNET_TINY
from counting_jax.models.backbones.hrnet import HRNET_W40
from counting_jax.models.backbones.hrnet import HRNET_W48
from counting_jax.models.backbones.hrnet import HRNet
from counting_jax.models.backbones.resnet import RESNET50
from counting_jax.models.backbones.resnet import RESNET50_TINY
from counting_jax.models.backbones.resnet import ResNet
from counting_jax.models.backbones.vgg import VGG
from counting_jax.models.backbones.vgg import VGG16_BN
from counting_jax.models.backbones.vgg import VGG16_BN_TINY
from counting_jax.models.backbones.vgg import VGG19
from counting_jax.models.backbones.vgg import VGG19_TINY

BACKBONES = {
    "vgg16_bn": VGG16_BN,
    "vgg19": VGG19,
    "resnet50": RESNET50,
    "hrnet_w40": HRNET_W40,
    "hrnet_w48": HRNET_W48,
    # Test-only tiny variants.
    "vgg16_bn_tiny": VGG16_BN_TINY,
    "vgg19_tiny": VGG19_TINY,
    "resnet50_tiny": RESNET50_TINY,
    "hrnet_tiny": HRNET_TINY,
}


def get_backbone(name: str, **kwargs):
  """The backbone registered as ``name``, built with keyword attributes.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
  return BACKBONES[name](**kwargs)


__all__ = ["BACKBONES", "get_backbone", "HRNet", "ResNet", "VGG"]
