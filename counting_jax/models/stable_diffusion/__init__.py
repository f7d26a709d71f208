"""Stable Diffusion 1.5 feature extractor in Flax linen (NHWC).

:class:`VAEEncoder` (image -> posterior mean), :class:`UNet` (latents,
timestep, text context -> the four decoder taps and the cross-attention
maps, as T2ICount reads them) and :class:`CLIPTextEncoder` (token ids ->
77 x 768 text states), with their configs. Weights convert from the
diffusers / transformers layouts and from ldm single-file checkpoints with
:mod:`counting_jax.convert.stable_diffusion_keys`.
"""

from __future__ import annotations

from counting_jax.models.stable_diffusion.clip import CLIPTextEncoder
from counting_jax.models.stable_diffusion.config import CLIPTextConfig
from counting_jax.models.stable_diffusion.config import UNetConfig
from counting_jax.models.stable_diffusion.config import VAEConfig
from counting_jax.models.stable_diffusion.unet import UNet
from counting_jax.models.stable_diffusion.unet import UNetFeatures
from counting_jax.models.stable_diffusion.vae import VAEEncoder

__all__ = ["VAEEncoder", "UNet", "UNetFeatures", "CLIPTextEncoder",
           "VAEConfig", "UNetConfig", "CLIPTextConfig"]
