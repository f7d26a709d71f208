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

How it runs (each OT step the same to float32 rounding whatever ``block``
and ``separable``; see the end of this paragraph for whole runs):

* Separable passes (``separable``, default on CPU for large maps): the
  cost is a sum of an x part and a y part on the pixel grid, so a pass's
  two log-sum-exps are two matrix products ([h, K] x [K, w] and
  [h, w] x [w, K]) of factors stabilised per row, column and point, with
  (h + w) K exps instead of one per pixel-point pair
  (:func:`_softmins_separable`). It holds while ε is large against the
  squared pixel-to-point offsets; each pass checks its sums, and from the
  first one that fails (ε ~ 1-3 on ShanghaiTech-like maps, i.e. after ~36
  of ~55 passes) the OT step continues with the one-exp passes.
* One-exp passes: the pixels with mass are packed first and visited in
  blocks of ``block`` pixels, the costs computed per block and never
  stored, and only the blocks holding mass are visited. Each pass takes one
  exp per pair: both log-sum-exps are shifted by the old potentials instead
  of their maxima, E_ij = exp((F_i + G_j - C_ij) / ε), F~_i = F_i - ε log
  sum_j E_ij, G~_j = G_j - ε log sum_i a_i E_ij (no max pass, one exp
  serving both softmins); every sum is checked to lie in [e^-60, e^60],
  where this equals the max-shifted form to float32 rounding, and an OT
  step where one does not is redone with max-shifted passes (never taken
  on the test and benchmark maps).
* The default block on CPU keeps each block's [block, K] temporaries in
  cache (1,024 pixels for K = 1,000) and the maps of a batch run one after
  the other (vmapped, XLA:CPU ran the one-exp passes 2.4x slower: 2.8 s
  against 1.15 s per map); elsewhere one block holds the whole map, the
  batch is vmapped and the separable passes are off (under vmap their
  per-pass ``cond`` would run both branches; ``separable=True`` turns them
  on).

What it buys, 1024x768 image at stride 8 (128x96 map, 6,784 pixels with
mass) with 1,000 points, XLA:CPU (jaxlib 0.10.2, 2 shared cores,
``benchmarks/localization.py --only otm``, median of 5): 3.9 s with the
dense [n, K] cost matrix; 1.20 s in packed blocks of 1,024 pixels with two
exps and two max passes per pair; 0.83-1.22 s with one exp; 0.41-0.73 s
with the separable passes (three runs; 0.83-1.38 s without them in the
same runs, 2.28-2.40 s for the official algorithm as written). 256x192
map at stride 2 with 300 points: 23.4 s -> 3.46 s -> 2.61 s -> 1.18 s.
OT-M's unconverged ε = 0.01 solve amplifies rounding differences on a few
points: on the 1,000-point map the default and the official algorithm as
written differ by more than 0.1 px on 8 points and by at most 1.4 px (one
point); on the 300-point map by at most 0.05 px.

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


# Smallest scaled sum accepted by the separable pass (below): every factor
# is <= 1, so what underflows is < e^-87 per term, at most max(K, h w) terms;
# against a sum >= e^-50 that is < 1e-9 relative up to 10^6 terms.
_SEP_LOG_MIN = 50.0


def _softmins_separable(grid, f, pts, g, eps, cost_scale, point_ok):
  """Both softmins of :func:`_softmins_scaled` as two matrix products over
  the whole pixel grid; (f~, g~, ok), ok False when a sum left its range.

  The cost is separable on the pixel grid, C_(r,c),j = Dy_rj + Dx_cj with
  Dy_rj = s (y_r - y_j)^2 and Dx_cj = s (x_c - x_j)^2, so
  f~_rc = -eps log sum_j exp((g_j - Dy_rj - Dx_cj) / eps)
        = beta_c - alpha_r - eps log T_rc,  T = Ky Kx^T  ([h, K] x [K, w]),
  Ky_rj = exp((g_j - Dy_rj - alpha_r) / eps), alpha_r = max_j (g_j - Dy_rj),
  Kx_cj = exp((beta_c - Dx_cj) / eps),        beta_c = min_j Dx_cj,
  and with z_rc = f_rc + eps log a_rc, omega_r = max_c z_rc,
  g~_j = beta'_j - mu_j - eps log sum_r Sy_rj M_rj,  M = W Kx'  ([h, w] x
  [w, K]), W_rc = exp((z_rc - omega_r) / eps), Kx'_cj = exp((beta'_j -
  Dx_cj) / eps), beta'_j = min_c Dx_cj, Sy_rj = exp((omega_r - Dy_rj -
  mu_j) / eps), mu_j = max_r (omega_r - Dy_rj). About h w K multiply-adds
  and (h + w) K exps instead of one exp per pixel-point pair.

  Every factor is <= 1 (no overflow); a factor or product that underflows
  is < e^-87. The shifts keep the dominant term of each sum at least
  exp(-2 Dx / eps) for the x-offset Dx between a pixel and its dominant
  point, so the pass holds while eps is large against the squared offsets
  (on ShanghaiTech-like maps: the first ~36 of ~55 passes, down to eps ~ 1)
  and fails at small eps; ``ok`` is False when some T_rc of a pixel with
  mass or some sum of a point is below e^-50 (the caller then takes the
  one-exp pass).

  grid: (x_c float32 [w], y_r float32 [h], log_a float32 [h, w] (-inf: no
  mass)); f float32 [h, w] (pixels without mass keep theirs); pts [K, 2],
  g [K], point_ok bool [K].
  """
  xc, yr, log_a = grid
  has = jnp.isfinite(log_a)
  inv = 1.0 / eps
  highest = jax.lax.Precision.HIGHEST
  dx = xc[:, None] - pts[None, :, 0]
  dy = yr[:, None] - pts[None, :, 1]
  dx2, dy2 = dx * dx * cost_scale, dy * dy * cost_scale  # [w, K], [h, K]
  lo = jnp.exp(-_SEP_LOG_MIN)

  zy = jnp.where(point_ok, g, -jnp.inf)[None, :] - dy2
  alpha = jnp.max(zy, axis=1)
  ky = jnp.exp((zy - alpha[:, None]) * inv)
  dxv = jnp.where(point_ok[None, :], dx2, jnp.inf)
  beta = jnp.min(dxv, axis=1)
  kx = jnp.exp((beta[:, None] - dxv) * inv)
  t = jnp.dot(ky, kx.T, precision=highest)
  f_new = jnp.where(has, beta[None, :] - alpha[:, None] - eps * jnp.log(t), f)
  ok = jnp.all(~has | (t >= lo))

  z = jnp.where(has, f + eps * log_a, -jnp.inf)
  omega = jnp.max(z, axis=1)
  w = jnp.exp((z - jnp.where(jnp.isfinite(omega), omega, 0.0)[:, None])
              * inv)
  beta2 = jnp.min(dx2, axis=0)
  m = jnp.dot(w, jnp.exp((beta2[None, :] - dx2) * inv), precision=highest)
  zz = omega[:, None] - dy2
  mu = jnp.max(zz, axis=0)
  col = jnp.sum(jnp.exp((zz - mu[None, :]) * inv) * m, axis=0)
  g_new = jnp.where(point_ok, beta2 - mu - eps * jnp.log(col), g)
  ok = ok & jnp.all(~point_ok | (col >= lo))
  return f_new, g_new, ok


def _solve_blocked(xs, log_a, n_blocks, grid, order, pts, *, log_b,
                   cost_scale, blur, scaling, min_diameter, max_steps,
                   separable):
  """One OT step: potentials by ε-scaling, then the barycentres [k, 2].

  xs float32 [nb, block, 2] pixel centres and log_a [nb, block] their log
  masses (-inf: no mass), pixels with mass first; only the first
  ``n_blocks`` blocks are visited. D = max(min_diameter, max C) over the
  pairs with mass. ``grid`` is the map as :func:`_softmins_separable` takes
  it and ``order`` int32 [nb * block] the grid index of each packed pixel
  (h * w for padding); with ``separable``, each ε pass is tried as
  :func:`_softmins_separable` until one fails its check, the rest (and
  that one) run as :func:`_softmins_scaled`.
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

  size = grid[2].size
  has = jnp.isfinite(log_a)

  def one_exp(f, g, eps):
    return _softmins_scaled(xs, a, f, pts, g, eps, n_blocks, cost_scale,
                            point_ok)

  def try_separable(f, g, eps):
    """(f~, g~, ok, separable ok): the separable pass where it holds, else
    the one-exp pass."""
    f_grid = jnp.zeros(size + 1, jnp.float32).at[order].set(f.reshape(-1))
    fs, gs, sep_ok = _softmins_separable(
        grid, f_grid[:size].reshape(grid[2].shape), pts, g, eps, cost_scale,
        point_ok)
    fs = jnp.concatenate([fs.reshape(-1), jnp.zeros(1, jnp.float32)])
    fs = jnp.where(has, fs[order].reshape(f.shape), f)
    return jax.lax.cond(sep_ok, lambda: (fs, gs, jnp.asarray(True), sep_ok),
                        lambda: (*one_exp(f, g, eps), sep_ok))

  def potentials(fast):
    """(F, G, ok) of the ε-scaling; ``fast``: the separable and one-exp
    passes, ok False when a one-exp pass left its range; else the
    max-shifted passes."""
    def softmins(f, g, eps, sep):
      if not fast:
        return (*_softmins_blocked(xs, log_a, f, pts, log_b, g, eps,
                                   n_blocks, cost_scale), True, sep)
      if not separable:
        return (*one_exp(f, g, eps), sep)
      return jax.lax.cond(sep, try_separable,
                          lambda *args: (*one_exp(*args), sep), f, g, eps)

    f, g, ok, sep = softmins(jnp.zeros(log_a.shape, jnp.float32),
                             jnp.zeros(log_b.shape, jnp.float32),
                             eps_list[0], jnp.asarray(True))

    def body(state):
      i, f, g, ok, sep = state
      ft, gt, ok_t, sep = softmins(f, g, eps_list[i], sep)
      return i + 1, 0.5 * (f + ft), 0.5 * (g + gt), ok & ok_t, sep

    _, f, g, ok, sep = jax.lax.while_loop(lambda s: s[0] < length, body,
                                          (0, f, g, ok, sep))
    ft, gt, ok_t, _ = softmins(f, g, blur, sep)
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
                 has_init, block, separable):
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
  # Valid pixels first (stable), padded to whole blocks with no mass (grid
  # index n: a dummy pixel at (0, 0) without mass); only the blocks holding
  # valid pixels are visited.
  n = src.shape[0]
  n_blocks_max = -(-n // block)
  order = jnp.pad(jnp.argsort(~src_mask, stable=True),
                  (0, n_blocks_max * block - n), constant_values=n)
  xs = jnp.pad(src, ((0, 1), (0, 0)))[order].reshape(n_blocks_max, block, 2)
  la = jnp.pad(log_a, (0, 1), constant_values=-jnp.inf)[order]
  la = la.reshape(n_blocks_max, block)
  n_blocks = (src_mask.sum() + block - 1) // block
  grid = (src[:w, 0], src[::w, 1], log_a.reshape(h, w))
  solve = functools.partial(
      _solve_blocked, xs, la, n_blocks, grid, order, log_b=log_b,
      cost_scale=cost_scale, blur=blur, scaling=scaling,
      min_diameter=min_diameter, max_steps=max_steps, separable=separable)
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
    "min_diameter", "center_offset", "max_steps", "block", "separable"))
def ot_m(density, *, stride: float, max_points: int = 1024, key=None,
         init_points=None, max_iter: int = 16, blur: float = 0.01,
         scaling: float = 0.75, cost_scale: float = 1.0 / 64.0,
         min_diameter: float = 8.0, center_offset: float | None = None,
         max_steps: int = 96, block: int | None = None,
         separable: bool | None = None) -> Localization:
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
    separable: run the large-ε passes as two matrix products over the
      pixel grid (the cost is separable in x and y) instead of one exp per
      pixel-point pair, as long as their range check holds (speed only: the
      same values to float32 rounding); default on CPU when h w K > 2^20,
      where it makes the 1024x768 / 1,000-point benchmark map 2x faster
      (0.41 s against 0.83 s); elsewhere off (under vmap its per-pass
      ``cond`` would run both branches).

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
  if separable is None:
    # CPU only, and only where a pass is large (more than 2^20 pixel-point
    # pairs): at 64x64 with 100 points the separable passes' fixed costs
    # made OT-M 0.06 s against 0.03 s.
    separable = cpu and n * max_points > 2**20
  single = functools.partial(
      _ot_m_single, stride=stride, k_max=max_points, offset=offset,
      max_iter=max_iter, blur=blur, scaling=scaling, cost_scale=cost_scale,
      min_diameter=min_diameter, max_steps=max_steps, has_init=has_init,
      block=min(block, n), separable=separable)
  args = (density, keys, init_points)
  if cpu:
    # CPU only: one map after the other. Under vmap XLA:CPU runs the
    # one-exp passes 2.4x slower (2.8 s against 1.15 s per map, see the
    # module docstring); elsewhere the batch is vmapped.
    out = jax.lax.map(lambda t: single(*t), args)
  else:
    out = jax.vmap(single)(*args)
  return Localization(*out)

