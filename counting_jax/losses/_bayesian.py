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
                  distance: str = "expanded"):
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

  Returns:
    (loss float32 scalar, the mean over the batch as BL's ``Bay_Loss``;
    aux dict of float32 [B]: ``bayesian`` per-image loss, ``background`` E_0
    (0 without background), ``count`` predicted count).

  Raises:
    ValueError: on bad shapes or an unknown ``background`` / ``distance``.

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
  float32 cancellation). Parity with ``official_values/bl.npz``:
  ``stride=8, sigma=8, image_size=st_size, targets=targets`` with
  ``use_background`` True/False.
  """
  _checks.check_inputs(density, points, point_mask)
  b, h, w = density.shape
  a = density.astype(jnp.float32).reshape(b, h * w)
  e, e_bg, z = _posterior_terms(
      points, point_mask, (h, w), stride=stride, sigma=sigma,
      use_background=use_background, background=background,
      background_ratio=background_ratio, image_size=image_size,
      center_offset=center_offset, distance=distance)
  # E_j = Σ_i (e_ij / z_i) a_i as mat-vecs, without the normalised
  # posterior [B, h*w, N + 1]; summed per map row, then over the rows (one
  # [h*w]-long float32 accumulation per point loses ~1e-5 relative at
  # 256 x 256).
  hi = jax.lax.Precision.HIGHEST
  weight = (a / z).reshape(b, h, w)
  expected = jnp.concatenate(
      [jnp.einsum("bhwn,bhw->bhn", e.reshape(b, h, w, -1), weight,
                  precision=hi).sum(axis=1),
       jnp.einsum("bhw,bhw->bh", e_bg.reshape(b, h, w), weight,
                  precision=hi).sum(axis=1, keepdims=True)], axis=1)
  if targets is None:
    t = jnp.ones(point_mask.shape, jnp.float32)
  else:
    t = jnp.broadcast_to(jnp.asarray(targets, jnp.float32), point_mask.shape)
  t = jnp.where(point_mask, t, 0.0)
  residual = _distances.abs_with_zero_subgradient(jnp.concatenate([t, jnp.zeros((b, 1))], axis=1) -
                     expected)
  rows = jnp.concatenate([point_mask, jnp.ones((b, 1), bool)], axis=1)
  per_image = jnp.where(rows, residual, 0.0).sum(axis=1)
  aux = {"bayesian": per_image, "background": expected[:, -1],
         "count": a.sum(axis=1)}
  return per_image.mean(), aux
