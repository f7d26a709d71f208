"""DM-Count (Wang et al. 2020): OT loss + count loss + count-weighted TV."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from counting_jax.losses import _checks
from counting_jax.losses import _distances

__all__ = ["dm_count_loss", "sinkhorn_knopp", "ot_gradient_surrogate",
           "discrete_count_map"]

_TINY = 1e-16  # DM-Count's M_EPS (losses/bregman_pytorch.py)
_SOLVERS = ("official", "ott")


def sinkhorn_knopp(a, b, cost, *, epsilon: float, num_iters: int = 100,
                   stop_threshold: float = 1e-9, check_every: int = 10,
                   kernel=None, u_init=None):
  """DM-Count's kernel-mode Sinkhorn-Knopp for one problem, in float32.

  Starting from u = 1/m, v = 1/n it repeats at most ``num_iters`` times
  v ← b / (Kᵀu + 1e-16), u ← a / (Kv + 1e-16) with K = exp(−C/ε). Every
  ``check_every`` iterations it computes err = ‖b − (Kᵀu)·v‖² and stops once
  err ≤ ``stop_threshold``. If an update produces a NaN/inf, the previous
  (u, v) are kept and the loop stops. The plan is diag(u) K diag(v).

  Args:
    a: float32 [m], point masses (zero for padded points).
    b: float32 [n], pixel masses.
    cost: float32 [m, n] cost matrix.
    epsilon: entropic regularisation ε ("reg", DM-Count: 10).
    num_iters: maximum number of iterations (DM-Count: 100).
    stop_threshold: stop when err ≤ this (DM-Count: 1e-9).
    check_every: iterations between error checks (DM-Count: 10).
    kernel: optional precomputed float32 [m, n] K (e.g. with zero rows for
      padded points); default exp(−cost/ε).
    u_init: initial u (scalar or [m]); default 1/m. With padded rows pass
      1 / (number of real points), as the official code sees no padding.

  Returns:
    (u [m], v [n], iterations int32): the potentials are α = ε log(u + 1e-16)
    and β = ε log(v + 1e-16).

  Raises:
    ValueError: if ``check_every`` < 1.

  Implementation: blocks of ``check_every`` plain updates (two mat-vecs
  each) followed by one error mat-vec, as the official loop, instead of a
  per-iteration test; the potentials and the iteration count are identical.

  Source: Cuturi, NeurIPS 2013; DM-Count ``losses/bregman_pytorch.py``
  ``sinkhorn_knopp`` (a port of POT's ``ot.bregman.sinkhorn_knopp``).
  """
  if check_every < 1:
    raise ValueError(f"check_every must be >= 1, got {check_every}")
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  if kernel is None:
    kernel = jnp.exp(jnp.asarray(cost, jnp.float32) / -float(epsilon))
  m, n = kernel.shape
  hi = jax.lax.Precision.HIGHEST
  if u_init is None:
    u_init = 1.0 / m
  return _sinkhorn_loop(
      a, b, lambda u: jnp.matmul(u, kernel, precision=hi),
      lambda v: jnp.matmul(kernel, v, precision=hi),
      jnp.broadcast_to(jnp.asarray(u_init, jnp.float32), (m,)),
      num_iters=num_iters, stop_threshold=stop_threshold,
      check_every=check_every)


def _sinkhorn_loop(a, b, kt_u, k_v, u, *, num_iters, stop_threshold,
                   check_every):
  """The loop of :func:`sinkhorn_knopp` with the mat-vecs Kᵀu, Kv given."""
  n = b.shape[0]

  def step(_, state):
    it, u, v, stopped = state
    v_new = b / (kt_u(u) + _TINY)
    u_new = a / (k_v(v_new) + _TINY)
    bad = stopped | ~(jnp.all(jnp.isfinite(u_new)) &
                      jnp.all(jnp.isfinite(v_new)))
    return (it + jnp.where(bad, 0, 1), jnp.where(bad, u, u_new),
            jnp.where(bad, v, v_new), bad)

  # Blocks of ``check_every`` plain updates with one error check after
  # each (the official loop checks at iterations check_every, 2·check_every,
  # ...), then the num_iters % check_every unchecked remaining ones.
  num_blocks, rest = divmod(num_iters, check_every)

  def block_cond(state):
    block, err, (_, _, _, stopped) = state
    return (err > stop_threshold) & (block < num_blocks) & ~stopped

  def block_body(state):
    block, err, inner = state
    inner = jax.lax.fori_loop(0, check_every, step, inner)
    _, u, v, stopped = inner
    new_err = jnp.sum(jnp.square(b - kt_u(u) * v))
    return block + 1, jnp.where(stopped, err, new_err), inner

  inner = (jnp.int32(0), u, jnp.full((n,), 1.0 / n, jnp.float32),
           jnp.bool_(False))
  _, err, inner = jax.lax.while_loop(
      block_cond, block_body, (jnp.int32(0), jnp.float32(1.0), inner))
  if rest:
    # Only run while the official loop would: not stopped, err above.
    run = (err > stop_threshold) & ~inner[3]
    inner = jax.lax.fori_loop(0, rest, step,
                              inner[:3] + (inner[3] | ~run,))
  it, u, v, _ = inner
  return u, v, it


def ot_gradient_surrogate(mu, beta):
  """DM-Count's gradient of ⟨β, μ/|μ|⟩ w.r.t. μ (``losses/ot_loss.py:55-60``).

  .. math:: g = \\frac{S}{S^2 + 10^{-8}}\\,β -
     \\frac{⟨β, μ⟩}{S^2 + 10^{-8}}, \\qquad S = \\textstyle\\sum_i μ_i

  Args:
    mu: float32 [..., n] unnormalised density (treated as a constant).
    beta: float32 [..., n] pixel potential.

  Returns:
    float32 [..., n] gradient g (zero for an all-zero μ).
  """
  s = mu.sum(-1, keepdims=True)
  denom = s * s + 1e-8
  return s / denom * beta - (mu * beta).sum(-1, keepdims=True) / denom


def discrete_count_map(points, point_mask, shape, *, stride: int,
                       rounding: str = "round"):
  """Point counts per density cell: DM-Count's ``gen_discrete_map`` pooled.

  Args:
    points: float [N, 2], (x, y) in input pixels.
    point_mask: bool [N].
    shape: (h, w) of the density map.
    stride: input pixels per density pixel.
    rounding: "round" (DM-Count: round half to even to an input pixel, clip
      to [0, size·stride − 1], then the cell of that pixel) or "floor" (the
      cell containing the point, :func:`counting_jax.grid.cell_index`;
      clipped to the map).

  Returns:
    float32 [h, w] counts (sum = number of valid points).
  """
  h, w = shape
  pts = jnp.asarray(points, jnp.float32)
  if rounding == "round":
    pix = jnp.round(pts)
    col = jnp.clip(pix[:, 0], 0, w * stride - 1) // stride
    row = jnp.clip(pix[:, 1], 0, h * stride - 1) // stride
  elif rounding == "floor":
    col = jnp.floor(pts[:, 0] / stride)
    row = jnp.floor(pts[:, 1] / stride)
  else:
    raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
  col = jnp.clip(col, 0, w - 1).astype(jnp.int32)
  row = jnp.clip(row, 0, h - 1).astype(jnp.int32)
  weight = jnp.asarray(point_mask, jnp.float32)
  return jnp.zeros((h * w,), jnp.float32).at[row * w + col].add(
      weight).reshape(h, w)


def _cost(points, h, w, stride, center_offset, normalize_coordinates,
          distance):
  """Squared distances [N, h*w] between points and cell centres."""
  cost = _distances.squared_distances(points, (h, w), stride=stride,
                                      center_offset=center_offset,
                                      distance=distance)
  if normalize_coordinates:
    # DM-Count norm_cood: x -> x / c * 2 - 1 for pixels and points, c the
    # crop side; offsets cancel, so the cost scales by (2 / c)^2.
    cost = cost * (2.0 / (w * stride)) ** 2
  return cost


def _ot_official(mu, pts, mask, cost, epsilon, num_iters, stop_threshold,
                 check_every):
  """β, plan and Wasserstein term of one image with the official loop."""
  n_pts = mask.sum()
  a = jnp.where(mask, 1.0 / jnp.maximum(n_pts, 1), 0.0).astype(jnp.float32)
  b = mu / (mu.sum() + 1e-6)
  kernel = jnp.where(mask[:, None], jnp.exp(cost / -float(epsilon)), 0.0)
  u, v, _ = sinkhorn_knopp(a, b, cost, epsilon=epsilon, num_iters=num_iters,
                           stop_threshold=stop_threshold,
                           check_every=check_every, kernel=kernel,
                           u_init=1.0 / jnp.maximum(n_pts, 1))
  beta = epsilon * jnp.log(v + _TINY)
  plan = u[:, None] * kernel * v[None, :]
  return beta, b, plan


# exp(−x) rounds to 0 in float32 (even as a denormal) for x > 103.98.
_KERNEL_ZERO = 105.0


def _window(size, stride, epsilon, cost_scale):
  """Cells per axis that can hold a non-zero kernel entry of one point.

  K = exp(−C/ε) is exactly 0 in float32 beyond C = 105·ε, i.e. beyond
  r = sqrt(105·ε / cost_scale) input pixels (+1 px for the float32 rounding
  of the expanded cost); at most floor(2r / stride) + 1 cell centres of an
  axis lie within ±r of a point.
  """
  radius = math.sqrt(_KERNEL_ZERO * float(epsilon) / cost_scale) + 1.0
  return min(size, int(2.0 * radius // stride) + 2), radius


def _ot_official_windowed(mu, pts, mask, dx, dy, scale, epsilon, num_iters,
                          stop_threshold, check_every, win, radius, stride,
                          offset):
  """:func:`_ot_official` on each point's window of non-zero kernel cells.

  dx [m, w], dy [m, h]: the per-axis squared distances. The kernel outside
  a point's (win_y x win_x) window is exactly 0, so the mat-vecs of the
  dense loop become a gather (Kv) and a scatter-add (Kᵀu) over m·win_y·win_x
  entries; only the order of the additions differs from the dense loop.
  """
  (h, win_y), (w, win_x) = win
  n = h * w
  n_pts = mask.sum()
  a = jnp.where(mask, 1.0 / jnp.maximum(n_pts, 1), 0.0).astype(jnp.float32)
  b = mu / (mu.sum() + 1e-6)
  p = jnp.where(mask[:, None], pts, 0.0)
  first = lambda c, size, win_c: jnp.clip(
      jnp.floor((c - radius - offset) / stride), 0, size - win_c).astype(
          jnp.int32)
  cols = first(p[:, 0], w, win_x)[:, None] + jnp.arange(win_x)
  rows = first(p[:, 1], h, win_y)[:, None] + jnp.arange(win_y)
  cost = (jnp.take_along_axis(dy, rows, axis=1)[:, :, None] +
          jnp.take_along_axis(dx, cols, axis=1)[:, None, :])
  cost = cost.reshape(len(mask), win_y * win_x)
  if scale != 1.0:
    cost = cost * scale
  cost = jnp.where(mask[:, None], cost, 0.0)
  kernel = jnp.where(mask[:, None], jnp.exp(cost / -float(epsilon)), 0.0)
  idx = (rows[:, :, None] * w + cols[:, None, :]).reshape(kernel.shape)
  kt_u = lambda u: jnp.zeros((n,), jnp.float32).at[idx].add(
      u[:, None] * kernel)
  k_v = lambda v: (kernel * v[idx]).sum(axis=1)
  u, v, _ = _sinkhorn_loop(
      a, b, kt_u, k_v,
      jnp.broadcast_to(1.0 / jnp.maximum(n_pts, 1), a.shape).astype(
          jnp.float32),
      num_iters=num_iters, stop_threshold=stop_threshold,
      check_every=check_every)
  beta = epsilon * jnp.log(v + _TINY)
  wd = (cost * (u[:, None] * kernel * v[idx])).sum()
  return beta, b, wd


def _ot_ott(mu, pts, mask, cost, epsilon, threshold, max_iterations):
  """β of one image from a converged log-domain ott-jax Sinkhorn."""
  n_pts = mask.sum()
  s = mu.sum()
  n = mu.shape[0]
  a_pix = jnp.where(s > 0, mu / jnp.where(s > 0, s, 1.0), 1.0 / n)
  b_pts = jnp.where(mask, 1.0 / jnp.maximum(n_pts, 1), 0.0)
  # An image without points gets one dummy point (its result is discarded).
  b_pts = jnp.where(n_pts > 0, b_pts,
                    jnp.zeros_like(b_pts).at[0].set(1.0))
  cost_t = jnp.where(b_pts[None, :] > 0, cost.T, 0.0)
  geom = geometry.Geometry(cost_matrix=cost_t, epsilon=float(epsilon))
  prob = linear_problem.LinearProblem(geom, a=a_pix.astype(jnp.float32),
                                      b=b_pts.astype(jnp.float32))
  out = ott_sinkhorn.Sinkhorn(threshold=threshold,
                              max_iterations=max_iterations)(prob)
  g = jnp.where(b_pts > 0, out.g, -jnp.inf)
  # Soft c-transform of g: the pixel potential without its ε log(mass) term,
  # defined also on zero-mass pixels.
  f_bar = -epsilon * jax.nn.logsumexp((g[None, :] - cost_t) / epsilon,
                                      axis=1)
  beta = f_bar + epsilon * jnp.log(jnp.maximum(a_pix, _TINY))
  plan = jnp.exp((beta[:, None] + g[None, :] - cost_t) / epsilon).T
  plan = jnp.where(b_pts[:, None] > 0, plan, 0.0)
  return beta, a_pix, plan


def dm_count_loss(density, points, point_mask, *, stride: int,
                  ot_weight: float = 0.1, tv_weight: float = 0.01,
                  epsilon: float = 10.0, solver: str = "official",
                  num_iters: int = 100, stop_threshold: float = 1e-9,
                  check_every: int = 10, ott_threshold: float = 1e-4,
                  ott_max_iterations: int = 2000,
                  normalize_coordinates: bool = False,
                  center_offset: float | None = None,
                  distance: str = "expanded", tv_rounding: str = "round"):
  """DM-Count loss: OT between normalised maps + count L1 + weighted TV.

  .. math::
     L = λ_1 \\sum_b \\underbrace{⟨μ_b, \\mathrm{sg}(g_b)⟩}_{\\text{ot}}
       + \\frac{1}{B}\\sum_b \\underbrace{|\\textstyle\\sum μ_b - m_b|}_{
         \\text{count}}
       + λ_2 \\frac{1}{B}\\sum_b \\underbrace{m_b\\,\\big\\|\\hat μ_b -
         G_b/(m_b + 10^{-6})\\big\\|_1}_{\\text{tv}}

  μ = ``density``, μ̂ = μ / (Σμ + 1e-6), m_b the number of points, G_b
  their count per cell (:func:`discrete_count_map`), λ₁ = ``ot_weight``,
  λ₂ = ``tv_weight``, sg = stop-gradient, and g the gradient of ⟨β, μ/|μ|⟩
  (:func:`ot_gradient_surrogate`) with β the pixel potential of the entropic
  OT between μ̂ (detached) and the uniform measure on the points, cost
  ‖x_i − y_j‖² in input pixels² and ε = ``epsilon``. The "ot" term is thus
  a surrogate whose *value* is ~0 and whose gradient is g.

  Args:
    density: float [B, h, w], predicted density μ (≥ 0, DM-Count's ReLU
      output), h = H // stride; computed in float32.
    points: float [B, N, 2], (x, y) in input-image pixels.
    point_mask: bool [B, N]; images without points are allowed.
    stride: input pixels per density pixel (DM-Count: 8).
    ot_weight: λ₁ ("wot", 0.1). tv_weight: λ₂ ("wtv", 0.01).
    epsilon: entropic ε ("reg", 10) in cost units (input pixels², or
      normalised units with ``normalize_coordinates``).
    solver: "official" (DM-Count's fixed-iteration float32 kernel
      Sinkhorn, :func:`sinkhorn_knopp`) or "ott" (log-domain
      ``ott.solvers.linear.sinkhorn.Sinkhorn`` run to ``ott_threshold``).
      Where K = exp(−C/ε) is exactly 0 in float32 outside a window of each
      point (C > 105·ε; at ε = 10 on pixel² costs a 10 x 10-cell window at
      stride 8) and the window covers at most a quarter of the map, the
      official loop runs on the windows (gather and scatter-add mat-vecs):
      the same entries, summed in another order.
    num_iters, stop_threshold, check_every: official loop (100, 1e-9, 10).
    ott_threshold, ott_max_iterations: ott stopping rule (marginal error).
    normalize_coordinates: DM-Count's ``norm_cood`` (default 0): map pixel
      and point coordinates to [−1, 1] by x / (w·stride) · 2 − 1.
    center_offset: input-pixel centre of cell 0; default stride / 2 (8k+4).
    distance: "expanded" (default, as the official code: the float32
      evaluation x² − 2xc + c², see :func:`~counting_jax.losses._distances.
      squared_distances`) or "exact" (x − c)². The saturated kernel amplifies
      the expansion's ~0.03 px² rounding into β differences of ~0.05
      (gradient ~1e-4 relative) between the two.
    tv_rounding: how G is built, "round" (official) or "floor".

  Returns:
    (loss float32 scalar: OT **summed** over the batch, count and TV
    **averaged**, as DM-Count's trainer; aux dict of float32 [B], all
    unweighted: ``ot`` surrogate, ``count``, ``tv``, ``ot_objective``
    ⟨μ̂, β⟩ and ``wasserstein`` ⟨C, P⟩ (DM-Count's logged "OT obj value"
    and "Wass Distance")).

  Raises:
    ValueError: on bad shapes, an unknown ``solver`` / ``tv_rounding`` or
      ``check_every`` < 1 (official solver).

  Empty images: OT and TV are 0 and the loss is the count term |Σμ| (as
  DM-Count). Gradient: the OT term uses the detached plan and the explicit
  potential gradient g, exactly as the official code (no differentiation
  through Sinkhorn); count and TV by autodiff (TV through μ̂), with
  sub-gradient 0 of |·| at 0 as PyTorch (so ReLU-zero pixels of an empty
  cell get no TV push of their own). GL supplement eq. 2: the count term's
  gradient is ±1 on every pixel.

  Official-code behaviour kept: with ε = 10 on pixel² costs the float32
  kernel exp(−C/ε) underflows to 0 beyond ≈32 px from every point, so v and
  β saturate (β = ε·log(b·1e16) on such pixels, ε·log 1e-16 = −368 where
  μ = 0); the loop never meets 1e-9 and runs 100 iterations. The "ott"
  solver returns instead the converged pixel potential: the soft
  c-transform of the point potential plus ε·log max(μ̂, 1e-16): DM-Count's
  β = ε log(v + 1e-16) at convergence where μ̂ > 0, and on zero-mass pixels
  the potential they would have with mass 1e-16 (the official loop gives
  them exactly ε·log 1e-16, dropping the c-transform). At ε = 10 on pixel² costs it may not converge within
  ``ott_max_iterations``; use ``normalize_coordinates`` or a larger ε there.
  ott's balanced problem uses the exactly normalised μ / Σμ in float32.

  Source: B. Wang, H. Liu, D. Samaras, M. Hoai, "Distribution Matching for
  Crowd Counting", NeurIPS 2020, eqs. 4-8 (loss), Prop. 1 (OT gradient).

  Official code: cvlab-stonybrook/DM-Count@cc5f213 ``losses/ot_loss.py``
  (cost, surrogate, sum over images :62), ``losses/bregman_pytorch.py``
  (Sinkhorn), ``train_helper.py:134-156`` (count: ``nn.L1Loss`` mean; TV:
  mean of m·‖μ̂ − G/(m + 1e-6)‖₁; weights from ``train.py``). Its cost uses
  the float32 expansion x² − 2xc + c², our default (``distance="exact"``
  gives (x − c)²). It builds G from the
  unflipped points and flips the map; we build G from the points given.
  Parity with the official code's values on real ShanghaiTech crops (the
  tests): the defaults with ``stride=8``.
  """
  _checks.check_inputs(density, points, point_mask)
  if solver not in _SOLVERS:
    raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
  bsz, h, w = density.shape
  mu = density.astype(jnp.float32).reshape(bsz, h * w)
  points = jnp.asarray(points, jnp.float32)
  point_mask = jnp.asarray(point_mask, bool)
  n_pts = point_mask.sum(axis=1).astype(jnp.float32)
  has_points = n_pts > 0

  cost_scale = (2.0 / (w * stride)) ** 2 if normalize_coordinates else 1.0
  win_y, radius = _window(h, stride, epsilon, cost_scale)
  win_x, _ = _window(w, stride, epsilon, cost_scale)
  windowed = solver == "official" and 4 * win_y * win_x <= h * w
  offset = stride / 2.0 if center_offset is None else float(center_offset)

  def per_image_windowed(mu_i, pts_i, mask_i):
    pts_d = jax.lax.stop_gradient(pts_i)
    dx, dy = _distances.axis_squared_distances(
        pts_d, (h, w), stride=stride, center_offset=center_offset,
        distance=distance)
    mu_d = jax.lax.stop_gradient(mu_i)
    beta, mu_hat, wd = _ot_official_windowed(
        mu_d, pts_d, mask_i, dx, dy, cost_scale, epsilon, num_iters,
        stop_threshold, check_every, ((h, win_y), (w, win_x)), radius,
        stride, offset)
    grad = jax.lax.stop_gradient(ot_gradient_surrogate(mu_d, beta))
    return (mu_i * grad).sum(), (mu_hat * beta).sum(), wd

  def per_image(mu_i, pts_i, mask_i):
    if windowed:
      return per_image_windowed(mu_i, pts_i, mask_i)
    cost = _cost(jax.lax.stop_gradient(pts_i), h, w, stride, center_offset,
                 normalize_coordinates, distance)
    cost = jnp.where(mask_i[:, None], cost, 0.0)
    mu_d = jax.lax.stop_gradient(mu_i)
    if solver == "official":
      beta, mu_hat, plan = _ot_official(mu_d, pts_i, mask_i, cost, epsilon,
                                        num_iters, stop_threshold,
                                        check_every)
    else:
      beta, mu_hat, plan = _ot_ott(mu_d, pts_i, mask_i, cost, epsilon,
                                   ott_threshold, ott_max_iterations)
    grad = jax.lax.stop_gradient(ot_gradient_surrogate(mu_d, beta))
    return ((mu_i * grad).sum(), (mu_hat * beta).sum(),
            (cost * plan).sum())

  ot, ot_obj, wd = _checks.map_images(per_image, mu, points, point_mask)
  zero = jnp.zeros_like(ot)
  ot = jnp.where(has_points, ot, zero)
  ot_obj = jax.lax.stop_gradient(jnp.where(has_points, ot_obj, zero))
  wd = jax.lax.stop_gradient(jnp.where(has_points, wd, zero))

  total = mu.sum(axis=1)
  l1 = _distances.abs_with_zero_subgradient
  count = l1(total - n_pts)
  gd = jax.vmap(lambda p, m: discrete_count_map(
      p, m, (h, w), stride=stride, rounding=tv_rounding))(points, point_mask)
  mu_normed = mu / (total[:, None] + 1e-6)
  tv = l1(mu_normed - gd.reshape(bsz, h * w) /
          (n_pts[:, None] + 1e-6)).sum(axis=1) * n_pts
  loss = ot_weight * ot.sum() + count.mean() + tv_weight * tv.mean()
  aux = {"ot": ot, "count": count, "tv": tv, "ot_objective": ot_obj,
         "wasserstein": wd}
  return loss, aux
