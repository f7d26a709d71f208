"""Building blocks of the Stable Diffusion UNet and VAE encoder (NHWC).

Submodule names follow the diffusers module tree with list indices joined by
``_`` (``resnets_0``, ``to_out_0``, ``ff/net_0/proj``), so a diffusers key
``a.b.0.c.weight`` is the Flax path ``a/b_0/c/kernel``; the ldm names map onto
the same modules (:mod:`counting_jax.convert.stable_diffusion_keys`).

Numerics follow the PyTorch implementations: GroupNorm and LayerNorm with
two-pass variance, exact (erf) GELU in GEGLU, attention softmax in float32.
Every module takes ``dtype`` (computation dtype, e.g. ``jnp.bfloat16``);
parameters stay float32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["group_norm", "conv", "timestep_embedding", "ResnetBlock",
           "attention", "default_query_chunk", "CPU_QUERY_CHUNK",
           "Attention", "TransformerBlock", "SpatialTransformer",
           "Downsample", "Upsample", "TimestepEmbedding"]


def group_norm(groups: int, eps: float, dtype, name: str) -> nn.GroupNorm:
  """``torch.nn.GroupNorm`` (statistics in float32, two-pass variance)."""
  return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype,
                      use_fast_variance=False, name=name)


def conv(features: int, kernel: int, dtype, name: str, stride: int = 1,
         padding=None) -> nn.Conv:
  """``torch.nn.Conv2d`` with ``padding = kernel // 2`` unless given."""
  if padding is None:
    padding = ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding, dtype=dtype, name=name)


def timestep_embedding(timesteps, dim: int, *, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (diffusion step) ``timesteps``.

  Args:
    timesteps: float or int [B].
    dim: even embedding width.
    flip_sin_to_cos: order [cos, sin] (SD) instead of [sin, cos].
    freq_shift: frequencies ``exp(-log(max_period) * k / (dim/2 - shift))``.

  Returns:
    float32 [B, dim] (DDPM, Ho et al. 2020, after the Transformer's
    positional encoding; diffusers ``get_timestep_embedding``).
  """
  half = dim // 2
  k = jnp.arange(half, dtype=jnp.float32)
  freqs = jnp.exp(-math.log(max_period) * k / (half - freq_shift))
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None]
  sin, cos = jnp.sin(args), jnp.cos(args)
  parts = (cos, sin) if flip_sin_to_cos else (sin, cos)
  return jnp.concatenate(parts, axis=-1)


class TimestepEmbedding(nn.Module):
  """``linear_1`` -> SiLU -> ``linear_2`` (ldm ``time_embed.{0,2}``)."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(x)
    return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(
        nn.silu(x))


class ResnetBlock(nn.Module):
  """GN-SiLU-conv3x3 (+ time projection) GN-SiLU-conv3x3 + shortcut.

  ``conv_shortcut`` (1x1) exists when input and output widths differ;
  ``time_emb_proj`` (Dense of SiLU(temb), added per channel) when a time
  embedding is given. Dropout is omitted (inference and T2ICount use 0).
  """
  features: int
  groups: int
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb=None):
    h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
    h = conv(self.features, 3, self.dtype, "conv1")(h)
    if temb is not None:
      t = nn.Dense(self.features, dtype=self.dtype, name="time_emb_proj")(
          nn.silu(temb))
      h = h + t[:, None, None, :]
    h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm2")(h))
    h = conv(self.features, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, self.dtype, "conv_shortcut")(x)
    return x + h


# Query block of the CPU attention path (see :func:`attention`).
CPU_QUERY_CHUNK = 256


def default_query_chunk() -> int | None:
  """:data:`CPU_QUERY_CHUNK` on the CPU backend, else None (one block)."""
  return CPU_QUERY_CHUNK if jax.default_backend() == "cpu" else None


def attention(q, k, v, heads: int, *, return_probs: bool = False,
              query_chunk: int | None = None):
  """Multi-head scaled dot-product attention, softmax in float32.

  Args:
    q: [B, N, heads * d]; k, v: [B, M, heads * d].
    heads: number of heads.
    return_probs: also return the head-averaged softmax(QKᵀ/√d).
    query_chunk: without ``return_probs``, process the queries in blocks of
      this many (``lax.map``) when it divides N and is smaller than N. Same
      values; on XLA:CPU the scores of a block stay in cache: SD's 48x48
      self-attention (2304 tokens, 8 heads of 40) takes 0.040 s in blocks of
      256 instead of 0.12 s (jaxlib 0.10.2, 2 cores, XLA's default CPU
      options; 0.078 s with YNNPACK for dots only; PyTorch's fused
      ``scaled_dot_product_attention`` 0.043 s). Layers pass
      :func:`default_query_chunk` (blocks on CPU only).

  Returns:
    [B, N, heads * d] in q's dtype, and with ``return_probs`` the float32
    [B, N, M] attention probabilities averaged over heads.
  """
  b, n, c = q.shape
  d = c // heads
  q = (q * (d ** -0.5)).reshape(b, n, heads, d).transpose(0, 2, 1, 3)
  k = k.reshape(b, k.shape[1], heads, d).transpose(0, 2, 3, 1)
  v = v.reshape(b, v.shape[1], heads, d).transpose(0, 2, 1, 3)

  def block(qb):  # [B, heads, n_b, d] -> (out, probs)
    scores = jnp.matmul(qb, k, preferred_element_type=jnp.float32)
    probs = jnp.exp(scores - scores.max(-1, keepdims=True))
    total = probs.sum(-1, keepdims=True)
    if return_probs:
      probs = probs / total
      return jnp.matmul(probs.astype(v.dtype), v), probs
    out = jnp.matmul(probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32) / total
    return out.astype(v.dtype), None

  if (return_probs or query_chunk is None or query_chunk >= n or
      n % query_chunk):
    out, probs = block(q)
  else:
    blocks = q.reshape(b, heads, n // query_chunk, query_chunk, d)
    out = jax.lax.map(lambda qb: block(qb)[0], blocks.transpose(2, 0, 1, 3, 4))
    out = out.transpose(1, 2, 0, 3, 4)  # [B, heads, blocks, chunk, d]
    probs = None
  out = out.reshape(b, heads, n, d).transpose(0, 2, 1, 3).reshape(b, n, c)
  if return_probs:
    return out, probs.mean(axis=1)
  return out


class Attention(nn.Module):
  """diffusers ``Attention`` of a transformer block: ``to_q``/``to_k``/
  ``to_v`` without bias, ``to_out_0`` with bias.

  ``__call__(x [B, N, C], context [B, M, Cc] or None (self-attention))``
  returns [B, N, C], and with ``return_probs`` also the float32 [B, N, M]
  head-averaged attention probabilities.
  """
  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, *, return_probs: bool = False):
    c = x.shape[-1]
    context = x if context is None else context
    dense = lambda name, bias=False: nn.Dense(  # pylint: disable=g-long-lambda
        c, use_bias=bias, dtype=self.dtype, name=name)
    q, k, v = (dense("to_q")(x), dense("to_k")(context),
               dense("to_v")(context))
    result = attention(q, k, v, self.heads, return_probs=return_probs,
                       query_chunk=default_query_chunk())
    if return_probs:
      out, probs = result
      return dense("to_out_0", True)(out), probs
    return dense("to_out_0", True)(result)


class GEGLU(nn.Module):
  """``proj`` to 2 x inner, then hidden * GELU(gate), exact (erf) GELU."""
  inner: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(2 * self.inner, dtype=self.dtype, name="proj")(x)
    hidden, gate = jnp.split(h, 2, axis=-1)
    return hidden * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """``net_0`` (GEGLU, inner = 4 x width) -> ``net_2`` (Dense)."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = GEGLU(4 * c, dtype=self.dtype, name="net_0")(x)
    return nn.Dense(c, dtype=self.dtype, name="net_2")(h)


class TransformerBlock(nn.Module):
  """Pre-LayerNorm block: self-attention ``attn1``, cross-attention
  ``attn2`` on the context, GEGLU feed-forward ``ff``; each residual.

  Returns ``(x [B, N, C], probs)``: probs are attn2's float32 [B, N, M]
  head-averaged attention maps.
  """
  heads: int
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    ln = lambda name: nn.LayerNorm(  # pylint: disable=g-long-lambda
        self.eps, dtype=self.dtype, use_fast_variance=False, name=name)
    x = x + Attention(self.heads, self.dtype, name="attn1")(ln("norm1")(x))
    h, probs = Attention(self.heads, self.dtype, name="attn2")(
        ln("norm2")(x), context, return_probs=True)
    x = x + h
    x = x + FeedForward(self.dtype, name="ff")(ln("norm3")(x))
    return x, probs


class SpatialTransformer(nn.Module):
  """diffusers ``Transformer2DModel`` / ldm ``SpatialTransformer`` (one
  block, 1x1 conv projections): GN ``norm`` -> ``proj_in`` ->
  ``transformer_blocks_0`` -> ``proj_out`` + input.

  Returns ``(x [B, H, W, C], probs [B, H*W, M] float32)``.
  """
  heads: int
  groups: int
  eps: float
  layer_norm_eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    b, hh, ww, c = x.shape
    h = group_norm(self.groups, self.eps, self.dtype, "norm")(x)
    h = conv(c, 1, self.dtype, "proj_in")(h).reshape(b, hh * ww, c)
    h, probs = TransformerBlock(self.heads, self.layer_norm_eps, self.dtype,
                                name="transformer_blocks_0")(h, context)
    h = conv(c, 1, self.dtype, "proj_out")(h.reshape(b, hh, ww, c))
    return x + h, probs


class Downsample(nn.Module):
  """3x3 ``conv`` with stride 2: padding 1 on every side (UNet), or
  ``asymmetric`` (0 top/left, 1 bottom/right; the VAE encoder)."""
  features: int
  asymmetric: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    padding = ((0, 1), (0, 1)) if self.asymmetric else ((1, 1), (1, 1))
    return conv(self.features, 3, self.dtype, "conv", stride=2,
                padding=padding)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then 3x3 ``conv``."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(self.features, 3, self.dtype, "conv")(x)
