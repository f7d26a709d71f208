"""Throughput of the VGG19 counter (BL head): JAX vs the same PyTorch module.

Prints images/s of the forward pass and of forward + backward (gradients of
the density sum w.r.t. every parameter), float32, NHWC in JAX and NCHW in
PyTorch (torch threads = 2), in the same run, and the JAX / PyTorch ratio.

  .venv/bin/python benchmarks/models.py            # 512x512, batch 4
  .venv/bin/python benchmarks/models.py --quick    # 1 timed iteration
  .venv/bin/python benchmarks/models.py --cpu-tricks   # JAX with and
      # without the CPU tricks (3x3 kernel gradient, reshape max-pool)

The JAX side is compiled with the trainer's XLA options
(``counting_jax.train.compile_options``: on CPU YNNPACK for dots only, XLA's
Eigen convolutions; ``--xla-defaults`` for XLA's defaults, which hand the
convolutions to YNNPACK). It jits each function
once (compile time excluded, reported separately) and keeps the parameters
on device; timings are the median of ``--iters`` runs after one warm-up
round, JAX and PyTorch alternating. ``--cpu-tricks`` times the JAX counter
twice, with the CPU tricks of ``counting_jax.models.backbones._ops`` (the
default on CPU) and with the standard ``lax.conv_general_dilated`` /
``nn.max_pool`` (the default on GPU / TPU), side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from counting_jax import models
from counting_jax.models.backbones import _ops
from counting_jax.train import compile_options


class TorchBLVGG19(nn.Module):
  """BL's VGG19 + head (``models/vgg.py``), PyTorch default init."""

  def __init__(self):
    super().__init__()
    layers, channels = [], 3
    for b, (depth, width) in enumerate(zip((2, 2, 4, 4, 4),
                                           (64, 128, 256, 512, 512))):
      if b:
        layers.append(nn.MaxPool2d(2, 2))
      for _ in range(depth):
        layers += [nn.Conv2d(channels, width, 3, padding=1),
                   nn.ReLU(inplace=True)]
        channels = width
    self.features = nn.Sequential(*layers)
    self.reg_layer = nn.Sequential(
        nn.Conv2d(512, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 128, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(128, 1, 1))

  def forward(self, x):
    x = F.interpolate(self.features(x), scale_factor=2, mode="bilinear",
                      align_corners=True)
    return torch.abs(self.reg_layer(x))


def jax_functions(batch: int, size: int, xla_defaults: bool = False,
                  cpu_tricks: bool | None = None):
  """{pass: zero-argument function} of the JAX counter, compiled (with the
  CPU tricks on, off, or None: on the CPU backend)."""
  model = models.get_model("bl_vgg19")
  image = jnp.asarray(np.random.default_rng(0).normal(
      size=(batch, size, size, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), image[:1, :64, :64])
  options = (compile_options.compiler_options(None) if xla_defaults else
             compile_options.compiler_options())
  forward = jax.jit(lambda v, x: model.apply(v, x), compiler_options=options)

  def total(params, x):
    return model.apply({"params": params}, x, train=True).sum()

  grad = jax.jit(jax.grad(total), compiler_options=options)
  start = time.perf_counter()
  with _ops.cpu_tricks(cpu_tricks):  # applies at tracing
    forward = forward.lower(variables, image).compile()
    grad = grad.lower(variables["params"], image).compile()
  print(f"JAX compile (both functions, CPU tricks "
        f"{_ops.cpu_tricks_enabled(cpu_tricks)}): "
        f"{time.perf_counter() - start:.1f} s")
  return {"forward": lambda: forward(variables, image).block_until_ready(),
          "forward_backward": lambda: jax.block_until_ready(
              grad(variables["params"], image))}


def torch_functions(batch: int, size: int):
  """{pass: zero-argument function} of the PyTorch counter (2 threads)."""
  torch.set_num_threads(2)
  module = TorchBLVGG19()
  image = torch.randn(batch, 3, size, size)

  def forward():
    with torch.no_grad():
      module(image)

  def forward_backward():
    module.zero_grad(set_to_none=True)
    module(image).sum().backward()

  return {"forward": forward, "forward_backward": forward_backward}


def measure(functions: dict, iters: int) -> dict[str, dict[str, float]]:
  """Median seconds per call; JAX and PyTorch runs alternate, so that a
  change of load on a shared machine affects both alike."""
  times = {fw: {p: [] for p in fns} for fw, fns in functions.items()}
  for it in range(iters + 1):  # the first round warms up.
    for name in ("forward", "forward_backward"):
      for fw, fns in functions.items():
        start = time.perf_counter()
        fns[name]()
        if it:
          times[fw][name].append(time.perf_counter() - start)
  return {fw: {p: statistics.median(t) for p, t in d.items()}
          for fw, d in times.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--quick", action="store_true",
                      help="one timed iteration")
  parser.add_argument("--xla-defaults", action="store_true",
                      help="XLA's default CPU options (YNNPACK convolutions) "
                      "instead of the trainer's (YNNPACK for dots only)")
  parser.add_argument("--cpu-tricks", action="store_true",
                      help="also time JAX without the CPU tricks (standard "
                      "conv gradient and nn.max_pool) and with them")
  args = parser.parse_args(argv)
  iters = 1 if args.quick else args.iters
  print(f"BL VGG19 counter, float32, batch {args.batch}, "
        f"{args.size}x{args.size}, median of {iters} (jax "
        f"{jax.__version__} on {jax.devices()[0].platform}, torch "
        f"{torch.__version__}, 2 threads; JAX convolutions: "
        f"{'YNNPACK (XLA default)' if args.xla_defaults else 'Eigen'})")
  variants = ({"JAX tricks": True, "JAX standard": False}
              if args.cpu_tricks else {"JAX": None})
  functions = {name: jax_functions(args.batch, args.size, args.xla_defaults,
                                   flag) for name, flag in variants.items()}
  functions["PyTorch"] = torch_functions(args.batch, args.size)
  result = measure(functions, iters)
  th = result["PyTorch"]
  header = f"{'pass':<18}" + "".join(
      f"{name + ' img/s':>20}" for name in functions) + "".join(
          f"{name + '/PyTorch':>22}" for name in variants)
  print(header)
  for key in ("forward", "forward_backward"):
    rate = {name: args.batch / result[name][key] for name in functions}
    print(f"{key:<18}" + "".join(f"{rate[n]:>20.3f}" for n in functions)
          + "".join(f"{rate[n] / rate['PyTorch']:>22.2f}" for n in variants))


if __name__ == "__main__":
  main()
