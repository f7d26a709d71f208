"""T2ICount's HSCM decoder: hierarchical semantic-corrected fusion + regressor.

T2ICount (Qian et al., CVPR 2025) decodes four Stable-Diffusion UNet feature
maps and one text vector into a density map (paper Sec. 3.2, "hierarchical
semantic correction module"); this is its decoder, layer by layer as in the
official code, NHWC. With the official 384 x 384 crops (latent 48 x 48) the
taps are ``A`` 1280@6², ``B`` 1280@12², ``C`` 640@24², ``D`` 320@48² and the
output is 48² (stride 8 in input pixels).

* **Level 1** (:class:`TextLevel`, 640 channels): ``low`` = A, ``high`` = B;
  ``low' = relu(conv(up(low)))``, ``x = relu(conv([high, low']))``; the text
  ``t = Dense(t0)``, ``t = t + LayerNorm(t)``; two :class:`ImgTxtFusion`
  with a ReLU conv between; ``sim2 = cos(up(up(x)), t)``, a [-1, 1] map at
  the output grid.
* **Level 2** (320 channels): ``low`` = level-1 x, ``high`` = C; as level 1
  but ``x = x + resize(sim2) * low'`` before the text fusion, and the text
  projection starts again from the original ``t0``; ``sim1 = cos(up(x), t)``.
* **Level 3** (:class:`PlainLevel`, 256 channels, no text):
  ``x = relu(conv([D, low'])) + sim1 * low'``.
* **Regressor**: two post-norm self-attention blocks (positional encoding =
  depthwise 3x3 conv on queries and keys) with a ReLU conv between, then
  convs 256 -> 256 -> 128 -> 1 with ReLUs (the last ReLU too): the density,
  float32 [B, h, w] in the official x60 domain (count = sum / 60).

Convs are 3x3 (padding 1) with bias; "up" is bilinear x2 with
half-pixel centres (PyTorch ``align_corners=False``); LayerNorm eps 1e-5;
the MLP of the fusion uses the exact (erf) GELU; attention has 8 heads,
scale ``(C / 8) ** -0.5``; cosine similarity as PyTorch's (eps 1e-8).

**Resolution.** The official decoder resizes ``sim2`` to a hard-coded
24 x 24 before level 2, so it only runs on 384 x 384 crops (evaluation
tiles images into 384² crops). Here ``sim2`` is resized to the level-2 grid
(twice the level-1 grid; 24² at 384² crops, identical numbers there), so
any input whose latent is a multiple of 8 works; the resize is bilinear
without antialiasing, as PyTorch's (a 2x2 mean for 48 -> 24).

**Degenerate image-to-text attention.** The text side is one token, so the
softmax over keys is identically 1 and the image->text attention adds
``out_proj(v_proj(t'))`` to every pixel; its q/k projections get no gradient.
They are kept so official checkpoints load one to one.

Parameter names follow the official module tree (``upsample1``,
``img_txt_fusion1``, ``txt2img``, ``q_proj``, ``norm1``, ``regressor``,
``reg_head_0`` for ``reg_head.0``, ``conv1`` for ``conv1.0``, ``mlp_fc1`` /
``mlp_fc2`` for ``mlp.net.0.0`` / ``mlp.net.2``);
``counting_jax.convert.t2icount_keys`` converts the official keys.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["HSCMDecoder", "TextLevel", "PlainLevel", "ImgTxtFusion",
           "Regressor", "Attention", "upsample_bilinear", "resize_bilinear",
           "cosine_map"]

_LN_EPS = 1e-5


def resize_bilinear(x, height: int, width: int):
  """Bilinear resize of [B, H, W, C] like PyTorch ``F.interpolate(mode=
  "bilinear", align_corners=False)`` (half-pixel centres, no antialias)."""
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, height, width, c), "linear",
                          antialias=False)


def upsample_bilinear(x):
  """x2 bilinear upsampling of [B, H, W, C] (``align_corners=False``)."""
  return resize_bilinear(x, 2 * x.shape[1], 2 * x.shape[2])


def cosine_map(x, t, eps: float = 1e-8):
  """Cosine similarity over channels of a map and a vector.

  Args:
    x: float [B, H, W, C]; t: float [B, C].

  Returns:
    float32 [B, H, W]: ``<x, t> / sqrt(max(|x|^2 |t|^2, eps^2))`` (PyTorch
    ``F.cosine_similarity``).
  """
  x = x.astype(jnp.float32)
  t = t.astype(jnp.float32)[:, None, None, :]
  dot = jnp.sum(x * t, -1)
  n2 = jnp.sum(x * x, -1) * jnp.sum(t * t, -1)
  return dot / jnp.sqrt(jnp.maximum(n2, eps * eps))


def _conv(features: int, name: str, dtype, kernel: int = 3):
  return nn.Conv(features, (kernel, kernel), padding=kernel // 2,
                 dtype=dtype, name=name)


def _ln(name: str, dtype):
  return nn.LayerNorm(epsilon=_LN_EPS, dtype=dtype, name=name)


class Attention(nn.Module):
  """Multi-head attention with separate q/k/v/out projections (bias).

  Call: ``(query [B, Nq, C], key [B, Nk, C], value [B, Nk, C])`` ->
  [B, Nq, C]; softmax over keys in float32, scale ``(C / heads) ** -0.5``.
  """
  dim: int
  heads: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query, key, value):
    head = self.dim // self.heads
    def split(x, name):
      y = nn.Dense(self.dim, dtype=self.dtype, name=name)(x)
      return y.reshape(y.shape[:-1] + (self.heads, head))
    q = split(query, "q_proj")
    k = split(key, "k_proj")
    v = split(value, "v_proj")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32) * head ** -0.5
    weights = jax.nn.softmax(logits, -1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    out = out.reshape(out.shape[:-2] + (self.dim,))
    return nn.Dense(self.dim, dtype=self.dtype, name="out_proj")(out)


class ImgTxtFusion(nn.Module):
  """Text->image then image->text attention (official ``ImgTxtFusion``).

  Call: ``(img [B, H, W, C], text [B, C])`` -> ``(text' [B, C],
  img' [B, H, W, C])``:
  ``pe = dwconv3x3(img)``; ``t' = LN1(t + Att(t, img + pe, img))``;
  ``t' = LN2(t' + MLP(t'))`` (C -> 4C, exact GELU, 4C -> C);
  ``img' = LN3(img + Att(img + pe, t' + t, t'))``.
  """
  dim: int
  heads: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, img, text):
    b, h, w, c = img.shape
    pe = nn.Conv(c, (3, 3), padding=1, feature_group_count=c,
                 dtype=self.dtype, name="img_pe_transform")(img)
    seq = img.reshape(b, h * w, c)
    keys = (img + pe).reshape(b, h * w, c)
    t = text[:, None, :]
    t2 = Attention(self.dim, self.heads, self.dtype, name="txt2img")(
        t, keys, seq)
    t2 = _ln("norm1", self.dtype)(t + t2)
    hidden = nn.Dense(4 * self.dim, dtype=self.dtype, name="mlp_fc1")(t2)
    hidden = nn.gelu(hidden, approximate=False)
    hidden = nn.Dense(self.dim, dtype=self.dtype, name="mlp_fc2")(hidden)
    t2 = _ln("norm2", self.dtype)(t2 + hidden)
    i2 = Attention(self.dim, self.heads, self.dtype, name="img2txt")(
        keys, t2 + t, t2)
    i2 = _ln("norm3", self.dtype)(seq + i2)
    return t2[:, 0, :], i2.reshape(b, h, w, c)


class TextLevel(nn.Module):
  """One semantic level (official ``upsample1`` / ``upsample2``).

  Call: ``(low [B, h, w, Cl], high [B, 2h, 2w, Ch], text0 [B, 768],
  guide [B, 2h', 2w'] or None)`` -> ``(x [B, 2h, 2w, dim], text [B, dim],
  sim [B, 8h, 8w] or [B, 4h, 4w])``; ``guide`` (the previous level's
  similarity map) is resized to 2h x 2w and gates ``low'`` as
  ``x + guide * low'``; ``sim`` is the cosine of the text with ``x``
  upsampled ``sim_ups`` times by 2.
  """
  dim: int
  sim_ups: int
  heads: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, low, high, text0, guide=None):
    low = nn.relu(_conv(self.dim, "conv1", self.dtype)(
        upsample_bilinear(low)))
    x = jnp.concatenate([high.astype(low.dtype), low], -1)
    x = nn.relu(_conv(self.dim, "conv2", self.dtype)(x))
    if guide is not None:
      g = resize_bilinear(guide[..., None], x.shape[1], x.shape[2])
      x = x + g.astype(x.dtype) * low
    t = nn.Dense(self.dim, dtype=self.dtype, name="text_conv")(text0)
    t = t + _ln("norm1", self.dtype)(t)
    t, x = ImgTxtFusion(self.dim, self.heads, self.dtype,
                        name="img_txt_fusion1")(x, t)
    x = nn.relu(_conv(self.dim, "conv3", self.dtype)(x))
    t, x = ImgTxtFusion(self.dim, self.heads, self.dtype,
                        name="img_txt_fusion2")(x, t)
    y = x
    for _ in range(self.sim_ups):
      y = upsample_bilinear(y)
    return x, t, cosine_map(y, t)


class PlainLevel(nn.Module):
  """The level without text (official ``upsample3``).

  Call: ``(low [B, h, w, Cl], high [B, 2h, 2w, Ch], guide [B, 2h, 2w])`` ->
  [B, 2h, 2w, dim]: ``relu(conv([high, low'])) + guide * low'`` with
  ``low' = relu(conv(up(low)))``.
  """
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, low, high, guide):
    low = nn.relu(_conv(self.dim, "conv1", self.dtype)(
        upsample_bilinear(low)))
    x = jnp.concatenate([high.astype(low.dtype), low], -1)
    x = nn.relu(_conv(self.dim, "conv2", self.dtype)(x))
    return x + guide[..., None].astype(x.dtype) * low


class Regressor(nn.Module):
  """Official ``Regressor``: [B, h, w, dim] -> density float32 [B, h, w].

  Two post-norm self-attention blocks ``x = LN(x + Att(x + pe, x + pe, x))``
  (``pe`` = depthwise 3x3 conv) with ``relu(conv)`` between, then
  ``reg_head``: conv 3x3 dim->dim, ReLU, conv 3x3 dim->dim/2, ReLU, conv 1x1
  -> 1, ReLU.
  """
  dim: int = 256
  heads: int = 8
  dtype: Any = jnp.float32

  def _block(self, x, i):
    b, h, w, c = x.shape
    pe = nn.Conv(c, (3, 3), padding=1, feature_group_count=c,
                 dtype=self.dtype, name=f"img_pe_transform{i}")(x)
    qk = (x + pe).reshape(b, h * w, c)
    seq = x.reshape(b, h * w, c)
    y = Attention(self.dim, self.heads, self.dtype,
                  name=f"self_attn{i}")(qk, qk, seq)
    return _ln(f"norm{i}", self.dtype)(seq + y).reshape(b, h, w, c)

  @nn.compact
  def __call__(self, x):
    x = self._block(x, 1)
    x = nn.relu(_conv(self.dim, "conv", self.dtype)(x))
    x = self._block(x, 2)
    x = nn.relu(_conv(self.dim, "reg_head_0", self.dtype)(x))
    x = nn.relu(_conv(self.dim // 2, "reg_head_2", self.dtype)(x))
    x = nn.relu(_conv(1, "reg_head_4", self.dtype, kernel=1)(x))
    return x[..., 0].astype(jnp.float32)


class HSCMDecoder(nn.Module):
  """T2ICount's decoder (see module docstring).

  Call: ``(taps, text0)`` with ``taps = (A [B, h/8, w/8, 1280],
  B [B, h/4, w/4, 1280], C [B, h/2, w/2, 640], D [B, h, w, 320])`` (the
  UNet taps, h x w the latent grid = input / 8) and ``text0`` float [B, 768]
  (mean CLIP hidden state over the prompt tokens). Returns a dict:
  ``density`` float32 [B, h, w] (x60 domain), ``sim_x2`` / ``sim_x1``
  float32 [B, h, w] (cosine maps of levels 1 / 2, the inputs of L_RRC),
  and the intermediates ``up1_feat`` [B, h/4, w/4, 640], ``up1_text``
  [B, 640], ``up2_feat`` [B, h/2, w/2, 320], ``up2_text`` [B, 320],
  ``up3_feat`` [B, h, w, 256].

  Raises:
    ValueError: if the tap shapes are not the 2x pyramid this expects.
  """
  dims: tuple[int, int, int] = (640, 320, 256)
  heads: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, taps, text0):
    a, b_, c, d = taps
    h, w = d.shape[1:3]
    for tap, f in zip((a, b_, c), (8, 4, 2)):
      if tap.shape[1] * f != h or tap.shape[2] * f != w:
        raise ValueError(
            "HSCMDecoder: taps must be at 1/8, 1/4, 1/2 and 1/1 of the "
            f"latent grid, got {[tuple(t.shape) for t in taps]}")
    x1, t1, sim2 = TextLevel(self.dims[0], 2, self.heads, self.dtype,
                             name="upsample1")(a, b_, text0)
    x2, t2, sim1 = TextLevel(self.dims[1], 1, self.heads, self.dtype,
                             name="upsample2")(x1, c, text0, sim2)
    x3 = PlainLevel(self.dims[2], self.dtype, name="upsample3")(x2, d, sim1)
    density = Regressor(self.dims[2], self.heads, self.dtype,
                        name="regressor")(x3)
    f32 = lambda v: v.astype(jnp.float32)
    return {"density": density, "sim_x2": sim2, "sim_x1": sim1,
            "up1_feat": f32(x1), "up1_text": f32(t1), "up2_feat": f32(x2),
            "up2_text": f32(t2), "up3_feat": f32(x3)}
