"""mPrompt: train-step speed (JAX vs PyTorch) and host target building.

1. Forward + backward of the full mPrompt network (HRNet-W40 with the
   stride-1 second stem conv, heads, the official loss) in train mode
   (BatchNorm batch statistics), float32, on 400x400 crops, batch 2: JAX
   (``counting_jax.models.mprompt`` + ``methods.mprompt_loss``, jitted with
   the trainer's XLA options, CPU tricks as in training) against the same
   architecture in PyTorch (``tests/convert/torch_reference.py``
   ``TorchMPrompt``, the loss re-stated in PyTorch; torch threads = 2), in
   the same run, alternating; median of ``--iters`` after a warm-up round.
   Parameters are drawn on the host (no init compile).
2. Target building per image (``mprompt_targets``: density, B(y), K-NN mask
   on the resized image) against a plain NumPy re-statement of the official
   loops (per-point distance rows with a full argsort, per-point K
   reduction, per-point disc painting over the whole image), on real
   ShanghaiTech points (Part A test IMG_8: 1326 points, 704x1024).

  .venv/bin/python benchmarks/mprompt.py            # batch 2, 400x400
  .venv/bin/python benchmarks/mprompt.py --quick    # 1 timed iteration
"""

from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.io
import torch
from torch.nn import functional as F

from counting_jax.methods import mprompt_loss
from counting_jax.methods import mprompt_targets
from counting_jax.models import mprompt as mprompt_model
from counting_jax.models.backbones import _ops
from counting_jax.train import compile_options

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "convert"))
import torch_reference  # pylint: disable=g-import-not-at-top,wrong-import-position

W40 = dict(widths=(40, 80, 160, 320), layer1_planes=64)
W40_HEADS = dict(seg=(128, 64, 32), redc=128, count=(64, 32))


def _targets(batch, size, seed=0):
  """masks [B, H, W, 3] (density, m, m_K) from random points."""
  g = np.random.default_rng(seed)
  out = []
  for _ in range(batch):
    px = g.integers(0, size, (200, 2))
    d = mprompt_targets.density_map(px, size, size)
    out.append(np.stack([d, d > 0, mprompt_targets.knn_mask(px, size, size)],
                        -1).astype(np.float32))
  return np.stack(out)


def jax_step(batch, size, xla_defaults=False, cpu_tricks=None):
  """Zero-argument function: gradients of the loss w.r.t. every parameter
  (and the new BatchNorm statistics), compiled with the trainer's XLA
  options (or XLA's defaults) and the CPU tricks on, off or None (default:
  on the CPU backend)."""
  model = mprompt_model.MPROMPT_HRNET_W40()
  image = jnp.asarray(np.random.default_rng(0).normal(
      size=(batch, size, size, 3)), jnp.float32)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), image[:1, :64, :64]))
  g = np.random.default_rng(1)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = math.prod(x.shape[:-1])
      return g.normal(size=x.shape).astype(np.float32) * (1 / fan_in) ** .5
    if "scale" in name or "var" in name:
      return np.ones(x.shape, np.float32)
    return np.zeros(x.shape, np.float32)

  variables = jax.tree_util.tree_map_with_path(draw, abstract)
  batch_dict = {"masks": jnp.asarray(_targets(batch, size)),
                "epoch": jnp.zeros((batch,), jnp.int32)}

  def loss(params, stats, x, b):
    out, new = model.apply({"params": params, "batch_stats": stats}, x,
                           train=True, mutable=["batch_stats"])
    value, _ = mprompt_loss.mprompt_loss(out, b)
    return value, new

  options = (compile_options.compiler_options(None) if xla_defaults else
             compile_options.compiler_options())
  grad = jax.jit(jax.grad(loss, has_aux=True), compiler_options=options)
  start = time.perf_counter()
  with _ops.cpu_tricks(cpu_tricks):  # applies at tracing
    grad = grad.lower(variables["params"], variables["batch_stats"], image,
                      batch_dict).compile()
  print(f"JAX compile: {time.perf_counter() - start:.1f} s")
  return lambda: jax.block_until_ready(grad(
      variables["params"], variables["batch_stats"], image, batch_dict))


def torch_loss(pred, seg, masks):
  """The official loss block (weights 1, epoch < 50), PyTorch."""
  y, m = masks[:, 0:1], masks[:, 1:2]
  den = ((pred - y) ** 2).sum()
  count = (pred.sum((1, 2, 3)) - y.sum((1, 2, 3))).abs().mean()
  b = (pred > 0).float()
  inter = (b * m).sum((1, 2, 3))
  union = ((b + m) > 0).float().sum((1, 2, 3))
  iou = 1.0 - (inter / (union + 1e-4)).mean()
  return den + count + F.binary_cross_entropy(seg, m) + iou


def torch_step(batch, size):
  torch.set_num_threads(2)
  module = torch_reference.TorchMPrompt(heads=W40_HEADS, **W40).train()
  image = torch.randn(batch, 3, size, size)
  masks = torch.from_numpy(_targets(batch, size).transpose(0, 3, 1, 2).copy())

  def step():
    module.zero_grad(set_to_none=True)
    pred, seg = module(image)
    torch_loss(pred, seg, masks).backward()

  return step


def measure(functions, iters):
  times = {k: [] for k in functions}
  for it in range(iters + 1):  # the first round warms up.
    for name, fn in functions.items():
      start = time.perf_counter()
      fn()
      if it:
        times[name].append(time.perf_counter() - start)
  return {k: statistics.median(v) for k, v in times.items()}


def plain_targets(points, height, width, k=3):
  """The official constructor's loops re-stated in plain NumPy."""
  density = np.zeros((height, width), np.float32)
  kernel = mprompt_targets.gaussian_kernel()
  for x, y in points:
    y0, y1 = max(0, y - 7), min(height, y + 8)
    x0, x1 = max(0, x - 7), min(width, x + 8)
    density[y0:y1, x0:x1] += kernel[y0 - y + 7:y1 - y + 7,
                                    x0 - x + 7:x1 - x + 7]
  density = density.astype(np.float16).astype(np.float32)
  mask = density > 0
  knn = np.zeros((height, width), bool)
  pts = points.astype(np.float64)
  rows, cols = np.mgrid[:height, :width]
  for i in range(len(pts)):
    dist = np.sqrt(((pts[i] - pts) ** 2).sum(1))
    d = [v for v in dist[np.argsort(dist)] if v != 0][:k]
    kk, r = k, d[k - 1]
    rc = np.mean(d[:k - 1])
    while r > rc * 2:
      kk -= 1
      r = d[kk - 1]
      rc = np.mean(d[:kk - 1]) if kk > 1 else r
    rad = math.floor(r)
    knn |= (cols - points[i, 0]) ** 2 + (rows - points[i, 1]) ** 2 <= rad ** 2
  return density, mask, knn


def target_building(shared):
  mat = scipy.io.loadmat(shared / "data" / "shanghaitech" / "part_A" /
                         "test_data" / "ground-truth" / "GT_IMG_8.mat")
  points = mat["image_info"][0, 0][0, 0][0]
  h, w = 684, 1024
  rh, rw = mprompt_targets.resize_shape(h, w, "sha")
  px = mprompt_targets.resize_points(points, (h, w), (rh, rw))

  def ours():
    d = mprompt_targets.density_map(px, rh, rw)
    return d, d > 0, mprompt_targets.knn_mask(px, rh, rw)

  a, b = ours(), plain_targets(px, rh, rw)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  t = measure({"ours": ours, "plain": lambda: plain_targets(px, rh, rw)}, 3)
  print(f"targets, SHA test IMG_8 ({len(px)} points, {rh}x{rw}): "
        f"counting_jax {t['ours'] * 1e3:.1f} ms, plain NumPy "
        f"{t['plain'] * 1e3:.1f} ms, speed-up {t['plain'] / t['ours']:.1f}x "
        "(equal outputs)")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--size", type=int, default=400)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--shared", default=str(REPO.parent / "shared"))
  parser.add_argument("--skip-model", action="store_true")
  parser.add_argument("--xla-defaults", action="store_true",
                      help="XLA's default CPU options (YNNPACK convolutions) "
                      "instead of the trainer's")
  parser.add_argument("--no-cpu-tricks", action="store_true",
                      help="standard convolution gradients on CPU")
  parser.add_argument("--skip-torch", action="store_true")
  args = parser.parse_args(argv)
  iters = 1 if args.quick else args.iters
  target_building(pathlib.Path(args.shared))
  if args.skip_model:
    return
  print(f"mPrompt HRNet-W40 train step (forward + backward + loss), float32, "
        f"batch {args.batch}, {args.size}x{args.size}, median of {iters} "
        f"(jax {jax.__version__} on {jax.devices()[0].platform}, torch "
        f"{torch.__version__}, 2 threads)")
  fns = {"JAX": jax_step(args.batch, args.size, args.xla_defaults,
                         False if args.no_cpu_tricks else None)}
  if not args.skip_torch:
    fns["PyTorch"] = torch_step(args.batch, args.size)
  t = measure(fns, iters)
  rate = {k: args.batch / v for k, v in t.items()}
  print(f"{'':<10}{'s/step':>10}{'img/s':>10}")
  for k in fns:
    print(f"{k:<10}{t[k]:>10.2f}{rate[k]:>10.3f}")
  if "PyTorch" in rate:
    print(f"JAX / PyTorch: {rate['JAX'] / rate['PyTorch']:.2f}x")


if __name__ == "__main__":
  main()
