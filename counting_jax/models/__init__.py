"""Counting networks, picked by name.

Every model is a linen module called as ``model.apply(variables, image,
train=...)`` on ``image`` float [B, H, W, 3] and returning the density
float32 [B, H // stride, W // stride]; its ``stride`` attribute gives the
density stride (mPrompt's models return a dict {"density", "seg"} of such
maps). BatchNorm statistics live in the ``batch_stats`` collection.
"""

from __future__ import annotations

import functools

from counting_jax.models.fcrn import FCRNA
from counting_jax.models.unet import UNet
from counting_jax.models import mprompt
from counting_jax.models import pml
from counting_jax.models import vgg19_density

MODELS = {
    "fcrn_a": FCRNA,
    "unet": UNet,
    # Crowd counters (BL / DM-Count / GL VGG19 head; PML).
    "bl_vgg19": vgg19_density.BL_VGG19,
    "dm_count_vgg19": vgg19_density.DM_COUNT_VGG19,
    "gl_vgg19": vgg19_density.GL_VGG19,
    "pml_vgg19": pml.PML_VGG19,
    "pml_vgg16_bn": pml.PML_VGG16_BN,
    "pml_hrnet_w48": pml.PML_HRNET_W48,
    "pml_hrnet_w40": pml.PML_HRNET_W40,
    "bl_vgg19_tiny": vgg19_density.BL_VGG19_TINY,
    "dm_count_vgg19_tiny": vgg19_density.DM_COUNT_VGG19_TINY,
    "gl_vgg19_tiny": vgg19_density.GL_VGG19_TINY,
    "pml_vgg19_tiny": pml.PML_VGG19_TINY,
    "pml_hrnet_tiny": pml.PML_HRNET_TINY,
    # mPrompt (regressor + segmenter; outputs a dict, stride 1).
    "mprompt_hrnet_w40": mprompt.MPROMPT_HRNET_W40,
    "mprompt_tiny": mprompt.MPROMPT_TINY,
    # Test-only tiny variants.
    "fcrn_a_tiny": functools.partial(FCRNA, widths=(4, 4, 8, 8)),
    "unet_tiny": functools.partial(UNet, widths=(4, 8)),
}


def get_model(name: str, **kwargs):
  """The model registered as ``name``, built with keyword attributes.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
  return MODELS[name](**kwargs)
