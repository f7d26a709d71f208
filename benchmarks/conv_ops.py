"""Convolutions on XLA:CPU vs PyTorch (oneDNN): forward, input and kernel
gradients, float32 and bfloat16, one op at a time.

Where the conv-heavy train steps (``benchmarks/seg_then_count.py``,
``benchmarks/mprompt.py``) and the bfloat16 T2ICount forward
(``benchmarks/t2icount.py``) lose against PyTorch on the CPU. For each
convolution shape (NHWC in JAX, NCHW in PyTorch, the same random values)
it times, median of ``--iters`` after a warm-up:

* ``fwd``: the convolution;
* ``dgrad``: its input gradient (``jax.vjp`` w.r.t. the input; PyTorch
  ``torch.nn.grad.conv2d_input``);
* ``wgrad``: its kernel gradient (``jax.vjp`` w.r.t. the kernel; PyTorch
  ``torch.nn.grad.conv2d_weight``);

in JAX with the trainer's XLA options (YNNPACK for dots only, XLA's own
convolutions; ``counting_jax.train.compile_options``) and with YNNPACK
convolutions (``--ynn-conv``), and in PyTorch with 2 threads. Shapes: the
Seg-then-Count base counter (ResNet-50 layer2 / layer3 3x3 convs at 256²
input, the counter's 7x7 / 5x5 / 3x3 convs) and mPrompt's HRNet-W40 (3x3
convs of the 40-, 80- and 64-channel branches at 400² input).

  .venv/bin/python benchmarks/conv_ops.py                   # float32
  .venv/bin/python benchmarks/conv_ops.py --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import torch
from torch.nn import functional as F

from counting_jax.train import compile_options

# (label, batch, size, in channels, out channels, kernel, stride)
SHAPES = (
    ("stc layer2 3x3", 2, 32, 128, 128, 3, 1),
    ("stc layer2_0 3x3/2", 2, 64, 128, 128, 3, 2),
    ("stc layer3 3x3", 2, 16, 256, 256, 3, 1),
    ("stc counter 7x7", 2, 16, 257, 196, 7, 1),
    ("stc counter 5x5", 2, 32, 196, 128, 5, 1),
    ("stc counter 3x3", 2, 64, 128, 64, 3, 1),
    ("hrnet stem2 3x3", 2, 200, 64, 64, 3, 1),
    ("hrnet w40 3x3", 2, 200, 40, 40, 3, 1),
    ("hrnet w80 3x3", 2, 100, 80, 80, 3, 1),
)


def _median(fn, iters):
  fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def jax_times(shape, dtype, options, iters):
  """{part: ms} of one convolution in JAX (NHWC / HWIO)."""
  _, b, s, c, o, k, stride = shape
  g = np.random.default_rng(0)
  x = jnp.asarray(g.normal(size=(b, s, s, c)), dtype)
  w = jnp.asarray(g.normal(size=(k, k, c, o)) / (k * k * c) ** .5, dtype)

  def conv(x, w):
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((k // 2, k // 2),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  dy = jnp.ones(jax.eval_shape(conv, x, w).shape, dtype)
  fns = {
      "fwd": conv,
      "dgrad": lambda x, w, dy: jax.vjp(lambda a: conv(a, w), x)[1](dy)[0],
      "wgrad": lambda x, w, dy: jax.vjp(lambda a: conv(x, a), w)[1](dy)[0],
  }
  out = {}
  for part, fn in fns.items():
    args = (x, w) if part == "fwd" else (x, w, dy)
    f = jax.jit(fn, compiler_options=options).lower(*args).compile()
    out[part] = _median(lambda f=f, a=args: f(*a).block_until_ready(), iters)
  return out


def torch_times(shape, dtype, iters):
  """{part: ms} of the same convolution in PyTorch (NCHW / OIHW)."""
  _, b, s, c, o, k, stride = shape
  g = np.random.default_rng(0)
  x = torch.from_numpy(g.normal(size=(b, c, s, s)).astype(np.float32))
  w = torch.from_numpy((g.normal(size=(o, c, k, k)) / (k * k * c) ** .5)
                       .astype(np.float32))
  x, w = x.to(dtype), w.to(dtype)
  pad = k // 2
  with torch.no_grad():
    dy = torch.ones_like(F.conv2d(x, w, stride=stride, padding=pad))
    return {
        "fwd": _median(lambda: F.conv2d(x, w, stride=stride, padding=pad),
                       iters),
        "dgrad": _median(lambda: torch.nn.grad.conv2d_input(
            x.shape, w, dy, stride=stride, padding=pad), iters),
        "wgrad": _median(lambda: torch.nn.grad.conv2d_weight(
            x, w.shape, dy, stride=stride, padding=pad), iters),
    }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dtypes", default="float32")
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--ynn-conv", action="store_true",
                      help="also time JAX with YNNPACK convolutions")
  args = parser.parse_args(argv)
  torch.set_num_threads(2)
  variants = {"JAX": compile_options.compiler_options()}
  if args.ynn_conv:
    variants["JAX ynn-conv"] = compile_options.compiler_options(
        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch "
        f"{torch.__version__} (2 threads); ms, median of {args.iters}; "
        "ratio = PyTorch / JAX time (> 1: JAX faster)")
  for name in args.dtypes.split(","):
    jdt, tdt = {"float32": (jnp.float32, torch.float32),
                "bfloat16": (jnp.bfloat16, torch.bfloat16)}[name]
    print(f"{name}:")
    print(f"  {'conv (B, size, C->O, k, stride)':<44}"
          + "".join(f"{p:>26}" for p in ("fwd", "dgrad", "wgrad")))
    for shape in SHAPES:
      ref = torch_times(shape, tdt, args.iters)
      for label, options in variants.items():
        t = jax_times(shape, jdt, options, args.iters)
        cells = "".join(
            f"{f'{t[p]:.1f} vs {ref[p]:.1f} ({ref[p] / t[p]:.2f}x)':>26}"
            for p in ("fwd", "dgrad", "wgrad"))
        desc = f"{shape[0]} {shape[1:]}"
        print(f"  {label + ': ' + desc:<44}{cells}", flush=True)


if __name__ == "__main__":
  main()
