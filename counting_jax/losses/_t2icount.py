"""T2ICount's training loss: L_reg (masked multi-scale SSIM + sum-normalised
L1) and the representation regional coherence loss L_RRC.

All maps are on the density grid (stride 8 at 384² crops), batch first,
float [B, h, w], in the official x60 domain (GT = 60 x the block-summed
density; thresholds 60 x 1e-3 = 0.06). Source: Qian et al., "T2ICount"
(CVPR 2025), supplement eq. 11 (L_reg) and main-paper L_RRC, with the
official trainer's constants where the paper gives none:

* **SSIM term** = (1/3) sum over 3 scales m (2x2 average pooling between)
  of 1 - SSIM(pool^m(D * S), pool^m(G * S)), with the foreground mask
  S = [G > 0.06] (the paper writes >=; ``ssim_mask_inclusive=True``),
  a 3x3 Gaussian window (sigma 1.5, normalised, zero padding 1),
  C1 = 0.01², C2 = 0.03²; the SSIM map is averaged over pixels **and the
  batch** (so per-image terms in ``aux`` are not exact shares of it).
* **TV term** = per image sum |D / (sum D + 1e-6) - G / (sum G + 1e-6)|
  (the paper calls it "L2-like"; the code's L1 is the default, the squared
  form is ``tv_norm="l2"``), batch mean.
* L_reg = SSIM term + ``tv_weight`` (0.1) x TV term.
* **L_RRC(s)** for a cosine map s (``sim_x2`` of level 1 and ``sim_x1`` of
  level 2): P = [G >= 0.06], ambiguous AN = [fused * R >= 0.3] (R the
  same-class region map, fused the normalised cross-attention map,
  no gradient), N = not P and not AN; per image
  gamma * sum (1 - s) P / (|P| + 1e-7) + sum max(s, 0) N / (|N| + 1e-7),
  gamma = 2; batch mean.
* total = L_reg + 0.01 L_RRC(sim_x2) + 0.01 L_RRC(sim_x1) (the 0.01
  weights and the 0.3 threshold are not in the paper).

An image without objects (empty GT, e.g. a negative prompt) gives SSIM 1
(term 0) and TV term exactly 1 with a vanishing gradient; it is learned
through L_RRC, whose N covers the map. Everything stays finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["t2icount_loss", "ssim_term", "tv_term", "rrc_loss",
           "gaussian_window", "ssim"]


def gaussian_window(size: int = 3, sigma: float = 1.5) -> np.ndarray:
  """Normalised 2-D Gaussian window float32 [size, size]."""
  x = np.arange(size, dtype=np.float64) - size // 2
  g = np.exp(-x * x / (2.0 * sigma * sigma))
  g = g / g.sum()
  return np.outer(g, g).astype(np.float32)


def _filter(x, window):
  """[B, h, w] correlated with ``window`` (zero padding to 'same')."""
  k = jnp.asarray(window)[:, :, None, None]
  p = window.shape[0] // 2
  y = jax.lax.conv_general_dilated(
      x[..., None], k, (1, 1), [(p, p), (p, p)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  return y[..., 0]


def ssim(x, y, window=None, c1: float = 0.01 ** 2, c2: float = 0.03 ** 2):
  """SSIM map float32 [B, h, w] of two [B, h, w] maps (unit dynamic range
  constants; Wang et al. 2004 with a Gaussian window, zero padding)."""
  window = gaussian_window() if window is None else window
  mx, my = _filter(x, window), _filter(y, window)
  sxx = _filter(x * x, window) - mx * mx
  syy = _filter(y * y, window) - my * my
  sxy = _filter(x * y, window) - mx * my
  return (((2 * mx * my + c1) * (2 * sxy + c2))
          / ((mx * mx + my * my + c1) * (sxx + syy + c2)))


def _avg_pool2(x):
  b, h, w = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2).mean((2, 4))


def ssim_term(pred, gt, *, scales: int = 3, threshold: float = 0.06,
              inclusive: bool = False):
  """(1/scales) sum_m (1 - mean SSIM) on foreground-masked maps.

  Returns:
    (scalar float32, [B] per-image values of the same expression).
  """
  fg = (gt >= threshold) if inclusive else (gt > threshold)
  fg = fg.astype(pred.dtype)
  x, y = pred * fg, gt * fg
  total, per_image = 0.0, 0.0
  for m in range(scales):
    if m:
      x, y = _avg_pool2(x), _avg_pool2(y)
    s = ssim(x, y)
    total = total + (1.0 - s.mean())
    per_image = per_image + (1.0 - s.mean((1, 2)))
  return total / scales, per_image / scales


def tv_term(pred, gt, *, norm: str = "l1", eps: float = 1e-6):
  """[B] sum over pixels of |D/(sum D + eps) - G/(sum G + eps)| (``l1``)
  or its square (``l2``).

  Raises:
    ValueError: for another ``norm``.
  """
  p = pred / (pred.sum((1, 2), keepdims=True) + eps)
  g = gt / (gt.sum((1, 2), keepdims=True) + eps)
  if norm == "l1":
    # |d| with derivative sign(d), 0 at d = 0 as PyTorch's abs (jnp.abs
    # takes +1 there; it matters on the many pixels where both maps are 0).
    d = p - g
    return (d * jax.lax.stop_gradient(jnp.sign(d))).sum((1, 2))
  if norm == "l2":
    return jnp.square(p - g).sum((1, 2))
  raise ValueError(f"tv_norm must be 'l1' or 'l2', got {norm!r}")


def rrc_loss(sim, gt, ambiguous, *, gamma: float = 2.0,
             threshold: float = 0.06, eps: float = 1e-7):
  """Per-image L_RRC float32 [B] and the (|P|, |N|) counts [B].

  Args:
    sim: [B, h, w] cosine map in [-1, 1].
    gt: [B, h, w] x60 GT density; positives P = gt >= threshold.
    ambiguous: bool [B, h, w] pixels excluded from the negatives.
  """
  pos = (gt >= threshold).astype(sim.dtype)
  neg = ((gt < threshold) & ~ambiguous).astype(sim.dtype)
  n_pos, n_neg = pos.sum((1, 2)), neg.sum((1, 2))
  loss = (gamma * ((1.0 - sim) * pos).sum((1, 2)) / (n_pos + eps)
          + (jnp.maximum(sim, 0.0) * neg).sum((1, 2)) / (n_neg + eps))
  return loss, (n_pos, n_neg)


def t2icount_loss(density, sim_x2, sim_x1, gt, fused_attention, region, *,
                  tv_weight: float = 0.1, rrc_weight: float = 0.01,
                  gamma: float = 2.0, ambiguity_threshold: float = 0.3,
                  threshold: float = 0.06, scales: int = 3,
                  ssim_mask_inclusive: bool = False, tv_norm: str = "l1"):
  """T2ICount's total training loss (see module docstring).

  Args:
    density: float [B, h, w] predicted map (x60 domain).
    sim_x2, sim_x1: float [B, h, w] level-1 / level-2 cosine maps.
    gt: float [B, h, w] x60 GT (60 x block-summed density).
    fused_attention: float [B, h, w] in [0, 1] (no gradient is taken).
    region: float [B, h, w] same-class region map R (1 where a pixel shows
      the prompt's class or is unknown, 0 on other classes' tiles).

  Returns:
    (total float32 [], aux {name: float32 [B]}): ``ssim``, ``tv``,
    ``rrc1`` (sim_x2), ``rrc2`` (sim_x1), ``reg``, ``total`` per image
    (``ssim`` and hence ``reg``/``total`` per image use each image's own
    SSIM mean; their batch mean equals the scalar since all images share a
    size).

  Raises:
    ValueError: for mismatched shapes.
  """
  shapes = {a.shape for a in (density, sim_x2, sim_x1, gt, fused_attention,
                              region)}
  if len(shapes) != 1 or len(density.shape) != 3:
    got = [a.shape for a in (density, sim_x2, sim_x1, gt, fused_attention,
                             region)]
    raise ValueError("t2icount_loss: density, sim_x2, sim_x1, gt, "
                     "fused_attention and region must share one [B, h, w] "
                     f"shape, got {got}")
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  density, sim_x2, sim_x1, gt = map(f32, (density, sim_x2, sim_x1, gt))
  fused = jax.lax.stop_gradient(f32(fused_attention))
  ambiguous = fused * f32(region) >= ambiguity_threshold
  ssim_all, ssim_each = ssim_term(density, gt, scales=scales,
                                  threshold=threshold,
                                  inclusive=ssim_mask_inclusive)
  tv = tv_term(density, gt, norm=tv_norm)
  rrc1, _ = rrc_loss(sim_x2, gt, ambiguous, gamma=gamma, threshold=threshold)
  rrc2, _ = rrc_loss(sim_x1, gt, ambiguous, gamma=gamma, threshold=threshold)
  reg = ssim_all + tv_weight * tv.mean()
  total = reg + rrc_weight * (rrc1.mean() + rrc2.mean())
  reg_each = ssim_each + tv_weight * tv
  aux = {"ssim": ssim_each, "tv": tv, "rrc1": rrc1, "rrc2": rrc2,
         "reg": reg_each, "total": reg_each + rrc_weight * (rrc1 + rrc2)}
  return total, aux
