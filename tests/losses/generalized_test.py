"""GL vs the official values, a float64 NumPy reference and closed forms."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import io as sio
from scipy.special import logsumexp

from counting_jax.losses import LOSSES, generalized_loss

RHO, EPS, TAU = 0.5, 0.01, 0.1  # official reach, blur, tau


@pytest.fixture(scope="module")
def official(official_cases):
  z, _, names, pts, mask = official_cases("gl")
  dens = np.stack([z[f"{c}/density"] for c in names])
  return z, names, dens, pts, mask


def test_official_values(official):
  """All nine cases in ONE batch, official defaults (stride 8 on 512 crops)."""
  z, names, dens, pts, mask = official
  fn = jax.jit(jax.value_and_grad(
      lambda d: generalized_loss(d, pts, mask, stride=8), has_aux=True))
  (loss, aux), grad = fn(jnp.asarray(dens))
  # float32 on both sides, same formulas; measured max 6e-6
  np.testing.assert_allclose(loss, z["batch/loss"], rtol=1e-5)
  for b, c in enumerate(names):
    for term in ("emd", "point", "pixel", "entropy"):
      np.testing.assert_allclose(aux[term][b], z[f"{c}/{term}"], rtol=1e-5,
                                 atol=1e-9, err_msg=f"{c}/{term}")
    np.testing.assert_allclose(aux["gl"][b], z[f"{c}/loss"], rtol=1e-5,
                               err_msg=c)
    scale = np.abs(z["batch/grad"][b]).max()
    np.testing.assert_allclose(grad[b], z["batch/grad"][b], rtol=0,
                               atol=1e-5 * scale, err_msg=c)
  # official reduction: emd, point, pixel averaged; entropy summed
  for term in ("emd", "point", "pixel"):
    np.testing.assert_allclose(aux[term].mean(), z[f"batch/{term}"], rtol=1e-5)
  np.testing.assert_allclose(aux["entropy"].sum(), z["batch/entropy"],
                             rtol=1e-5)
  # empty crop: an L1 count loss on each of emd, point, pixel, whose gradient
  # is the constant (1 + 2τ) sign(Σa) / B (GL supplement eq. 2)
  empty = names.index("b1_empty")
  np.testing.assert_allclose(grad[empty], (1 + 2 * TAU) / len(names),
                             rtol=1e-6)


def test_emd_gradient_closed_form(official):
  """With τ = w = 0 the gradient is (ρ + ε/2)(1 − exp(−F/ρ)) (§3.4)."""
  z, *_ = official
  c = "b20_n11"
  d, p = z[f"{c}/density"][None], z[f"{c}/points"][None]
  grad = jax.jit(jax.grad(lambda d: generalized_loss(
      d, p, np.ones(p.shape[:2], bool), stride=8, tau=0.0,
      entropy_weight=0.0)[0]))(d)
  expected = (RHO + EPS / 2) * (1 - np.exp(-z[f"{c}/F"] / RHO))
  np.testing.assert_allclose(grad[0], expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Independent float64 NumPy reference, written from crowd_losses.md §3.4.


def _np_cost(name, x, y):
  d = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
  if name == "perspective":
    return np.exp(d / (0.5 + 0.2 * (x[:, None, 1] + y[None, :, 1]) / 2)) - 1
  return {"exp": np.exp(d / 0.6) - 1, "euclidean": d, "sqeuclidean": d**2}[name]


def _np_softmin(cost, h, eps, axis):
  h = h[None, :] if axis == 1 else h[:, None]
  return -eps * logsumexp(h - cost / eps, axis=axis)


def _np_gl_image(density, points, *, cost, stride, offset, scale, d_point,
                 d_pixel, converged=False):
  """(terms dict, gradient dict) of one image, float64, official loop."""
  a = density.astype(np.float64).ravel()
  h, w = density.shape
  if len(points) == 0:
    s = abs(a.sum())
    return ({"emd": s, "point": s, "pixel": s, "entropy": 0.0},
            {k: np.sign(a.sum()) * np.ones_like(a) if k != "entropy" else
             np.zeros_like(a) for k in ("emd", "point", "pixel", "entropy")})
  yy, xx = np.meshgrid(stride * np.arange(h) + offset,
                       stride * np.arange(w) + offset, indexing="ij")
  x = np.stack([xx.ravel(), yy.ravel()], -1) / scale
  y = points.astype(np.float64) / scale
  c = _np_cost(cost, x, y)
  both = np.concatenate([x, y])
  diam = np.linalg.norm(both.max(0) - both.min(0))
  schedule = ([diam] + list(np.exp(np.arange(np.log(diam), np.log(EPS),
                                             np.log(0.5)))) + [EPS])
  la = np.where(a > 0, np.log(np.where(a > 0, a, 1)), -1e5)
  lb = np.zeros(len(y))
  lam = lambda e: 1 / (1 + e / RHO)
  f = lam(diam) * _np_softmin(c, lb, diam, 1)
  g = lam(diam) * _np_softmin(c, la, diam, 0)
  for e in schedule:
    f, g = (0.5 * (f + lam(e) * _np_softmin(c, lb + g / e, e, 1)),
            0.5 * (g + lam(e) * _np_softmin(c, la + f / e, e, 0)))
  f, g = (lam(EPS) * _np_softmin(c, lb + g / EPS, EPS, 1),
          lam(EPS) * _np_softmin(c, la + f / EPS, EPS, 0))
  for _ in range(3000 if converged else 0):  # contraction: λ² per sweep
    f_old = f
    f = lam(EPS) * _np_softmin(c, lb + g / EPS, EPS, 1)
    g = lam(EPS) * _np_softmin(c, la + f / EPS, EPS, 0)
    if np.abs(f - f_old).max() < 1e-12:
      break
  k = np.exp((f[:, None] + g[None] - c) / EPS)
  pi = a[:, None] * k
  col, row = pi.sum(0), pi.sum(1)
  terms = {
      "emd": (RHO + EPS / 2) * (np.sum(a * (1 - np.exp(-f / RHO)))
                                + np.sum(1 - np.exp(-g / RHO))),
      "point": (np.abs(col - 1).sum() if d_point == "l1" else
                ((col - 1) ** 2).sum()),
      "pixel": (((row - a) ** 2).sum() if d_pixel == "l2" else
                np.abs(row - a).sum()),
      "entropy": np.mean((pi + 1e-20) * np.log(pi + 1e-20)),
  }
  grads = {
      "emd": (RHO + EPS / 2) * (1 - np.exp(-f / RHO)),
      "point": k @ (np.sign(col - 1) if d_point == "l1" else 2 * (col - 1)),
      "pixel": -2 * (row - a) if d_pixel == "l2" else -np.sign(row - a),
      "entropy": (k * (np.log(pi + 1e-20) + 1)).sum(1) / pi.size,
  }
  return terms, grads


def _real_crop(shared_data, size):
  """A size x size crop of ShanghaiTech part_A test IMG_1, (x, y) points."""
  mat = sio.loadmat(shared_data("shanghaitech") / "part_A/test_data/"
                    "ground-truth/GT_IMG_1.mat")
  loc = mat["image_info"][0, 0][0, 0]["location"].astype(np.float32)
  x0, y0 = 400, 150
  keep = ((loc[:, 0] >= x0) & (loc[:, 0] < x0 + size) & (loc[:, 1] >= y0)
          & (loc[:, 1] < y0 + size))
  return loc[keep] - np.array([x0, y0], np.float32)


def _random_density(rng, h, w, total, zeros=0.0):
  d = rng.gamma(1.5, 1.0, (h, w))
  d[rng.uniform(size=(h, w)) < zeros] = 0.0
  return (d * total / d.sum()).astype(np.float32)


@pytest.mark.parametrize("options", [
    dict(cost="perspective", d_point="l1", d_pixel="l2",
         batch_reduction="official", center_offset=None),
    dict(cost="euclidean", d_point="l2", d_pixel="l1",
         batch_reduction="mean", center_offset=4.0, pixel_block=100),
    dict(cost="sqeuclidean", d_point="l1", d_pixel="l2",
         batch_reduction="mean", center_offset=None),
    dict(cost="exp", d_point="l1", d_pixel="l2",
         batch_reduction="official", center_offset=8.0, solver="converged",
         threshold=1e-4),
], ids=lambda o: o["cost"])
def test_float64_reference_random_and_real(shared_data, options):
  """Random points + a real ShanghaiTech crop + an empty image, one batch
  (one option set in blocks of 100 of the 576 pixels, the last padded)."""
  h = w = 24
  stride, size = 8, 24 * 8
  rng = np.random.default_rng(0)
  real = _real_crop(shared_data, size)
  assert 10 <= len(real) <= 60
  rand = rng.uniform(0, size, (7, 2)).astype(np.float32)
  point_sets = [rand, real, np.zeros((0, 2), np.float32)]
  dens = np.stack([_random_density(rng, h, w, 8.0, zeros=0.3),
                   _random_density(rng, h, w, 0.9 * len(real)),
                   _random_density(rng, h, w, 1.5)])
  n = max(len(p) for p in point_sets)
  pts = np.zeros((3, n, 2), np.float32)
  mask = np.zeros((3, n), bool)
  for b, p in enumerate(point_sets):
    pts[b, :len(p)], mask[b, :len(p)] = p, True
  fn = jax.jit(jax.value_and_grad(
      lambda d: generalized_loss(d, pts, mask, stride=stride, **options),
      has_aux=True))
  (loss, aux), grad = fn(jnp.asarray(dens))

  offset = stride if options["center_offset"] is None else options[
      "center_offset"]
  refs = [_np_gl_image(d, p, cost=options["cost"], stride=stride,
                       offset=offset, scale=size, d_point=options["d_point"],
                       d_pixel=options["d_pixel"],
                       converged=options.get("solver") == "converged")
          for d, p in zip(dens, point_sets)]
  ent_weight = 1 if options["batch_reduction"] == "official" else 1 / 3
  ref_loss = sum((t["emd"] + TAU * (t["point"] + t["pixel"])) / 3
                 + EPS * ent_weight * t["entropy"] for t, _ in refs)
  # float32 vs float64: potentials carry ~1e-6 absolute rounding
  np.testing.assert_allclose(loss, ref_loss, rtol=2e-5)
  for b, (terms, grads) in enumerate(refs):
    for k, v in terms.items():
      np.testing.assert_allclose(aux[k][b], v, rtol=2e-5, atol=1e-9,
                                 err_msg=f"{b}/{k}")
    ref_grad = ((grads["emd"] + TAU * (grads["point"] + grads["pixel"])) / 3
                + EPS * ent_weight * grads["entropy"]).reshape(h, w)
    np.testing.assert_allclose(grad[b], ref_grad, rtol=0,
                               atol=2e-5 * np.abs(ref_grad).max(),
                               err_msg=str(b))


def test_memory_grows_with_pixels_plus_points():
  """Value and gradient of a 256 x 256 map with 4,000 points, compiled:
  the costs are computed on the fly and never stored."""
  fn = jax.jit(jax.value_and_grad(
      lambda d, p, m: generalized_loss(d, p, m, stride=2)[0]))
  compiled = fn.lower(jax.ShapeDtypeStruct((1, 256, 256), jnp.float32),
                      jax.ShapeDtypeStruct((1, 4000, 2), jnp.float32),
                      jax.ShapeDtypeStruct((1, 4000), bool)).compile()
  stats = compiled.memory_analysis()
  total = (stats.temp_size_in_bytes + stats.argument_size_in_bytes
           + stats.output_size_in_bytes)
  # one dense pixels x points float32 matrix alone would be 1 GiB
  assert total < 2**30 // 8, total  # measured ≈ 15 MB on CPU


def test_converged_differs_from_official_schedule(official):
  """GL's ~10-step schedule is not converged (crowd_losses.md §1.5)."""
  z, *_ = official
  c = "b20_n11"
  d, p = z[f"{c}/density"][None], z[f"{c}/points"][None]
  m = np.ones(p.shape[:2], bool)
  grad = jax.jit(jax.grad(lambda d: generalized_loss(
      d, p, m, stride=8, solver="converged")[0]))(d)[0]
  diff = np.abs(grad - z[f"{c}/grad"]).max() / np.abs(z[f"{c}/grad"]).max()
  assert diff > 0.05  # measured 0.24


def test_registered_and_bad_input():
  assert LOSSES["gl"] is generalized_loss
  d = jnp.ones((1, 4, 4))
  p = jnp.zeros((1, 2, 2))
  m = jnp.ones((1, 2), bool)
  for kw, match in [(dict(solver="exact"), "solver"),
                    (dict(d_point="l3"), "d_point"),
                    (dict(batch_reduction="sum"), "batch_reduction"),
                    (dict(reach=None), "reach"),
                    (dict(cost="manhattan"), "unknown cost")]:
    with pytest.raises(ValueError, match=match):
      generalized_loss(d, p, m, stride=8, **kw)
  with pytest.raises(ValueError, match="point_mask"):
    generalized_loss(d, p, m[:, :1], stride=8)
