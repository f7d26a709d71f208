"""Exact point-to-proposal assignment for P2PNet's matching cost, on the host.

P2PNet matches the m annotated points to m of its n proposals (m <= n) by
the minimum-cost one-to-one assignment with

    C[i, j] = cost_point * ||y_i - p_j|| - cost_class * s_j

(point i, proposal j at p_j with score s_j). The official code solves it
with ``scipy.optimize.linear_sum_assignment`` on the dense m x n matrix,
which costs seconds for thousands of points. Because C grows with distance,
a point is matched near itself, and the problem can be solved exactly on a
sparse graph:

1. candidates: each point's ``k`` nearest proposals and the ``k`` cheapest
   of its 4k nearest (a KD-tree);
2. the minimum-cost assignment on the candidate edges, per connected
   component of the candidate graph (scipy's dense LSA for small ones, the
   sparse LAPJVsp, ``min_weight_full_bipartite_matching``, for large ones);
3. an optimality certificate for the *full* problem: dual prices v_j <= 0
   of the proposals (0 for unmatched ones) and u_i = C[i, σ(i)] - v_σ(i)
   with u_i + v_j <= C[i, j] for every pair (LP duality for the assignment
   with Σ_j x_ij = 1, Σ_i x_ij <= 1). v is the longest-path solution of
   the difference constraints v_σ(i) >= v_j + C[i, σ(i)] - C[i, j] on the
   candidate edges (Bellman-Ford from the unmatched proposals); the full
   check only has to look at proposals within distance
   (max_j(v_j + cost_class s_j) + u_i) / cost_point of point i (a KD-tree
   ball query), since v_j + cost_class s_j is at most that maximum;
4. violated pairs, and pairs within ``slack`` of violating (the prices move
   when pairs join), join the graph with more candidates for points whose
   price is still unbounded, and 2-3 repeat for the components that
   changed. The dense solver is the fallback after ``_MAX_ROUNDS`` rounds
   or if the prices do not converge (float rounding).

The result is an optimal assignment of the full problem (to float64
tolerance); where several are optimal it may pick another one than the dense
solver.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import optimize
from scipy import sparse
from scipy import spatial
from scipy.sparse import csgraph

__all__ = ["assign", "assign_dense"]

_K = 8  # nearest and cheapest candidates per point
_DENSE_MAX = 250_000  # dense LSA for components up to this many entries
_MAX_ROUNDS = 8
_SLACK = 0.05  # cost units (1 px at P2PNet's cost_point 0.05)
_REL_TOL = 1e-9


def assign_dense(cost: np.ndarray) -> np.ndarray:
  """Proposal of each point for a dense cost float [m, n] (scipy), int [m]."""
  rows, cols = optimize.linear_sum_assignment(np.ascontiguousarray(cost))
  out = np.full(cost.shape[0], -1, np.int64)
  out[rows] = cols
  return out


def _cost(points, proposals, scores, rows, cols, cost_point, cost_class):
  d = np.sqrt(np.sum(np.square(points[rows] - proposals[cols]), axis=-1))
  return cost_point * d - cost_class * scores[cols]


def _solve_sparse(m, rows, cols, cost, match=None, changed=None):
  """Minimum-cost assignment on the candidate edges; None if none exists.

  The candidate graph falls apart into many small connected components
  (points compete only for nearby proposals); each is solved on its own,
  densely (scipy's LSA) when small, else with the sparse LAPJVsp, whose
  time grows with points x proposals of the whole graph. With a previous
  ``match``, only the components holding a ``changed`` point (bool [m])
  are solved again; the others have not changed.
  """
  used, col = np.unique(cols, return_inverse=True)
  col = col.reshape(-1)
  nodes = m + used.size
  adjacency = sparse.csr_matrix((np.ones(rows.size), (rows, m + col)),
                                shape=(nodes, nodes))
  _, label = csgraph.connected_components(adjacency, directed=False)
  edge_label = label[rows]
  if match is None:
    match = np.full(m, -1, np.int64)
    order = np.argsort(edge_label, kind="stable")
  else:
    match = match.copy()
    redo = np.zeros(label.max() + 1, bool)
    redo[label[:m][changed]] = True
    order = np.flatnonzero(redo[edge_label])
    order = order[np.argsort(edge_label[order], kind="stable")]
  # A point alone in its component takes its cheapest candidate.
  alone = np.bincount(label[:m])[edge_label[order]] == 1
  single = order[alone]
  if single.size:
    first = single[np.lexsort((cost[single], rows[single]))]
    keep = np.r_[True, rows[first][1:] != rows[first][:-1]]
    match[rows[first[keep]]] = used[col[first[keep]]]
  order = order[~alone]
  if order.size == 0:
    return match
  bounds = np.flatnonzero(np.diff(edge_label[order])) + 1
  for edges in np.split(order, bounds):
    r, r_idx = np.unique(rows[edges], return_inverse=True)
    c, c_idx = np.unique(col[edges], return_inverse=True)
    if r.size > c.size:
      return None  # more points than candidate proposals here
    if r.size * c.size <= _DENSE_MAX:
      dense = np.full((r.size, c.size), np.inf)
      dense[r_idx, c_idx] = cost[edges]
      try:
        a, b = optimize.linear_sum_assignment(dense)
      except ValueError:  # infeasible
        return None
    else:
      shift = 1.0 - cost[edges].min()  # LAPJVsp needs nonzero entries
      graph = sparse.csr_matrix((cost[edges] + shift, (r_idx, c_idx)),
                                shape=(r.size, c.size))
      try:
        a, b = csgraph.min_weight_full_bipartite_matching(graph)
      except ValueError:
        return None
    match[r[a]] = used[c[b]]
  return match


def _candidates(tree, points, class_term, cost_point, k):
  """Each point's ``k`` nearest proposals and the ``k`` cheapest of its 4k
  nearest: (rows, cols) int64, sorted by row."""
  m, n = len(points), len(tree.data)
  near_k = min(4 * k, n)
  dist, near = tree.query(points, k=near_k)
  dist, near = dist.reshape(m, near_k), near.reshape(m, near_k)
  cost = cost_point * dist - class_term[near]
  cheap = np.argpartition(cost, k - 1, axis=1)[:, :k] if k < near_k else (
      np.arange(near_k)[None].repeat(m, 0))
  cols = np.concatenate([near[:, :k], np.take_along_axis(near, cheap, 1)], 1)
  rows = np.repeat(np.arange(m), cols.shape[1])
  key = np.unique(rows * n + cols.reshape(-1))
  return key // n, key % n


def _prices(n, match, rows, cols, cost, tol):
  """(prices v [n], −inf where unbounded; matched cost C[i, σ(i)] [m]), or
  None when the prices do not converge.

  Longest paths from the unmatched proposals (v = 0) along the arcs
  j -> σ(i) of weight C[i, σ(i)] − C[i, j], one arc per candidate edge.
  """
  m = match.size
  v = np.zeros(n)
  square = m == n  # no unmatched proposal: prices are relative, start at 0
  if not square:
    v[match] = -np.inf
  matched_cost = np.full(m, np.nan)
  on_match = cols == match[rows]
  matched_cost[rows[on_match]] = cost[on_match]
  weight = matched_cost[rows] - cost
  starts = np.searchsorted(rows, np.arange(m))  # rows sorted, none empty
  for _ in range(m + 1):
    gain = np.maximum.reduceat(v[cols] + weight, starts)
    current = v[match]
    better = gain > current + tol
    if not better.any():
      return (v - v.max() if square else v), matched_cost
    v[match[better]] = gain[better]
    if not square and np.any(v[match] > tol):  # an improving path
      return None
  return None


def assign(points, proposals, scores, *, cost_point: float,
           cost_class: float, k: int = _K,
           slack: float = _SLACK) -> np.ndarray:
  """Minimum-cost assignment of every point to a distinct proposal.

  Args:
    points: float [m, 2], annotated (x, y) in input pixels (real points
      only).
    proposals: float [n, 2], predicted (x, y), n >= m.
    scores: float [n], class score s_j (probability or logit).
    cost_point, cost_class: the weights of the cost (cost_point <= 0 goes to
      the dense solver).
    k: nearest and cheapest candidates per point to start with.
    slack: pairs whose reduced cost C[i, j] − u_i − v_j is below it join the
      graph when the certificate fails (cost units); speed only.

  Returns:
    int64 [m], the proposal matched to each point.

  Raises:
    ValueError: if m > n.
  """
  points = np.asarray(points, np.float64).reshape(-1, 2)
  proposals = np.asarray(proposals, np.float64).reshape(-1, 2)
  scores = np.asarray(scores, np.float64).reshape(-1)
  m, n = len(points), len(proposals)
  if m > n:
    raise ValueError(f"{m} points but only {n} proposals")
  if m == 0:
    return np.zeros(0, np.int64)
  class_term = cost_class * scores

  def dense():
    return assign_dense(cost_point * spatial.distance.cdist(points, proposals)
                        - class_term[None, :])

  if cost_point <= 0:  # no locality to exploit
    return dense()
  # Unbalanced, uncompacted: half the build time, queries as fast here.
  tree = spatial.cKDTree(proposals, balanced_tree=False, compact_nodes=False)
  k = min(k, n)
  rows, cols = _candidates(tree, points, class_term, cost_point, k)
  match, changed = None, None
  for _ in range(_MAX_ROUNDS):
    cost = _cost(points, proposals, scores, rows, cols, cost_point,
                 cost_class)
    tol = _REL_TOL * (1.0 + np.abs(cost).max())
    match = _solve_sparse(m, rows, cols, cost, match, changed)
    if match is None:
      k = min(2 * k, n)
      rows, cols = _candidates(tree, points, class_term, cost_point, k)
      continue
    priced = _prices(n, match, rows, cols, cost, tol)
    if priced is None:
      break
    v, matched = priced
    # u_i = C[i, σ(i)] − v_σ(i); a pair (i, j) violates u_i + v_j <= C[i, j]
    # only if cost_point·d_ij < v_j + cost_class·s_j + u_i.
    u = matched - v[match]
    finite = np.isfinite(v)
    top = np.max(v[finite] + class_term[finite])
    unbounded = ~np.isfinite(u)
    radius = np.where(unbounded, 0.0, (top + u + slack) / cost_point)
    near = tree.query_ball_point(points, np.maximum(radius, 0.0),
                                 return_sorted=False)
    counts = np.fromiter(map(len, near), np.int64, m)
    pair_rows = np.repeat(np.arange(m), counts)
    pair_cols = np.fromiter(itertools.chain.from_iterable(near), np.int64,
                            counts.sum())
    pair_cost = _cost(points, proposals, scores, pair_rows, pair_cols,
                      cost_point, cost_class)
    reduced = pair_cost - u[pair_rows] - v[pair_cols]
    if not unbounded.any() and reduced.min(initial=0.0) >= -tol:
      return match  # certified optimal
    # Add the violated pairs and those within `slack` of violating: the
    # prices move when they join, and near-violations would be next.
    add = reduced < slack
    new_rows, new_cols = [pair_rows[add]], [pair_cols[add]]
    if unbounded.any():  # widen the candidates of points without a price
      idx = np.flatnonzero(unbounded)
      kk = min(4 * k, n)
      _, more = tree.query(points[idx], k=kk)
      new_rows.append(np.repeat(idx, kk))
      new_cols.append(more.reshape(-1).astype(np.int64))
    changed = np.zeros(m, bool)
    for r in new_rows:
      changed[r] = True
    rows = np.concatenate([rows] + new_rows)
    cols = np.concatenate([cols] + new_cols)
    key = np.unique(rows * n + cols)
    rows, cols = key // n, key % n
  return dense()
