"""T2ICount's prompt-side reductions: text vector and fused attention map.

* :func:`text_feature` — the decoder's text input ``t0``: the mean CLIP
  last hidden state over the prompt tokens (positions 1..n of the n
  class-name tokens; BOS, EOS and padding excluded).
* :func:`group_cross_attention` — the UNet's head-averaged cross-attention
  maps (every attn2 layer of the down and up paths, the mid block
  excluded, only maps whose query grid has at most ``max_size`` cells:
  the official selector ``down_cross+up_cross`` with a maximum of the
  latent size) averaged per spatial size.
* :func:`fused_attention` — per size: upsampled bilinearly to the latent
  grid (``align_corners=False``), averaged over the prompt tokens, min-max
  normalised per sample (eps 1e-7), fused as ``0.6 A(h/4) + 0.3 A(h/2) +
  0.1 A(h)`` (h = latent size; 12², 24², 48² at 384² crops) and stopped
  from gradients. The paper does not give these weights; they are the
  official code's. It only feeds the ambiguity mask of L_RRC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from counting_jax.models.t2icount_decoder import resize_bilinear

__all__ = ["text_feature", "group_cross_attention", "token_mean_map",
           "minmax_norm", "fused_attention", "FUSION_WEIGHTS"]

# Weights of the cross-attention scales, coarse to fine (latent / 4, / 2, 1).
FUSION_WEIGHTS = (0.6, 0.3, 0.1)


def text_feature(states, prompt_mask):
  """Mean of ``states`` [B, 77, D] over ``prompt_mask`` [B, 77] (1 on the
  prompt tokens) -> float32 [B, D]. An all-zero mask (empty prompt) gives
  zeros instead of NaN (the official code divides by zero there)."""
  m = prompt_mask.astype(jnp.float32)[..., None]
  total = jnp.sum(states.astype(jnp.float32) * m, 1)
  return total / jnp.maximum(jnp.sum(m, 1), 1.0)


def group_cross_attention(cross_attention, max_size: int):
  """Average the attn2 maps of the down and up paths per spatial size.

  Args:
    cross_attention: ``{"down": [...], "mid": [...], "up": [...]}`` lists of
      head-averaged softmax maps float [B, h_i * w_i, 77] (square grids).
    max_size: the latent side h; maps with more than h² queries are
      dropped (none in SD-1.5 at t = 0: the finest grid is the latent).

  Returns:
    ``{side: float32 [B, side, side, 77]}`` for every side present, the
    mean over the layers of that size ("mid" is never used).

  Raises:
    ValueError: if a map's query count is not a square.
  """
  groups: dict[int, list] = {}
  for m in list(cross_attention["down"]) + list(cross_attention["up"]):
    n = m.shape[1]
    side = int(round(n ** 0.5))
    if side * side != n:
      raise ValueError(f"cross-attention map with {n} queries is not square")
    if n <= max_size * max_size:
      groups.setdefault(side, []).append(m.astype(jnp.float32))
  return {s: (sum(ms) / len(ms)).reshape(ms[0].shape[0], s, s, -1)
          for s, ms in groups.items()}


def token_mean_map(attn, prompt_mask, size: int):
  """[B, s, s, 77] -> float32 [B, size, size]: bilinear resize to
  ``size`` (``align_corners=False``), then the mean over the prompt
  tokens (``prompt_mask`` [B, 77]; zeros for an empty prompt)."""
  a = resize_bilinear(attn.astype(jnp.float32), size, size)
  m = prompt_mask.astype(jnp.float32)
  return (jnp.einsum("bhwt,bt->bhw", a, m)
          / jnp.maximum(jnp.sum(m, -1), 1.0)[:, None, None])


def minmax_norm(x, eps: float = 1e-7):
  """Per-sample ``(x - min) / (max - min + eps)`` over all but axis 0."""
  axes = tuple(range(1, x.ndim))
  lo = jnp.min(x, axes, keepdims=True)
  hi = jnp.max(x, axes, keepdims=True)
  return (x - lo) / (hi - lo + eps)


def fused_attention(grouped, prompt_mask, size: int):
  """The fused, normalised cross-attention map (see module docstring).

  Args:
    grouped: ``{side: [B, side, side, 77]}`` from
      :func:`group_cross_attention`; must hold ``size // 4``,
      ``size // 2`` and ``size``.
    prompt_mask: [B, 77] 1 on the prompt tokens.
    size: the latent side (48 at 384² crops).

  Returns:
    float32 [B, size, size] in [0, 1], without gradient.

  Raises:
    KeyError: naming the missing sizes.
  """
  sides = (size // 4, size // 2, size)
  missing = [s for s in sides if s not in grouped]
  if missing:
    raise KeyError(f"fused_attention needs cross-attention maps at sides "
                   f"{sides}, missing {missing} (have {sorted(grouped)})")
  fused = 0.0
  for w, s in zip(FUSION_WEIGHTS, sides):
    fused = fused + w * minmax_norm(token_mean_map(grouped[s], prompt_mask,
                                                   size))
  return jax.lax.stop_gradient(fused)
