"""P2PNet matching and loss vs the official values and float64 references."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.losses import p2p_matching, p2pnet_loss


@pytest.fixture(scope="module")
def official(official_cases):
  z, _, names, pts, mask = official_cases("p2pnet")
  logits = np.stack([z[f"{c}/pred_logits"] for c in names])
  preds = np.stack([z[f"{c}/pred_points"] for c in names])
  return z, names, logits, preds, pts, mask


def test_official_values(official):
  z, names, logits, preds, pts, mask = official
  run = jax.jit(lambda l, p, y, k, w: jax.value_and_grad(
      lambda l_, p_: p2pnet_loss(l_, p_, y, k, point_weight=w),
      argnums=(0, 1), has_aux=True)(l, p))
  assign, cost = jax.jit(p2p_matching)(preds, logits, pts, mask)
  for b, c in enumerate(names):
    sl = (slice(b, b + 1),)
    args = (logits[sl], preds[sl], pts[sl], mask[sl])
    (l0, aux), (g_logits, _) = run(*args, 0.0)
    (l1, _), (_, g_points) = run(*args, 1.0)
    np.testing.assert_allclose(l0, z[f"{c}/loss_ce"], rtol=1e-5)
    np.testing.assert_allclose(l0, z[f"{c}/loss_total_as_trained"],
                               rtol=1e-5)
    np.testing.assert_allclose(l1 - l0, z[f"{c}/loss_point"], rtol=1e-5,
                               atol=1e-6)
    ref = z[f"{c}/grad_logits"]
    assert np.abs(g_logits[0] - ref).max() <= 1e-5 * np.abs(ref).max()
    ref = z[f"{c}/grad_points_of_loss_point"]
    np.testing.assert_allclose(g_points[0], ref,
                               atol=1e-5 * max(np.abs(ref).max(), 1e-6))
    m = int(mask[b].sum())
    if m:
      # Official pairs (src, tgt) sorted by proposal; ours: proposal per point.
      src, tgt = z[f"{c}/match_src"], z[f"{c}/match_tgt"]
      np.testing.assert_array_equal(np.asarray(assign[b, :m])[tgt], src)
      # torch.cdist's float32 matmul expansion: entries off by up to 1.4e-4.
      np.testing.assert_allclose(cost[b, :, :m], z[f"{c}/cost_matrix"],
                                 atol=2e-4)
      np.testing.assert_allclose(aux["matched_cost"][0],
                                 z[f"{c}/matched_cost_sum"], atol=1e-3)
    assert (np.asarray(assign[b, m:]) == -1).all()
  (l0, _), (g_logits, _) = run(logits, preds, pts, mask, 0.0)
  (l1, _), _ = run(logits, preds, pts, mask, 1.0)
  np.testing.assert_allclose(l0, z["batch/loss_ce"], rtol=1e-5)
  np.testing.assert_allclose(l1 - l0, z["batch/loss_point"], rtol=1e-5)
  ref = z["batch/grad_logits"]
  assert np.abs(g_logits - ref).max() <= 1e-5 * np.abs(ref).max()


def _brute_force(cost):
  """Minimum-cost injective map of the columns into the rows (tiny sizes)."""
  n, m = cost.shape
  best, arg = np.inf, None
  for rows in itertools.permutations(range(n), m):
    v = cost[list(rows), range(m)].sum()
    if v < best:
      best, arg = v, rows
  return np.array(arg), best


@pytest.mark.parametrize("class_cost", ["probability", "logit"])
def test_float64_reference(class_cost):
  rng = np.random.default_rng(0)
  n, m = 6, 3
  preds = rng.uniform(0, 20, (2, n, 2)).astype(np.float32)
  logits = rng.normal(0, 2, (2, n, 2)).astype(np.float32)
  pts = rng.uniform(0, 20, (2, 4, 2)).astype(np.float32)
  mask = np.array([[True, True, True, False], [True, False, False, False]])
  (loss, aux), (gl, gp) = jax.jit(jax.value_and_grad(
      lambda l, p: p2pnet_loss(l, p, pts, mask, class_cost=class_cost,
                               cost_point=0.3),
      argnums=(0, 1), has_aux=True))(jnp.asarray(logits), jnp.asarray(preds))
  assign, _ = p2p_matching(preds, logits, pts, mask, cost_point=0.3,
                           class_cost=class_cost)
  ce_num = ce_den = sq = 0.0
  for b in range(2):
    lg = logits[b].astype(np.float64)
    logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
    score = np.exp(logp[:, 1]) if class_cost == "probability" else (
        lg[:, 1] - lg[:, 0])
    y = pts[b][mask[b]].astype(np.float64)
    cost = 0.3 * np.linalg.norm(preds[b][:, None] - y[None], axis=-1) - (
        score[:, None])
    rows, _ = _brute_force(cost)
    np.testing.assert_array_equal(assign[b, :len(y)], rows)
    label = np.zeros(n, int)
    label[rows] = 1
    w = np.where(label == 1, 1.0, 0.5)
    ce_num += (w * -logp[np.arange(n), label]).sum()
    ce_den += w.sum()
    sq += ((preds[b][rows] - y) ** 2).sum()
  ref = ce_num / ce_den + 2e-4 * sq / mask.sum()
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  # Gradient check along a random direction (the matching is constant).
  f = lambda l, p: float(p2pnet_loss(l, p, pts, mask, class_cost=class_cost,
                                     cost_point=0.3)[0])
  dl = rng.normal(size=logits.shape).astype(np.float32)
  h = 1e-2
  num = (f(logits + h * dl, preds) - f(logits - h * dl, preds)) / (2 * h)
  np.testing.assert_allclose(num, (np.asarray(gl) * dl).sum(), rtol=1e-2)


def test_logit_variant_pml_eq30():
  """With no point cost, eq. 30 picks the m largest logit differences."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(1, 10, 2)).astype(np.float32)
  preds = rng.uniform(0, 50, (1, 10, 2)).astype(np.float32)
  pts = rng.uniform(0, 50, (1, 4, 2)).astype(np.float32)
  mask = np.ones((1, 4), bool)
  assign, cost = p2p_matching(preds, logits, pts, mask, cost_point=0.0,
                              class_cost="logit")
  x = logits[0, :, 1] - logits[0, :, 0]
  assert set(np.asarray(assign[0]).tolist()) == set(np.argsort(-x)[:4])
  np.testing.assert_allclose(cost[0, :, 0], -x, rtol=1e-6)


def test_edge_cases():
  logits = jnp.zeros((2, 3, 2))
  preds = jnp.zeros((2, 3, 2))
  pts = jnp.ones((2, 5, 2))
  mask = jnp.array([[False] * 5, [True] * 5])   # empty; more points than n
  (loss, aux), grads = jax.jit(jax.value_and_grad(
      lambda l, p: p2pnet_loss(l, p, pts, mask), argnums=(0, 1),
      has_aux=True))(logits, preds)
  assign, _ = p2p_matching(preds, logits, pts, mask)
  assert (np.asarray(assign[0]) == -1).all()
  assert sorted(np.asarray(assign[1])[np.asarray(assign[1]) >= 0]) == [0, 1,
                                                                        2]
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  with pytest.raises(ValueError, match="class_cost"):
    p2p_matching(preds, logits, pts, mask, class_cost="sigmoid")
  with pytest.raises(ValueError, match="pred_logits"):
    p2pnet_loss(logits[:, :2], preds, pts, mask)
