"""Forward + backward time of the counting losses on CPU: JAX vs PyTorch.

Every density loss of ``counting_jax.losses.LOSSES`` (and P2PNet's matching
loss) is timed as ``jax.jit(jax.value_and_grad(loss))`` next to a PyTorch
implementation of the same formula written below (torch ops, float32,
``torch.set_num_threads(2)``, ``loss.backward()`` w.r.t. the density leaf).
Both sides run the library's default hyperparameters; the OT losses use the
same iterations on both sides (DM-Count: the official Sinkhorn-Knopp loop,
at most 100 iterations with the 1e-9 check every 10, which on these inputs
always runs all 100; GL: GeomLoss's ε-scaling schedule, computed from the
same diameter, with its initial and final softmin).

Cases: 64x64 maps at stride 8 (the official BL / DM-Count / GL / P2PNet
setting) with 100, 1,000 and 4,000 points, and a 256x256 map at stride 2
(PML's setting) with 1,000 points, all in a 512x512 input frame. Points are
uniform random, the density a blurred point histogram plus smooth noise with
Σ = 1.05 · points (Σ > 1, so PML takes its main branch). Batch size 1 (as the
official per-image timing anchors in ``../shared/reference/official_values/
README.md``); ``--batch`` changes it. Officially batched: DM-Count (10), PML
(16), P2PNet (8 images x 4 crops); BL and GL train with batch 1.

Each cell: one warm-up call per side (after compilation for JAX), then up
to ``--repeats`` timed calls per side (more, up to 201, for calls fast
enough to fit in one second) in alternating blocks (3 calls, up to 20 for
sub-millisecond calls), JAX then PyTorch, so that both see the same
background load, each block starting with 50 ms of untimed calls
(PyTorch's threads are still spinning after a switch; see
``_timed_pair``); fewer calls once ``--budget`` seconds are used, at least
three. ``ratio`` = median torch time / median jax time;
``ratio of minima`` the same with the fastest calls (less sensitive to a
loaded machine). ``agree``: relative difference of the two loss values,
and max |∇_jax − ∇_torch| / max |∇_torch| (P2PNet: ∇ w.r.t. the logits), a
check that both sides compute the same thing (BL's L1 gradient flips sign
at points whose expected count is within float32 noise of its target, so
its gradient can differ there by 2·p(y_j|x)). ``official idle ms`` is the
timing of the official PyTorch code on an idle machine of the same kind
(``../shared/reference/official_values/README.md``; real points, batch 1)
and, in brackets, its ratio to the median JAX time measured here. On a
shared machine PyTorch's two OpenMP threads suffer much more from foreign
load than XLA's thread pool (small torch calls slow down 10-100x): compare
with figures from an idle machine before reading much into a ratio.

Peak memory (``--memory``): each side of each density-loss cell runs in a
fresh subprocess that makes the inputs and calls the loss twice (JAX: the
compilation and two calls); its peak RSS (``VmHWM``, Linux) is printed next to
that of the same subprocess without the calls (imports and inputs only).
The case "256x256/s2, 4000 pts" (not in the default set; ``--cases 4000``)
runs the JAX side only: a dense 256² x 4,000 float32 matrix is 1 GiB, and
the PyTorch formulas need several of them.

Usage::

  .venv/bin/python benchmarks/losses.py [--quick] [--losses bayesian,gl]
      [--cases 256x256,100] [--memory] [--batch 1] [--repeats 7]
      [--budget 8]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from scipy import optimize
import torch
import torch.nn.functional as F

import counting_jax
from counting_jax.losses import LOSSES
from counting_jax.losses import p2pnet_loss
from counting_jax.losses._dm_count import sinkhorn_knopp  # iteration count
from counting_jax import ot

FRAME = 512  # input-image side in pixels
CASES = {  # name: (map side, points, stride)
    "64x64/s8, 100 pts": (64, 100, 8),
    "64x64/s8, 1000 pts": (64, 1000, 8),
    "64x64/s8, 4000 pts": (64, 4000, 8),
    "256x256/s2, 1000 pts": (256, 1000, 2),
    "256x256/s2, 4000 pts": (256, 4000, 2),
}
DEFAULT_CASES = tuple(CASES)[:4]
QUICK_CASES = ("64x64/s8, 100 pts", "64x64/s8, 1000 pts")
# Cells whose PyTorch side is not run: a dense 256² x 4,000 matrix is 1 GiB
# per temporary (GL's official code would need several and minutes per
# call); the JAX side is timed and its peak RSS measured alone.
JAX_ONLY_CASES = ("256x256/s2, 4000 pts",)
P2PNET = "p2pnet"
# Seconds per call of the *official* PyTorch code on an idle 2-core CPU,
# batch 1, real ShanghaiTech points (../shared/reference/official_values/
# README.md, "Timing anchors"), for the same four cases.
OFFICIAL_IDLE_S = {
    "bayesian": (0.0035, 0.0442, 0.307, 1.133),
    "dm_count": (0.0275, 0.177, 0.887, 3.665),
    "gl": (0.0583, 0.756, 5.743, 22.5),
    "pml": (0.0091, 0.0830, 0.468, 1.703),
    P2PNET: (0.0468, 0.640, 2.539, None),
}


# ----------------------------------------------------------------- inputs ---

def make_inputs(side, num_points, stride, batch, seed=0):
  """(density f32[B,h,w], points f32[B,N,2], mask bool[B,N]) as numpy."""
  rng = np.random.default_rng(seed)
  points = rng.uniform(0, FRAME, (batch, num_points, 2)).astype(np.float32)
  density = np.zeros((batch, side, side), np.float32)
  for b in range(batch):
    cells = np.clip((points[b] / stride).astype(int), 0, side - 1)
    hist = np.zeros((side, side))
    np.add.at(hist, (cells[:, 1], cells[:, 0]), 1.0)
    blurred = ndimage.gaussian_filter(hist, 6.0 / stride)
    noise = ndimage.gaussian_filter(rng.lognormal(size=(side, side)),
                                    24.0 / stride)
    d = 0.75 * blurred / blurred.sum() + 0.25 * noise / noise.sum()
    density[b] = 1.05 * num_points * d
  return density, points, np.ones((batch, num_points), bool)


# --------------------------------------------------- PyTorch references ---
# Each takes density [B, h, w] (leaf, requires grad), points [B, N, 2] and
# the stride, and returns the scalar loss with the library's defaults.


# Exact distances (the matmul expansion of torch.cdist is off by ~1e-2 px
# near the points at 512-pixel coordinates, enough to change P2PNet's
# assignment and PML's nearest point at ties).
_EXACT = "donot_use_mm_for_euclid_dist"


def _centres(size, stride, offset):
  return torch.arange(size, dtype=torch.float32) * stride + offset


def _sq_dist(pts, h, w, stride, offset, expanded=False):
  """[N, h*w] squared distances to the cell centres.

  ``expanded``: the official float32 evaluation (−2·x·c + x·x + c·c) of BL's
  ``post_prob.py`` and DM-Count's ``ot_loss.py``, the library's default for
  those two losses; otherwise the exact (x − c)².
  """
  xs, ys = _centres(w, stride, offset), _centres(h, stride, offset)
  px, py = pts[:, 0:1], pts[:, 1:2]
  if expanded:
    dx = -2.0 * (px * xs) + px * px + xs * xs
    dy = -2.0 * (py * ys) + py * py + ys * ys
  else:
    dx, dy = (px - xs) ** 2, (py - ys) ** 2
  return (dy[:, :, None] + dx[:, None, :]).reshape(pts.shape[0], h * w)


def torch_gaussian_l2(density, points, stride, sigma=4.0):
  """Integrated-Gaussian target (separable erf), summed squared error."""
  _, h, w = density.shape

  def profiles(coord, size):
    edges = torch.arange(size + 1, dtype=torch.float32) * stride
    cdf = 0.5 * (1 + torch.erf((edges - coord[..., None]) /
                               (sigma * math.sqrt(2.0))))
    return cdf[..., 1:] - cdf[..., :-1]

  x, y = points[..., 0], points[..., 1]
  inside = ((x >= 0) & (x < w * stride) & (y >= 0) & (y < h * stride)).float()
  gx, gy = profiles(x, w), profiles(y, h)
  weight = inside / (gx.sum(-1) * gy.sum(-1))
  target = torch.einsum("bnh,bnw->bhw", gy * weight[..., None], gx)
  return ((density - target) ** 2).sum((1, 2)).mean()


def torch_bayesian(density, points, stride, sigma=8.0, ratio=1.0):
  """BL with the reciprocal background (official since 2021), targets 1."""
  bsz, h, w = density.shape
  total = 0.0
  for b in range(bsz):  # the official Bay_Loss loops over images
    with torch.no_grad():
      dist = _sq_dist(points[b], h, w, stride, stride / 2, expanded=True)
      min_dist = dist.min(0, keepdim=True).values.clamp_min(0.0)
      bg = (min(h, w) * stride * ratio) ** 2 / (min_dist + 1e-5)
      post = torch.softmax(-torch.cat([dist, bg], 0) / (2 * sigma**2), 0)
    expected = post @ density[b].reshape(-1)
    target = torch.cat([torch.ones(points.shape[1]), torch.zeros(1)])
    total = total + (target - expected).abs().sum()
  return total / bsz


def _torch_sinkhorn(a, b, kernel, num_iters=100, stop=1e-9, every=10):
  """DM-Count's kernel Sinkhorn-Knopp (float32, 1e-16 guards)."""
  u = torch.full_like(a, 1.0 / a.shape[0])
  v = torch.full_like(b, 1.0 / b.shape[0])
  for it in range(1, num_iters + 1):
    u_old, v_old = u, v
    v = b / (u @ kernel + 1e-16)
    u = a / (kernel @ v + 1e-16)
    if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
      u, v = u_old, v_old
      break
    if it % every == 0:
      err = ((b - (u @ kernel) * v) ** 2).sum()
      if err <= stop:
        break
  return u, v


def torch_dm_count(density, points, stride, eps=10.0, wot=0.1, wtv=0.01):
  """OT surrogate (100-iteration kernel Sinkhorn) + count L1 + TV."""
  bsz, h, w = density.shape
  mu = density.reshape(bsz, -1)
  ot_sum = 0.0
  for b in range(bsz):  # OT_Loss loops over images and sums
    with torch.no_grad():
      m = points.shape[1]
      cost = _sq_dist(points[b], h, w, stride, stride / 2, expanded=True)
      mu_b = mu[b]
      b_mass = mu_b / (mu_b.sum() + 1e-6)
      a_mass = torch.full((m,), 1.0 / m)
      _, v = _torch_sinkhorn(a_mass, b_mass, torch.exp(cost / -eps))
      beta = eps * torch.log(v + 1e-16)
      s = mu_b.sum()
      grad = s / (s * s + 1e-8) * beta - (mu_b * beta).sum() / (s * s + 1e-8)
    ot_sum = ot_sum + (mu[b] * grad).sum()
  n = float(points.shape[1])
  total = mu.sum(1)
  count = (total - n).abs().mean()
  pix = torch.round(points)
  col = (pix[..., 0].clamp(0, w * stride - 1) // stride).long()
  row = (pix[..., 1].clamp(0, h * stride - 1) // stride).long()
  gd = torch.zeros(bsz, h * w).scatter_add_(1, row * w + col,
                                            torch.ones(points.shape[:2]))
  tv = ((mu / (total[:, None] + 1e-6) - gd / (n + 1e-6)).abs().sum(1)
        * n).mean()
  return wot * ot_sum + count + wtv * tv


def _gl_schedule(diam, blur, scaling):
  return ([diam] + list(np.exp(np.arange(np.log(diam), np.log(blur),
                                         np.log(scaling)))) + [blur])


def torch_gl(density, points, stride, blur=0.01, reach=0.5, scaling=0.5,
             tau=0.1):
  """GL (perspective cost, GeomLoss ε-scaling, debias=False, tensorized)."""
  bsz, h, w = density.shape
  scale = max(h, w) * stride
  xs, ys = _centres(w, stride, stride) / scale, _centres(h, stride,
                                                         stride) / scale
  yy, xx = torch.meshgrid(ys, xs, indexing="ij")
  pix = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
  loss = 0.0
  ent_sum = 0.0
  for b in range(bsz):  # the official trainer loops over images
    a = density[b].reshape(-1)
    y = points[b] / scale
    m = y.shape[0]
    with torch.no_grad():
      d = torch.sqrt(((pix[:, None, :] - y[None, :, :]) ** 2).sum(-1))
      s = 0.5 + 0.2 * (pix[:, None, 1] + y[None, :, 1]) / 2
      cost = torch.exp(d / s) - 1
      both = torch.cat([pix, y], 0)
      diam = float(torch.linalg.norm(both.max(0).values -
                                     both.min(0).values))
      a_d = a.detach()
      a_log = torch.where(a_d > 0, torch.log(a_d.clamp_min(1e-38)),
                          torch.tensor(-1e5))
      b_log = torch.zeros(m)

      def softmin(eps, hh, dim):
        arg = (hh[None, :] if dim == 1 else hh[:, None]) - cost / eps
        return -eps * torch.logsumexp(arg, dim=dim)

      def damp(eps):
        return 1.0 / (1.0 + eps / reach)

      eps_list = _gl_schedule(diam, blur, scaling)
      f = damp(eps_list[0]) * softmin(eps_list[0], b_log, 1)
      g = damp(eps_list[0]) * softmin(eps_list[0], a_log, 0)
      for eps in eps_list:
        ft = damp(eps) * softmin(eps, b_log + g / eps, 1)
        gt = damp(eps) * softmin(eps, a_log + f / eps, 0)
        f, g = 0.5 * (f + ft), 0.5 * (g + gt)
      f, g = (damp(blur) * softmin(blur, b_log + g / blur, 1),
              damp(blur) * softmin(blur, a_log + f / blur, 0))
      log_k = torch.clamp_max((f[:, None] + g[None, :] - cost) / blur, 30.0)
    pi = a[:, None] * torch.exp(log_k)
    emd = (reach + blur / 2) * ((a * (1 - torch.exp(-f / reach))).sum()
                                + (1 - torch.exp(-g / reach)).sum())
    point = (pi.sum(0) - 1).abs().sum()
    pixel = ((pi.sum(1).detach() - a) ** 2).sum()
    entropy = ((pi + 1e-20) * torch.log(pi + 1e-20)).mean()
    loss = loss + emd + tau * (pixel + point)
    ent_sum = ent_sum + entropy
  return loss / bsz + blur * ent_sum


def torch_pml(density, points, stride, radius=32.0, eps=1.0):
  """PML main branch (Σa > 1): NN cells, centred exp cost, L1 cell counts."""
  bsz, h, w = density.shape
  off = (stride - 1) / 2
  xs, ys = _centres(w, stride, off), _centres(h, stride, off)
  yy, xx = torch.meshgrid(ys, xs, indexing="ij")
  pix = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
  total = 0.0
  for b in range(bsz):  # PMLoss loops over images
    a = density[b].reshape(-1)
    m = points.shape[1]
    with torch.no_grad():
      dist_all = torch.cdist(pix, points[b], compute_mode=_EXACT)
      dist, idx = dist_all.min(1)
      cell_max = torch.zeros(m).scatter_reduce(0, idx, dist, "amax",
                                               include_self=False)
      cost = torch.exp(dist / cell_max[idx].clamp_min(radius)) - 1
      size = torch.zeros(m).index_add_(0, idx, torch.ones_like(dist))
      mean = torch.zeros(m).index_add_(0, idx, cost) / (size + 1e-10)
      centred = cost - mean[idx]
    cell_mass = torch.zeros(m).index_add(0, idx, a)
    total = total + (a * centred).sum() + eps * (cell_mass - 1).abs().sum()
  return total / bsz


def p2pnet_inputs(side, num_points, batch, seed=0):
  """Proposals of a stride-8 P2PNet head: 2x2 anchors per cell, 4·side²."""
  rng = np.random.default_rng(seed)
  k = (np.arange(side) + 0.5) * 8
  offs = np.array([[-2, -2], [2, -2], [-2, 2], [2, 2]], np.float32)
  yy, xx = np.meshgrid(k, k, indexing="ij")
  anchors = (np.stack([xx, yy], -1).reshape(-1, 1, 2) + offs).reshape(-1, 2)
  pred = anchors[None] + 100 * rng.normal(0, 0.03, (batch,) + anchors.shape)
  logits = rng.normal(0, 1.5, (batch, anchors.shape[0], 2))
  points = rng.uniform(0, side * 8, (batch, num_points, 2))
  return (logits.astype(np.float32), pred.astype(np.float32),
          points.astype(np.float32), np.ones((batch, num_points), bool))


def torch_p2pnet(logits, pred, points, eos=0.5, point_weight=2e-4):
  """Matcher (cdist, scipy LSA on the host) + weighted CE + point L2."""
  bsz, n, _ = logits.shape
  with torch.no_grad():
    prob = logits.softmax(-1)[..., 1]
    cost = (0.05 * torch.cdist(pred, points, compute_mode=_EXACT)
            - prob[..., None])
  labels = torch.zeros(bsz, n, dtype=torch.long)
  sq = 0.0
  for b in range(bsz):
    rows, cols = optimize.linear_sum_assignment(cost[b].numpy())
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    labels[b, rows] = 1
    sq = sq + ((pred[b, rows] - points[b, cols]) ** 2).sum()
  ce = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1),
                       weight=torch.tensor([eos, 1.0]))
  return ce + point_weight * sq / max(points.shape[0] * points.shape[1], 1)


# ------------------------------------------------------------ harnesses ---

KWARGS = {  # library defaults except the stride (set per case)
    "gaussian_l2": {},
    "bayesian": {},
    "dm_count": {},
    "gl": {},
    "pml": {},
}
TORCH = {
    "gaussian_l2": torch_gaussian_l2,
    "bayesian": torch_bayesian,
    "dm_count": torch_dm_count,
    "gl": torch_gl,
    "pml": torch_pml,
}


def _timed_pair(jax_fn, torch_fn, repeats, budget, settle=0.05,
                block_time=0.02, max_block=20, min_time=1.0, max_calls=201):
  """Medians and minima (s) of JAX and PyTorch calls in alternating blocks.

  Each round runs a block of JAX calls, then a block of PyTorch calls, so
  that both sides see the same background load (the machine is shared).
  Only the steady state of a block is timed: after a switch, calls are
  untimed for ``settle`` seconds (at least one). PyTorch's OpenMP threads
  keep spinning after its last call: on 2 cores the XLA calls of the next
  ~20-40 ms ran up to 2.7x slower than in a steady state (measured), a cost
  that training with one framework never pays. A block is at least 3 calls,
  more (up to ``max_block``) for calls under ``block_time`` / 3. At least
  ``repeats`` timed calls per side, more (up to ``max_calls``) while under
  ``min_time`` seconds, so that sub-millisecond medians are stable; fewer
  once ``budget`` seconds have passed (but at least three).
  """
  times = {"jax": [], "torch": []}
  start = time.perf_counter()

  def wanted():
    if time.perf_counter() - start < min_time:
      return max_calls
    return repeats

  while len(times["jax"]) < wanted():
    for side, fn in (("jax", jax_fn), ("torch", torch_fn)):
      switch = time.perf_counter()
      fn()  # after the switch: untimed
      while time.perf_counter() - switch < settle:
        fn()
      last = times[side][-1] if times[side] else block_time
      block = min(max_block, max(3, int(block_time / max(last, 1e-9))))
      for _ in range(max(1, min(block, wanted() - len(times[side])))):
        t0 = time.perf_counter()
        fn()
        times[side].append(time.perf_counter() - t0)
    if (time.perf_counter() - start > budget and
        len(times["jax"]) >= min(3, repeats)):
      break
  jax_t, torch_t = times["jax"], times["torch"]
  return (statistics.median(jax_t), min(jax_t), statistics.median(torch_t),
          min(torch_t), len(jax_t))


def _agreement(jax_out, torch_out):
  """(relative loss difference, max |∇ difference| / max |∇_torch|)."""
  (v_jax, g_jax), (v_torch, g_torch) = jax_out, torch_out
  g_jax = np.asarray(g_jax, np.float32)
  return (abs(float(v_jax) - v_torch) / max(abs(v_torch), 1e-30),
          float(np.abs(g_jax - g_torch).max() /
                max(np.abs(g_torch).max(), 1e-30)))


def _density_calls(name, density, points, mask, stride):
  """(jitted JAX value-and-grad call, PyTorch call) of one density loss;
  each returns (value, gradient)."""
  kw = dict(KWARGS.get(name, {}), stride=stride)
  loss = LOSSES[name]
  vg = jax.jit(jax.value_and_grad(lambda d, p, m: loss(d, p, m, **kw)[0]))
  d, p, m = jnp.asarray(density), jnp.asarray(points), jnp.asarray(mask)
  torch_fn = TORCH[name]
  pts_t = torch.from_numpy(points)

  def torch_call():
    dt = torch.from_numpy(density.copy()).requires_grad_(True)
    value = torch_fn(dt, pts_t, stride)
    value.backward()
    return float(value.detach()), dt.grad.numpy()

  return lambda: jax.block_until_ready(vg(d, p, m)), torch_call


def bench_density_loss(name, density, points, mask, stride, repeats, budget,
                       jax_only=False):
  """((timings), compile s, (loss, gradient) agreement) for one density loss.

  ``jax_only``: the PyTorch side is not run (its timings and the
  agreement are None).
  """
  jax_call, torch_call = _density_calls(name, density, points, mask, stride)
  t0 = time.perf_counter()
  jax_call()
  compile_s = time.perf_counter() - t0
  jax_out = jax_call()  # warm-up
  if jax_only:
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (time.perf_counter() - start < budget or
                                    len(times) < min(3, repeats)):
      t0 = time.perf_counter()
      jax_call()
      times.append(time.perf_counter() - t0)
    return ((statistics.median(times), min(times), None, None, len(times)),
            compile_s, None)
  torch_out = torch_call()  # warm-up
  times = _timed_pair(jax_call, torch_call, repeats, budget)
  return times, compile_s, _agreement(jax_out, torch_out)


def peak_rss_child(name, case, batch, side_name, baseline):
  """Body of the ``--rss-child`` subprocess: peak RSS (MB) of one side."""
  side, num_points, stride = CASES[case]
  inputs = make_inputs(side, num_points, stride, batch)
  if not baseline:
    jax_call, torch_call = _density_calls(name, *inputs, stride)
    call = jax_call if side_name == "jax" else torch_call
    call()  # JAX: compilation and first call
    call()
  # VmHWM, the peak resident set of this process image (getrusage's
  # ru_maxrss would keep the parent's peak across fork and exec on Linux).
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError("no VmHWM in /proc/self/status")


def peak_rss(name, case, batch, side_name):
  """(peak RSS MB of a fresh process that makes the inputs and calls the
  loss twice, the same process's peak without the calls) for one side."""
  # The child imports the same counting_jax as this process (a checkout
  # may shadow an installed copy).
  root = os.path.dirname(os.path.dirname(os.path.abspath(
      counting_jax.__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  out = []
  for baseline in (False, True):
    cmd = [sys.executable, __file__, "--rss-child", name, case,
           str(batch), side_name] + (["--baseline"] if baseline else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env=env)
    out.append(float(res.stdout.strip().splitlines()[-1]))
  return out[0], out[1]


def bench_p2pnet(side, num_points, batch, repeats, budget):
  """The same for P2PNet's loss (gradient w.r.t. logits and points)."""
  logits, pred, points, mask = p2pnet_inputs(side, num_points, batch)
  vg = jax.jit(jax.value_and_grad(
      lambda lg, pp, y, m: p2pnet_loss(lg, pp, y, m)[0], argnums=(0, 1)))
  args = [jnp.asarray(x) for x in (logits, pred, points, mask)]
  t0 = time.perf_counter()
  jax.block_until_ready(vg(*args))
  compile_s = time.perf_counter() - t0
  value, (g_jax, _) = jax.block_until_ready(vg(*args))
  pts_t = torch.from_numpy(points)

  def torch_call():
    lt = torch.from_numpy(logits.copy()).requires_grad_(True)
    pt = torch.from_numpy(pred.copy()).requires_grad_(True)
    loss = torch_p2pnet(lt, pt, pts_t)
    loss.backward()
    return float(loss.detach()), lt.grad.numpy()

  torch_out = torch_call()
  times = _timed_pair(lambda: jax.block_until_ready(vg(*args)), torch_call,
                      repeats, budget)
  return times, compile_s, _agreement((value, g_jax), torch_out)


def iteration_notes(cases):
  """Sinkhorn iterations (DM-Count) and ε-schedule lengths (GL) per case."""
  notes = []
  for case in cases:
    side, num_points, stride = CASES[case]
    density, points, _ = make_inputs(side, num_points, stride, 1)
    cost = np.asarray(jnp.square(
        points[0, :, None, :] - np.stack(np.meshgrid(
            np.arange(side) * stride + stride / 2,
            np.arange(side) * stride + stride / 2,
            indexing="xy"), -1).reshape(1, -1, 2)).sum(-1))
    mu = density[0].reshape(-1)
    _, _, its = sinkhorn_knopp(np.full(num_points, 1 / num_points),
                               mu / (mu.sum() + 1e-6), cost, epsilon=10.0)
    pix = ot.pixel_centers(side, side, stride=stride, offset=stride,
                           scale=FRAME)
    diam = float(ot.diameter(pix, jnp.asarray(points[0]) / FRAME))
    steps = len(_gl_schedule(diam, 0.01, 0.5))
    notes.append(f"{case}: DM-Count Sinkhorn iterations {int(its)} (both "
                 f"sides); GL ε-schedule {steps} steps + init + final "
                 f"(both sides)")
  return notes


def _ms(seconds):
  ms = 1e3 * seconds
  return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="two 64x64 cases, 3 repeats")
  parser.add_argument("--losses", default=None,
                      help="comma-separated names (default: all of LOSSES "
                      f"and {P2PNET!r})")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--budget", type=float, default=None,
                      help="seconds of timed calls per cell before stopping "
                      "early (at least 3 calls)")
  parser.add_argument("--cases", default=None,
                      help="comma-separated substrings: run the cases whose "
                      "name contains one (e.g. '256x256' or '100 pts,4000'); "
                      f"default the first four; all: {list(CASES)}")
  parser.add_argument("--memory", action="store_true",
                      help="also the peak RSS of each density-loss cell, "
                      "each side in a fresh subprocess")
  parser.add_argument("--rss-child", nargs=4, default=None,
                      metavar=("LOSS", "CASE", "BATCH", "SIDE"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--baseline", action="store_true",
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  torch.set_num_threads(2)
  if args.rss_child:
    name, case, batch, side_name = args.rss_child
    print(peak_rss_child(name, case, int(batch), side_name, args.baseline))
    return
  names = sorted(LOSSES) + [P2PNET] if args.losses is None else [
      s.strip() for s in args.losses.split(",") if s.strip()]
  unknown = [n for n in names if n not in LOSSES and n != P2PNET]
  if unknown:
    parser.error(f"unknown losses {unknown}; valid: {sorted(LOSSES)} + "
                 f"{[P2PNET]}")
  missing = [n for n in names if n != P2PNET and n not in TORCH]
  if missing:
    parser.error(f"no PyTorch reference written for {missing}")
  cases = QUICK_CASES if args.quick else DEFAULT_CASES
  if args.cases:
    wanted = [s.strip() for s in args.cases.split(",") if s.strip()]
    cases = tuple(c for c in CASES if any(s in c for s in wanted))
    if not cases:
      parser.error(f"no case matches {wanted}; cases: {list(CASES)}")
  repeats = args.repeats or (3 if args.quick else 7)
  budget = args.budget or (3.0 if args.quick else 8.0)

  print(f"jax {jax.__version__} ({jax.default_backend()}, "
        f"{jax.device_count()} device), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), batch {args.batch}\n")
  print("| loss | case | jax ms | torch ms | ratio | ratio of minima | calls "
        "| jax compile s | agree: loss, ∇ | official idle ms (ratio) |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for name in names:
    for case in cases:
      side, num_points, stride = CASES[case]
      if name == P2PNET:
        if stride != 8:
          continue  # P2PNet has no stride-2 head
        res = bench_p2pnet(side, num_points, args.batch, repeats, budget)
        label = f"{case} ({4 * side * side} proposals)"
      else:
        inputs = make_inputs(side, num_points, stride, args.batch)
        res = bench_density_loss(name, *inputs, stride, repeats, budget,
                                 jax_only=case in JAX_ONLY_CASES)
        label = case
      (jax_s, jax_min, torch_s, torch_min, calls), compile_s, agree = res
      idle = OFFICIAL_IDLE_S.get(name, ()) if args.batch == 1 else ()
      index = list(CASES).index(case)
      official = idle[index] if index < len(idle) else None
      anchor = ("n/a" if official is None else
                f"{_ms(official)} ({official / jax_s:.1f})")
      if torch_s is None:
        torch_cols = "not run | | "
        agree_col = "n/a"
      else:
        torch_cols = (f"{_ms(torch_s)} | {torch_s / jax_s:.1f} "
                      f"| {torch_min / jax_min:.1f} ")
        agree_col = f"{agree[0]:.0e}, {agree[1]:.0e}"
      print(f"| {name} | {label} | {_ms(jax_s)} | {torch_cols}| {calls} "
            f"| {compile_s:.1f} | {agree_col} | {anchor} |", flush=True)
  if args.memory:
    print("\nPeak RSS (MB) of a fresh process per side: inputs, compilation "
          "(JAX) and two calls; in brackets the same process without the "
          "calls, -> the difference.\n")
    print("| loss | case | jax peak (baseline) -> delta "
          "| torch peak (baseline) -> delta |")
    print("|---|---|---:|---:|")
    for name in names:
      if name == P2PNET:
        continue
      for case in cases:
        cols = []
        for side_name in ("jax", "torch"):
          if side_name == "torch" and case in JAX_ONLY_CASES:
            cols.append("not run")
            continue
          peak, base = peak_rss(name, case, args.batch, side_name)
          cols.append(f"{peak:.0f} ({base:.0f}) -> +{peak - base:.0f}")
        print(f"| {name} | {case} | {cols[0]} | {cols[1]} |", flush=True)
  noted = [c for c in cases if c not in JAX_ONLY_CASES]
  if {"dm_count", "gl"} & set(names) and noted:
    print()
    for note in iteration_notes(noted):
      print(f"- {note}")


if __name__ == "__main__":
  main()
