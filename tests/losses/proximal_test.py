"""PML vs the official values, a float64 NumPy reference, the paper's eqs."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import io as sio

from counting_jax.losses import LOSSES, pml_loss
from counting_jax.losses._proximal import nearest_points

STRIDE = 2


@pytest.fixture(scope="module")
def official(official_cases):
  z, meta, names, pts, mask = official_cases("pml", extra=True)
  dens = np.stack([z[f"{c}/density"] for c in names])
  return z, meta, names, dens, pts, mask


@pytest.fixture(scope="module")
def official_run(official):
  """All ten cases in one batch: per-image terms and per-image gradients."""
  _, _, _, dens, pts, mask = official
  out = {}
  for bug in (True, False):
    loss = lambda d, bug=bug: pml_loss(d, pts, mask, stride=STRIDE,
                                       official_count_bug=bug)[1]["pml"]
    fn = jax.jit(lambda d, loss=loss: (loss(d),
                                       jax.grad(lambda d: loss(d).sum())(d)))
    out[bug] = fn(jnp.asarray(dens))
  return out


@pytest.mark.parametrize("bug", [True, False], ids=["asis", "intended"])
def test_official_values(official, official_run, bug):
  z, meta, names, dens, *_ = official
  per_image, grads = official_run[bug]
  tag = "asis" if bug else "intended"
  for b, c in enumerate(names):
    ref_loss = z[f"{c}/loss_{tag}"]
    ref_grad = z[f"{c}/grad_{tag}"] if f"{c}/grad_{tag}" in z else z[
        f"{c}/grad_asis"]
    # The loss is Σ a_i (c_i − c̄) + Σ|m_j − 1|, a float32 sum of terms of
    # both signs that cancel (b1_single: −0.141 from terms of size ~1):
    # compare relative to the sum of the absolute terms (float32 summation
    # error is proportional to it); measured ≤ 3e-7 of it.
    magnitude = np.abs(dens[b] * ref_grad).sum() + abs(ref_loss)
    assert abs(float(per_image[b]) - ref_loss) <= 1e-5 * magnitude, c
    np.testing.assert_allclose(grads[b], ref_grad, rtol=0,
                               atol=1e-5 * np.abs(ref_grad).max(), err_msg=c)
  cases = meta["cases"]  # the official batch holds the nine real cases
  if bug:
    batch = jax.jit(jax.value_and_grad(lambda d: pml_loss(
        d, official[4][:9], official[5][:9], stride=STRIDE,
        official_count_bug=True)[0]))
    value, grad = batch(jnp.asarray(dens[:len(cases)]))
    np.testing.assert_allclose(value, z["batch/loss_asis"], rtol=1e-5)
    np.testing.assert_allclose(grad, z["batch/grad_asis"], rtol=0,
                               atol=1e-5 * np.abs(z["batch/grad_asis"]).max())
  # the count bug: Σx as the count (b20_lowmass: |0.8 − 3256.74|)
  low = names.index("b20_lowmass")
  expected = 3255.9417 if bug else 10.2
  np.testing.assert_allclose(per_image[low], expected, rtol=1e-6)


def test_official_nearest_point_cells(official):
  z, _, names, _, pts, mask = official
  run = jax.jit(jax.vmap(lambda p, m: nearest_points(
      p, m, (256, 256), stride=STRIDE, offset=0.5)))
  idx, dist = run(pts, mask)
  for b, c in enumerate(names):
    if f"{c}/nn_index" not in z:
      continue
    np.testing.assert_array_equal(idx[b], z[f"{c}/nn_index"].ravel())
    cost = np.exp(dist[b] / np.maximum(
        z[f"{c}/cell_max_dist"].ravel(), 32.0)) - 1
    np.testing.assert_allclose(cost, z[f"{c}/cost"].ravel(), rtol=1e-5,
                               atol=1e-6)


# ---------------------------------------------------------------------------
# Independent float64 NumPy reference (crowd_losses.md §3.5, PML eqs. 7-14).


def _np_cells(points, h, w, stride, offset):
  yy, xx = np.meshgrid(stride * np.arange(h) + offset,
                       stride * np.arange(w) + offset, indexing="ij")
  pix = np.stack([xx.ravel(), yy.ravel()], -1).astype(np.float64)
  dist = np.sqrt(((pix[:, None] - points[None].astype(np.float64)) ** 2)
                 .sum(-1))
  j = dist.argmin(1)
  return j, dist[np.arange(len(pix)), j]


def _np_pml_image(density, points, *, eps=1.0, count_norm="l1", stride=STRIDE,
                  offset=None, radius=32.0):
  """(loss, gradient) of one image, float64, intended count."""
  a = density.astype(np.float64).ravel()
  h, w = density.shape
  offset = (stride - 1) / 2 if offset is None else offset
  m = len(points)
  if m == 0:
    return np.abs(a).sum() + eps * abs(a.sum()), (np.sign(a) + eps * np.sign(
        a.sum())).reshape(h, w)
  if a.sum() <= 1:
    return eps * abs(a.sum() - m), np.full((h, w), eps * np.sign(a.sum() - m))
  j, d = _np_cells(points, h, w, stride, offset)
  loss, grad = 0.0, np.zeros_like(a)
  for k in range(m):
    cell = j == k
    if not cell.any():
      loss += eps * 1.0 if count_norm == "l1" else eps * 0.5
      continue
    c = np.exp(d[cell] / max(d[cell].max(), radius)) - 1
    centred = c - c.mean()
    mass = a[cell].sum()
    if count_norm == "l1":
      loss += a[cell] @ centred + eps * abs(mass - 1)
      grad[cell] = centred + eps * np.sign(mass - 1)
    else:
      n_cell = cell.sum()
      loss += a[cell] @ centred + eps * (mass - 1) ** 2 / (2 * n_cell)
      grad[cell] = centred + eps * (mass - 1) / n_cell
  return loss, grad.reshape(h, w)


def _real_points(shared_data, size):
  mat = sio.loadmat(shared_data("shanghaitech") / "part_A/test_data/"
                    "ground-truth/GT_IMG_1.mat")
  loc = mat["image_info"][0, 0][0, 0]["location"].astype(np.float32)
  x0, y0 = 500, 250
  keep = ((loc[:, 0] >= x0) & (loc[:, 0] < x0 + size) & (loc[:, 1] >= y0)
          & (loc[:, 1] < y0 + size))
  return loc[keep] - np.array([x0, y0], np.float32)


@pytest.fixture(scope="module")
def small_batch(shared_data):
  """Random points, a real ShanghaiTech crop, an empty image, a low-mass one."""
  h = w = 32
  size = h * STRIDE
  rng = np.random.default_rng(0)
  real = _real_points(shared_data, size)
  assert len(real) >= 5
  point_sets = [rng.uniform(0, size, (9, 2)).astype(np.float32), real,
                np.zeros((0, 2), np.float32),
                rng.uniform(0, size, (3, 2)).astype(np.float32)]
  totals = [10.0, 1.1 * len(real), 2.0, 0.7]
  dens = np.stack([rng.gamma(1.5, 1.0, (h, w)) for _ in point_sets])
  dens[0][rng.uniform(size=(h, w)) < 0.3] = 0.0  # ReLU-like zeros
  dens = (dens * (np.array(totals) / dens.sum((1, 2)))[:, None, None])
  n = max(len(p) for p in point_sets) + 2  # and two padded rows
  pts = np.zeros((len(point_sets), n, 2), np.float32)
  mask = np.zeros((len(point_sets), n), bool)
  for b, p in enumerate(point_sets):
    pts[b, :len(p)], mask[b, :len(p)] = p, True
  return dens.astype(np.float32), pts, mask, point_sets


@pytest.mark.parametrize("count_norm,eps", [("l1", 1.0), ("l2", 2.0)])
def test_float64_reference_random_and_real(small_batch, count_norm, eps):
  dens, pts, mask, point_sets = small_batch
  fn = jax.jit(jax.jacrev(lambda d: (lambda loss, aux: jnp.concatenate(
      [loss[None], aux["pml"]]))(*pml_loss(d, pts, mask, stride=STRIDE,
                                           epsilon=eps,
                                           count_norm=count_norm))))
  jac = fn(jnp.asarray(dens))
  values, _ = jax.jit(lambda d: pml_loss(d, pts, mask, stride=STRIDE,
                                         epsilon=eps,
                                         count_norm=count_norm))(dens)
  refs = [_np_pml_image(d, p, eps=eps, count_norm=count_norm)
          for d, p in zip(dens, point_sets)]
  np.testing.assert_allclose(values, np.mean([r[0] for r in refs]),
                             rtol=1e-5)
  for b, (ref_loss, ref_grad) in enumerate(refs):
    np.testing.assert_allclose(jac[0][b], ref_grad / len(refs), rtol=1e-5,
                               atol=1e-6, err_msg=str(b))
    np.testing.assert_allclose(jac[1 + b][b], ref_grad, rtol=1e-5, atol=1e-6)


def test_eq8_gradient_is_c_minus_tau_eta(small_batch):
  """L2 count (eq. 13): ∂L/∂a_i = c_i − τη = τ(a_i − p*_i), p* of eq. 7."""
  dens, pts, mask, point_sets = small_batch
  tau = 2.0
  grad = jax.jit(jax.grad(lambda d: pml_loss(
      d, pts, mask, stride=STRIDE, epsilon=tau, count_norm="l2")[1]["pml"]
                          .sum()))(jnp.asarray(dens))
  for b in (0, 1):
    a = dens[b].astype(np.float64).ravel()
    j, d = _np_cells(point_sets[b], 32, 32, STRIDE, 0.5)
    g = np.asarray(grad[b], np.float64).ravel()
    for k in np.unique(j):
      cell = j == k
      c = np.exp(d[cell] / max(d[cell].max(), 32.0)) - 1
      eta = (1 - (a[cell] - c / tau).sum()) / cell.sum()  # eq. 7
      p_star = a[cell] - c / tau + eta
      np.testing.assert_allclose(g[cell], c - tau * eta, atol=1e-5)
      np.testing.assert_allclose(g[cell], tau * (a[cell] - p_star), atol=1e-5)


def test_l1_count_gradient_is_plus_minus_epsilon_per_cell(small_batch):
  """L1 count (eq. 14, GL supplement eq. 2): gradient − centred cost = ±ε."""
  dens, pts, mask, point_sets = small_batch
  grad = jax.jit(jax.grad(lambda d: pml_loss(d, pts, mask, stride=STRIDE,
                                             epsilon=3.0)[0]))(dens)[0] * 4
  a = dens[0].astype(np.float64).ravel()
  j, d = _np_cells(point_sets[0], 32, 32, STRIDE, 0.5)
  g = np.asarray(grad, np.float64).ravel()
  for k in np.unique(j):
    cell = j == k
    c = np.exp(d[cell] / max(d[cell].max(), 32.0)) - 1
    np.testing.assert_allclose(g[cell] - (c - c.mean()),
                               3.0 * np.sign(a[cell].sum() - 1), atol=1e-5)


def test_gradient_matches_central_differences(small_batch):
  """PML is piecewise linear in a (the cells do not depend on a)."""
  dens, pts, mask, _ = small_batch
  fn = jax.jit(lambda d: pml_loss(d, pts, mask, stride=STRIDE)[0])
  direction = np.random.default_rng(1).normal(size=dens.shape)
  direction = (direction * dens).astype(np.float32)  # relative: a stays >= 0
  h = 1e-2
  fd = (fn(dens + h * direction) - fn(dens - h * direction)) / (2 * h)
  np.testing.assert_allclose(jnp.vdot(jax.grad(fn)(dens), direction), fd,
                             rtol=1e-3)


def test_blocked_search_equals_brute_force():
  rng = np.random.default_rng(3)
  pts = rng.uniform(0, 20, (11, 2)).astype(np.float32)
  pts[5] = pts[2]  # a duplicate point: ties go to the lower index
  mask = np.ones(11, bool)
  mask[[0, 7]] = False
  idx, dist = nearest_points(jnp.asarray(pts), jnp.asarray(mask), (9, 10),
                             stride=2, offset=0.5, block_pixels=7,
                             block_points=3)
  valid = np.flatnonzero(mask)
  j, d = _np_cells(pts[valid], 9, 10, 2, 0.5)
  np.testing.assert_array_equal(idx, valid[j])
  np.testing.assert_allclose(dist, d, rtol=1e-6)
  assert 5 not in np.asarray(idx)


def test_memory_stays_linear_at_1024_squared_with_20000_points():
  """Compile only: XLA's peak buffer estimate for value + gradient."""
  fn = jax.jit(jax.value_and_grad(
      lambda d, p, m: pml_loss(d, p, m, stride=2)[0]))
  compiled = fn.lower(jax.ShapeDtypeStruct((1, 1024, 1024), jnp.float32),
                      jax.ShapeDtypeStruct((1, 20000, 2), jnp.float32),
                      jax.ShapeDtypeStruct((1, 20000), bool)).compile()
  stats = compiled.memory_analysis()
  total = (stats.temp_size_in_bytes + stats.argument_size_in_bytes
           + stats.output_size_in_bytes)
  # a dense pixels x points matrix alone would be 1024² · 20000 · 4 B = 84 GB
  assert total < 2 * 2**30, total  # measured ≈ 50 MB


def test_registered_and_bad_input():
  assert LOSSES["pml"] is pml_loss
  d = jnp.ones((1, 4, 4))
  p = jnp.zeros((1, 2, 2))
  m = jnp.ones((1, 2), bool)
  with pytest.raises(ValueError, match="count_norm"):
    pml_loss(d, p, m, stride=2, count_norm="l3")
  with pytest.raises(ValueError, match="points"):
    pml_loss(d, p[..., :1], m, stride=2)


def _official_nearest(points, h, w, stride, offset):
  """PML's nearest point as its official code finds it: the float32 norm of
  (pixel - point), rounded as PyTorch's CPU kernel does (sqrt(fma(dx, dx,
  dy²)), checked bit for bit against ``torch.norm`` on this machine), then
  the strict argmin (first index on an exact tie)."""
  yy, xx = np.meshgrid(stride * np.arange(h) + offset,
                       stride * np.arange(w) + offset, indexing="ij")
  pix = np.stack([xx.ravel(), yy.ravel()], -1).astype(np.float32)
  diff = pix[:, None] - points[None].astype(np.float32)  # float32
  dx, dy = diff[..., 0], diff[..., 1]
  d = np.sqrt((dx.astype(np.float64) ** 2 + (dy * dy).astype(np.float64))
              .astype(np.float32))
  return d.argmin(1), d.min(1)


@pytest.mark.parametrize("blocks", [(None, 4096), (7, 1), (5, 2), (64, 3)])
def test_near_equidistant_points_break_ties_as_official(blocks):
  """Points 1 and 2 are 3 ulps apart in distance from the pixels of the
  column between them (resolvable in float32: the official code picks point
  2; the former 2^-20 relative margin on squared distances picked 1); points
  3 and 4 are mirror images (exact ties: the first index wins), and 5 and 6
  duplicates."""
  ulp = np.spacing(np.float32(10.0))
  pts = np.array([[44.0, 44.0],
                  [20.5 - 10.0 - 3 * ulp, 15.0], [20.5 + 10.0, 15.0],
                  [40.5 - 3.0, 5.0], [40.5 + 3.0, 5.0],
                  [2.25, 28.0], [2.25, 28.0]], np.float32)
  mask = np.array([False] + [True] * 6)
  h, w = 16, 24
  ref_j, ref_d = _official_nearest(pts[1:], h, w, STRIDE, 0.5)
  ref_j = ref_j + 1
  # The near-ties resolve differently under the former rule.
  yy, xx = np.meshgrid(STRIDE * np.arange(h) + 0.5,
                       STRIDE * np.arange(w) + 0.5, indexing="ij")
  pix = np.stack([xx.ravel(), yy.ravel()], -1)
  d2 = ((pix[:, None] - pts[None, 1:].astype(np.float64)) ** 2).sum(-1)
  old = 1 + np.argmax(d2 <= d2.min(1, keepdims=True) * (1 + 2.0**-20), 1)
  assert np.sum((old == 1) & (ref_j == 2)) >= 8
  assert np.sum(ref_j == 3) > np.sum(ref_j == 4)  # the mirror column
  block_pixels, block_points = blocks
  idx, dist = jax.jit(lambda p, m: nearest_points(
      p, m, (h, w), stride=STRIDE, offset=0.5, block_pixels=block_pixels,
      block_points=block_points))(pts, mask)
  np.testing.assert_array_equal(idx, ref_j)
  # Bit for bit on XLA:CPU with FMA; one float32 step allowed elsewhere.
  np.testing.assert_allclose(dist, ref_d, rtol=2.0**-23)
  assert 6 not in np.asarray(idx)
