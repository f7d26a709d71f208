"""OT-M: points from a density map by optimal-transport minimisation.

Source: Lin & Chan, "Optimal Transport Minimization: Crowd Localization on
Density Maps for Semi-Supervised Counting", CVPR 2023, §3 (Alg. 1), and the
official ``otm.py`` / ``simple_ot.py`` (Elin24/OT-M). With the map rescaled
to hold K = round(sum) unit-mass points, alternate (Alg. 1):

1. OT step: entropic *balanced* OT between the pixels (mass = density) and
   the K points (mass 1), cost C_ij = |x_i - y_j|^2 / 64 (input pixels; the
   code's ``|x - y|^2 / 2 * (1/32)``), solved by GeomLoss-style ε-scaling:
   ε list [D] + exp(arange(log D, log blur, log scaling)) + [blur] with
   D = max(8, max C), blur 0.01, scaling 0.75, each step averaging the old
   potentials with both softmin updates computed from the old pair, then one
   extrapolation at ε = blur; plan P = a_i b_j exp((F_i + G_j - C_ij)/blur).
2. M step: every point moves to the P-weighted mean of the pixel centres
   (weights over its column, + 1e-12).

until the mean move is < 1 px and the largest < the stride (the moved points
are returned), at most 16 times. Pixels with density <= 1e-12 (after
rescaling) carry no mass. The initial points are K distinct pixels of the map
upsampled x stride (bilinear), drawn without replacement with probability
proportional to the upsampled density (the official code uses
``torch.multinomial``; here the Gumbel top-k trick with a JAX key, so the
draw differs; pass ``init_points`` to start from given points).

Why not ott-jax's Sinkhorn: the official loop is a fixed, *unconverged*
annealing with averaged symmetric updates, which ott's ε scheduler cannot
express (it changes ε between ordinary Sinkhorn iterations); this module
reuses the library's GeomLoss ε list (:func:`counting_jax.ot.epsilon_schedule`)
and pixel grid, and runs the softmins itself in the log domain.

How it runs (each OT step the same to float32 rounding whatever ``block``;
see the end of this paragraph for whole runs): the
pixels with mass are packed first and visited in blocks of ``block``
pixels, the costs computed per block and never stored, and only the blocks
holding mass are visited. Each pass takes one exp per pair: both
log-sum-exps are shifted by the old potentials instead of their maxima,
E_ij = exp((F_i + G_j - C_ij) / ε), F~_i = F_i - ε log sum_j E_ij,
G~_j = G_j - ε log sum_i a_i E_ij (no max pass, one exp serving both
softmins); every sum is checked to lie in [e^-60, e^60], where this equals
the max-shifted form to float32 rounding, and an OT step where one does
not is redone with max-shifted passes (never taken on the test and
benchmark maps). The default block on CPU keeps each block's [block, K]
temporaries in cache (1,024 pixels for K = 1,000) and the maps of a batch
run one after the other (vmapped, XLA:CPU ran the one-exp passes 2.4x
slower: 2.8 s against 1.15 s per map); elsewhere one block holds the whole
map and the batch is vmapped. What it buys, 1024x768 image at stride 8
(128x96 map, 6,784 pixels with mass) with 1,000 points, XLA:CPU (jaxlib
0.10.2, 2 shared cores, ``benchmarks/localization.py``, median of 5): 3.9
s with the dense [n, K] cost matrix, 1.20 s in packed blocks of 1,024
pixels with two exps and two max passes per pair, 0.96-1.22 s with one exp
(side by side in one run, medians on the shared machine: 1.41-1.64 s
against 0.93-1.14 s, a 0.66-0.69 ratio); 256x192 map
at stride 2 with 300 points: 23.4 s -> 3.46 s -> 3.15 s. OT-M's unconverged
ε = 0.01 solve amplifies rounding differences on a few points: the block
size moves 6 of 300 points by more than 0.5 px (one by 11 px) on the
300-point map above, and 1 of 1,000 by 0.9 px.

Differences from the official code, all documented at the argument:
* the output is (x, y), not (row, col);
* pixel centres follow :mod:`counting_jax.grid` (s*k + s/2). The official
  code also uses s*k + s/2, except for stride 1, where it uses the index k
  (``center_offset=0`` reproduces that);
* the loop always terminates: at most ``max_iter`` OT-M steps, each a
  bounded ε list; empty, all-zero, negative or non-finite maps give no
  points.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from counting_jax import ot
from counting_jax.localization._types import Localization

__all__ = ["ot_m"]

_MASS_FLOOR = 1e-12  # the official ``eps``: pixels at or below carry no mass.


def _lse(z, axis):
  """log-sum-exp along ``axis`` that returns -inf for all -inf slices."""
  m = jnp.max(z, axis=axis, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  s = jnp.sum(jnp.exp(z - m), axis=axis)
  return jnp.log(s) + jnp.squeeze(m, axis)


def _cost(src, pts, cost_scale):
  """C_ij = (dx^2 + dy^2) * cost_scale, float32 [n, k] (summed per axis:
  no reduction over a size-2 axis)."""
  dx = src[:, None, 0] - pts[None, :, 0]
  dy = src[:, None, 1] - pts[None, :, 1]
  return (dx * dx + dy * dy) * cost_scale


def _softmins_blocked(xs, log_a, f, pts, log_b, g, eps, n_blocks,
                      cost_scale):
  """Both softmins from the old pair (f, g) at ``eps``, one pass over the
  first ``n_blocks`` pixel blocks (costs computed per block, never stored).

  xs float32 [nb, block, 2], log_a and f float32 [nb, block] (pixels of
  blocks >= ``n_blocks`` carry no mass and keep their ``f``); pts [k, 2],
  log_b and g [k]. Returns f~ [nb, block] (softmin over points) and g~ [k]
  (softmin over pixels, a running log-sum-exp across blocks).
  """
  k = pts.shape[0]

  def body(i, carry):
    f_new, col_max, col_sum = carry
    x = jax.lax.dynamic_index_in_dim(xs, i, keepdims=False)
    la = jax.lax.dynamic_index_in_dim(log_a, i, keepdims=False)
    fb = jax.lax.dynamic_index_in_dim(f, i, keepdims=False)
    cost = _cost(x, pts, cost_scale)
    rows = -eps * _lse(log_b[None, :] + (g[None, :] - cost) / eps, axis=1)
    f_new = jax.lax.dynamic_update_index_in_dim(f_new, rows, i, 0)
    z = la[:, None] + (fb[:, None] - cost) / eps
    new_max = jnp.maximum(col_max, z.max(axis=0))
    shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    col_sum = col_sum * jnp.exp(col_max - shift) \
        + jnp.exp(z - shift[None, :]).sum(axis=0)
    return f_new, new_max, col_sum

  init = (f, jnp.full((k,), -jnp.inf, jnp.float32),
          jnp.zeros((k,), jnp.float32))
  f_new, col_max, col_sum = jax.lax.fori_loop(0, n_blocks, body, init)
  shift = jnp.where(jnp.isfinite(col_max), col_max, 0.0)
  return f_new, -eps * (jnp.log(col_sum) + shift)


# Range of the scaled sums R_i, S_j accepted by the one-exp pass (below).
# R_i <= e^60 keeps every term and every sum finite; R_i >= e^-60 (S_j
# likewise) keeps the largest term a normal float, so the terms flushed to 0
# (< e^-87 each, at most K or sum(a) <= K of them) weigh < e^-20 of the sum.
_LOG_RANGE = 60.0


def _softmins_scaled(xs, a, f, pts, g, eps, n_blocks, cost_scale, point_ok):
  """Both softmins as :func:`_softmins_blocked`, with one exp per pair.

  The shift of each log-sum-exp is the old potential instead of the max:
  with E_ij = exp((f_i + g_j - C_ij) / eps) (0 for pairs without mass),
  f~_i = f_i - eps log R_i, R_i = sum_j b_j E_ij (b_j = 1), and
  g~_j = g_j - eps log S_j, S_j = sum_i a_i E_ij: one exp per pair serves
  both sums (the plan kernel of the scaling form of Sinkhorn), and no max
  pass is needed. Equal to the max-shifted form to float32 rounding while
  every R_i and S_j lies in [e^-60, e^60] (see ``_LOG_RANGE``); returns
  (f~, g~, ok), ok False when some sum of a pixel or point with mass left
  that range (the caller then redoes the pass with
  :func:`_softmins_blocked`).

  a float32 [nb, block] pixel masses (0: none), other shapes as
  :func:`_softmins_blocked`; point_ok bool [k].
  """
  inv = 1.0 / eps
  lo, hi = jnp.exp(-_LOG_RANGE), jnp.exp(_LOG_RANGE)
  g_eff = jnp.where(point_ok, g, -jnp.inf)

  def body(i, carry):
    f_new, col, ok = carry
    x = jax.lax.dynamic_index_in_dim(xs, i, keepdims=False)
    ab = jax.lax.dynamic_index_in_dim(a, i, keepdims=False)
    fb = jax.lax.dynamic_index_in_dim(f, i, keepdims=False)
    has = ab > 0
    f_eff = jnp.where(has, fb, -jnp.inf)
    e = jnp.exp((f_eff[:, None] + g_eff[None, :] - _cost(x, pts, cost_scale))
                * inv)
    r = e.sum(axis=1)
    ok = ok & jnp.all(~has | ((r >= lo) & (r <= hi)))
    rows = jnp.where(has, fb - eps * jnp.log(r), fb)
    f_new = jax.lax.dynamic_update_index_in_dim(f_new, rows, i, 0)
    return f_new, col + ab @ e, ok

  init = (f, jnp.zeros(g.shape, jnp.float32), jnp.asarray(True))
  f_new, col, ok = jax.lax.fori_loop(0, n_blocks, body, init)
  ok = ok & jnp.all(~point_ok | ((col >= lo) & (col <= hi)))
  return f_new, jnp.where(point_ok, g - eps * jnp.log(col), g), ok


def _solve_blocked(xs, log_a, n_blocks, pts, *, log_b, cost_scale, blur,
                   scaling, min_diameter, max_steps):
  """One OT step: potentials by ε-scaling, then the barycentres [k, 2].

  xs float32 [nb, block, 2] pixel centres and log_a [nb, block] their log
  masses (-inf: no mass), pixels with mass first; only the first
  ``n_blocks`` blocks are visited. D = max(min_diameter, max C) over the
  pairs with mass.
  """
  point_ok = jnp.isfinite(log_b)

  def max_body(i, diam):
    x = jax.lax.dynamic_index_in_dim(xs, i, keepdims=False)
    la = jax.lax.dynamic_index_in_dim(log_a, i, keepdims=False)
    ok = jnp.isfinite(la)[:, None] & point_ok[None, :]
    cost = _cost(x, pts, cost_scale)
    return jnp.maximum(diam, jnp.max(jnp.where(ok, cost, -jnp.inf)))

  diam = jax.lax.fori_loop(0, n_blocks, max_body,
                           jnp.asarray(min_diameter, jnp.float32))
  eps_list, length = ot.epsilon_schedule(diam, blur=blur, scaling=scaling,
                                         max_steps=max_steps)

  def potentials(fast):
    """(F, G, ok) of the ε-scaling; ``fast``: the one-exp passes, ok False
    when one of them left its range; else the max-shifted passes."""
    def softmins(f, g, eps):
      if fast:
        return _softmins_scaled(xs, a, f, pts, g, eps, n_blocks, cost_scale,
                                point_ok)
      return (*_softmins_blocked(xs, log_a, f, pts, log_b, g, eps, n_blocks,
                                 cost_scale), True)

    f, g, ok = softmins(jnp.zeros(log_a.shape, jnp.float32),
                        jnp.zeros(log_b.shape, jnp.float32), eps_list[0])

    def body(state):
      i, f, g, ok = state
      ft, gt, ok_t = softmins(f, g, eps_list[i])
      return i + 1, 0.5 * (f + ft), 0.5 * (g + gt), ok & ok_t

    _, f, g, ok = jax.lax.while_loop(lambda s: s[0] < length, body,
                                     (0, f, g, ok))
    ft, gt, ok_t = softmins(f, g, blur)
    return ft, gt, ok & ok_t

  a = jnp.exp(log_a)
  f, g, ok = potentials(fast=True)
  # Rarely taken (never on the maps of the tests and the benchmark): the
  # max-shifted passes when a one-exp pass left its range. A while loop,
  # not a cond, so that under vmap it runs only when a map of the batch
  # needs it.
  f, g, _ = jax.lax.while_loop(lambda s: ~s[2],
                               lambda s: potentials(fast=False)[:2] + (True,),
                               (f, g, ok))

  def bary_body(i, carry):
    mass, sx, sy = carry
    x = jax.lax.dynamic_index_in_dim(xs, i, keepdims=False)
    la = jax.lax.dynamic_index_in_dim(log_a, i, keepdims=False)
    fb = jax.lax.dynamic_index_in_dim(f, i, keepdims=False)
    cost = _cost(x, pts, cost_scale)
    plan = jnp.exp((fb[:, None] + g[None, :] - cost) / blur + la[:, None]
                   + log_b[None, :])
    return mass + plan.sum(axis=0), sx + x[:, 0] @ plan, sy + x[:, 1] @ plan

  zero = jnp.zeros(log_b.shape, jnp.float32)
  mass, sx, sy = jax.lax.fori_loop(0, n_blocks, bary_body, (zero, zero, zero))
  mass = mass + _MASS_FLOOR
  return jnp.stack([sx / mass, sy / mass], axis=-1)


def _init_points(density, num, key, stride, k_max):
  """K distinct pixels of the x stride bilinear upsampling, drawn without
  replacement with probability proportional to the density (Gumbel top-k);
  returned as their centres (x, y) in input pixels."""
  h, w = density.shape
  up = jax.image.resize(density, (h * stride, w * stride), "bilinear")
  up = up.reshape(-1)
  logits = jnp.where(up > _MASS_FLOOR, jnp.log(jnp.maximum(up, 1e-30)),
                     -jnp.inf)
  gumbel = jax.random.gumbel(key, logits.shape, jnp.float32)
  # -inf logits stay -inf; ties among them are broken by index.
  k = min(k_max, up.shape[0])
  _, idx = jax.lax.top_k(logits + gumbel, k)
  idx = jnp.pad(idx, (0, k_max - k))
  width = w * stride
  return jnp.stack([idx % width + 0.5, idx // width + 0.5], axis=-1) \
      .astype(jnp.float32)


def _ot_m_single(density, key, init, *, stride, k_max, offset, max_iter,
                 blur, scaling, cost_scale, min_diameter, max_steps,
                 has_init, block):
  h, w = density.shape
  density = density.astype(jnp.float32)
  total = density.sum()
  ok = jnp.isfinite(total)
  count = jnp.where(ok & (total > 0), jnp.floor(total + 0.5), 0.0)
  count = count.astype(jnp.int32)
  num = jnp.minimum(count, k_max)
  scale = jnp.where(num > 0, num / jnp.where(total > 0, total, 1.0), 0.0)
  a = jnp.where(jnp.isfinite(density), density, 0.0).reshape(-1) * scale
  src_mask = a > _MASS_FLOOR
  log_a = jnp.where(src_mask, jnp.log(jnp.where(src_mask, a, 1.0)), -jnp.inf)
  src = ot.pixel_centers(h, w, stride=stride, offset=offset)
  pmask = jnp.arange(k_max) < num
  log_b = jnp.where(pmask, 0.0, -jnp.inf)
  if has_init:
    pts = init.astype(jnp.float32)
  else:
    pts = _init_points(density * scale, num, key, int(round(stride)), k_max)
  pts = jnp.where(pmask[:, None], pts, 0.0)
  # Valid pixels first (stable), padded to whole blocks with no mass; only
  # the blocks holding valid pixels are visited.
  n = src.shape[0]
  n_blocks_max = -(-n // block)
  pad = n_blocks_max * block - n
  order = jnp.argsort(~src_mask, stable=True)
  xs = jnp.pad(src[order], ((0, pad), (0, 0))).reshape(n_blocks_max, block, 2)
  la = jnp.pad(log_a[order], (0, pad), constant_values=-jnp.inf)
  la = la.reshape(n_blocks_max, block)
  n_blocks = (src_mask.sum() + block - 1) // block
  solve = functools.partial(
      _solve_blocked, xs, la, n_blocks, log_b=log_b, cost_scale=cost_scale,
      blur=blur, scaling=scaling, min_diameter=min_diameter,
      max_steps=max_steps)
  nvalid = jnp.maximum(num, 1).astype(jnp.float32)

  def body(state):
    i, pts, _ = state
    new = jnp.where(pmask[:, None], solve(pts), 0.0)
    move = jnp.sqrt(jnp.sum(jnp.square(new - pts), axis=-1))
    move = jnp.where(pmask, move, 0.0)
    done = (move.sum() / nvalid < 1.0) & (move.max() < stride)
    return i + 1, new, done

  def cond(state):
    i, _, done = state
    return (i < max_iter) & ~done & (num > 0)

  _, pts, _ = jax.lax.while_loop(cond, body, (0, pts, False))
  return jnp.where(pmask[:, None], pts, 0.0), pmask, count


@functools.partial(jax.jit, static_argnames=(
    "stride", "max_points", "max_iter", "blur", "scaling", "cost_scale",
    "min_diameter", "center_offset", "max_steps", "block"))
def ot_m(density, *, stride: float, max_points: int = 1024, key=None,
         init_points=None, max_iter: int = 16, blur: float = 0.01,
         scaling: float = 0.75, cost_scale: float = 1.0 / 64.0,
         min_diameter: float = 8.0, center_offset: float | None = None,
         max_steps: int = 96, block: int | None = None) -> Localization:
  """OT-M localization of a batch of density maps.

  Args:
    density: float [B, h, w] density maps (count units).
    stride: input pixels per density pixel (the official ``scale_factor``);
      also the bound on the largest move of the stopping rule, and the
      upsampling factor of the random initialisation (rounded to an
      integer there).
    max_points: K, the static bound on points per map. A map whose count
      round(sum) exceeds K is solved as if it held K objects (the density is
      rescaled to sum K, so each point stands for count / K objects);
      ``count`` returns round(sum).
    key: JAX PRNG key for the random initial points (default key 0). Ignored
      when ``init_points`` is given.
    init_points: optional float [B, K, 2] initial points (x, y) in input
      pixels; the first round(sum) rows of each map are used. The official
      initial points are integer (row, col) of the upsampled map; pass them
      swapped to (col, row) to reproduce the official run.
    max_iter: most OT-M iterations (official 16).
    blur: final ε (official 0.01), in cost units.
    scaling: ε-scaling factor (official ``ot_scaling`` 0.75).
    cost_scale: C = squared distance in input pixels x cost_scale (official
      1/64).
    min_diameter: floor D = max(min_diameter, max C) of the first ε
      (official 8).
    center_offset: centre of density pixel 0 in input pixels; default
      ``stride / 2`` (this library's convention; the official code's too
      except at stride 1, where it uses 0).
    max_steps: static bound on the ε list (about 45-65 entries for maps up
      to 4096 px; longer lists are cut, ending at the last entry reached).
    block: pixels per block of the OT passes (speed only: the same values
      to float32 rounding); default on CPU
      ``counting_jax.ot.pixel_block(h * w, K)`` (1,024 for K = 1,000),
      elsewhere the whole map.

  Returns:
    :class:`Localization`: points [B, K, 2] (x, y) in input pixels, mask
    [B, K] (the first min(count, K) rows), count int32 [B] = round(sum) (0 for
    empty, all-zero or non-finite maps).

  Raises:
    ValueError: if ``density`` is not [B, h, w], ``init_points`` is not
      [B, K, 2] or ``block`` < 1.
  """
  if density.ndim != 3:
    raise ValueError(f"density must be [B, h, w], got {density.shape}")
  batch = density.shape[0]
  has_init = init_points is not None
  if has_init:
    init_points = jnp.asarray(init_points)
    if init_points.shape != (batch, max_points, 2):
      raise ValueError(f"init_points must be [B, K, 2] = "
                       f"{(batch, max_points, 2)}, got {init_points.shape}")
  else:
    init_points = jnp.zeros((batch, max_points, 2), jnp.float32)
  if key is None:
    key = jax.random.key(0)
  keys = jax.random.split(key, batch)
  offset = stride / 2 if center_offset is None else center_offset
  n = density.shape[1] * density.shape[2]
  cpu = jax.default_backend() == "cpu"
  if block is None:
    # CPU only: blocks whose [block, K] temporaries stay in cache (see the
    # module docstring for what it buys); one block elsewhere.
    block = ot.pixel_block(n, max_points) if cpu else n
  if block < 1:
    raise ValueError(f"block must be >= 1, got {block}")
  single = functools.partial(
      _ot_m_single, stride=stride, k_max=max_points, offset=offset,
      max_iter=max_iter, blur=blur, scaling=scaling, cost_scale=cost_scale,
      min_diameter=min_diameter, max_steps=max_steps, has_init=has_init,
      block=min(block, n))
  args = (density, keys, init_points)
  if cpu:
    # CPU only: one map after the other. Under vmap XLA:CPU runs the
    # one-exp passes 2.4x slower (2.8 s against 1.15 s per map, see the
    # module docstring); elsewhere the batch is vmapped.
    out = jax.lax.map(lambda t: single(*t), args)
  else:
    out = jax.vmap(single)(*args)
  return Localization(*out)

