"""counting_jax.ot vs GL's official potentials, float64 NumPy, differences."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from counting_jax import ot

EPS, RHO = 0.01, 0.5  # GL's blur and reach (p = 1)


def _np_softmin(cost, h, eps, axis):
  h = h[None, :] if axis == 1 else h[:, None]
  return -eps * logsumexp(h - cost / eps, axis=axis)


def _np_converged(cost, a, b, eps, rho, iters=4000):
  """GeomLoss's UOT fixed point F = λ softmin(C, log b + G/ε), ... (float64)."""
  lam = 1 / (1 + eps / rho)
  f, g = np.zeros(len(a)), np.zeros(len(b))
  for _ in range(iters):
    f = lam * _np_softmin(cost, np.log(b) + g / eps, eps, 1)
    g = lam * _np_softmin(cost, np.log(a) + f / eps, eps, 0)
  return f, g


def _small_problem(seed=0, n_side=6, m=4):
  rng = np.random.default_rng(seed)
  x = np.asarray(ot.pixel_centers(n_side, n_side, stride=8, offset=8,
                                  scale=8.0 * n_side), np.float64)
  y = rng.uniform(0, 1, (m, 2))
  a = rng.gamma(2.0, 1.0, n_side * n_side)
  a *= 1.1 * m / a.sum()
  return x, y, a, np.ones(m)


def _np_perspective(x, y):
  d = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
  return np.exp(d / (0.5 + 0.2 * (x[:, None, 1] + y[None, :, 1]) / 2)) - 1


@pytest.fixture(scope="module")
def gl_official(shared_dir):
  path = shared_dir / "reference/official_values/gl.npz"
  if not path.exists():
    pytest.skip(f"{path} not found")
  z = np.load(path)
  names = [c for c in json.loads(str(z["meta_json"]))["cases"]
           if len(z[f"{c}/points"])]
  n = max(len(z[f"{c}/points"]) for c in names)
  pts = np.zeros((len(names), n, 2), np.float32)
  mask = np.zeros((len(names), n), bool)
  for i, c in enumerate(names):
    pts[i, :len(z[f"{c}/points"])] = z[f"{c}/points"]
    mask[i, :len(z[f"{c}/points"])] = True
  dens = np.stack([z[f"{c}/density"].ravel() for c in names])
  return z, names, dens, pts, mask


def test_costs_and_grid():
  rng = np.random.default_rng(0)
  x, y = rng.uniform(0, 1, (7, 2)), rng.uniform(0, 1, (5, 2))
  d = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
  expected = {
      "perspective": _np_perspective(x, y),
      "exp": np.exp(d / 0.6) - 1,
      "euclidean": d,
      "sqeuclidean": d**2,
  }
  for name, ref in expected.items():
    got = ot.cost_matrix(jnp.asarray(x, jnp.float32),
                         jnp.asarray(y, jnp.float32), ot.cost_fn(name))
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-6, err_msg=name)
  with pytest.raises(ValueError, match="unknown cost"):
    ot.cost_fn("manhattan")
  # GL's grid: cell (r, c) at ((8c + 8) / 512, (8r + 8) / 512), row-major.
  pix = np.asarray(ot.pixel_centers(2, 3, stride=8, offset=8, scale=512.0))
  np.testing.assert_allclose(pix * 512, [[8, 8], [16, 8], [24, 8],
                                         [8, 16], [16, 16], [24, 16]])
  # default offset: this library's s/2
  np.testing.assert_allclose(ot.pixel_centers(1, 2, stride=4), [[2, 2], [6, 2]])
  x = jnp.array([[0.0, 0.0], [1.0, 1.0]])
  y = jnp.array([[3.0, -1.0], [100.0, 100.0]])
  np.testing.assert_allclose(ot.diameter(x, y, jnp.array([True, False])),
                             np.hypot(3, 2), rtol=1e-6)
  assert ot.reach_to_tau(0.5, 0.01) == pytest.approx(50 / 51)


@pytest.mark.parametrize("diam", [0.3, 1.0, 1.3921164274215698, 1.4142, 5.0])
def test_epsilon_schedule_matches_geomloss_formula(diam):
  # GeomLoss: [d^p] + exp(arange(p log d, p log blur, p log s)) + [blur^p]
  ref = ([diam] + list(np.exp(np.arange(np.log(diam), np.log(0.01),
                                        np.log(0.5)))) + [0.01])
  eps, length = ot.epsilon_schedule(jnp.float32(diam), blur=0.01, scaling=0.5)
  assert int(length) == len(ref)
  np.testing.assert_allclose(eps[:int(length)], ref, rtol=1e-6)


def test_epsilon_scaling_reproduces_official_gl_potentials(gl_official):
  z, names, dens, pts, mask = gl_official
  pix = ot.pixel_centers(64, 64, stride=8, offset=8, scale=512.0)
  cost_fn = ot.cost_fn("perspective")

  @jax.jit
  @jax.vmap
  def run(a, p, m):
    y = p / 512.0
    cost = ot.cost_matrix(pix, y, cost_fn)
    b = m.astype(jnp.float32)
    diam = ot.diameter(pix, y, m)
    f, g = ot.epsilon_scaling_potentials(cost, a, b, blur=EPS, reach=RHO,
                                         scaling=0.5, diam=diam)
    pi = ot.plan(cost, f, g, a, b, EPS)
    eps, length = ot.epsilon_schedule(diam, blur=EPS, scaling=0.5)
    return f, g, pi.sum(1), pi.sum(0), diam, eps[:10], length

  f, g, rows, cols, diam, eps, length = run(dens, pts, mask)
  for i, c in enumerate(names):
    m = mask[i].sum()
    assert int(length[i]) == 10
    np.testing.assert_allclose(diam[i], z[f"{c}/diameter"], rtol=1e-6)
    np.testing.assert_allclose(eps[i], z[f"{c}/eps_schedule"], rtol=1e-6)
    # float32 potentials of size <= 5: 2e-6 absolute is float32 rounding
    np.testing.assert_allclose(f[i], z[f"{c}/F"].ravel(), atol=2e-6)
    np.testing.assert_allclose(g[i, :m], z[f"{c}/G"], atol=2e-6)
    np.testing.assert_allclose(rows[i], z[f"{c}/plan_pixel_marginal"].ravel(),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cols[i, :m], z[f"{c}/plan_point_marginal"],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(cols[i, m:], 0.0)  # padded points


def test_online_potentials_reproduce_official_gl(gl_official):
  """Costs on the fly, blocks of 500 pixels (the last one padded): the
  official potentials as with the stored cost matrix."""
  z, names, dens, pts, mask = gl_official
  pix = ot.pixel_centers(64, 64, stride=8, offset=8, scale=512.0)
  cost_fn = ot.cost_fn("perspective")

  @jax.jit
  @jax.vmap
  def run(a, p, m):
    y = p / 512.0
    b = m.astype(jnp.float32)
    diam = ot.diameter(pix, y, m)
    online = ot.epsilon_scaling_potentials_online(
        pix, y, cost_fn, a, b, blur=EPS, reach=RHO, scaling=0.5, diam=diam,
        block=500)
    dense = ot.epsilon_scaling_potentials(
        ot.cost_matrix(pix, y, cost_fn), a, b, blur=EPS, reach=RHO,
        scaling=0.5, diam=diam)
    return online, dense

  (f, g), (f_dense, g_dense) = run(dens, pts, mask)
  for i, c in enumerate(names):
    m = mask[i].sum()
    np.testing.assert_allclose(f[i], z[f"{c}/F"].ravel(), atol=2e-6)
    np.testing.assert_allclose(g[i, :m], z[f"{c}/G"], atol=2e-6)
  np.testing.assert_allclose(f, f_dense, atol=1e-6)
  np.testing.assert_allclose(g, g_dense, atol=1e-6)


@pytest.mark.parametrize("block", [7, 16, 36])
def test_softmins_online_equal_dense(block):
  """Both softmins in one blocked pass = the dense ones, for a block that
  divides the 36 pixels, one that does not, and a single block."""
  x, y, a, _ = _small_problem(seed=3, m=5)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  cost_fn = ot.cost_fn("perspective")
  cost = ot.cost_matrix(x, y, cost_fn)
  rng = np.random.default_rng(4)
  h_points = jnp.asarray(rng.normal(0, 3, 5), jnp.float32)
  h_pixels = jnp.asarray(np.where(a > 0.5, np.log(a), ot.ZERO_LOG_WEIGHT),
                         jnp.float32)
  for eps in (0.01, 1.0):
    rows, cols = ot.softmins_online(x, y, cost_fn, h_points, h_pixels, eps,
                                    block=block)
    np.testing.assert_allclose(rows, ot.softmin(cost, h_points, eps, 1),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cols, ot.softmin(cost, h_pixels, eps, 0),
                               rtol=1e-6, atol=1e-6)


def test_pixel_block():
  assert ot.pixel_block(4096, 100) == 4096  # one block up to 2^20 pairs
  assert ot.pixel_block(65536, 1000) == 1024  # 2^20 // 1000 -> 2^10
  assert ot.pixel_block(65536, 4000) == 256
  assert ot.pixel_block(65536, 10**7) == 8


def test_kl_problem_solves_geomloss_uot_to_convergence():
  x, y, a, b = _small_problem()
  cost = _np_perspective(x, y)
  f_ref, g_ref = _np_converged(cost, a, b, EPS, RHO)
  problem = ot.kl_problem(jnp.asarray(cost, jnp.float32),
                          jnp.asarray(a, jnp.float32),
                          jnp.asarray(b, jnp.float32), epsilon=EPS, reach=RHO)
  out = jax.jit(lambda p: ot.solve(p, threshold=1e-5,
                                   max_iterations=5000))(problem)
  assert bool(out.converged)
  np.testing.assert_allclose(out.f, f_ref, atol=2e-5)
  np.testing.assert_allclose(out.g, g_ref, atol=2e-5)
  plan_ref = a[:, None] * b * np.exp((f_ref[:, None] + g_ref - cost) / EPS)
  np.testing.assert_allclose(out.matrix, plan_ref, rtol=2e-3, atol=1e-6)
  # the annealed (GeomLoss) potentials are *not* converged
  f_ann, _ = jax.jit(functools.partial(
      ot.epsilon_scaling_potentials, blur=EPS, reach=RHO, scaling=0.5))(
          jnp.asarray(cost, jnp.float32), jnp.asarray(a, jnp.float32),
          jnp.asarray(b, jnp.float32), diam=jnp.float32(1.2))
  assert np.abs(np.asarray(f_ann) - f_ref).max() > 1e-3


def test_solve_gradient_matches_finite_differences():
  """ott's default (Danskin) gradient of unbalanced reg_ot_cost is wrong."""
  with jax.enable_x64(True):
    x, y, a, b = _small_problem(seed=1, n_side=4, m=3)
    cost = jnp.asarray(((x[:, None] - y[None]) ** 2).sum(-1))
    tau = ot.reach_to_tau(1.0, 0.05)

    @functools.partial(jax.jit, static_argnums=1)
    def reg_ot(a, use_danskin):
      from ott.geometry import geometry
      from ott.problems.linear import linear_problem
      from ott.solvers.linear import sinkhorn
      prob = linear_problem.LinearProblem(
          geometry.Geometry(cost_matrix=cost, epsilon=0.05), a=a,
          b=jnp.asarray(b), tau_a=tau, tau_b=tau)
      if use_danskin is None:
        out = sinkhorn.Sinkhorn(threshold=1e-11, max_iterations=5000)(prob)
      else:
        out = ot.solve(prob, threshold=1e-11, max_iterations=5000)
      return out.reg_ot_cost

    a = jnp.asarray(a)
    direction = np.random.default_rng(2).normal(size=a.shape)
    h = 1e-5
    fd = (reg_ot(a + h * direction, False)
          - reg_ot(a - h * direction, False)) / (2 * h)
    grad = jax.jit(jax.grad(reg_ot), static_argnums=1)
    ours = jnp.vdot(grad(a, False), direction)
    danskin = jnp.vdot(grad(a, None), direction)
    np.testing.assert_allclose(ours, fd, rtol=1e-6)
    assert abs(float(danskin - fd)) > 1e-3 * abs(float(fd))


def test_plan_is_detached_and_clipped():
  cost = jnp.array([[0.0, 1.0], [2.0, 0.5]])
  f, g = jnp.array([0.1, -0.2]), jnp.array([0.3, 0.0])
  a, b = jnp.array([2.0, 0.5]), jnp.array([1.0, 1.0])
  kernel = np.exp((np.asarray(f)[:, None] + np.asarray(g) - cost) / 0.5)
  np.testing.assert_allclose(ot.plan(cost, f, g, a, b, 0.5),
                             np.asarray(a)[:, None] * kernel, rtol=1e-6)
  # d(sum of plan)/da_i = sum_j K_ij; potentials carry no gradient
  grad_a, grad_f = jax.grad(lambda a, f: ot.plan(cost, f, g, a, b, 0.5).sum(),
                            argnums=(0, 1))(a, f)
  np.testing.assert_allclose(grad_a, kernel.sum(1), rtol=1e-6)
  np.testing.assert_array_equal(grad_f, 0.0)
  huge = ot.plan(cost, f + 1e4, g, a, b, 0.5)
  assert np.isfinite(np.asarray(huge)).all()
  np.testing.assert_allclose(huge.max(), 2.0 * np.exp(ot.MAX_LOG_KERNEL),
                             rtol=1e-6)
  np.testing.assert_allclose(
      ot.log_weights(jnp.array([0.0, -1.0, np.e])), [ot.ZERO_LOG_WEIGHT,
                                                     ot.ZERO_LOG_WEIGHT, 1.0],
      rtol=1e-6)
  a32, b32 = ot.masses(jnp.ones((2, 3), jnp.bfloat16), jnp.array([True, False]))
  assert a32.dtype == b32.dtype == jnp.float32 and a32.shape == (6,)
  np.testing.assert_array_equal(b32, [1.0, 0.0])
