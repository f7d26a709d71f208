"""Architecture settings of the Stable Diffusion 1.5 feature extractor.

Frozen (hashable) dataclasses, used as attributes of the linen modules:
:class:`VAEConfig` (the KL autoencoder's encoder), :class:`UNetConfig` (the
denoising UNet, run up to the last feature tap) and :class:`CLIPTextConfig`
(the CLIP text transformer). ``sd15()`` / ``clip_vit_l14()`` give the
published sizes (Stable Diffusion v1.5, Rombach et al., CVPR 2022; CLIP
ViT-L/14, Radford et al., ICML 2021); ``tiny()`` gives small random-weight
versions with the same structure for tests.
"""

from __future__ import annotations

import dataclasses

__all__ = ["VAEConfig", "UNetConfig", "CLIPTextConfig"]


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The KL autoencoder's encoder (diffusers ``AutoencoderKL`` / ldm
  ``AutoencoderKL`` with ``double_z``).

  Attributes:
    in_channels: image channels (3).
    block_out_channels: channels of each down block; every block but the last
      halves the resolution, so latents have stride
      ``2 ** (len(block_out_channels) - 1)`` input pixels (8 for SD).
    layers_per_block: ResNet blocks per down block.
    latent_channels: channels of the posterior mean (4).
    norm_num_groups: GroupNorm groups (32).
    norm_eps: GroupNorm epsilon of every norm (1e-6).
  """
  in_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  norm_eps: float = 1e-6

  @classmethod
  def sd15(cls) -> "VAEConfig":
    return cls()

  @classmethod
  def tiny(cls) -> "VAEConfig":
    return cls(block_out_channels=(8, 16, 16, 16), layers_per_block=2,
               norm_num_groups=4)

  @property
  def stride(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The conditional UNet (diffusers ``UNet2DConditionModel`` with SD-1.5
  block types: cross-attention down blocks except the last, a cross-attention
  mid block, a plain first up block then cross-attention up blocks).

  Attributes:
    in_channels: latent channels (4).
    block_out_channels: channels of each down block (up blocks reversed).
    layers_per_block: ResNet blocks per down block; up blocks have one more.
    attention: per down block, whether it has cross-attention transformers
      (the up blocks mirror it).
    num_heads: attention heads of every transformer (8 for SD-1.5; head
      width = channels / num_heads).
    cross_attention_dim: width of the text context (768).
    norm_num_groups: GroupNorm groups (32).
    norm_eps: GroupNorm epsilon of the ResNet blocks (1e-5).
    transformer_norm_eps: GroupNorm epsilon in front of each transformer
      (1e-6, as diffusers and ldm).
    layer_norm_eps: LayerNorm epsilon inside the transformer blocks (1e-5).
    flip_sin_to_cos: time embedding order [cos, sin] (True for SD).
    freq_shift: diffusers' ``downscale_freq_shift`` (0 for SD).
    taps: ldm ``output_blocks`` indices whose outputs are returned, in this
      order; up block ``i // (layers_per_block + 1)``, layer
      ``i % (layers_per_block + 1)``. The UNet stops after the largest one.
      T2ICount uses (1, 4, 7, 11).
  """
  in_channels: int = 4
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  attention: tuple[bool, ...] = (True, True, True, False)
  num_heads: int = 8
  cross_attention_dim: int = 768
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  transformer_norm_eps: float = 1e-6
  layer_norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  taps: tuple[int, ...] = (1, 4, 7, 11)

  def __post_init__(self):
    if len(self.attention) != len(self.block_out_channels):
      raise ValueError("UNetConfig: attention and block_out_channels must "
                       f"have the same length, got {self.attention} and "
                       f"{self.block_out_channels}")
    last = len(self.block_out_channels) * (self.layers_per_block + 1) - 1
    if not self.taps or min(self.taps) < 0 or max(self.taps) > last:
      raise ValueError(f"UNetConfig: taps must be ldm output block indices in "
                       f"[0, {last}], got {self.taps}")

  @classmethod
  def sd15(cls) -> "UNetConfig":
    return cls()

  @classmethod
  def tiny(cls) -> "UNetConfig":
    return cls(block_out_channels=(16, 32, 32, 32), num_heads=2,
               cross_attention_dim=24, norm_num_groups=8)

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.block_out_channels[0]

  @property
  def last_layer(self) -> int:
    """ldm index of the last output block run."""
    return max(self.taps)


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """CLIP's text transformer (transformers ``CLIPTextModel``).

  Attributes:
    vocab_size: BPE vocabulary (49408).
    hidden_size: width (768 for ViT-L/14).
    num_layers: transformer layers (12).
    num_heads: attention heads (12).
    intermediate_size: MLP width (3072).
    max_position_embeddings: context length (77).
    layer_norm_eps: LayerNorm epsilon (1e-5).
  """
  vocab_size: int = 49408
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 77
  layer_norm_eps: float = 1e-5

  @classmethod
  def clip_vit_l14(cls) -> "CLIPTextConfig":
    return cls()

  @classmethod
  def tiny(cls) -> "CLIPTextConfig":
    return cls(vocab_size=1000, hidden_size=32, num_layers=2, num_heads=4,
               intermediate_size=64)
