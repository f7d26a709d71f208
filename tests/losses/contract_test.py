"""One contract for every registered density loss (optax ``_common_test``).

Parametrized over ``LOSSES``, so a newly registered loss is checked
automatically; ``LOSS_KWARGS`` gives per-loss keyword arguments (``stride``
and whatever a loss needs to run on a tiny map), anything else gets
``DEFAULT_KWARGS``. A registered entry whose first argument is not
``density`` (e.g. a point-proposal loss) is skipped with a reason.

Contract: ``loss(density f32[B,h,w], points f32[B,N,2], point_mask bool[B,N],
*, stride, **hyper) -> (float32 scalar, {name: [B]})``, pure and jittable;
finite value and gradient with no points, one point, border points, an
all-zero and a very large map and bfloat16 input; padded rows (mask False)
change nothing; an image's aux terms do not depend on the other images of
the batch; ``jax.vmap`` over an extra leading axis equals a loop.
P2PNet's loss, on proposals instead of a density map, gets the same checks
on its own inputs (at the end).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.losses import LOSSES, p2pnet_loss

H = W = 8
B, N = 3, 6
DEFAULT_KWARGS = {"stride": 8}
LOSS_KWARGS = {
    "gaussian_l2": {"stride": 8},
    "bayesian": {"stride": 8},
    "dm_count": {"stride": 8},
    "gl": {"stride": 8},
    "pml": {"stride": 2},
}
NAMES = sorted(LOSSES)


def _kwargs(name):
  return LOSS_KWARGS.get(name, DEFAULT_KWARGS)


def _is_density_loss(fn):
  params = list(inspect.signature(fn).parameters)
  return params[:3] == ["density", "points", "point_mask"]


class _Harness:
  """The loss with its kwargs bound, jitted once per input shape."""

  def __init__(self, name):
    fn = LOSSES[name]
    if not _is_density_loss(fn):
      pytest.skip(f"{name} is not a density loss (signature "
                  f"{inspect.signature(fn)})")
    kw = _kwargs(name)
    self.size = H * kw["stride"]  # input-image side in pixels
    self.loss = lambda d, p, m: fn(d, p, m, **kw)
    self.value_and_grad = jax.jit(jax.value_and_grad(self.loss, has_aux=True))
    self.batched = jax.jit(jax.vmap(lambda d, p, m: self.loss(d, p, m)[0]))

  def run(self, density, points, mask):
    (value, aux), grad = self.value_and_grad(jnp.asarray(density),
                                             jnp.asarray(points),
                                             jnp.asarray(mask))
    return value, aux, grad


_HARNESSES = {}


@pytest.fixture(params=NAMES)
def harness(request):
  name = request.param
  if name not in _HARNESSES:
    _HARNESSES[name] = _Harness(name)
  return _HARNESSES[name]


def _inputs(size, counts, seed=0):
  """Density [B,H,W] with Σ ≈ count (+1 for empty images), padded points."""
  rng = np.random.default_rng(seed)
  b = len(counts)
  points = np.zeros((b, N, 2), np.float32)
  mask = np.zeros((b, N), bool)
  for i, c in enumerate(counts):
    points[i, :c] = rng.uniform(0, size, (c, 2))
    mask[i, :c] = True
  density = rng.gamma(2.0, 1.0, (b, H, W)).astype(np.float32)
  total = np.array(counts, np.float32) + 1.0
  density *= total[:, None, None] / density.sum((1, 2), keepdims=True)
  return density.astype(np.float32), points, mask


def _assert_finite(value, aux, grad):
  assert np.isfinite(np.asarray(value)).all(), value
  assert np.isfinite(np.asarray(grad, np.float32)).all()
  for k, v in aux.items():
    assert np.isfinite(np.asarray(v, np.float32)).all(), k


def test_scalar_float32_and_per_image_aux(harness):
  density, points, mask = _inputs(harness.size, [3, 1, 5])
  value, aux, grad = harness.run(density, points, mask)
  assert value.shape == () and value.dtype == jnp.float32
  assert grad.shape == density.shape and grad.dtype == jnp.float32
  assert aux, "aux must name at least one per-image term"
  for k, v in aux.items():
    assert v.shape == (B,), (k, v.shape)
  _assert_finite(value, aux, grad)
  assert np.abs(np.asarray(grad)).max() > 0  # the loss depends on the density


@pytest.mark.parametrize("case", ["no_points", "one_point", "border_points",
                                  "all_zero", "very_large"])
def test_finite_value_and_gradient(harness, case):
  size = harness.size
  density, points, mask = _inputs(harness.size, [N, N, N], seed=1)
  if case == "no_points":
    mask[:] = False
  elif case == "one_point":
    mask[:, 1:] = False
  elif case == "border_points":
    # corners and edges of the image, incl. the last representable pixel
    edge = np.nextafter(np.float32(size), np.float32(0))
    points[:] = np.array([[0, 0], [edge, 0], [0, edge], [edge, edge],
                          [size / 2, 0], [0, size / 2]], np.float32)
  elif case == "all_zero":
    density[:] = 0.0
  elif case == "very_large":
    density *= 1e4
  _assert_finite(*harness.run(density, points, mask))


def test_bfloat16_input(harness):
  density, points, mask = _inputs(harness.size, [2, 0, 4], seed=2)
  value, aux, grad = harness.run(density.astype(jnp.bfloat16), points, mask)
  assert value.shape == () and value.dtype == jnp.float32
  assert grad.dtype == jnp.bfloat16
  _assert_finite(value, aux, grad)


def test_padded_points_change_nothing(harness):
  density, points, mask = _inputs(harness.size, [4, 0, 6], seed=3)
  base = harness.run(density, points, mask)
  rng = np.random.default_rng(4)
  # extra rows, masked out, with arbitrary coordinates (inside and outside)
  junk = rng.uniform(-harness.size, 2 * harness.size, (B, 5, 2))
  padded = harness.run(density,
                       np.concatenate([points, junk.astype(np.float32)], 1),
                       np.concatenate([mask, np.zeros((B, 5), bool)], 1))
  np.testing.assert_allclose(padded[0], base[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(padded[2], base[2], rtol=1e-5, atol=1e-6)
  # Aux terms that are differences of O(1) sums (DM-Count's OT term, ~1e-5
  # here) keep float32 cancellation of a few 1e-6 whatever the padding.
  for k in base[1]:
    np.testing.assert_allclose(padded[1][k], base[1][k], rtol=1e-5, atol=2e-5)


def test_images_are_independent_in_a_batch(harness):
  """Variable point counts per image; image 0's terms ignore its neighbours."""
  d1, p1, m1 = _inputs(harness.size, [5, 1, 3], seed=5)
  d2, p2, m2 = _inputs(harness.size, [5, 0, 6], seed=6)
  d2[0], p2[0], m2[0] = d1[0], p1[0], m1[0]
  (_, aux1, g1), (_, aux2, g2) = (harness.run(d1, p1, m1),
                                  harness.run(d2, p2, m2))
  for k in aux1:
    np.testing.assert_allclose(aux1[k][0], aux2[k][0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g1[0], g2[0], rtol=1e-5, atol=1e-6)


def test_vmap_over_batches_equals_loop(harness):
  groups = [_inputs(harness.size, c, seed=s)
            for s, c in ((7, [2, 6, 0]), (8, [1, 0, 3]))]
  stacked = [np.stack(x) for x in zip(*groups)]
  batched = harness.batched(*map(jnp.asarray, stacked))
  looped = [harness.run(*g)[0] for g in groups]
  np.testing.assert_allclose(batched, np.array(looped), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# P2PNet's loss takes proposals (logits and points), not a density map: the
# same contract on its own inputs. n proposals on a 4 x 4 grid of 8-px cells.

_P2P_SIZE, _P2P_N = 32, 16


@pytest.fixture(scope="module")
def p2p():
  loss = lambda l, p, y, m: p2pnet_loss(l, p, y, m)
  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

  def run(logits, pred, points, mask):
    (value, aux), grads = grad(*map(jnp.asarray, (logits, pred, points,
                                                   mask)))
    return value, aux, grads

  run.batched = jax.jit(jax.vmap(lambda *a: loss(*a)[0]))
  return run


def _p2p_inputs(counts, seed=0):
  """Proposals near a grid of anchors, and padded GT points."""
  rng = np.random.default_rng(seed)
  b = len(counts)
  anchors = (np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1)
             .reshape(-1, 2) * 8 + 4).astype(np.float32)
  pred = (anchors + rng.normal(0, 2, (b, _P2P_N, 2))).astype(np.float32)
  logits = rng.normal(0, 1.5, (b, _P2P_N, 2)).astype(np.float32)
  _, points, mask = _inputs(_P2P_SIZE, counts, seed)
  return logits, pred, points, mask


def _p2p_finite(value, aux, grads):
  _assert_finite(value, aux, grads[0])
  assert np.isfinite(np.asarray(grads[1], np.float32)).all()


@pytest.mark.parametrize("case", ["no_points", "one_point", "border_points",
                                  "more_points_than_proposals"])
def test_p2pnet_finite_value_and_gradient(p2p, case):
  logits, pred, points, mask = _p2p_inputs([N, N, N], seed=1)
  if case == "no_points":
    mask[:] = False
  elif case == "one_point":
    mask[:, 1:] = False
  elif case == "border_points":
    points[:] = np.array([[0, 0], [_P2P_SIZE, 0], [0, _P2P_SIZE],
                          [_P2P_SIZE, _P2P_SIZE], [_P2P_SIZE / 2, 0],
                          [0, _P2P_SIZE / 2]], np.float32)
  elif case == "more_points_than_proposals":
    logits, pred = logits[:, :4], pred[:, :4]
  value, aux, grads = p2p(logits, pred, points, mask)
  assert value.shape == () and value.dtype == jnp.float32
  for k, v in aux.items():
    assert v.shape == (B,), (k, v.shape)
  _p2p_finite(value, aux, grads)
  assert np.abs(np.asarray(grads[0])).max() > 0


def test_p2pnet_bfloat16_input(p2p):
  logits, pred, points, mask = _p2p_inputs([2, 0, 4], seed=2)
  value, aux, grads = p2p(logits.astype(jnp.bfloat16),
                          pred.astype(jnp.bfloat16), points, mask)
  assert value.dtype == jnp.float32
  assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
  _p2p_finite(value, aux, grads)
  # bfloat16 proposals are the float32 ones rounded: same loss to ~1e-2.
  ref = p2p(np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float32),
            np.asarray(jnp.asarray(pred, jnp.bfloat16), np.float32),
            points, mask)[0]
  np.testing.assert_allclose(value, ref, rtol=1e-5)


def test_p2pnet_padded_points_change_nothing(p2p):
  logits, pred, points, mask = _p2p_inputs([4, 0, 6], seed=3)
  base = p2p(logits, pred, points, mask)
  junk = np.random.default_rng(4).uniform(-_P2P_SIZE, 2 * _P2P_SIZE,
                                          (B, 5, 2)).astype(np.float32)
  padded = p2p(logits, pred, np.concatenate([points, junk], 1),
               np.concatenate([mask, np.zeros((B, 5), bool)], 1))
  np.testing.assert_allclose(padded[0], base[0], rtol=1e-6)
  for k in base[1]:
    np.testing.assert_allclose(padded[1][k], base[1][k], rtol=1e-6)
  for g, g0 in zip(padded[2], base[2]):
    np.testing.assert_allclose(g, g0, rtol=1e-6, atol=1e-9)


def test_p2pnet_images_are_independent_in_a_batch(p2p):
  """Per-image aux terms ignore the other images (the loss itself is
  normalised over the whole batch, as P2PNet's)."""
  a = _p2p_inputs([5, 1, 3], seed=5)
  c = _p2p_inputs([5, 0, 6], seed=6)
  for x, y in zip(c, a):
    x[0] = y[0]
  aux_a, aux_c = p2p(*a)[1], p2p(*c)[1]
  for k in aux_a:
    np.testing.assert_allclose(aux_a[k][0], aux_c[k][0], rtol=1e-6)


def test_p2pnet_vmap_over_batches_equals_loop(p2p):
  groups = [_p2p_inputs(c, seed=s) for s, c in ((7, [2, 6, 0]),
                                                (8, [1, 0, 3]))]
  stacked = [np.stack(x) for x in zip(*groups)]
  batched = p2p.batched(*map(jnp.asarray, stacked))
  looped = [p2p(*g)[0] for g in groups]
  np.testing.assert_allclose(batched, np.array(looped), rtol=1e-6)
