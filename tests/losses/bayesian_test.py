"""Bayesian loss vs the official BL values, a float64 NumPy reference, GL eqs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import io as sio
from scipy import spatial
from scipy.special import softmax

from counting_jax.losses import LOSSES, bayesian_loss
from counting_jax.losses._bayesian import (_separable_terms,
                                           bayesian_posterior,
                                           box_fraction_targets)

H = W = 64
STRIDE = 8


def _pad(cases, key_points, extra=None):
  n = max(1, max(len(c[key_points]) for c in cases))
  pts = np.zeros((len(cases), n, 2), np.float32)
  mask = np.zeros((len(cases), n), bool)
  out = np.zeros((len(cases), n), np.float32) if extra else None
  for b, c in enumerate(cases):
    m = len(c[key_points])
    pts[b, :m] = c[key_points]
    mask[b, :m] = True
    if extra:
      out[b, :m] = c[extra]
  return pts, mask, out


@pytest.fixture(scope="module")
def official(shared_dir):
  path = shared_dir / "reference/official_values/bl.npz"
  if not path.exists():
    pytest.skip(f"{path} not found")
  z = np.load(path)
  meta = json.loads(str(z["meta_json"]))
  cases = [{k: z[f"{c}/{k}"] for k in ("density", "points", "targets",
                                        "st_size")} for c in meta["cases"]]
  return z, meta, cases


def _separable_ok(pts, mask, shape, **kw):
  """Whether the separable form holds (else bayesian_loss goes dense)."""
  kw = dict(dict(stride=STRIDE, sigma=8.0, use_background=True,
                 background="reciprocal", background_ratio=None,
                 image_size=None, center_offset=None, distance="expanded"),
            **kw)
  return bool(_separable_terms(pts, mask, shape, **kw)["ok"])


@pytest.fixture(scope="module")
def official_run(official):
  """One jitted batched call per background setting and method over all 9
  cases."""
  z, meta, cases = official
  pts, mask, targets = _pad(cases, "points", "targets")
  dens = jnp.asarray(np.stack([c["density"] for c in cases]))
  st = np.array([c["st_size"] for c in cases], np.float32)
  out = {}
  for bg in (True, False):
    post = bayesian_posterior(pts, mask, (H, W), stride=STRIDE,
                              use_background=bg, image_size=st,
                              distance="expanded")
    for method in ("separable", "dense"):
      # Points, targets and sizes are jit arguments, as in training (XLA
      # may then fuse the expanded distances into FMAs, which must not
      # happen); the defaults are the official conventions.
      fn = jax.jit(jax.value_and_grad(
          lambda d, p, m, t, s, bg=bg, method=method: bayesian_loss(
              d, p, m, stride=STRIDE, sigma=8.0, use_background=bg,
              image_size=s, targets=t, method=method),
          has_aux=True))
      (loss, aux), grad = fn(dens, pts, mask, targets, st)
      out["bg" if bg else "nobg", method] = (loss, aux, np.asarray(grad),
                                             post)
  return out


def test_official_cases_take_the_separable_form(official):
  """With background (the official default) every official case is
  computed in separable form; without, the sparse ones fall back."""
  z, meta, cases = official
  pts, mask, _ = _pad(cases, "points")
  st = np.array([c["st_size"] for c in cases], np.float32)
  assert _separable_ok(pts, mask, (H, W), image_size=st)
  assert not _separable_ok(pts, mask, (H, W), image_size=st,
                           use_background=False)


@pytest.mark.parametrize("method", ["separable", "dense"])
@pytest.mark.parametrize("bg", ["bg", "nobg"])
def test_official_values(official, official_run, bg, method):
  z, meta, cases = official
  loss, aux, grad, post = official_run[bg, method]
  n_cases = len(cases)
  for b, name in enumerate(meta["cases"]):
    ref = z[f"{name}/{bg}/loss"]
    np.testing.assert_allclose(aux["bayesian"][b], ref, rtol=1e-5,
                               err_msg=name)
    # Per-image gradient = n_cases x the batch gradient (batch mean).
    ref_g = z[f"{name}/{bg}/grad"]
    err = np.abs(grad[b] * n_cases - ref_g).max() / np.abs(ref_g).max()
    assert err <= 1e-5, (name, err)
    m = len(cases[b]["points"])
    if m:
      expected = np.asarray(jnp.einsum(
          "jn,n->j", post[b], cases[b]["density"].reshape(-1)))
      ref_e = z[f"{name}/{bg}/expected_counts"]
      got = np.concatenate([expected[:m], expected[-1:]]) if bg == "bg" \
          else expected[:m]
      np.testing.assert_allclose(got, ref_e, rtol=1e-5, atol=1e-5,
                                 err_msg=name)
      if bg == "bg":
        np.testing.assert_allclose(post[b, -1].reshape(H, W),
                                   z[f"{name}/bg/bg_posterior"], atol=1e-6)
  np.testing.assert_allclose(loss, z[f"batch/{bg}/loss"], rtol=1e-5)
  ref_g = z[f"batch/{bg}/grad"]
  assert np.abs(grad - ref_g).max() <= 1e-5 * np.abs(ref_g).max()


def test_exact_distance_close_to_official(official):
  """Exact (x − c)² differs from the official float32 expansion by ~1e-4
  in the posterior, so losses agree to 1e-5 and gradients to 5e-4 except
  where |E_j − t_j| is within float32 noise (the L1 sign flips; a8)."""
  z, meta, cases = official
  c = cases[0]
  pts, mask, targets = _pad([c], "points", "targets")
  (loss, _), grad = jax.value_and_grad(
      lambda d: bayesian_loss(d, pts, mask, stride=STRIDE,
                              image_size=c["st_size"], targets=targets),
      has_aux=True)(jnp.asarray(c["density"][None]))
  np.testing.assert_allclose(loss, z[f"{meta['cases'][0]}/bg/loss"],
                             rtol=1e-5)
  ref_g = z[f"{meta['cases'][0]}/bg/grad"]
  assert np.abs(grad[0] - ref_g).max() <= 5e-4 * np.abs(ref_g).max()


def test_box_fraction_targets_reproduce_official(official, shared_data):
  """BL's QNRF-loader targets from the full .mat annotations (kNN boxes)."""
  z, meta, cases = official
  root = shared_data("shanghaitech")
  for b, name in enumerate(meta["cases"]):
    part_split, img, _, x0, y0 = meta["shanghaitech_sources"][name].split()
    x0, y0 = int(x0.split("=")[1]), int(y0.split("=")[1])
    mat = sio.loadmat(root / part_split / "ground-truth" / f"GT_{img}.mat")
    loc = mat["image_info"][0, 0][0, 0]["location"].astype(np.float64)
    dist, _ = spatial.cKDTree(loc).query(loc, k=4)
    side = np.clip(dist[:, 1:].mean(1), 4.0, 128.0)
    p = loc - [x0, y0]
    inside = (p >= 0).all(1) & (p < 512).all(1)
    np.testing.assert_allclose(p[inside], cases[b]["points"], atol=1e-3)
    got = box_fraction_targets(p[inside].astype(np.float32),
                               side[inside].astype(np.float32),
                               height=512, width=512)
    # float32 box arithmetic vs the loader's; fractions are in [0.3, 1].
    np.testing.assert_allclose(got, cases[b]["targets"], atol=5e-5)


# ----------------------------------------------------------------------------
# Independent float64 reference.


def _reference(dens, pts, mask, targets, *, sigma, use_bg, form, ratio,
               size, stride):
  """Float64 BL loss and gradient, image by image, from the formulas."""
  bsz, h, w = dens.shape
  cx = np.arange(w) * stride + stride / 2
  cy = np.arange(h) * stride + stride / 2
  xx, yy = np.meshgrid(cx, cy)
  pix = np.stack([xx.ravel(), yy.ravel()], 1)
  loss, grad = 0.0, np.zeros((bsz, h * w))
  for b in range(bsz):
    a = dens[b].ravel().astype(np.float64)
    y = pts[b][mask[b]].astype(np.float64)
    t = targets[b][mask[b]].astype(np.float64)
    if len(y) == 0:
      loss += abs(a.sum())
      grad[b] = np.sign(a.sum())
      continue
    d2 = ((y[:, None, :] - pix[None]) ** 2).sum(-1)
    rows = [d2]
    tt = list(t)
    if use_bg:
      dmin = d2.min(0)
      big_d = size[b] * ratio
      bg = (big_d ** 2 / (dmin + 1e-5) if form == "reciprocal"
            else (big_d - np.sqrt(dmin)) ** 2)
      rows.append(bg[None])
      tt.append(0.0)
    post = softmax(-np.concatenate(rows) / (2 * sigma ** 2), axis=0)
    e = post @ a
    loss += np.abs(np.array(tt) - e).sum()
    grad[b] = np.sign(e - np.array(tt)) @ post
  return loss / bsz, grad.reshape(bsz, h, w) / bsz


def _random_case(seed, bsz=3, n=9, h=12, w=10, stride=4):
  rng = np.random.default_rng(seed)
  dens = rng.gamma(0.6, 0.3, (bsz, h, w)).astype(np.float32)
  pts = np.stack([rng.uniform(0, w * stride, (bsz, n)),
                  rng.uniform(0, h * stride, (bsz, n))], -1).astype(np.float32)
  counts = [n, 3, 0][:bsz]
  mask = np.arange(n)[None] < np.array(counts)[:, None]
  targets = rng.uniform(0.3, 1.0, (bsz, n)).astype(np.float32)
  pts[~mask] = 0.0
  return dens, pts, mask, targets


@pytest.mark.parametrize("use_bg,form", [(True, "reciprocal"),
                                         (True, "dummy_point"),
                                         (False, "reciprocal")])
def test_float64_reference_random(use_bg, form):
  dens, pts, mask, targets = _random_case(1)
  size = np.array([70.0, 90.0, 50.0])
  ratio = 1.0 if form == "reciprocal" else 0.15
  kw = dict(sigma=6.0, use_background=use_bg, background=form,
            image_size=size, targets=targets, distance="exact")
  (loss, aux), grad = jax.jit(jax.value_and_grad(
      lambda d: bayesian_loss(d, pts, mask, stride=4, **kw),
      has_aux=True))(jnp.asarray(dens))
  ref_l, ref_g = _reference(dens, pts, mask, targets, sigma=6.0,
                            use_bg=use_bg, form=form, ratio=ratio,
                            size=size, stride=4)
  np.testing.assert_allclose(loss, ref_l, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_g, atol=1e-5 * np.abs(ref_g).max())
  assert aux["bayesian"].shape == (3,)


def test_float64_reference_real_points(shared_data):
  """Real ShanghaiTech A points (test IMG_3, a 256x256 crop), σ, stride 8."""
  mat = sio.loadmat(shared_data("shanghaitech") /
                    "part_A/test_data/ground-truth/GT_IMG_3.mat")
  loc = mat["image_info"][0, 0][0, 0]["location"].astype(np.float32)
  p = loc - [300, 200]
  p = p[(p >= 0).all(1) & (p < 256).all(1)]
  assert len(p) > 3
  rng = np.random.default_rng(5)
  dens = rng.gamma(0.5, 0.05, (1, 32, 32)).astype(np.float32)
  pts, mask = p[None], np.ones((1, len(p)), bool)
  ones = np.ones((1, len(p)), np.float32)
  (loss, _), grad = jax.value_and_grad(
      lambda d: bayesian_loss(d, pts, mask, stride=8, image_size=768.0,
                              distance="exact"),
      has_aux=True)(jnp.asarray(dens))
  ref_l, ref_g = _reference(dens, pts, mask, ones, sigma=8.0, use_bg=True,
                            form="reciprocal", ratio=1.0,
                            size=np.array([768.0]), stride=8)
  np.testing.assert_allclose(loss, ref_l, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_g, atol=1e-5 * np.abs(ref_g).max())


def test_dummy_point_background_gl_supplement_eq11():
  """GL supplement eq. 11: ω̄_i = exp(2d r_i/ε − d²/ε) π̄_i with π̄_i the
  posterior of the nearest point, ε = 2σ², r_i = ‖x_i − y_η(i)‖, d = S·r."""
  _, pts, mask, _ = _random_case(2, bsz=1, n=6, h=9, w=11, stride=8)
  sigma, size, ratio = 10.0, 100.0, 0.15
  post = np.asarray(bayesian_posterior(
      pts, mask, (9, 11), stride=8, sigma=sigma, background="dummy_point",
      background_ratio=ratio, image_size=size), np.float64)[0]
  cx = np.arange(11) * 8 + 4.0
  cy = np.arange(9) * 8 + 4.0
  xx, yy = np.meshgrid(cx, cy)
  pix = np.stack([xx.ravel(), yy.ravel()], 1)
  dist = np.sqrt(((pts[0][:, None].astype(np.float64) - pix) ** 2).sum(-1))
  near = dist.argmin(0)
  r = dist.min(0)
  eps, d = 2 * sigma ** 2, size * ratio
  pi_bar = post[near, np.arange(len(r))]
  np.testing.assert_allclose(post[-1], np.exp(2 * d * r / eps - d * d / eps)
                             * pi_bar, rtol=2e-4)


@pytest.mark.parametrize("use_bg,form", [(True, "reciprocal"),
                                         (True, "dummy_point"),
                                         (False, "reciprocal")])
def test_separable_equals_dense(use_bg, form):
  """The separable form against the dense posterior, value and gradient,
  on a 32 x 40 map: 60 uniform points, two clusters at opposite corners
  (pixels up to 35σ from every point), one point, none."""
  rng = np.random.default_rng(7)
  bsz, n, h, w, stride = 4, 60, 32, 40, 4
  pts = rng.uniform(0, [w * stride, h * stride], (bsz, n, 2))
  pts[1, :7] = rng.normal(0, 4, (7, 2)) + np.where(
      np.arange(7)[:, None] < 4, [12.0, 10.0], [150.0, 118.0])
  pts = pts.astype(np.float32)
  mask = np.arange(n)[None] < np.array([[n], [7], [1], [0]])
  dens = rng.gamma(0.6, 0.3, (bsz, h, w)).astype(np.float32)
  targets = rng.uniform(0.3, 1.0, (bsz, n)).astype(np.float32)
  kw = dict(stride=stride, sigma=4.0, use_background=use_bg, background=form,
            image_size=np.array([160.0, 200.0, 120.0, 160.0], np.float32))
  out = {}
  for method in ("separable", "dense"):
    out[method] = jax.jit(jax.value_and_grad(
        lambda d, m=method: bayesian_loss(d, pts, mask, targets=targets,
                                          method=m, **kw)[0]))(dens)
  np.testing.assert_allclose(out["separable"][0], out["dense"][0], rtol=1e-6)
  g_sep, g_dense = np.asarray(out["separable"][1]), np.asarray(out["dense"][1])
  assert np.abs(g_sep - g_dense).max() <= 1e-6 * np.abs(g_dense).max()
  ok = _separable_ok(pts, mask, (h, w), **dict(kw, background=form))
  # With background the separable form runs; without, the two clusters
  # leave pixels 11σ from every point: the dense form runs.
  assert ok == use_bg


def test_empty_and_edge_cases():
  fn = jax.jit(jax.value_and_grad(
      lambda d, p, m: bayesian_loss(d, p, m, stride=8), has_aux=True))
  dens = jnp.full((2, 8, 8), 0.05).at[1].set(0.0)
  pts = jnp.array([[[0.0, 0.0], [63.9, 63.9]], [[10.0, 5.0], [0.0, 0.0]]])
  # image 0: empty (mask False), image 1: one point, all-zero density.
  mask = jnp.array([[False, False], [True, False]])
  (loss, aux), grad = fn(dens, pts, mask)
  np.testing.assert_allclose(aux["bayesian"], [3.2, 1.0], rtol=1e-6)
  np.testing.assert_allclose(grad[0], 0.5)  # sign(Σa) / B
  assert np.isfinite(np.asarray(grad)).all()
  # Border points, very large and bfloat16 predictions.
  mask = jnp.array([[True, True], [True, False]])
  for d in (jnp.full((2, 8, 8), 1e6), dens.astype(jnp.bfloat16)):
    (loss, aux), grad = fn(d, pts, mask)
    assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
    assert np.isfinite(np.asarray(grad, np.float32)).all()
  # Padding does not change the value.
  (l1, _), _ = fn(dens, pts[:, :1], mask[:, :1])
  (l2, _), _ = fn(dens, pts, mask.at[:, 1].set(False))
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  # Without background, an empty image is still |Σa|.
  loss, aux = bayesian_loss(dens, pts, jnp.zeros_like(mask), stride=8,
                            use_background=False)
  np.testing.assert_allclose(aux["bayesian"], [3.2, 0.0], atol=1e-6)


def test_registered_and_bad_input():
  assert LOSSES["bayesian"] is bayesian_loss
  with pytest.raises(ValueError, match="background"):
    bayesian_loss(jnp.ones((1, 4, 4)), jnp.ones((1, 2, 2)),
                  jnp.ones((1, 2), bool), stride=8, background="ring")
  with pytest.raises(ValueError, match="density"):
    bayesian_loss(jnp.ones((4, 4)), jnp.ones((1, 2, 2)),
                  jnp.ones((1, 2), bool), stride=8)
  with pytest.raises(ValueError, match="distance"):
    bayesian_loss(jnp.ones((1, 4, 4)), jnp.ones((1, 2, 2)),
                  jnp.ones((1, 2), bool), stride=8, distance="l1")
  with pytest.raises(ValueError, match="method"):
    bayesian_loss(jnp.ones((1, 4, 4)), jnp.ones((1, 2, 2)),
                  jnp.ones((1, 2), bool), stride=8, method="fast")
