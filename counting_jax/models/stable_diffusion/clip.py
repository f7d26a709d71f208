"""CLIP text transformer: token ids -> last hidden states.

Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021 (the text tower of ViT-L/14, Stable Diffusion 1.5's
and T2ICount's text encoder). Token + learned position embeddings; pre-LN
transformer layers with causal self-attention and a quick-GELU MLP
(x * sigmoid(1.702 x)); a final LayerNorm. No padding mask: as in Stable
Diffusion, the prompt is padded to 77 tokens and only the causal mask
applies.

Params (transformers ``CLIPTextModel`` names without ``text_model.``, indices
joined by ``_``): ``embeddings/{token_embedding, position_embedding}/
embedding``, ``encoder/layers_i/{self_attn/{q,k,v,out}_proj, layer_norm1,
mlp/fc{1,2}, layer_norm2}``, ``final_layer_norm``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from counting_jax.models.stable_diffusion.config import CLIPTextConfig

__all__ = ["CLIPTextEncoder"]


def quick_gelu(x):
  """CLIP's GELU approximation x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


class _SelfAttention(nn.Module):
  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, c = x.shape
    d = c // self.heads
    dense = lambda name: nn.Dense(c, dtype=self.dtype, name=name)
    q, k, v = (dense(f"{p}_proj")(x).reshape(b, n, self.heads, d)
               for p in "qkv")
    scores = jnp.einsum("bnhd,bmhd->bhnm", q, k,
                        preferred_element_type=jnp.float32) * (d ** -0.5)
    causal = jnp.tril(jnp.ones((n, n), bool))
    scores = jnp.where(causal, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhnm,bmhd->bnhd", probs, v).reshape(b, n, c)
    return dense("out_proj")(out)


class _Layer(nn.Module):
  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    ln = lambda name: nn.LayerNorm(  # pylint: disable=g-long-lambda
        cfg.layer_norm_eps, dtype=self.dtype, use_fast_variance=False,
        name=name)
    x = x + _SelfAttention(cfg.num_heads, self.dtype, name="self_attn")(
        ln("layer_norm1")(x))
    x = x + _MLP(cfg.intermediate_size, self.dtype, name="mlp")(
        ln("layer_norm2")(x))
    return x


class _MLP(nn.Module):
  inner: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = quick_gelu(nn.Dense(self.inner, dtype=self.dtype, name="fc1")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(h)


class _Embeddings(nn.Module):
  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    cfg = self.config
    tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype,
                      name="token_embedding")(input_ids)
    positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                         dtype=self.dtype, name="position_embedding")(
                             jnp.arange(input_ids.shape[1]))
    return tokens + positions[None]


class _Encoder(nn.Module):
  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.config.num_layers):
      x = _Layer(self.config, self.dtype, name=f"layers_{i}")(x)
    return x


class CLIPTextEncoder(nn.Module):
  """Token ids -> CLIP text states.

  Attributes:
    config: :class:`CLIPTextConfig` (``CLIPTextConfig.clip_vit_l14()``).
    dtype: computation dtype (float32 or bfloat16; softmax in float32).

  ``__call__(input_ids)``:
    input_ids: int [B, L], L <= max_position_embeddings (77): BOS 49406,
      the BPE tokens, EOS 49407, padding (SD pads with EOS).

  Returns:
    ``last_hidden_state`` [B, L, hidden_size] in ``dtype``, after the final
    LayerNorm (transformers ``CLIPTextModel(...).last_hidden_state``).

  Raises:
    ValueError: for ids that are not [B, L] integers with L <= 77.
  """
  config: CLIPTextConfig = CLIPTextConfig()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    cfg = self.config
    if (input_ids.ndim != 2 or
        not jnp.issubdtype(input_ids.dtype, jnp.integer) or
        input_ids.shape[1] > cfg.max_position_embeddings):
      raise ValueError("CLIPTextEncoder: input_ids must be integer [B, L] "
                       f"with L <= {cfg.max_position_embeddings}, got "
                       f"{input_ids.dtype} {input_ids.shape}")
    x = _Embeddings(cfg, self.dtype, name="embeddings")(input_ids)
    x = _Encoder(cfg, self.dtype, name="encoder")(x)
    return nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype,
                        use_fast_variance=False, name="final_layer_norm")(x)
