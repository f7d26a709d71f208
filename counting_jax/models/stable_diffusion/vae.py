"""Encoder half of Stable Diffusion's KL autoencoder: image -> posterior mean.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion
Models", CVPR 2022. ``conv_in``; down blocks of ResNet blocks, each but the
last ending in a stride-2 conv (padding 0 top/left, 1 bottom/right); a mid
block (ResNet, single-head self-attention, ResNet); GN-SiLU-``conv_out`` to
2 x latent channels (mean and log-variance); ``quant_conv`` (1x1). The
posterior mean is the first half of the channels. T2ICount feeds it to the
UNet as is: no sampling and no 0.18215 scale factor.

Params: ``encoder/{conv_in, down_blocks_i/{resnets_j, downsamplers_0/conv},
mid_block/{resnets_0, attentions_0, resnets_1}, conv_norm_out, conv_out}``
and ``quant_conv``: the diffusers ``AutoencoderKL`` names.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from counting_jax.models.stable_diffusion import layers
from counting_jax.models.stable_diffusion.config import VAEConfig

__all__ = ["VAEEncoder"]


class _MidAttention(nn.Module):
  """Single-head self-attention over all pixels with GN ``group_norm``;
  ``to_q``/``to_k``/``to_v``/``to_out_0`` with bias (ldm ``attn_1``: 1x1
  convs ``q``/``k``/``v``/``proj_out``)."""
  groups: int
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = layers.group_norm(self.groups, self.eps, self.dtype, "group_norm")(x)
    y = y.reshape(b, h * w, c)
    dense = lambda name: nn.Dense(c, dtype=self.dtype, name=name)
    y = layers.attention(dense("to_q")(y), dense("to_k")(y), dense("to_v")(y),
                         1, query_chunk=layers.default_query_chunk())
    return x + dense("to_out_0")(y).reshape(b, h, w, c)


class _DownBlock(nn.Module):
  config: VAEConfig
  features: int
  downsample: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    for j in range(cfg.layers_per_block):
      x = layers.ResnetBlock(self.features, cfg.norm_num_groups, cfg.norm_eps,
                             self.dtype, name=f"resnets_{j}")(x)
    if self.downsample:
      x = layers.Downsample(self.features, asymmetric=True, dtype=self.dtype,
                            name="downsamplers_0")(x)
    return x


class _MidBlock(nn.Module):
  config: VAEConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    c = x.shape[-1]
    resnet = lambda name: layers.ResnetBlock(  # pylint: disable=g-long-lambda
        c, cfg.norm_num_groups, cfg.norm_eps, self.dtype, name=name)
    x = resnet("resnets_0")(x)
    x = _MidAttention(cfg.norm_num_groups, cfg.norm_eps, self.dtype,
                      name="attentions_0")(x)
    return resnet("resnets_1")(x)


class _Encoder(nn.Module):
  config: VAEConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    chans = cfg.block_out_channels
    x = layers.conv(chans[0], 3, self.dtype, "conv_in")(x)
    for i, c in enumerate(chans):
      x = _DownBlock(cfg, c, i < len(chans) - 1, self.dtype,
                     name=f"down_blocks_{i}")(x)
    x = _MidBlock(cfg, self.dtype, name="mid_block")(x)
    x = layers.group_norm(cfg.norm_num_groups, cfg.norm_eps, self.dtype,
                          "conv_norm_out")(x)
    return layers.conv(2 * cfg.latent_channels, 3, self.dtype, "conv_out")(
        nn.silu(x))


class VAEEncoder(nn.Module):
  """Image -> latent posterior mean.

  Attributes:
    config: :class:`VAEConfig` (``VAEConfig.sd15()`` for SD-1.5).
    dtype: computation dtype (float32; bfloat16 halves activations).

  ``__call__(images)``:
    images: float [B, H, W, 3] in [-1, 1] (RGB, (x / 255 - 0.5) / 0.5);
      H and W multiples of ``config.stride`` (8).

  Returns:
    The posterior mean, [B, H / 8, W / 8, latent_channels] in ``dtype``
    (ldm ``encode(x).mode()``; not multiplied by the 0.18215 scale factor).

  Raises:
    ValueError: for images that are not [B, H, W, in_channels] with H and W
      multiples of the stride.
  """
  config: VAEConfig = VAEConfig()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    cfg = self.config
    s = cfg.stride
    if (images.ndim != 4 or images.shape[-1] != cfg.in_channels or
        images.shape[1] % s or images.shape[2] % s):
      raise ValueError(f"VAEEncoder: images must be [B, H, W, "
                       f"{cfg.in_channels}] with H, W multiples of {s}, got "
                       f"{images.shape}")
    moments = _Encoder(cfg, self.dtype, name="encoder")(
        images.astype(self.dtype))
    moments = layers.conv(2 * cfg.latent_channels, 1, self.dtype,
                          "quant_conv")(moments)
    return moments[..., :cfg.latent_channels]
