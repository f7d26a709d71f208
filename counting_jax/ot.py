"""Thin ott-jax wrappers shared by the optimal-transport (OT) losses.

Conventions: a *pixel* cloud is the centres of the cells of a density map, a
*point* cloud the point annotations, both (x, y) in input-image pixels divided
by a length ``scale`` (GL uses the crop size). Masses are float32 whatever the
input dtype: ``a`` = the density map flattened row-major (pixel i = row * w +
col), ``b`` = 1 per real point and 0 per padded point.

Two solvers, both returning potentials F (pixels) and G (points) in the
convention of GeomLoss's KL-regularised unbalanced OT

.. math::
   \\min_{P \\ge 0} \\langle C, P\\rangle + \\varepsilon\\,KL(P | a \\otimes b)
   + \\rho\\,KL(P 1 | a) + \\rho\\,KL(P^T 1 | b),
   \\qquad P_{ij} = a_i b_j e^{(F_i + G_j - C_{ij})/\\varepsilon}:

* :func:`epsilon_scaling_potentials`: GeomLoss's annealed loop (what GL's
  official code runs: a fixed annealing schedule whose last iterate is
  used as is, *not* converged);
  :func:`epsilon_scaling_potentials_online` runs the same loop with the
  costs computed on the fly, block by block of pixels, never storing the
  n x m matrix (:func:`softmins_online`, :func:`map_pixel_blocks`; memory
  O(n + m + block · m));
* :func:`kl_problem` + :func:`solve`: ott-jax's Sinkhorn on the shifted cost
  C_ij - ε log a_i - ε log b_j with τ = ρ / (ρ + ε), whose ``f, g`` equal F, G
  at convergence (the fixed point of both is the same unbalanced problem).

Gradients. ott's default gradient of an *unbalanced* ``reg_ot_cost`` with
respect to the marginals is wrong (implicit differentiation with Danskin's
shortcut, ``stack_measurements.md`` §4.3): :func:`solve` therefore builds
``Sinkhorn(use_danskin=False)``. The counting losses do not differentiate
through a solver at all: they treat the potentials as constants and rebuild a
plan that is differentiable in the masses only (:func:`plan`, a "detached
plan"), as every official implementation does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from ott.geometry import costs
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from counting_jax import grid

__all__ = [
    "ExpCost", "PerspectiveCost", "cost_fn", "pixel_centers", "cost_matrix",
    "masses", "log_weights", "reach_to_tau", "softmin", "diameter",
    "epsilon_schedule", "epsilon_scaling_potentials",
    "epsilon_scaling_potentials_online", "pixel_block", "map_pixel_blocks",
    "softmins_online", "kl_problem", "solve", "plan", "ZERO_LOG_WEIGHT",
    "MAX_LOG_KERNEL"
]

# GeomLoss's log-weight of a zero-mass entry (finite, so that lse never sees
# an all -inf row).
ZERO_LOG_WEIGHT = -1e5
# Largest exponent used when potentials become exponentials (see plan()).
MAX_LOG_KERNEL = 30.0


def _distance(x, y):
  """Euclidean distance over the last axis, as a sum of its (static)
  components rather than a reduction over that axis.

  What it buys (XLA:CPU, jaxlib 0.10.2, 2 cores, measured 2026-12-02): XLA
  hands a reduction over an axis of 2 to YNNPACK, which made a 1024 x 1000
  block of GL's perspective costs 2.2 ms instead of 0.41 ms and GL's value
  and gradient 2.9 s instead of 0.90 s at 256 x 256 with 1,000 points
  (220 ms instead of 53-58 ms at 64 x 64). It is the same arithmetic (the
  sum of two squares) on every backend, so no backend check is needed.
  """
  return jnp.sqrt(sum(jnp.square(x[..., k] - y[..., k])
                      for k in range(x.shape[-1])))


@jtu.register_pytree_node_class
class PerspectiveCost(costs.CostFn):
  """GL's "perspective" cost exp(d / s) - 1, s = base + slope * (y1 + y2) / 2.

  ``d`` is the Euclidean distance and y1, y2 the second (row) coordinates of
  the two points, in GL's units (crop pixels / crop size, so s goes from
  ``base`` at the top to ``base + slope`` at the bottom of the crop). Source:
  GL ``utils/emd_dot_trainer.py`` ``per_cost`` (``--cost per``, the default).
  """

  def __init__(self, base: float = 0.5, slope: float = 0.2):
    self.base, self.slope = base, slope

  def __call__(self, x, y):
    d = _distance(x, y)
    s = self.base + self.slope * (x[..., 1] + y[..., 1]) / 2
    return jnp.exp(d / s) - 1.0

  def tree_flatten(self):  # noqa: D102
    return (), {"base": self.base, "slope": self.slope}

  @classmethod
  def tree_unflatten(cls, aux_data, children):  # noqa: D102
    del children
    return cls(**aux_data)


@jtu.register_pytree_node_class
class ExpCost(costs.CostFn):
  """GL's ``--cost exp``: exp(d / scale) - 1, d the Euclidean distance."""

  def __init__(self, scale: float = 0.6):
    self.scale = scale

  def __call__(self, x, y):
    d = _distance(x, y)
    return jnp.exp(d / self.scale) - 1.0

  def tree_flatten(self):  # noqa: D102
    return (), {"scale": self.scale}

  @classmethod
  def tree_unflatten(cls, aux_data, children):  # noqa: D102
    del children
    return cls(**aux_data)


_COSTS = {
    "sqeuclidean": costs.SqEuclidean,  # ||x - y||^2 (no 1/2)
    "euclidean": costs.Euclidean,  # ||x - y||
    "perspective": PerspectiveCost,
    "exp": ExpCost,
}


def cost_fn(name: str, **kwargs) -> costs.CostFn:
  """The ott ``CostFn`` called ``name`` ("sqeuclidean", "euclidean",
  "perspective", "exp"), built with ``kwargs``.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  if name not in _COSTS:
    raise ValueError(f"unknown cost {name!r}; valid: {sorted(_COSTS)}")
  return _COSTS[name](**kwargs)


def pixel_centers(h: int, w: int, *, stride: int, offset=None,
                  scale: float = 1.0):
  """(x, y) centres of the h x w cells, row-major, divided by ``scale``.

  Args:
    h, w: density map shape.
    stride: input pixels per density pixel.
    offset: centre of cell 0 in input pixels (default stride / 2, see
      :mod:`counting_jax.grid`; GL uses ``stride``, i.e. 8k + 8).
    scale: length unit in input pixels (GL: the crop size, 512).

  Returns:
    float32 [h * w, 2].
  """
  xs = grid.cell_centers(w, stride, offset) / scale
  ys = grid.cell_centers(h, stride, offset) / scale
  yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
  return jnp.stack([xx.ravel(), yy.ravel()], axis=-1)


def cost_matrix(x, y, cost: costs.CostFn):
  """Dense [n, m] matrix of ``cost(x_i, y_j)`` (one evaluation per pair)."""
  return jax.vmap(lambda xi: jax.vmap(lambda yj: cost(xi, yj))(y))(x)


def masses(density, point_mask):
  """float32 masses: ``a`` f32[h*w] (density row-major), ``b`` f32[N] (0/1)."""
  return (density.astype(jnp.float32).reshape(-1),
          point_mask.astype(jnp.float32))


def log_weights(w):
  """log w, with GeomLoss's finite ``ZERO_LOG_WEIGHT`` where w <= 0."""
  return jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), ZERO_LOG_WEIGHT)


def reach_to_tau(reach: float, epsilon: float) -> float:
  """ott's τ for a KL marginal weight ρ = ``reach``: τ = ρ / (ρ + ε).

  It is also GeomLoss's dampening λ(ε) = 1 / (1 + ε / ρ); ``reach=None``
  (balanced) gives 1.
  """
  return 1.0 if reach is None else reach / (reach + epsilon)


def softmin(cost, h, epsilon, axis: int = 1):
  """GeomLoss's softmin: -ε log Σ_j exp(h_j - C_ij / ε) along ``axis``.

  Args:
    cost: float [n, m].
    h: float [m] (axis=1) or [n] (axis=0): log-weights plus potential / ε.
    epsilon: temperature (scalar, may be traced).
    axis: 1 reduces over points (result [n]), 0 over pixels (result [m]).
  """
  h = h[None, :] if axis == 1 else h[:, None]
  return -epsilon * jax.nn.logsumexp(h - cost / epsilon, axis=axis)


def diameter(x, y, y_mask=None):
  """Diagonal of the bounding box of ``x`` [n, d] and the real rows of ``y``."""
  if y_mask is None:
    y_mask = jnp.ones(y.shape[:1], bool)
  y_lo = jnp.where(y_mask[:, None], y, jnp.inf).min(0)
  y_hi = jnp.where(y_mask[:, None], y, -jnp.inf).max(0)
  lo = jnp.minimum(x.min(0), y_lo)
  hi = jnp.maximum(x.max(0), y_hi)
  return jnp.sqrt(jnp.sum(jnp.square(hi - lo)))


def epsilon_schedule(diam, *, blur: float, scaling: float, p: int = 1,
                     max_steps: int = 64):
  """GeomLoss's ε-scaling list, padded: (eps f32[max_steps], length int32).

  The list is [diam^p] + exp(arange(p log diam, p log blur, p log scaling))
  + [blur^p]; its length depends on the (traced) diameter, so it is returned
  padded with blur^p together with its true length.
  """
  lo, hi, step = p * jnp.log(diam), p * np.log(blur), p * np.log(scaling)
  n_mid = jnp.maximum(jnp.ceil((hi - lo) / step), 0).astype(jnp.int32)
  k = jnp.arange(max_steps)
  eps = jnp.where(k == 0, diam**p,
                  jnp.where(k <= n_mid, jnp.exp(lo + (k - 1) * step),
                            blur**p)).astype(jnp.float32)
  return eps, jnp.minimum(n_mid + 2, max_steps)


def epsilon_scaling_potentials(cost, a, b, *, blur: float, reach,
                               scaling: float, diam, p: int = 1):
  """GeomLoss's annealed unbalanced Sinkhorn (``debias=False``): (F, G).

  Initialisation by one softmin at ε_0 = diam^p; for each ε of
  :func:`epsilon_schedule`, both potentials are updated from the *old* ones,
  F~ = λ softmin(C, log b + G/ε), G~ = λ softmin(C^T, log a + F/ε), and
  averaged with them, F <- (F + F~)/2; then one last (non-averaged)
  extrapolation at ε = blur^p. λ = 1 / (1 + ε / ρ), ρ = reach^p (λ = 1 when
  ``reach`` is None). This is a fixed, short schedule (about 10 steps on a
  512 crop), not a converged solve. Potentials carry no gradient.
  :func:`epsilon_scaling_potentials_online` is the same loop without the
  cost matrix.

  Args:
    cost: float32 [n, m] cost matrix (pixels x points).
    a: float32 [n] pixel masses; b: float32 [m] point masses (0 = padded).
    blur, reach, scaling, p: GeomLoss's ``SamplesLoss`` arguments.
    diam: diameter of the two clouds (:func:`diameter`).

  Returns:
    F float32 [n], G float32 [m].
  """
  cost = jax.lax.stop_gradient(cost)

  def softmins(h_points, h_pixels, eps):
    return (softmin(cost, h_points, eps, axis=1),
            softmin(cost, h_pixels, eps, axis=0))

  return _epsilon_scaling(softmins, a, b, blur=blur, reach=reach,
                          scaling=scaling, diam=diam, p=p)


def epsilon_scaling_potentials_online(x, y, cost_fn: costs.CostFn, a, b, *,
                                      blur: float, reach, scaling: float,
                                      diam, p: int = 1,
                                      block: int | None = None):
  """:func:`epsilon_scaling_potentials` with costs computed on the fly.

  The cost matrix C_ij = ``cost_fn``(x_i, y_j) is never stored: each step
  is one pass over blocks of ``block`` pixels (:func:`pixel_block` by
  default) that evaluates the block's costs once and updates both
  potentials from them (:func:`softmins_online`), so memory is
  O((n + m) + block · m) instead of O(n m).

  Args:
    x: float32 [n, d] pixel coordinates; y: float32 [m, d] points.
    cost_fn: the ott ``CostFn``.
    a, b, blur, reach, scaling, diam, p: as
      :func:`epsilon_scaling_potentials`.
    block: pixels per block.

  Returns:
    F float32 [n], G float32 [m], equal to
    ``epsilon_scaling_potentials(cost_matrix(x, y, cost_fn), ...)`` up to
    float32 rounding.
  """
  x, y = jax.lax.stop_gradient((x, y))

  def softmins(h_points, h_pixels, eps):
    return softmins_online(x, y, cost_fn, h_points, h_pixels, eps,
                           block=block)

  return _epsilon_scaling(softmins, a, b, blur=blur, reach=reach,
                          scaling=scaling, diam=diam, p=p)


def _epsilon_scaling(softmins, a, b, *, blur, reach, scaling, diam, p):
  """GeomLoss's ε-scaling loop on ``softmins(h_points, h_pixels, eps)`` =
  (softmin over points [n], softmin over pixels [m])."""
  a, b = jax.lax.stop_gradient((a, b))
  a_log, b_log = log_weights(a), log_weights(b)
  rho = None if reach is None else reach**p
  eps_list, length = epsilon_schedule(diam, blur=blur, scaling=scaling, p=p)

  def damp(eps):
    return 1.0 if rho is None else 1.0 / (1.0 + eps / rho)

  eps0 = eps_list[0]
  f, g = softmins(b_log, a_log, eps0)
  f, g = damp(eps0) * f, damp(eps0) * g

  def body(state):
    k, f, g = state
    eps = eps_list[k]
    ft, gt = softmins(b_log + g / eps, a_log + f / eps, eps)
    return k + 1, 0.5 * (f + damp(eps) * ft), 0.5 * (g + damp(eps) * gt)

  _, f, g = jax.lax.while_loop(lambda s: s[0] < length, body, (0, f, g))
  eps = blur**p
  ft, gt = softmins(b_log + g / eps, a_log + f / eps, eps)
  return damp(eps) * ft, damp(eps) * gt


def pixel_block(n: int, m: int, max_elements: int = 2**20) -> int:
  """Pixels per block of the online passes: the whole map when n·m ≤
  ``max_elements``, else the largest power of two with block·m ≤
  ``max_elements`` (at least 8).

  2^20 pairs (4 MiB per float32 temporary) was the best of the sizes tried
  on CPU (2 cores, GL value and gradient): 1.03 s with 1,024-pixel blocks
  against 1.09 s (256) and 1.44 s (4,096) at 256 x 256 with 1,000 points;
  0.26 s with 256-pixel blocks against 0.36 s (1,024) and 0.45 s (one block)
  at 64 x 64 with 4,000 points. Any size gives the same values.
  """
  if n * m <= max_elements:
    return n
  return max(8, 1 << max(0, (max_elements // max(m, 1)).bit_length() - 1))


def map_pixel_blocks(fn, carry, xs, *, block: int):
  """``lax.scan(fn, carry, xs)`` over blocks of ``block`` pixels.

  ``xs`` is a pytree of per-pixel arrays [n, ...]; they are padded at the
  end to a multiple of ``block`` (with zeros, so give padded pixels zero
  mass) and cut into [n_blocks, block, ...]. ``fn(carry, xs_block) ->
  (carry, ys_block)``; the ys are joined back to [n, ...]. A single block
  calls ``fn`` directly (no loop of one). The body is rematerialised
  (``jax.checkpoint``): under differentiation each block is recomputed
  instead of storing its [block, m] intermediates, which keeps the memory
  of value and gradient at O(n + m + block · m).
  """
  leaves = jax.tree.leaves(xs)
  n = leaves[0].shape[0]
  if block >= n:
    return fn(carry, xs)
  n_blocks = -(-n // block)
  pad = n_blocks * block - n

  def split(v):
    v = jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1))
    return v.reshape(n_blocks, block, *v.shape[1:])

  carry, ys = jax.lax.scan(jax.checkpoint(fn), carry, jax.tree.map(split, xs))
  return carry, jax.tree.map(
      lambda v: v.reshape(n_blocks * block, *v.shape[2:])[:n], ys)


def softmins_online(x, y, cost_fn: costs.CostFn, h_points, h_pixels,
                    epsilon, *, block: int | None = None):
  """Both softmins of :func:`softmin` in one pass, costs on the fly.

  Returns (softmin(C, h_points, ε, axis=1) float32 [n], softmin(C,
  h_pixels, ε, axis=0) float32 [m]) for C = ``cost_fn``(x_i, y_j), each
  block's costs evaluated once. The reduction over pixels is a running
  log-sum-exp (max and rescaled sum carried across blocks).

  Why not ott's online ``PointCloud(batch_size=...)``: its
  ``apply_lse_kernel`` evaluates each direction in a separate pass (twice
  the cost evaluations per ε step), and in ott-jax 0.6.0 under jax 0.10.2
  it fails (it calls ``jax.interpreters.batching.is_vmappable``, which jax
  removed).

  Args:
    x: float32 [n, d]; y: float32 [m, d].
    cost_fn: ott ``CostFn``.
    h_points: float32 [m]; h_pixels: float32 [n] (log-weight + potential/ε).
    epsilon: temperature (may be traced).
    block: pixels per block (default :func:`pixel_block`).
  """
  n, m = x.shape[0], y.shape[0]
  block = pixel_block(n, m) if block is None else block

  def body(carry, xs):
    col_max, col_sum = carry
    xb, hb, valid = xs
    arg = -cost_matrix(xb, y, cost_fn) / epsilon
    rows = -epsilon * jax.nn.logsumexp(arg + h_points[None, :], axis=1)
    col = jnp.where(valid[:, None], arg + hb[:, None], -jnp.inf)
    new_max = jnp.maximum(col_max, col.max(axis=0))
    col_sum = (col_sum * jnp.exp(col_max - new_max)
               + jnp.exp(col - new_max[None, :]).sum(axis=0))
    return (new_max, col_sum), rows

  init = (jnp.full((m,), -jnp.inf, jnp.float32), jnp.zeros((m,), jnp.float32))
  (col_max, col_sum), rows = map_pixel_blocks(
      body, init, (x, h_pixels, jnp.ones((n,), bool)), block=block)
  return rows, -epsilon * (col_max + jnp.log(col_sum))


def kl_problem(cost, a, b, *, epsilon: float, reach: float):
  """ott ``LinearProblem`` equal to GeomLoss's KL(P | a⊗b) unbalanced OT.

  ott regularises with -ε H(P) and fits marginals with ρ KL, ρ = ε τ/(1 - τ).
  With the shifted cost C_ij - ε log a_i - ε log b_j (zero-mass entries are
  not shifted: ott masks them) and τ = ρ / (ρ + ε) on both sides, its plan and
  potentials ``f, g`` equal GeomLoss's P, F, G at convergence.
  """
  la = jnp.where(a > 0, jnp.log(jnp.where(a > 0, a, 1.0)), 0.0)
  lb = jnp.where(b > 0, jnp.log(jnp.where(b > 0, b, 1.0)), 0.0)
  geom = geometry.Geometry(
      cost_matrix=cost - epsilon * (la[:, None] + lb[None, :]),
      epsilon=epsilon)
  tau = reach_to_tau(reach, epsilon)
  return linear_problem.LinearProblem(geom, a=a, b=b, tau_a=tau, tau_b=tau)


def solve(problem, *, threshold: float = 1e-3, max_iterations: int = 2000,
          init=None, **kwargs):
  """ott ``Sinkhorn`` with ``use_danskin=False`` (correct unbalanced gradient).

  Args:
    problem: an ott ``LinearProblem``.
    threshold, max_iterations: ott's stopping rule (its error is an L1
      marginal error in mass units, so scale ``threshold`` with the mass).
    init: optional (f, g) warm start.
    **kwargs: more ``sinkhorn.Sinkhorn`` arguments (``lse_mode``,
      ``implicit_diff``, ``min_iterations``, ...).

  Returns:
    ott ``SinkhornOutput``; ``jax.grad`` of its ``reg_ot_cost`` w.r.t. the
    marginals matches finite differences (``tests/ot_test.py``).
  """
  solver = sinkhorn.Sinkhorn(threshold=threshold,
                             max_iterations=max_iterations,
                             use_danskin=False, **kwargs)
  return solver(problem, init=init)


def plan(cost, f, g, a, b, epsilon, *,
         max_log_kernel: float = MAX_LOG_KERNEL):
  """Detached plan a_i b_j exp((F_i + G_j - C_ij) / ε): float32 [n, m].

  The potentials (and the cost) are constants (``stop_gradient``); the plan
  stays differentiable in ``a`` and ``b``, which is the gradient every official
  OT counting loss uses. The log-kernel (F_i + G_j - C_ij) / ε is clipped at
  ``max_log_kernel``: it stays below 2 on real crops, but grows without bound
  where the pixel mass vanishes (an all-zero map gives about 5e4 with
  GeomLoss's log-weight -1e5, and exp overflows: the official GL code returns
  NaN there), so the clip keeps value and gradient finite.
  """
  log_k = (f[:, None] + g[None, :] - cost) / epsilon
  log_k = jax.lax.stop_gradient(jnp.minimum(log_k, max_log_kernel))
  return a[:, None] * b[None, :] * jnp.exp(log_k)
