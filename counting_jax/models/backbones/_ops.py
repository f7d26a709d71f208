"""Layers that behave exactly like their PyTorch counterparts (NHWC).

Used by the backbones and the crowd counters so that converted PyTorch
weights give the same outputs:

* ``conv``: ``nn.Conv`` with PyTorch's symmetric explicit padding (Flax
  "SAME" pads (0, 1) for stride-2 3x3 convs on even inputs, PyTorch (1, 1)),
  and, on CPU only, a faster kernel gradient for 3x3 convs
  (:func:`conv_general_dilated`).
* ``batch_norm``: ``nn.BatchNorm`` with PyTorch's epsilon 1e-5; ``momentum``
  is Flax's (PyTorch momentum m is Flax momentum 1 - m).
* ``resize_bilinear``: ``F.interpolate(mode='bilinear')`` with either
  ``align_corners`` value, without antialiasing, as a product with two small
  interpolation matrices (exact for up- and down-sampling).
* ``upsample_nearest``: ``F.interpolate(scale_factor=k)`` (nearest), a repeat.
* ``pixel_shuffle``: ``nn.PixelShuffle(r)``.
* ``max_pool2``: ``nn.MaxPool2d(2, 2)`` (odd sizes floored): ``nn.max_pool``,
  or on CPU a reshape + max whose gradient is faster there.

CPU tricks: the 3x3 kernel gradient and the reshape max-pool are tuned for
XLA:CPU and used only where :func:`cpu_tricks_enabled` says so: by default
when ``jax.default_backend() == "cpu"``; ``with cpu_tricks(False):`` (or
True) around the tracing of a model overrides it, and the functions take an
explicit flag. Both paths give the same values and gradients (tested); the
standard path also supports forward-mode differentiation (``jax.jvp``), the
3x3 kernel gradient, a ``jax.custom_vjp``, does not.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "torch_default_init",
    "conv",
    "batch_norm",
    "resize_bilinear",
    "upsample_nearest",
    "pixel_shuffle",
    "max_pool2",
    "check_image",
    "cpu_tricks",
    "cpu_tricks_enabled",
]

_CPU_TRICKS = contextvars.ContextVar("counting_jax_cpu_tricks", default=None)


@contextlib.contextmanager
def cpu_tricks(enabled: bool | None):
  """Within the block, models trace with the CPU tricks on (True), off
  (False) or on only when ``jax.default_backend() == "cpu"`` (None, the
  default outside any block). Applies at trace time: jit inside the block.
  """
  token = _CPU_TRICKS.set(enabled)
  try:
    yield
  finally:
    _CPU_TRICKS.reset(token)


def cpu_tricks_enabled(flag: bool | None = None) -> bool:
  """``flag`` if given, else the innermost :func:`cpu_tricks` setting, else
  whether JAX's default backend is the CPU."""
  if flag is None:
    flag = _CPU_TRICKS.get()
  if flag is None:
    return jax.default_backend() == "cpu"
  return bool(flag)

# PyTorch's default conv/linear weight init (kaiming_uniform, a=sqrt(5)) is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance 1 / (3 fan_in).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


_NHWC = ("NHWC", "HWIO", "NHWC")


@jax.custom_vjp
def _conv3x3(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=_NHWC)


def _conv3x3_fwd(x, kernel):
  return _conv3x3(x, kernel), (x, kernel)


_PATCH_BUDGET = 1 << 22  # floats of one block of im2col patches (16 MiB).


def _kernel_grad(x, dy):
  """d(conv3x3(x, k) . dy)/dk, [3, 3, C, O], by row blocks of im2col patches.

  Patches of ``rows`` output rows ([B, rows, W, 9C], at most _PATCH_BUDGET
  floats) times the matching ``dy`` rows, summed over blocks with
  ``lax.scan``: one cache-sized matrix product per block.
  """
  b, h, w, c = x.shape
  o = dy.shape[-1]
  rows = max([r for r in range(1, h + 1) if h % r == 0 and
              b * r * w * 9 * c <= _PATCH_BUDGET] or [1])
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dy_blocks = dy.reshape(b, h // rows, rows, w, o).swapaxes(0, 1)

  def block(total, i):
    xs = lax.dynamic_slice_in_dim(xp, i * rows, rows + 2, axis=1)
    patches = jnp.concatenate([xs[:, di:di + rows, dj:dj + w]
                               for di in range(3) for dj in range(3)], -1)
    return total + jnp.einsum("bhwc,bhwo->co", patches, dy_blocks[i],
                              preferred_element_type=jnp.float32), None

  total, _ = lax.scan(block, jnp.zeros((9 * c, o), jnp.float32),
                      jnp.arange(h // rows))
  return total.reshape(3, 3, c, o)


def _conv3x3_bwd(residuals, dy):
  x, kernel = residuals
  flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
  dx = lax.conv_general_dilated(dy, flipped, (1, 1), ((1, 1), (1, 1)),
                                dimension_numbers=_NHWC)
  return dx, _kernel_grad(x, dy).astype(kernel.dtype)


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, *,
                         cpu_kernel_grad: bool | None = None):
  """``lax.conv_general_dilated``, with a CPU kernel gradient for 3x3 convs.

  With ``cpu_kernel_grad`` (default: :func:`cpu_tricks_enabled`, i.e. on
  the CPU backend), stride-1, padding-1, undilated, ungrouped NHWC 3x3
  convs (all of VGG) compute their kernel gradient as matrix products of
  row blocks of im2col patches with the output gradient
  (:func:`_kernel_grad`); the forward pass and the input gradient are
  XLA's. What it buys, XLA:CPU (jaxlib 0.10, 2 cores), one 3x3 conv
  64->64 channels at 512x512, batch 1, value and gradient: 1.9x with XLA's
  default CPU options, whose YNNPACK backward-filter convolution it
  replaces (442 vs 820 ms), 1.09x with the trainer's options
  (``counting_jax.train.compile_options``: 445 vs 485 ms); at 128x128 it
  is slower with the trainer's options (63 vs 49 ms, batch 2). For the
  whole BL VGG19 counter (``benchmarks/models.py --batch 2 --cpu-tricks``,
  512x512, trainer's options) the two tricks together give 0.376 instead
  of 0.358 images/s forward + backward (1.05x; forward unchanged). Gradients
  equal XLA's to ~1e-5 relative. Being a ``jax.custom_vjp``, that path
  supports reverse-mode differentiation only (no ``jax.jvp`` /
  ``jax.jacfwd``); other convs, and every conv without the flag, are
  ``lax.conv_general_dilated`` unchanged.
  """
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  fast = (cpu_tricks_enabled(cpu_kernel_grad) and rhs.shape[:2] == (3, 3) and tuple(window_strides) == (1, 1) and
          [tuple(p) for p in padding] == [(1, 1), (1, 1)] and
          lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1))
          and feature_group_count == 1 and precision is None and
          dimension_numbers is not None and lax.conv_dimension_numbers(
              lhs.shape, rhs.shape, dimension_numbers) == nhwc)
  if fast:
    return _conv3x3(lhs, rhs)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision)


def conv(features: int, kernel: int, *, stride: int = 1, use_bias: bool = True,
         dtype=jnp.float32, name: str | None = None,
         kernel_init=nn.initializers.kaiming_normal(),
         bias_init=nn.initializers.zeros,
         cpu_kernel_grad: bool | None = None) -> nn.Conv:
  """A square ``kernel`` conv padded by kernel // 2 on every side (PyTorch).

  Returns an unbound ``nn.Conv`` (float32 params, ``dtype`` compute); call it
  inside a compact method. ``cpu_kernel_grad``: see
  :func:`conv_general_dilated` (default: on the CPU backend only).
  """
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                 dtype=dtype, kernel_init=kernel_init, bias_init=bias_init,
                 conv_general_dilated=functools.partial(
                     conv_general_dilated, cpu_kernel_grad=cpu_kernel_grad),
                 name=name)


def batch_norm(*, train: bool, momentum: float = 0.9, dtype=jnp.float32,
               name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's eps; ``momentum`` in Flax's convention."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum,
                      epsilon=1e-5, dtype=dtype, name=name)


def _interp_matrix(n_out: int, n_in: int, align_corners: bool) -> np.ndarray:
  """[n_out, n_in] float64 weights of 1-D linear interpolation (PyTorch)."""
  out = np.arange(n_out, dtype=np.float64)
  if align_corners:
    src = out * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
  else:
    src = np.maximum((out + 0.5) * (n_in / n_out) - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  mat = np.zeros((n_out, n_in))
  np.add.at(mat, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(mat, (np.arange(n_out), hi), frac)
  return mat


def resize_bilinear(x, size: tuple[int, int], *, align_corners: bool):
  """Bilinear resize of ``x`` [B, H, W, C] to ``size`` (h, w), as PyTorch.

  Matches ``F.interpolate(x, size, mode='bilinear', align_corners=...)``
  (no antialiasing), in ``x``'s dtype. ``F.upsample_bilinear`` (BL,
  DM-Count) is ``align_corners=True``.
  """
  h, w = size
  mh = jnp.asarray(_interp_matrix(h, x.shape[1], align_corners), x.dtype)
  mw = jnp.asarray(_interp_matrix(w, x.shape[2], align_corners), x.dtype)
  x = jnp.einsum("hH,bHWc->bhWc", mh, x)
  return jnp.einsum("wW,bhWc->bhwc", mw, x)


def upsample_nearest(x, factor: int):
  """Nearest-neighbour upsampling of [B, H, W, C] by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def pixel_shuffle(x, r: int):
  """``nn.PixelShuffle(r)`` in NHWC: [B, h, w, C r^2] -> [B, h r, w r, C].

  PyTorch maps input channel c r^2 + i r + j to output channel c at
  (h r + i, w r + j).
  """
  b, h, w, cr2 = x.shape
  c = cr2 // (r * r)
  x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c)


def max_pool2(x, *, reshape: bool | None = None):
  """2x2 max-pool, stride 2, of [B, H, W, C] -> [B, H // 2, W // 2, C].

  ``nn.max_pool``, or with ``reshape`` (default: :func:`cpu_tricks_enabled`,
  i.e. on the CPU backend) a reshape + max: the same values, and a gradient
  that XLA:CPU runs faster than ``nn.max_pool``'s select-and-scatter
  (jaxlib 0.10.2, 2 cores, trainer's options: 4.8x for the gradient of a
  [2, 512, 512, 64] pool, 111 vs 531 ms; ``benchmarks/models.py
  --cpu-tricks`` for the whole counter). At ties (equal maxima in a window) the reshape's
  gradient is split equally among them, where ``nn.max_pool`` and PyTorch
  route it to one; after a ReLU, ties are zeros whose gradient is zero
  either way.
  """
  b, h, w, c = x.shape
  if not cpu_tricks_enabled(reshape):
    return nn.max_pool(x, (2, 2), (2, 2), padding="VALID")
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def check_image(image, multiple: int, name: str) -> None:
  """Raises ``ValueError`` unless ``image`` is [B, H, W, 3], H, W % multiple == 0."""
  if image.ndim != 4 or image.shape[-1] != 3:
    raise ValueError(f"{name}: image must be [B, H, W, 3], got {image.shape}")
  if image.shape[1] % multiple or image.shape[2] % multiple:
    raise ValueError(f"{name}: image height and width must be multiples of "
                     f"{multiple}, got {tuple(image.shape[1:3])}")
