"""T2ICount: text-guided counting on one denoising step of Stable Diffusion.

Qian et al., "T2ICount: Enhancing Cross-modal Understanding for Zero-Shot
Counting", CVPR 2025. The image goes through the SD-1.5 VAE encoder (the
posterior mean, **not** scaled by 0.18215, as the official code), the UNet
runs once at timestep 0 without noise (the paper says t = 1) with the CLIP
ViT-L/14 text states of the prompt as context, and the HSCM decoder
(``counting_jax.models.t2icount_decoder``) turns four UNet taps and the mean
text state of the prompt tokens into a density map at stride 8. The UNet's
cross-attention maps give the fused attention map of L_RRC
(``counting_jax.models.t2icount_prompt``).

Training freezes the VAE and the text encoder (their outputs are stopped
from gradients here; the optimiser groups of ``counting_jax.methods.
t2icount`` keep their parameters fixed) and fine-tunes the UNet and the
decoder. Parameters: ``vae``, ``clip``, ``unet``, ``decoder``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from counting_jax.models import t2icount_decoder, t2icount_prompt
from counting_jax.models.stable_diffusion import (CLIPTextConfig,
                                                  CLIPTextEncoder, UNet,
                                                  UNetConfig, VAEConfig,
                                                  VAEEncoder)
from counting_jax.text import clip_tokenizer

__all__ = ["T2ICount"]


class T2ICount(nn.Module):
  """Call: ``(image [B, H, W, 3] in [-1, 1], tokens int [B, 77], train=...)``
  with H, W multiples of 64 (official: 384 x 384 crops; the decoder's
  fixed 24 x 24 resize is lifted, see ``t2icount_decoder``) and ``tokens``
  the CLIP ids of the prompt (``counting_jax.text.encode``: BOS, the raw
  class name, EOS padding). Returns a dict of float32 [B, H/8, W/8] maps:
  ``density`` (official x60 domain: count = sum / 60), ``sim_x2``,
  ``sim_x1`` (decoder cosine maps) and, with ``train=True`` (square crops
  only), ``fused_attention`` (in [0, 1], no gradient; only L_RRC reads it).

  Attributes:
    vae, unet, clip: the SD / CLIP configs (``VAEConfig.sd15()``,
      ``UNetConfig.sd15()``, ``CLIPTextConfig.clip_vit_l14()``).
    decoder_dims: widths of the decoder's three levels (640, 320, 256).
    decoder_heads: attention heads in the decoder (8).
    timestep: the UNet timestep (0 as the official code).
    dtype: computation dtype of every part.

  Raises:
    ValueError: for an image side that is not a multiple of 64 (the UNet's
      latent grid must be a multiple of 8), or a non-square image with
      ``train=True``.
  """
  vae: VAEConfig = VAEConfig()
  unet: UNetConfig = UNetConfig()
  clip: CLIPTextConfig = CLIPTextConfig()
  decoder_dims: tuple[int, int, int] = (640, 320, 256)
  decoder_heads: int = 8
  timestep: float = 0.0
  dtype: Any = jnp.float32

  @property
  def stride(self) -> int:
    return self.vae.stride

  @nn.compact
  def __call__(self, image, tokens, *, train: bool = False):
    # No dropout or batch statistics: ``train`` only adds the fused
    # cross-attention map the loss needs.
    multiple = self.vae.stride * 2 ** (len(self.unet.block_out_channels) - 1)
    if image.ndim != 4 or image.shape[1] % multiple or \
        image.shape[2] % multiple:
      raise ValueError(f"T2ICount: image must be [B, H, W, 3] with H, W "
                       f"multiples of {multiple}, got {image.shape}")
    latents = VAEEncoder(self.vae, self.dtype, name="vae")(image)
    latents = jax.lax.stop_gradient(latents)
    states = CLIPTextEncoder(self.clip, self.dtype, name="clip")(tokens)
    states = jax.lax.stop_gradient(states)
    feats = UNet(self.unet, self.dtype, name="unet")(
        latents, jnp.full((image.shape[0],), self.timestep), states)
    mask = clip_tokenizer.prompt_mask(tokens)
    text0 = t2icount_prompt.text_feature(states, mask)
    out = t2icount_decoder.HSCMDecoder(self.decoder_dims, self.decoder_heads,
                                       self.dtype, name="decoder")(
                                           feats.taps, text0)
    result = {"density": out["density"], "sim_x2": out["sim_x2"],
              "sim_x1": out["sim_x1"]}
    if train:
      h, w = latents.shape[1:3]
      if h != w:
        raise ValueError("T2ICount: training crops must be square (the "
                         f"official 384 x 384), got {image.shape[1:3]}")
      grouped = t2icount_prompt.group_cross_attention(
          feats.cross_attention, h)
      result["fused_attention"] = t2icount_prompt.fused_attention(
          grouped, mask, h)
    return result
