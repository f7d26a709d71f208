"""The sparse, certified P2PNet assignment equals scipy's dense solver."""

import numpy as np
import pytest
from scipy import optimize
from scipy import spatial

from counting_jax.losses import _assignment


def _dense_cost(points, proposals, scores, cost_point, cost_class):
  return (cost_point * spatial.distance.cdist(points, proposals) -
          cost_class * scores[None, :])


def _check(points, proposals, scores, cost_point=0.05, cost_class=1.0, **kw):
  match = _assignment.assign(points, proposals, scores, cost_point=cost_point,
                             cost_class=cost_class, **kw)
  cost = _dense_cost(points, proposals, scores, cost_point, cost_class)
  rows, cols = optimize.linear_sum_assignment(cost)
  assert match.shape == (len(points),)
  assert len(set(match.tolist())) == len(points)  # one-to-one
  best = cost[rows, cols].sum()
  got = cost[np.arange(len(points)), match].sum()
  np.testing.assert_allclose(got, best, rtol=1e-12, atol=1e-9)
  return match, cols


def _anchors(side, rng, jitter=3.0):
  grid = np.stack(np.meshgrid(np.arange(2 * side), np.arange(2 * side)),
                  -1).reshape(-1, 2) * 4.0 + 2.0
  return grid + rng.normal(0, jitter, grid.shape)


@pytest.mark.parametrize("num_points", [1, 7, 60, 400])
def test_uniform_points_equal_dense(num_points):
  rng = np.random.default_rng(num_points)
  proposals = _anchors(16, rng)  # 1,024 proposals in a 128 px frame
  points = rng.uniform(0, 128, (num_points, 2))
  scores = rng.uniform(0, 1, len(proposals))
  match, dense = _check(points, proposals, scores)
  np.testing.assert_array_equal(match, dense)  # continuous costs: no ties


@pytest.mark.parametrize("k", [1, 8])
def test_crowded_cluster_and_strong_scores(k):
  """All points in a small blob, high scores far away: long-range swaps
  that the first candidate graph lacks (the certificate must add them)."""
  rng = np.random.default_rng(0)
  proposals = _anchors(12, rng)
  points = rng.normal(40, 4, (150, 2))
  scores = rng.uniform(0, 1, len(proposals)) ** 8
  _check(points, proposals, scores, cost_class=5.0, k=k)


def test_as_many_points_as_proposals():
  rng = np.random.default_rng(1)
  proposals = rng.uniform(0, 64, (90, 2))
  points = rng.uniform(0, 64, (90, 2))
  match, _ = _check(points, proposals, rng.uniform(size=90), k=2)
  assert sorted(match.tolist()) == list(range(90))


def test_logit_scores_and_zero_point_cost():
  rng = np.random.default_rng(2)
  proposals = _anchors(8, rng)
  points = rng.uniform(0, 64, (30, 2))
  logits = rng.normal(0, 3, len(proposals))
  _check(points, proposals, logits)
  _check(points, proposals, logits, cost_point=0.0)  # dense path


def test_errors_and_empty():
  assert _assignment.assign(np.zeros((0, 2)), np.zeros((3, 2)), np.zeros(3),
                            cost_point=1.0, cost_class=1.0).shape == (0,)
  with pytest.raises(ValueError, match="4 points but only 3 proposals"):
    _assignment.assign(np.zeros((4, 2)), np.zeros((3, 2)), np.zeros(3),
                       cost_point=1.0, cost_class=1.0)
