"""DM-Count loss vs the official values, float64 references and identities."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import io as sio
from scipy.special import logsumexp

from counting_jax.losses import LOSSES, dm_count_loss
from counting_jax.losses._dm_count import (discrete_count_map,
                                           ot_gradient_surrogate,
                                           sinkhorn_knopp)

H = W = 64
STRIDE = 8


@pytest.fixture(scope="module")
def official(official_cases):
  z, _, names, pts, mask = official_cases("dmcount")
  dens = np.stack([z[f"{c}/density"] for c in names])
  return z, names, dens, pts, mask


@pytest.fixture(scope="module")
def official_run(official):
  """Batch loss/grad and per-case gradients of each term, one compile."""
  z, names, dens, pts, mask = official

  # Points are jit arguments, as in training; the defaults are official.
  def terms(d, p, m):
    loss, aux = dm_count_loss(d, p, m, stride=STRIDE)
    vec = jnp.stack([aux["ot"].sum(), aux["count"].sum(), aux["tv"].sum()])
    return vec, (loss, aux)

  fn = jax.jit(lambda d, p, m: (
      jax.jacrev(terms, has_aux=True)(d, p, m),
      jax.value_and_grad(lambda x: dm_count_loss(x, p, m,
                                                 stride=STRIDE)[0])(d)))
  (jac, (_, aux)), (loss, grad) = fn(jnp.asarray(dens), jnp.asarray(pts),
                                     jnp.asarray(mask))
  return np.asarray(jac), aux, loss, np.asarray(grad)


def test_official_values(official, official_run):
  z, names, dens, pts, mask = official
  jac, aux, loss, grad = official_run
  for b, c in enumerate(names):
    for key, ref in (("count", "count_loss"), ("tv", "tv_loss"),
                     ("ot_objective", "ot_obj_value"), ("wasserstein", "wd")):
      np.testing.assert_allclose(aux[key][b], z[f"{c}/{ref}"], rtol=1e-5,
                                 atol=1e-6, err_msg=f"{c} {key}")
    # The OT term's value is a surrogate that vanishes analytically; both
    # sides are float32 noise of size ~1e-5.
    assert abs(float(aux["ot"][b]) - float(z[f"{c}/ot_loss"])) < 1e-4
    total = 0.1 * aux["ot"][b] + aux["count"][b] + 0.01 * aux["tv"][b]
    np.testing.assert_allclose(total, z[f"{c}/total"], rtol=1e-5, atol=1e-6)
    for k, ref in enumerate(("grad_ot", "grad_count", "grad_tv")):
      ref_g = z[f"{c}/{ref}"]
      scale = max(np.abs(ref_g).max(), 1e-12)
      err = np.abs(jac[k, b] - ref_g).max() / scale
      assert err <= 1e-5, (c, ref, err)
    gt = z[f"{c}/grad_total"]
    err = np.abs(0.1 * jac[0, b] + jac[1, b] + 0.01 * jac[2, b] - gt).max()
    assert err <= 1e-5 * np.abs(gt).max(), (c, err)
    np.testing.assert_array_equal(
        discrete_count_map(pts[b], mask[b], (H, W), stride=STRIDE),
        z[f"{c}/gt_discrete"])
  # Batch: OT summed over images, count and TV averaged.
  np.testing.assert_allclose(loss, z["batch/total"], rtol=1e-5)
  ref_g = z["batch/grad_total"]
  assert np.abs(grad - ref_g).max() <= 1e-5 * np.abs(ref_g).max()


def test_official_sinkhorn_potentials(official):
  """β, α, plan marginals and the surrogate of the 100-iteration loop."""
  z, names, dens, pts, mask = official
  keep = [i for i, c in enumerate(names) if len(z[f"{c}/points"]) <= 400]
  names = [names[i] for i in keep]
  dens, mask = dens[keep], mask[keep]
  pts = pts[keep][:, :mask.sum(1).max()]
  mask = mask[:, :mask.sum(1).max()]
  from counting_jax.losses._distances import squared_distances
  cost = squared_distances(jnp.asarray(pts), (H, W), stride=STRIDE,
                           distance="expanded")
  n_pts = mask.sum(1)
  a = np.where(mask, 1.0 / np.maximum(n_pts, 1)[:, None], 0.0)
  mu = dens.reshape(len(names), -1)
  b = mu / (mu.sum(1, keepdims=True) + 1e-6)
  kernel = jnp.where(mask[:, :, None], jnp.exp(cost / -10.0), 0.0)
  u, v, it = jax.jit(jax.vmap(
      lambda a_, b_, c_, k_, u0: sinkhorn_knopp(a_, b_, c_, epsilon=10.0,
                                                kernel=k_, u_init=u0)))(
      a.astype(np.float32), b, cost, kernel,
      1.0 / np.maximum(n_pts, 1).astype(np.float32))
  for i, c in enumerate(names):
    m = n_pts[i]
    if m == 0:
      continue
    assert int(it[i]) == int(z[f"{c}/sinkhorn_iterations"]) == 100
    beta = 10.0 * np.log(np.asarray(v[i]) + 1e-16)
    # β ~ ±300 in float32: 1e-5 relative to its range.
    np.testing.assert_allclose(beta, z[f"{c}/beta"].ravel(),
                               atol=1e-5 * 400)
    np.testing.assert_allclose(10.0 * np.log(np.asarray(u[i, :m]) + 1e-16),
                               z[f"{c}/alpha"], atol=1e-5 * 400)
    plan = np.asarray(u[i, :m, None] * kernel[i, :m] * v[i][None])
    np.testing.assert_allclose(plan.sum(0), z[f"{c}/plan_pixel_marginal"]
                               .ravel(), atol=1e-6)
    np.testing.assert_allclose(plan.sum(1), z[f"{c}/plan_point_marginal"],
                               rtol=1e-5, atol=1e-7)
    # XLA flushes float32 denormals to zero, PyTorch keeps them: a few more
    # kernel columns are exactly 0 here (β agrees regardless, above).
    zero_cols = int((np.asarray(kernel[i, :m]) == 0).all(0).sum())
    official_zero = int(z[f"{c}/kernel_zero_columns"])
    assert official_zero <= zero_cols <= official_zero + 0.05 * H * W
    sur = ot_gradient_surrogate(jnp.asarray(mu[i]),
                                jnp.asarray(z[f"{c}/beta"].ravel()))
    ref = z[f"{c}/ot_grad_surrogate"].ravel()
    assert np.abs(sur - ref).max() <= 1e-5 * np.abs(ref).max()


# ----------------------------------------------------------------------------
# Float64 references and identities.


def _grid(h, w, stride):
  xs = np.arange(w) * stride + stride / 2
  ys = np.arange(h) * stride + stride / 2
  xx, yy = np.meshgrid(xs, ys)
  return np.stack([xx.ravel(), yy.ravel()], 1)


def _reference(mu, pts, *, eps, iters, stride, norm):
  """Float64 DM-Count terms and gradients for one image (kernel loop)."""
  h, w = mu.shape
  m = len(pts)
  y = pts.astype(np.float64)
  cost = ((y[:, None] - _grid(h, w, stride)[None]) ** 2).sum(-1)
  if norm:
    cost = cost * (2.0 / (w * stride)) ** 2
  a = mu.ravel().astype(np.float64)
  s = a.sum()
  b = a / (s + 1e-6)
  k = np.exp(-cost / eps)
  u, v = np.full(m, 1.0 / m), np.full(a.size, 1.0 / a.size)
  for _ in range(iters):
    v = b / (u @ k + 1e-16)
    u = (1.0 / m) / (k @ v + 1e-16)
  beta = eps * np.log(v + 1e-16)
  g_ot = s / (s * s + 1e-8) * beta - (a * beta).sum() / (s * s + 1e-8)
  g_count = np.sign(s - m) * np.ones_like(a)
  cols = np.clip(np.round(y[:, 0]), 0, w * stride - 1) // stride
  rows = np.clip(np.round(y[:, 1]), 0, h * stride - 1) // stride
  gd = np.zeros(a.size)
  np.add.at(gd, (rows * w + cols).astype(int), 1.0)
  r = b - gd / (m + 1e-6)
  tv = m * np.abs(r).sum()
  sg = np.sign(r)
  g_tv = m * (sg / (s + 1e-6) - (sg * a).sum() / (s + 1e-6) ** 2)
  return dict(count=abs(s - m), tv=tv, g_ot=g_ot, g_count=g_count, g_tv=g_tv,
              beta=beta)


def test_float64_reference_random_and_real(shared_data):
  rng = np.random.default_rng(0)
  mat = sio.loadmat(shared_data("shanghaitech") /
                    "part_A/test_data/ground-truth/GT_IMG_3.mat")
  loc = mat["image_info"][0, 0][0, 0]["location"].astype(np.float32)
  real = loc - [300, 200]
  real = real[(real >= 0).all(1) & (real < 128).all(1)][:12]
  rand = rng.uniform(0, 128, (7, 2)).astype(np.float32)
  assert len(real) >= 4
  pts = np.zeros((2, 12, 2), np.float32)
  mask = np.zeros((2, 12), bool)
  for b, p in enumerate((rand, real)):
    pts[b, :len(p)] = p
    mask[b, :len(p)] = True
  dens = rng.gamma(1.0, 0.05, (2, 16, 16)).astype(np.float32)
  kw = dict(stride=8, epsilon=0.1, num_iters=50, normalize_coordinates=True,
            distance="exact")
  fns = jax.jit(jax.jacrev(
      lambda d: jnp.stack([dm_count_loss(d, pts, mask, **kw)[1][k].sum()
                           for k in ("ot", "count", "tv")])))
  jac = np.asarray(fns(jnp.asarray(dens)))
  _, aux = dm_count_loss(jnp.asarray(dens), pts, mask, **kw)
  for b, p in enumerate((rand, real)):
    ref = _reference(dens[b], p, eps=0.1, iters=50, stride=8, norm=True)
    np.testing.assert_allclose(aux["count"][b], ref["count"], rtol=1e-5)
    np.testing.assert_allclose(aux["tv"][b], ref["tv"], rtol=1e-5)
    for k, key in enumerate(("g_ot", "g_count", "g_tv")):
      scale = np.abs(ref[key]).max()
      np.testing.assert_allclose(jac[k, b].ravel(), ref[key],
                                 atol=1e-5 * scale, err_msg=key)


def test_count_gradient_gl_supplement_eq2():
  """GL supplement eq. 2: ∂L_C/∂a = ±1 on every pixel."""
  dens = jnp.full((2, 4, 4), 0.1)
  pts = jnp.zeros((2, 3, 2)) + 5.0
  mask = jnp.array([[True, False, False], [True, True, True]])
  grad = jax.jit(jax.grad(lambda d: dm_count_loss(d, pts, mask, stride=8)[1][
      "count"].sum()))(dens)
  np.testing.assert_array_equal(grad[0], 1.0)   # 1.6 > 1
  np.testing.assert_array_equal(grad[1], -1.0)  # 1.6 < 3


def test_surrogate_is_gradient_of_normalised_objective(rng):
  """g = ∂⟨β, μ/|μ|⟩/∂μ with β fixed (DM-Count Prop. 1), and ⟨μ, g⟩ ≈ 0."""
  k1, k2 = jax.random.split(rng)
  mu = jax.random.uniform(k1, (50,)) + 0.1
  beta = jax.random.normal(k2, (50,)) * 100
  g = ot_gradient_surrogate(mu, beta)
  auto = jax.grad(lambda x: (beta * x / x.sum()).sum())(mu)
  np.testing.assert_allclose(g, auto, rtol=1e-4, atol=1e-4)
  assert abs(float((mu * g).sum())) < 1e-3


def test_ott_solver_matches_float64_converged_and_official_loop():
  """Converged log-domain ott vs a float64 log-domain Sinkhorn, and the
  official kernel loop run to convergence (strictly positive μ)."""
  rng = np.random.default_rng(3)
  pts = rng.uniform(0, 128, (1, 7, 2)).astype(np.float32)
  mask = np.ones((1, 7), bool)
  dens = rng.gamma(1.0, 0.05, (1, 16, 16)).astype(np.float32)
  eps = 0.05
  kw = dict(stride=8, epsilon=eps, normalize_coordinates=True,
            distance="exact")
  grad_ot = lambda **k: np.asarray(jax.jit(jax.grad(
      lambda d: dm_count_loss(d, pts, mask, **kw, **k)[1]["ot"].sum()))(
          jnp.asarray(dens)))[0].ravel()
  g_ott = grad_ot(solver="ott", ott_threshold=1e-6, ott_max_iterations=5000)
  g_off = grad_ot(num_iters=20000, stop_threshold=1e-14)
  cost = ((_grid(16, 16, 8)[:, None] - pts[0][None]) ** 2).sum(-1) * (
      2.0 / 128) ** 2
  a = dens[0].ravel().astype(np.float64)
  s = a.sum()
  log_a, log_b = np.log(a / s), np.log(np.full(7, 1 / 7))
  f = np.zeros(a.size)
  for _ in range(5000):
    g = eps * log_b - eps * logsumexp((f[:, None] - cost) / eps, axis=0)
    f = eps * log_a - eps * logsumexp((g[None] - cost) / eps, axis=1)
  ref = f / s - (a * f).sum() / s ** 2
  scale = np.abs(ref).max()
  assert np.abs(g_ott - ref).max() <= 1e-5 * scale
  # float32 kernel iterations accumulate ~1e-4 relative error.
  assert np.abs(g_off - ref).max() <= 1e-3 * scale


def test_edge_cases():
  fn = jax.jit(jax.value_and_grad(
      lambda d, p, m: dm_count_loss(d, p, m, stride=8), has_aux=True))
  fn_ott = jax.jit(jax.value_and_grad(
      lambda d, p, m: dm_count_loss(d, p, m, stride=8, solver="ott",
                                    normalize_coordinates=True, epsilon=0.1,
                                    ott_max_iterations=200), has_aux=True))
  pts = jnp.array([[[0.0, 0.0], [63.9, 63.9]], [[10.0, 5.0], [0.0, 0.0]]])
  mask = jnp.array([[False, False], [True, False]])
  dens = jnp.full((2, 8, 8), 0.05)
  for f, dtypes in ((fn, (jnp.float32, jnp.bfloat16)),
                    (fn_ott, (jnp.float32,))):
    (loss, aux), grad = f(dens, pts, mask)
    np.testing.assert_allclose(aux["count"], [3.2, 2.2], rtol=1e-6)
    np.testing.assert_allclose(aux["tv"][0], 0.0)
    np.testing.assert_allclose(aux["ot"][0], 0.0)
    np.testing.assert_allclose(grad[0], 0.5)   # empty: count term only
    cases = [(jnp.zeros((2, 8, 8)), mask),
             (jnp.full((2, 8, 8), 1e6), mask.at[0].set(True))]
    cases += [(dens.astype(t), mask.at[0].set(True)) for t in dtypes[1:]]
    for d, m in cases:
      (loss, aux), grad = f(d, pts, m)
      assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
      assert np.isfinite(np.asarray(grad, np.float32)).all()
  # (Padding invariance: test_official_values pads every case to 1807.)


def test_registered_and_bad_input():
  assert LOSSES["dm_count"] is dm_count_loss
  with pytest.raises(ValueError, match="solver"):
    dm_count_loss(jnp.ones((1, 4, 4)), jnp.ones((1, 2, 2)),
                  jnp.ones((1, 2), bool), stride=8, solver="pot")
  with pytest.raises(ValueError, match="points"):
    dm_count_loss(jnp.ones((1, 4, 4)), jnp.ones((1, 2, 3)),
                  jnp.ones((1, 2), bool), stride=8)
