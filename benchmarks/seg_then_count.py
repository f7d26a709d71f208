"""Seg-then-Count: pseudo masks vs scikit-learn, train step vs PyTorch.

Two side-by-side timings in one run:

1. Pseudo-mask clustering of one image (§3.2): K-means for K = 2..6 on the
   patch embeddings plus the mean exemplar embedding, and the mask of the
   exemplar's cluster. JAX: ``seg_then_count_masks.cluster_masks`` (ott-jax
   ``k_means``, every K in one compiled call, restarts by ``lax.map`` on
   CPU; compilation excluded and reported); scikit-learn:
   ``KMeans(algorithm="lloyd")`` with the same restarts (``n_init`` 10,
   k-means++ with 2 + floor(log K) local trials), the same tolerance rule
   (1e-4 times the mean feature variance) and iteration cap (300), on the
   same float32 embeddings. Both return every K's mask for the image. The
   masks may differ for a K where the two libraries' random restarts end in
   different local minima (their random streams differ); the tests check
   that both reach the same partition from the same start. The embeddings
   are a 1024-d Gaussian mixture of 5 classes, one point per similarity
   cell of a 384 x 576 image (24 x 36 = 864 + 1 points), like ResNet-50
   ``layer3`` embeddings of FSC-147 patches (a real image through a full
   ResNet-50 takes minutes on 2 cores). JAX runs the restarts with
   ``lax.map`` on two host threads (see ``kmeans_multi``); ``--restarts
   vmap`` and ``--bucket`` time the alternatives.
2. The base counter's train step (forward, backward, AdamW, stem / layer1 /
   BatchNorm frozen) in JAX (``SegThenCount`` + ``seg_then_count`` method
   loss + the trainer's optimiser, trainer's XLA options) and in a PyTorch
   module of the same architecture written here (ResNet-50 to layer3 with
   frozen BatchNorm, 1x1 projection, exemplar GAP + linear, inner-product
   similarity, 5 convs with ``nn.UpsamplingBilinear2d``), 2 threads. The
   PyTorch exemplar crops (``F.interpolate`` to 128 x 128) are made once,
   outside the step; JAX crops them inside its step (``crop_boxes``), so
   the comparison slightly favours PyTorch.

  .venv/bin/python benchmarks/seg_then_count.py            # batch 2, 256 px
  .venv/bin/python benchmarks/seg_then_count.py --quick    # 1 timed round
  .venv/bin/python benchmarks/seg_then_count.py --only masks --iters 9

Timings are medians of ``--iters`` rounds after a warm-up round, the two
frameworks alternating (pseudo masks: 0.2 s apart, so that neither runs
while the other's idle threads still spin). Both use the machine's cores:
scikit-learn through OpenMP, JAX through one host thread per core, each
with a share of the restarts (``kmeans_multi``'s ``threads``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from counting_jax.methods import seg_then_count as stc_method
from counting_jax.methods import seg_then_count_masks as masks_lib
from counting_jax.models import seg_then_count as stc
from counting_jax.train import compile_options
from counting_jax.train import optim


def _median_pair(fns: dict, iters: int, pause: float = 0.0) -> dict:
  """Median seconds per call, the functions alternating; ``pause`` seconds
  of sleep before each call let the other library's idle worker threads
  (OpenMP, XLA) stop spinning first."""
  times = {k: [] for k in fns}
  for it in range(iters + 1):
    for k, fn in fns.items():
      time.sleep(pause)
      start = time.perf_counter()
      fn()
      if it:
        times[k].append(time.perf_counter() - start)
  return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------ pseudo masks


def embeddings(seed: int = 0, grid=(24, 36), dim: int = 1024,
               classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
  """(patch embeddings float32 [h w, D], exemplar embedding [D])."""
  g = np.random.default_rng(seed)
  centres = g.normal(size=(classes, dim)) * 2.0
  labels = g.integers(classes, size=grid[0] * grid[1])
  x = centres[labels] + g.normal(size=(len(labels), dim))
  x = np.maximum(x, 0.0)  # post-ReLU features
  ex = np.maximum(centres[0] + 0.3 * g.normal(size=dim), 0.0)
  return x.astype(np.float32), ex.astype(np.float32)


def sklearn_masks(points, ex, grid):
  from sklearn.cluster import KMeans  # pylint: disable=g-import-not-at-top
  pts = np.concatenate([points, ex[None]])
  out = []
  for k in masks_lib.KS:
    labels = KMeans(k, n_init=10, tol=1e-4, max_iter=300, algorithm="lloyd",
                    random_state=0).fit(pts).labels_
    out.append((labels[:-1] == labels[-1]).reshape(grid))
  return np.stack(out)


def bench_masks(iters: int, restarts: str = "auto", bucket: int = 128):
  grid = (24, 36)
  points, ex = embeddings(grid=grid)
  kw = dict(restarts=restarts, bucket=bucket)
  start = time.perf_counter()
  ours = masks_lib.cluster_masks(points, ex, grid, **kw)
  print(f"pseudo masks: JAX compile + first run (5 K values): "
        f"{time.perf_counter() - start:.1f} s")
  ref = sklearn_masks(points, ex, grid)
  agree = [bool((a == b).all()) for a, b in zip(ours, ref)]
  t = _median_pair({
      "JAX (ott-jax)": lambda: masks_lib.cluster_masks(points, ex, grid,
                                                       **kw),
      "scikit-learn": lambda: sklearn_masks(points, ex, grid)}, iters,
                    pause=0.2)
  padded = -(-(len(points) + 1) // bucket) * bucket
  mode = masks_lib._restart_mode(restarts)  # pylint: disable=protected-access
  threads = masks_lib._default_threads()  # pylint: disable=protected-access
  print(f"pseudo masks per image, K = 2..6, {len(points) + 1} points x "
        f"{points.shape[1]}-d (JAX: padded to {padded}, restarts {mode}, "
        f"{threads} host threads), n_init 10:")
  for k, v in t.items():
    print(f"  {k:<16} {1000 * v:9.1f} ms")
  print(f"  speed-up JAX / scikit-learn: "
        f"{t['scikit-learn'] / t['JAX (ott-jax)']:.2f}x  (goal >= 10x); "
        f"same masks per K: {agree}")


# -------------------------------------------------------------- train step


class FrozenBN(nn.Module):
  def __init__(self, n):
    super().__init__()
    for name, v in (("weight", torch.ones(n)), ("bias", torch.zeros(n)),
                    ("running_mean", torch.zeros(n)),
                    ("running_var", torch.ones(n))):
      self.register_buffer(name, v)

  def forward(self, x):
    scale = self.weight * (self.running_var + 1e-5).rsqrt()
    shift = self.bias - self.running_mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


class Bottleneck(nn.Module):
  def __init__(self, cin, planes, stride, project):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = FrozenBN(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = FrozenBN(planes)
    self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = FrozenBN(4 * planes)
    self.down = (nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride,
                                         bias=False), FrozenBN(4 * planes))
                 if project else None)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.down is None else self.down(x)))


class TorchBaseCounter(nn.Module):
  """The base counter in PyTorch (stem and layer1 frozen)."""

  def __init__(self, stage_sizes=(3, 4, 6)):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                              FrozenBN(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    layers, cin = [], 64
    for l, n in enumerate(stage_sizes):
      planes = 64 * 2 ** l
      blocks = []
      for k in range(n):
        blocks.append(Bottleneck(cin, planes, 2 if (k == 0 and l) else 1,
                                 k == 0))
        cin = 4 * planes
      layers.append(nn.Sequential(*blocks))
    self.layers = nn.Sequential(*layers)
    for p in list(self.stem.parameters()) + list(layers[0].parameters()):
      p.requires_grad_(False)
    self.input_proj = nn.Conv2d(1024, 256, 1)
    self.patch2query = nn.Linear(1024, 256)
    up = functools.partial(nn.UpsamplingBilinear2d, scale_factor=2)
    self.counter = nn.Sequential(
        nn.Conv2d(257, 196, 7, padding=3), nn.ReLU(), up(),
        nn.Conv2d(196, 128, 5, padding=2), nn.ReLU(), up(),
        nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(), up(),
        nn.Conv2d(64, 32, 1), nn.ReLU(), up(),
        nn.Conv2d(32, 1, 1), nn.ReLU())

  def forward(self, image, patches):
    b, e = patches.shape[:2]
    feats = self.input_proj(self.layers(self.stem(image)))
    p = self.layers(self.stem(patches.flatten(0, 1))).mean((2, 3))
    vec = self.patch2query(p).view(b, e, -1)
    sim = torch.einsum("bchw,bec->bhw", feats, vec) / e
    return self.counter(torch.cat([feats, sim[:, None]], 1))[:, 0]


def _config():
  c = ml_collections.ConfigDict()
  c.method = dict(name="seg_then_count", stage="counter")
  c.model = dict(kwargs=dict())
  c.input = dict(max_exemplars=3)
  c.loss = dict(kwargs=dict(sigma=4.0, scale=1.0))
  c.compute_dtype = "float32"
  return c


def bench_train_step(batch: int, size: int, iters: int):
  g = np.random.default_rng(0)
  image = g.normal(size=(batch, size, size, 3)).astype(np.float32)
  boxes = np.tile(np.array([[[10, 10, 50, 60], [80, 40, 120, 90],
                             [30, 100, 70, 130]]], np.float32), (batch, 1, 1))
  points = g.uniform(0, size, size=(batch, 64, 2)).astype(np.float32)
  jbatch = {"image": jnp.asarray(image), "exemplars": jnp.asarray(boxes),
            "exemplar_mask": jnp.ones((batch, 3), bool),
            "points": jnp.asarray(points),
            "point_mask": jnp.ones((batch, 64), bool)}
  method = stc_method.build(_config())
  variables = method.model.init(jax.random.key(0), jbatch["image"][:1],
                                jbatch["exemplars"][:1],
                                jbatch["exemplar_mask"][:1])
  tx = optim.make_optimizer(
      "adamw", lr=1e-5, total_steps=1000, weight_decay=5e-4, clip_norm=0.1,
      groups={"frozen": {"frozen": True}}, param_labels=method.param_labels)
  opt_state = tx.init(variables["params"])
  stats = variables["batch_stats"]

  def step(params, opt_state, batch):
    def loss_fn(p):
      out = method.model.apply({"params": p, "batch_stats": stats},
                               batch["image"], batch["exemplars"],
                               batch["exemplar_mask"])
      return method.loss(out, batch)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(jnp.add, params, updates), opt_state, loss

  start = time.perf_counter()
  step = jax.jit(step, donate_argnums=(0, 1),
                 compiler_options=compile_options.compiler_options()).lower(
                     variables["params"], opt_state, jbatch).compile()
  print(f"train step: JAX compile {time.perf_counter() - start:.1f} s")
  state = {"p": variables["params"], "o": opt_state}

  def jax_step():
    state["p"], state["o"], loss = step(state["p"], state["o"], jbatch)
    loss.block_until_ready()

  torch.set_num_threads(2)
  module = TorchBaseCounter()
  topt = torch.optim.AdamW([p for p in module.parameters()
                            if p.requires_grad], lr=1e-5, weight_decay=5e-4)
  timage = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()
  patches = torch.stack([torch.stack([
      F.interpolate(timage[i:i + 1, :, int(y1):int(y2), int(x1):int(x2)],
                    size=(128, 128), mode="bilinear", align_corners=False)[0]
      for x1, y1, x2, y2 in boxes[i]]) for i in range(batch)])
  target = torch.rand(batch, size, size) * 1e-3

  def torch_step():
    topt.zero_grad(set_to_none=True)
    loss = F.mse_loss(module(timage, patches), target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 0.1)
    topt.step()

  t = _median_pair({"JAX": jax_step, "PyTorch": torch_step}, iters)
  print(f"base counter train step, batch {batch}, {size}x{size}, exemplars "
        f"3 x 128x128, float32:")
  for k, v in t.items():
    print(f"  {k:<16} {1000 * v:9.1f} ms  ({batch / v:.3f} img/s)")
  print(f"  speed-up JAX / PyTorch: {t['PyTorch'] / t['JAX']:.2f}x "
        f"(goal >= 1x)")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--only", choices=("masks", "train_step"),
                      help="run one of the two comparisons")
  parser.add_argument("--skip-train-step", action="store_true",
                      help="the same as --only masks")
  parser.add_argument("--restarts", default="auto",
                      choices=masks_lib.RESTARTS,
                      help="K-means restarts: lax.map, vmap, or auto (map "
                      "on CPU)")
  parser.add_argument("--bucket", type=int, default=128,
                      help="pad the point set to a multiple of this")
  args = parser.parse_args(argv)
  if args.skip_train_step:
    args.only = "masks"
  iters = 1 if args.quick else args.iters
  import sklearn  # pylint: disable=g-import-not-at-top
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch "
        f"{torch.__version__} (2 threads), scikit-learn {sklearn.__version__}"
        f"; median of {iters}")
  if args.only in (None, "masks"):
    bench_masks(iters, args.restarts, args.bucket)
  if args.only in (None, "train_step"):
    bench_train_step(args.batch, args.size, iters)


if __name__ == "__main__":
  main()
