"""The PyTorch-exact layers of ``models/backbones/_ops.py`` against PyTorch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.models.backbones import _ops

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _nchw_to_nhwc(t):
  return jnp.asarray(t.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("size_in,size_out", [
    ((5, 7), (10, 14)),  # x2 (BL, DM-Count, PML fuse)
    ((4, 4), (16, 16)),  # x4 (HRNet fuse)
    ((9, 6), (4, 11)),  # down in H, up in W (no antialias in PyTorch)
    ((1, 3), (3, 1)),  # single rows/columns
])
def test_resize_bilinear_matches_torch(size_in, size_out, align_corners):
  x = torch.randn((2, 3, *size_in), generator=torch.Generator().manual_seed(0),
                  dtype=torch.float64)
  expected = F.interpolate(x, size_out, mode="bilinear",
                           align_corners=align_corners).permute(0, 2, 3, 1)
  with jax.enable_x64(True):
    actual = _ops.resize_bilinear(_nchw_to_nhwc(x), size_out,
                                  align_corners=align_corners)
    np.testing.assert_allclose(np.asarray(actual), expected.numpy(),
                               rtol=0, atol=1e-12)


def test_upsample_nearest_matches_torch():
  x = torch.randn(1, 2, 3, 5)
  expected = F.interpolate(x, scale_factor=4).permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(_ops.upsample_nearest(_nchw_to_nhwc(x), 4),
                                expected)


@pytest.mark.parametrize("channels,r", [(1, 4), (3, 2)])
def test_pixel_shuffle_matches_torch(channels, r):
  x = torch.randn(2, channels * r * r, 3, 5)
  expected = torch.nn.PixelShuffle(r)(x).permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(_ops.pixel_shuffle(_nchw_to_nhwc(x), r),
                                expected)


def test_stride2_conv_pads_like_torch():
  """Flax 'SAME' would pad (0, 1) here; PyTorch pads (1, 1)."""
  conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
  x = torch.randn(1, 2, 8, 8)
  flax_conv = _ops.conv(3, 3, stride=2, use_bias=False)
  kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0)
  actual = flax_conv.apply({"params": {"kernel": kernel}}, _nchw_to_nhwc(x))
  expected = conv(x).detach().permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_check_image():
  _ops.check_image(jnp.zeros((1, 32, 64, 3)), 32, "M")
  with pytest.raises(ValueError, match="M: image must be"):
    _ops.check_image(jnp.zeros((32, 64, 3)), 32, "M")
  with pytest.raises(ValueError, match=r"multiples of 32, got \(32, 48\)"):
    _ops.check_image(jnp.zeros((1, 32, 48, 3)), 32, "M")


@pytest.mark.parametrize("reshape", [True, False], ids=["cpu", "standard"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 7, 5)])
def test_max_pool2_matches_torch(shape, reshape):
  x = torch.randn(shape, generator=torch.Generator().manual_seed(1),
                  requires_grad=True)
  y = F.max_pool2d(x, 2, 2)
  weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
  (y * weights).sum().backward()
  np.testing.assert_array_equal(
      _ops.max_pool2(_nchw_to_nhwc(x.detach()), reshape=reshape),
      y.detach().permute(0, 2, 3, 1).numpy())
  grad = jax.grad(lambda v: (_ops.max_pool2(v, reshape=reshape)
                             * _nchw_to_nhwc(weights)).sum())(
                                 _nchw_to_nhwc(x.detach()))
  np.testing.assert_array_equal(grad, x.grad.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("kernel,stride,budget", [
    (3, 1, 1 << 22), (3, 1, 2 * 3 * 8 * 45), (3, 2, 1 << 22), (1, 1, 1 << 22)])
def test_conv_gradients_match_lax(kernel, stride, budget, monkeypatch):
  """The custom 3x3 kernel gradient equals XLA's (other convs: lax itself),
  in one block of patches or (small budget) in 3 blocks of 3 rows."""
  monkeypatch.setattr(_ops, "_PATCH_BUDGET", budget)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 8, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 4)), jnp.float32)
  dy = jnp.asarray(rng.normal(size=(2, 9, 8, 4)), jnp.float32)
  pad = [(kernel // 2, kernel // 2)] * 2
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape,
                                      ("NHWC", "HWIO", "NHWC"))

  def loss(fn, x, k):
    y = fn(x, k, (stride, stride), pad, dimension_numbers=dn)
    return (y * dy[:, :y.shape[1], :y.shape[2]]).sum()

  cpu = functools.partial(_ops.conv_general_dilated, cpu_kernel_grad=True)
  ours = jax.jit(jax.grad(lambda x, k: loss(cpu, x, k), (0, 1)))(x, k)
  ref = jax.jit(jax.grad(lambda x, k: loss(jax.lax.conv_general_dilated, x,
                                           k), (0, 1)))(x, k)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
