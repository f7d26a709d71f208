"""Bayesian loss (BL, Ma et al. 2019): expected counts under a point posterior."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from counting_jax.losses import _checks
from counting_jax.losses import _distances

__all__ = ["bayesian_loss", "bayesian_posterior", "box_fraction_targets"]

_BACKGROUNDS = ("reciprocal", "dummy_point")
_DEFAULT_RATIO = {"reciprocal": 1.0, "dummy_point": 0.15}
_FAR = 1e19  # input pixels; its square stays finite in float32
_METHODS = ("separable", "dense")
_HI = jax.lax.Precision.HIGHEST
# Separable form (see _separable_terms): largest −log of the nearest
# point's factor product (e^-60 ≈ 1e-26 keeps 1e-5 detail of the terms
# within 12 nats of it above float32's 1.2e-38), and the background's lead
# in nats beyond which the points' posterior is negligible (e^-40 ≈ 4e-18).
_MAX_GAP = 60.0
_NEGLIGIBLE = 40.0


def bayesian_posterior(points, point_mask, shape, *, stride: int,
                       sigma: float = 8.0, use_background: bool = True,
                       background: str = "reciprocal",
                       background_ratio: float | None = None,
                       image_size=None, center_offset: float | None = None,
                       distance: str = "expanded"):
  """Posterior p(y_j | x_i) of BL over the GT points and the background.

  .. math::
     p(y_j|x_i) = \\frac{\\exp(-D_{ji}/2σ^2)}
       {\\sum_{k} \\exp(-D_{ki}/2σ^2) + \\exp(-D_{0i}/2σ^2)}

  with :math:`D_{ji} = \\|x_i - y_j\\|^2` (input pixels²) and the background
  pseudo-distance :math:`D_{0i}` of ``background``:

  * ``"reciprocal"`` (official code since commit bf5b9e7, 2021-07-19):
    :math:`D_{0i} = (S r)^2 / (\\min_j D_{ji} + 10^{-5})`, r = 1.0;
  * ``"dummy_point"`` (the 2019 paper and code; GL supplement eqs. 5-7): a
    dummy point at distance d = S r from the nearest GT point on the ray
    through x_i, :math:`D_{0i} = (S r - \\sqrt{\\min_j D_{ji}})^2`, r = 0.15.

  S = ``image_size``. Where an image has no point, or the background is off
  and no point is valid, the only row is the background with posterior 1.

  Args:
    points: float [B, N, 2], (x, y) in input-image pixels.
    point_mask: bool [B, N].
    shape: (h, w) of the density map.
    stride, sigma, use_background, background, background_ratio, image_size,
    center_offset, distance: see :func:`bayesian_loss`.

  Returns:
    float32 [B, N + 1, h*w] posterior, background last (zero where the
    background is off), rows of padded points zero. No gradient flows.
    (Computed pixels x points and transposed; :func:`bayesian_loss` never
    forms this normalised array.)
  """
  e, e_bg, z = _posterior_terms(
      points, point_mask, shape, stride=stride, sigma=sigma,
      use_background=use_background, background=background,
      background_ratio=background_ratio, image_size=image_size,
      center_offset=center_offset, distance=distance)
  post = jnp.concatenate([e, e_bg[..., None]], axis=2) / z[..., None]
  return jnp.swapaxes(post, 1, 2)


def _posterior_terms(points, point_mask, shape, *, stride, sigma,
                     use_background, background, background_ratio,
                     image_size, center_offset, distance):
  """Unnormalised posterior of BL, laid out pixels x points.

  The softmax over the points (and the background) runs along the last
  axis, which XLA reduces much faster on CPU than the leading axis.

  Returns:
    (e float32 [B, h*w, N], e_bg float32 [B, h*w], z float32 [B, h*w]):
    e = exp(logit − max), zero for padded points, e_bg the background term
    (zero where it is off) and z = Σ_j e + e_bg, so that p(y_j|x_i) =
    e_ij / z_i and p(bg|x_i) = e_bg_i / z_i. No gradient flows.
  """
  if background not in _BACKGROUNDS:
    raise ValueError(f"background must be one of {_BACKGROUNDS}, "
                     f"got {background!r}")
  h, w = shape
  if background_ratio is None:
    background_ratio = _DEFAULT_RATIO[background]
  if image_size is None:
    image_size = min(h, w) * stride
  points = jax.lax.stop_gradient(jnp.asarray(points, jnp.float32))
  point_mask = jnp.asarray(point_mask, bool)
  # Padded points are moved far away (squared distances ~1e38, finite):
  # they never give the minimum and their exp underflows to exactly 0, with
  # no mask pass over the [B, h*w, N] arrays.
  points = jnp.where(point_mask[..., None], points, _FAR)
  dist = _distances.squared_distances(points, (h, w), stride=stride,
                                     center_offset=center_offset,
                                     distance=distance, pixels_first=True)
  has_points = point_mask.any(axis=1)[:, None]
  min_raw = jnp.where(has_points, jnp.min(dist, axis=2), jnp.inf)
  min_dist = jnp.where(has_points, jnp.maximum(min_raw, 0.0), 0.0)
  scale = (jnp.asarray(image_size, jnp.float32) *
           background_ratio).reshape(-1, 1)
  if background == "reciprocal":
    bg_dist = jnp.square(scale) / (min_dist + 1e-5)
  else:
    bg_dist = jnp.square(scale - jnp.sqrt(min_dist))
  bg_dist = jnp.where(has_points, bg_dist, 0.0)
  bg_on = has_points & use_background | ~has_points
  two_var = 2.0 * float(sigma) ** 2
  bg_logit = jnp.where(bg_on, -bg_dist / two_var, -jnp.inf)
  # The largest logit: max_j (−D_ji / 2σ²) = −min_j D_ji / 2σ² exactly
  # (−inf without points), or the background's.
  x_max = jnp.maximum(-min_raw / two_var, bg_logit)
  e = jnp.exp(-dist / two_var - x_max[..., None])
  e_bg = jnp.exp(bg_logit - x_max)
  z = e.sum(axis=2) + e_bg
  return tuple(jax.lax.stop_gradient(t) for t in (e, e_bg, z))


def _separable_terms(points, point_mask, shape, *, stride, sigma,
                     use_background, background, background_ratio,
                     image_size, center_offset, distance):
  """BL's posterior in separable form, for :func:`_expected_separable`.

  The Gaussian likelihood factorises over the axes,
  exp(−D_ji / 2σ²) = exp(−dy_jr / 2σ²) · exp(−dx_jc / 2σ²) for pixel i in
  row r and column c, so the normaliser of each pixel and the expected
  counts are matrix products of two small factors (points x rows, points x
  columns) instead of exps over the pixels x points array. The factors are
  shifted by their per-row and per-column minima, m_r = min_j dy_jr and
  n_c = min_j dx_jc (so that they lie in (0, 1]), and the pixel's own shift
  follows from the exact nearest-point distance D*_i (a min over points,
  computed as the official code does):

  .. math::
     p(y_j|x_i) = U_{jr} V_{jc}\\, e^{k_i} / z_i, \\quad
     U_{jr} = e^{-(dy_{jr} - m_r)/2σ^2}, \\;
     V_{jc} = e^{-(dx_{jc} - n_c)/2σ^2}, \\;
     z_i = e^{k_i} \\textstyle\\sum_j U_{jr} V_{jc} + e^{\\ell^0_i - \\ell^*_i}

  with ℓ*_i the largest logit (the nearest point's or the background's),
  k_i = −ℓ*_i − (m_r + n_c)/2σ² and ℓ⁰_i the background's logit. It holds
  in float32 while the nearest point's product U_{j*r} V_{j*c} =
  e^{−(D*_i − m_r − n_c)/2σ²} stays far above float32's smallest normal
  (e^{−60}), or the background's logit leads the points' by more than 40
  (their posterior is then below 1e-17 and dropped). A pixel can miss both
  only if it lies more than √120·σ (11σ) from every point and the
  background does not take it (without background, or an ``image_size``
  far above the crop's); the returned ``ok`` is then False and the caller
  uses the dense form.

  Returns:
    dict of float32 arrays, no gradient: u [B, N, h], v [B, N, w], scale
    [B, h, w] (e^{k_i} / z_i), e_bg_scale [B, h, w] (e_bg_i / z_i), and
    bool scalar ok.
  """
  h, w = shape
  if background_ratio is None:
    background_ratio = _DEFAULT_RATIO[background]
  if image_size is None:
    image_size = min(h, w) * stride
  points = jax.lax.stop_gradient(jnp.asarray(points, jnp.float32))
  point_mask = jnp.asarray(point_mask, bool)
  points = jnp.where(point_mask[..., None], points, _FAR)
  dx, dy = _distances.axis_squared_distances(
      points, (h, w), stride=stride, center_offset=center_offset,
      distance=distance)  # [B, N, w], [B, N, h]
  # Nearest-point squared distance of each pixel, from the same float32
  # sums dy + dx as the dense path (and the official code).
  dxt, dyt = jnp.swapaxes(dx, 1, 2), jnp.swapaxes(dy, 1, 2)
  min_raw = jnp.min(dyt[:, :, None, :] + dxt[:, None, :, :], axis=-1)
  has_points = point_mask.any(axis=1)[:, None, None]
  min_dist = jnp.where(has_points, jnp.maximum(min_raw, 0.0), 0.0)
  scale = (jnp.asarray(image_size, jnp.float32) *
           background_ratio).reshape(-1, 1, 1)
  if background == "reciprocal":
    bg_dist = jnp.square(scale) / (min_dist + 1e-5)
  else:
    bg_dist = jnp.square(scale - jnp.sqrt(min_dist))
  bg_dist = jnp.where(has_points, bg_dist, 0.0)
  bg_on = has_points & use_background | ~has_points
  two_var = 2.0 * float(sigma) ** 2
  bg_logit = jnp.where(bg_on, -bg_dist / two_var, -jnp.inf)
  m_r = jnp.where(point_mask.any(axis=1)[:, None], dy.min(axis=1), 0.0)
  n_c = jnp.where(point_mask.any(axis=1)[:, None], dx.min(axis=1), 0.0)
  u = jnp.exp(-(dy - m_r[:, None, :]) / two_var)
  v = jnp.exp(-(dx - n_c[:, None, :]) / two_var)
  # lc: −log of the nearest point's factor product U V (≥ 0 up to
  # rounding); q: how far the background's logit lies above the nearest
  # point's (0 when the point's is the larger).
  lc = (min_raw - (m_r[:, :, None] + n_c[:, None, :])) / two_var
  q = jnp.maximum(bg_logit + min_raw / two_var, 0.0)
  # The nearest point's product U V must stay a normal float32 with room
  # for 1e-5 relative detail (e^-60 ≈ 1e-26); where it does not, the
  # points' posterior must be negligible (e^-40 per point) for the
  # separable form to hold.
  ok = jnp.all(~has_points | (lc <= _MAX_GAP) | (q >= _NEGLIGIBLE))
  # e^k_i, k_i = lc_i − q_i = −ℓ*_i − (m_r + n_c)/2σ²; lowering k where
  # it is clipped only lowers the (then negligible) points' terms.
  k = jnp.where(has_points, jnp.minimum(lc - q, _MAX_GAP), 0.0)
  ek = jnp.where(has_points, jnp.exp(k), 0.0)
  zs = jnp.einsum("bjr,bjc->brc", u, v, precision=_HI)
  x_max = jnp.where(has_points,
                    jnp.maximum(-min_raw / two_var, bg_logit), bg_logit)
  e_bg = jnp.exp(bg_logit - x_max)
  z = ek * zs + e_bg
  terms = {"u": u, "v": v, "scale": ek / z, "e_bg_scale": e_bg / z}
  terms = jax.tree.map(jax.lax.stop_gradient, terms)
  terms["ok"] = ok
  return terms


def _expected_separable(a, terms):
  """Expected counts [B, N] and background E_0 [B] from
  :func:`_separable_terms`: E_j = Σ_r U_jr Σ_c V_jc (a e^k / z)_rc, two
  matrix products per image; E_0 summed per map row, then over the rows."""
  weight = a * terms["scale"]
  inner = jnp.einsum("bjc,brc->bjr", terms["v"], weight, precision=_HI)
  return ((terms["u"] * inner).sum(axis=2),
          (a * terms["e_bg_scale"]).sum(axis=2).sum(axis=1))


def _expected_dense(a, e, e_bg, z):
  """The same from the dense terms of :func:`_posterior_terms`."""
  b, h, w = a.shape
  # Summed per map row, then over the rows (one [h*w]-long float32
  # accumulation per point loses ~1e-5 relative at 256 x 256).
  weight = a / z.reshape(b, h, w)
  return (jnp.einsum("bhwn,bhw->bhn", e.reshape(b, h, w, -1), weight,
                     precision=_HI).sum(axis=1),
          jnp.einsum("bhw,bhw->bh", e_bg.reshape(b, h, w), weight,
                     precision=_HI).sum(axis=1))


def box_fraction_targets(points, box_side, *, height: float, width: float):
  """BL's per-point targets: the fraction of each head box inside the crop.

  BL's QNRF loader (``datasets/crowd.py``) puts a square box of side
  ``box_side`` = clip(mean distance to the 3 nearest annotations of the whole
  image, 4, 128) around each point and uses as target the fraction of that
  box inside the crop, clipped to [0, 1]; points below 0.3 are dropped by the
  loader (apply that rule to ``point_mask``). BL's ShanghaiTech loader uses
  target 1 (``targets=None`` in :func:`bayesian_loss`).

  Args:
    points: float [..., 2], (x, y) in crop pixels.
    box_side: float [...], box side in input pixels (already clipped).
    height, width: crop size in input pixels.

  Returns:
    float32 [...] fraction in [0, 1].
  """
  points = jnp.asarray(points, jnp.float32)
  half = 0.5 * jnp.asarray(box_side, jnp.float32)
  x, y = points[..., 0], points[..., 1]
  ix = jnp.maximum(jnp.minimum(x + half, width) - jnp.maximum(x - half, 0.0),
                   0.0)
  iy = jnp.maximum(jnp.minimum(y + half, height) - jnp.maximum(y - half, 0.0),
                   0.0)
  return jnp.clip(ix * iy / jnp.maximum(4.0 * half * half, 1e-12), 0.0, 1.0)


def bayesian_loss(density, points, point_mask, *, stride: int,
                  sigma: float = 8.0, use_background: bool = True,
                  background: str = "reciprocal",
                  background_ratio: float | None = None, image_size=None,
                  targets=None, center_offset: float | None = None,
                  distance: str = "expanded", method: str = "separable"):
  """Bayesian loss (BL): L1 between per-point targets and expected counts.

  .. math::
     E_j = \\sum_i p(y_j|x_i)\\,a_i, \\qquad
     L_b = \\sum_{j=1}^{m} |t_j - E_j| + |0 - E_0|, \\qquad
     L = \\frac{1}{B}\\sum_b L_b

  with a = ``density`` (flattened), p the posterior of
  :func:`bayesian_posterior`, t_j = ``targets`` (1 by default) and E_0 the
  background row (only with ``use_background``).

  Args:
    density: float [B, h, w], predicted density, h = H // stride; any float
      dtype (computed in float32).
    points: float [B, N, 2], (x, y) in input-image pixels.
    point_mask: bool [B, N]; images without points are allowed.
    stride: input pixels per density pixel (BL: 8).
    sigma: σ of the Gaussian likelihood in input pixels (BL: 8).
    use_background: add the background class (BL default True).
    background: background model, "reciprocal" (official code, default) or
      "dummy_point" (2019 paper/code), see :func:`bayesian_posterior`.
    background_ratio: r in d = S·r; default 1.0 ("reciprocal", official
      ``train.py``) or 0.15 ("dummy_point", 2019 code). BL's README uses 0.1
      for ShanghaiTech A.
    image_size: S in input pixels, scalar or float [B]. BL uses min(W, H) of
      the *whole* training image (``st_size``), which the loss cannot know:
      pass it. Default: min(h, w)·stride, the crop.
    targets: float [B, N] per-point targets t_j (BL's QNRF loader: the
      fraction of the head box inside the crop, :func:`box_fraction_targets`);
      default 1.
    center_offset: input-pixel centre of cell 0; default stride / 2 (BL's
      8k + 4 at stride 8, also this library's convention).
    distance: "expanded" (default, as the official code: the float32
      evaluation x² − 2xc + c²) or "exact" ((x − c)², which differs by ~1e-4
      relative in the posterior).
    method: how the expected counts are computed, the same values either
      way (1e-6 relative). "separable" (default): the Gaussian factorises
      over the two axes, so the per-pixel normaliser and E are matrix
      products of points x rows and points x columns factors, O(N (h + w))
      exps instead of O(N h w) (16-160x faster than the official code on
      CPU, see ``benchmarks/losses.py``); a batch in which some pixel lies
      more than 11σ from every point with a non-negligible points'
      posterior (typically ``use_background=False`` on sparse crops) is
      computed densely instead (``jax.lax.cond``: under ``jax.vmap`` both
      forms run). "dense": the pixels x points posterior, as the official
      code.

  Returns:
    (loss float32 scalar, the mean over the batch as BL's ``Bay_Loss``;
    aux dict of float32 [B]: ``bayesian`` per-image loss, ``background`` E_0
    (0 without background), ``count`` predicted count).

  Raises:
    ValueError: on bad shapes or an unknown ``background`` / ``distance`` /
      ``method``.

  Empty images: the loss is |Σ a| (BL's ``Bay_Loss``), gradient sign(Σ a).
  Gradient: autodiff; the posterior depends on the points only and is
  detached. The L1 has sub-gradient 0 at an exact tie E_j = t_j (as PyTorch).

  Source: Z. Ma, X. Wei, X. Hong, Y. Gong, "Bayesian Loss for Crowd Count
  Estimation with Point Supervision", ICCV 2019, eqs. 6-9 (posterior,
  background). GL supplement (Wan et al., CVPR 2021) eqs. 3-12 analyses the
  dummy-point background.

  Official code: ZhihengCV/Bayesian-Crowd-Counting@5f10bfc
  ``losses/post_prob.py`` (posterior, background :37-40), ``bay_loss.py``
  (L1 and batch mean), ``train.py:44-46`` (σ = 8, ratio 1.0). Its squared
  distances use the expansion, our default ("expanded"; "exact" avoids its
  float32 cancellation). Parity with the official values (the tests):
  ``stride=8, sigma=8, image_size=st_size, targets=targets`` with
  ``use_background`` True/False.
  """
  _checks.check_inputs(density, points, point_mask)
  if method not in _METHODS:
    raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
  if background not in _BACKGROUNDS:
    raise ValueError(f"background must be one of {_BACKGROUNDS}, "
                     f"got {background!r}")
  b, h, w = density.shape
  a = density.astype(jnp.float32).reshape(b, h, w)
  kw = dict(stride=stride, sigma=sigma, use_background=use_background,
            background=background, background_ratio=background_ratio,
            image_size=image_size, center_offset=center_offset,
            distance=distance)

  def dense(a):
    return _expected_dense(a, *_posterior_terms(points, point_mask, (h, w),
                                                **kw))

  if method == "dense":
    e_pts, e_bg = dense(a)
  else:
    terms = _separable_terms(points, point_mask, (h, w), **kw)
    ok = terms.pop("ok")
    # The fallback is rematerialised: under differentiation lax.cond keeps
    # the residuals of both branches, and the dense branch's would be its
    # [B, h*w, N] posterior, zero-filled even when the branch is not taken
    # (24x slower at 256 x 256 with 1,000 points, measured on CPU).
    e_pts, e_bg = jax.lax.cond(ok, lambda a: _expected_separable(a, terms),
                               jax.checkpoint(dense), a)
  expected = jnp.concatenate([e_pts, e_bg[:, None]], axis=1)
  if targets is None:
    t = jnp.ones(point_mask.shape, jnp.float32)
  else:
    t = jnp.broadcast_to(jnp.asarray(targets, jnp.float32), point_mask.shape)
  t = jnp.where(point_mask, t, 0.0)
  residual = _distances.abs_with_zero_subgradient(
      jnp.concatenate([t, jnp.zeros((b, 1))], axis=1) - expected)
  rows = jnp.concatenate([point_mask, jnp.ones((b, 1), bool)], axis=1)
  per_image = jnp.where(rows, residual, 0.0).sum(axis=1)
  aux = {"bayesian": per_image, "background": expected[:, -1],
         "count": a.sum(axis=(1, 2))}
  return per_image.mean(), aux
