"""Stable Diffusion 1.5 UNet as a feature extractor: latents -> decoder taps.

Rombach et al., CVPR 2022 (the ldm ``UNetModel``; diffusers
``UNet2DConditionModel``). T2ICount (Qian et al., CVPR 2025) runs it once on
the VAE posterior mean at timestep 0 with the CLIP text states as context
and reads the outputs of ldm ``output_blocks`` 1, 4, 7 and 11, plus the
cross-attention maps of every ``attn2`` layer. The module runs the UNet only
up to the last tap: nothing after it (later up-block layers,
``conv_norm_out``, ``conv_out``) is run or has parameters.

Params (diffusers names, indices joined by ``_``): ``conv_in``,
``time_embedding/linear_{1,2}``, ``down_blocks_i/{resnets_j, attentions_j,
downsamplers_0/conv}``, ``mid_block/{resnets_0, attentions_0, resnets_1}``,
``up_blocks_i/{resnets_j, attentions_j, upsamplers_0/conv}``.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from counting_jax.models.stable_diffusion import layers
from counting_jax.models.stable_diffusion.config import UNetConfig

__all__ = ["UNet", "UNetFeatures"]


@flax.struct.dataclass
class UNetFeatures:
  """What :class:`UNet` returns.

  Attributes:
    taps: the outputs of the ldm output blocks ``config.taps``, NHWC in the
      computation dtype. For SD-1.5 and a [B, h, w, 4] latent: (A [B, h/8,
      w/8, 1280], B [B, h/4, w/4, 1280], C [B, h/2, w/2, 640], D [B, h, w,
      320]) = output blocks 1, 4, 7, 11 (D before ``conv_norm_out``). An
      output block that ends an up block includes its upsampler (ldm).
    cross_attention: {"down": [...], "mid": [...], "up": [...]}, each a list
      of the float32 [B, h_i * w_i, M] head-averaged softmax(QKᵀ/√d) maps of
      the attn2 (cross-attention, M context tokens) layers run, in execution
      order (SD-1.5: 6 down, 1 mid, 9 up).
  """
  taps: tuple[jax.Array, ...]
  cross_attention: dict[str, list[jax.Array]]


class _DownBlock(nn.Module):
  config: UNetConfig
  index: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context, skips: list, maps: list):
    cfg = self.config
    c = cfg.block_out_channels[self.index]
    for j in range(cfg.layers_per_block):
      x = layers.ResnetBlock(c, cfg.norm_num_groups, cfg.norm_eps, self.dtype,
                             name=f"resnets_{j}")(x, temb)
      if cfg.attention[self.index]:
        x, probs = _transformer(cfg, self.dtype, f"attentions_{j}")(x, context)
        maps.append(probs)
      skips.append(x)
    if self.index < len(cfg.block_out_channels) - 1:
      x = layers.Downsample(c, dtype=self.dtype, name="downsamplers_0")(x)
      skips.append(x)
    return x


class _MidBlock(nn.Module):
  config: UNetConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context, maps: list):
    cfg = self.config
    c = x.shape[-1]
    resnet = lambda name: layers.ResnetBlock(  # pylint: disable=g-long-lambda
        c, cfg.norm_num_groups, cfg.norm_eps, self.dtype, name=name)
    x = resnet("resnets_0")(x, temb)
    x, probs = _transformer(cfg, self.dtype, "attentions_0")(x, context)
    maps.append(probs)
    return resnet("resnets_1")(x, temb)


class _UpBlock(nn.Module):
  """Up block ``index`` (0 = deepest), run for its first ``num_layers``
  layers; returns each layer's output (the last layer's after the
  upsampler)."""
  config: UNetConfig
  index: int
  num_layers: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context, skips: list, maps: list):
    cfg = self.config
    n = len(cfg.block_out_channels)
    c = cfg.block_out_channels[n - 1 - self.index]
    attention = cfg.attention[n - 1 - self.index]
    outputs = []
    for j in range(self.num_layers):
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = layers.ResnetBlock(c, cfg.norm_num_groups, cfg.norm_eps, self.dtype,
                             name=f"resnets_{j}")(x, temb)
      if attention:
        x, probs = _transformer(cfg, self.dtype, f"attentions_{j}")(x, context)
        maps.append(probs)
      if j == cfg.layers_per_block and self.index < n - 1:
        x = layers.Upsample(c, self.dtype, name="upsamplers_0")(x)
      outputs.append(x)
    return outputs


def _transformer(cfg: UNetConfig, dtype, name: str):
  return layers.SpatialTransformer(cfg.num_heads, cfg.norm_num_groups,
                                   cfg.transformer_norm_eps,
                                   cfg.layer_norm_eps, dtype, name=name)


class UNet(nn.Module):
  """SD UNet up to the last feature tap.

  Attributes:
    config: :class:`UNetConfig` (``UNetConfig.sd15()`` for SD-1.5).
    dtype: computation dtype (float32; bfloat16 for faster, smaller runs;
      attention softmax and maps stay float32).

  ``__call__(latents, timesteps, context)``:
    latents: float [B, h, w, in_channels], h and w multiples of
      ``2 ** (len(block_out_channels) - 1)`` (8). T2ICount: the VAE
      posterior mean, unscaled.
    timesteps: diffusion step, [B] or a scalar (T2ICount: 0).
    context: float [B, M, cross_attention_dim] (CLIP last hidden states,
      M = 77).

  Returns:
    :class:`UNetFeatures`.

  Raises:
    ValueError: for inputs of the wrong rank, width or spatial size.
  """
  config: UNetConfig = UNetConfig()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, timesteps, context) -> UNetFeatures:
    cfg = self.config
    n = len(cfg.block_out_channels)
    s = 2 ** (n - 1)
    if (latents.ndim != 4 or latents.shape[-1] != cfg.in_channels or
        latents.shape[1] % s or latents.shape[2] % s):
      raise ValueError(f"UNet: latents must be [B, h, w, {cfg.in_channels}] "
                       f"with h, w multiples of {s}, got {latents.shape}")
    b = latents.shape[0]
    if (context.ndim != 3 or context.shape[0] != b or
        context.shape[-1] != cfg.cross_attention_dim):
      raise ValueError(f"UNet: context must be [{b}, M, "
                       f"{cfg.cross_attention_dim}], got {context.shape}")
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (b,))
    emb = layers.timestep_embedding(timesteps, cfg.block_out_channels[0],
                                    flip_sin_to_cos=cfg.flip_sin_to_cos,
                                    freq_shift=cfg.freq_shift)
    temb = layers.TimestepEmbedding(cfg.time_embed_dim, self.dtype,
                                    name="time_embedding")(
                                        emb.astype(self.dtype))
    context = context.astype(self.dtype)
    x = layers.conv(cfg.block_out_channels[0], 3, self.dtype, "conv_in")(
        latents.astype(self.dtype))
    skips = [x]
    maps: dict[str, list[Any]] = {"down": [], "mid": [], "up": []}
    for i in range(n):
      x = _DownBlock(cfg, i, self.dtype, name=f"down_blocks_{i}")(
          x, temb, context, skips, maps["down"])
    x = _MidBlock(cfg, self.dtype, name="mid_block")(x, temb, context,
                                                     maps["mid"])
    per_block = cfg.layers_per_block + 1
    outputs = []
    for i in range(n):
      run = min(per_block, cfg.last_layer + 1 - i * per_block)
      if run <= 0:
        break
      block_out = _UpBlock(cfg, i, run, self.dtype, name=f"up_blocks_{i}")(
          x, temb, context, skips, maps["up"])
      outputs += block_out
      x = block_out[-1]
    return UNetFeatures(taps=tuple(outputs[t] for t in cfg.taps),
                        cross_attention=maps)
