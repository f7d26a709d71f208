"""T2ICount's HSCM decoder: Flax vs a PyTorch module of the same
architecture, side by side on the 384² crop shapes (taps 1280@6², 1280@12²,
640@24², 320@48², one 768-d text vector), random weights.

Prints the forward time (median of ``--iters`` after a warm-up; JAX jitted,
compile time reported apart; PyTorch eager under ``torch.no_grad``, threads =
``--threads``) in float32 and bfloat16, the JAX / PyTorch speed ratio, the
max abs difference of the float32 densities (same weights through the
official key map) and the peak resident memory of the process after each
side (``ru_maxrss``, cumulative).

  .venv/bin/python benchmarks/t2icount_decoder.py [--batch 1] [--iters 5]

:func:`rows` returns the figures for a combined T2ICount benchmark.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from counting_jax.convert import t2icount_keys
from counting_jax.convert import torch as tc
from counting_jax.models import t2icount_decoder as td

__all__ = ["TorchHSCMDecoder", "callables", "rows", "main"]


def _conv(i, o, k=3):
  return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2), nn.ReLU())


def _up(x):
  return F.interpolate(x, scale_factor=2, mode="bilinear",
                       align_corners=False)


class _Att(nn.Module):
  def __init__(self, dim, heads=8):
    super().__init__()
    self.heads = heads
    self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
    self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

  def forward(self, q, k, v):
    b, n, c = q.shape
    h = self.heads
    split = lambda x: x.reshape(b, x.shape[1], h, c // h).transpose(1, 2)
    q, k, v = split(self.q_proj(q)), split(self.k_proj(k)), split(
        self.v_proj(v))
    w = torch.softmax(q @ k.transpose(-1, -2) * (c // h) ** -0.5, -1)
    return self.out_proj((w @ v).transpose(1, 2).reshape(b, n, c))


class _MLP(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, 4 * dim),
                                           nn.GELU()),
                             nn.Identity(), nn.Linear(4 * dim, dim))

  def forward(self, x):
    return self.net(x)


class _Fusion(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.img_pe_transform = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
    self.txt2img, self.img2txt = _Att(dim), _Att(dim)
    self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
    self.mlp = _MLP(dim)

  def forward(self, img, t):
    b, c, h, w = img.shape
    seq = img.flatten(2).transpose(1, 2)
    keys = (img + self.img_pe_transform(img)).flatten(2).transpose(1, 2)
    t = t[:, None]
    t2 = self.norm1(t + self.txt2img(t, keys, seq))
    t2 = self.norm2(t2 + self.mlp(t2))
    i2 = self.norm3(seq + self.img2txt(keys, t2 + t, t2))
    return t2[:, 0], i2.transpose(1, 2).reshape(b, c, h, w)


class _TextLevel(nn.Module):
  def __init__(self, low, high, dim, ups):
    super().__init__()
    self.ups = ups
    self.conv1, self.conv2 = _conv(low, dim), _conv(high + dim, dim)
    self.conv3 = _conv(dim, dim)
    self.text_conv, self.norm1 = nn.Linear(768, dim), nn.LayerNorm(dim)
    self.img_txt_fusion1, self.img_txt_fusion2 = _Fusion(dim), _Fusion(dim)

  def forward(self, low, high, t0, guide=None):
    low = self.conv1(_up(low))
    x = self.conv2(torch.cat([high, low], 1))
    if guide is not None:
      x = x + F.interpolate(guide, size=x.shape[-2:], mode="bilinear",
                            align_corners=False) * low
    t = self.text_conv(t0)
    t = t + self.norm1(t)
    t, x = self.img_txt_fusion1(x, t)
    t, x = self.img_txt_fusion2(self.conv3(x), t)
    y = x
    for _ in range(self.ups):
      y = _up(y)
    return x, F.cosine_similarity(y, t[..., None, None], dim=1)[:, None]


class _Plain(nn.Module):
  def __init__(self, low, high, dim):
    super().__init__()
    self.conv1, self.conv2 = _conv(low, dim), _conv(high + dim, dim)

  def forward(self, low, high, guide):
    low = self.conv1(_up(low))
    return self.conv2(torch.cat([high, low], 1)) + guide * low


class _Regressor(nn.Module):
  def __init__(self, dim=256):
    super().__init__()
    self.conv = _conv(dim, dim)
    self.img_pe_transform1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
    self.img_pe_transform2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
    self.self_attn1, self.self_attn2 = _Att(dim), _Att(dim)
    self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
    self.reg_head = nn.Sequential(
        nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(),
        nn.Conv2d(dim, dim // 2, 3, padding=1), nn.ReLU(),
        nn.Conv2d(dim // 2, 1, 1), nn.ReLU())

  def _block(self, x, pe, att, norm):
    b, c, h, w = x.shape
    seq = x.flatten(2).transpose(1, 2)
    qk = (x + pe(x)).flatten(2).transpose(1, 2)
    return norm(seq + att(qk, qk, seq)).transpose(1, 2).reshape(b, c, h, w)

  def forward(self, x):
    x = self._block(x, self.img_pe_transform1, self.self_attn1, self.norm1)
    x = self.conv(x)
    x = self._block(x, self.img_pe_transform2, self.self_attn2, self.norm2)
    return self.reg_head(x)


class TorchHSCMDecoder(nn.Module):
  """PyTorch HSCM decoder (NCHW), official parameter names; forward(taps
  (A, B, C, D) NCHW, t0 [B, 768]) -> density [B, 1, h, w]."""

  def __init__(self):
    super().__init__()
    self.upsample1 = _TextLevel(1280, 1280, 640, 2)
    self.upsample2 = _TextLevel(640, 640, 320, 1)
    self.upsample3 = _Plain(320, 320, 256)
    self.regressor = _Regressor(256)

  def forward(self, taps, t0):
    a, b, c, d = taps
    x1, sim2 = self.upsample1(a, b, t0)
    x2, sim1 = self.upsample2(x1, c, t0, sim2)
    return self.regressor(self.upsample3(x2, d, sim1))


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _median(fn, iters):
  fn()
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def callables(dtype, batch: int = 1, seed: int = 0) -> dict:
  """``{"JAX": fn, "PyTorch": fn}``: zero-argument decoder forwards on the
  384² tap shapes in ``dtype`` (jnp.float32 / jnp.bfloat16), the same
  random weights on both sides (for ``benchmarks/t2icount.py``)."""
  torch.manual_seed(seed)
  tdtype = torch.float32 if dtype == jnp.float32 else torch.bfloat16
  tmodel = TorchHSCMDecoder().eval()
  sd = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
  tmodel = tmodel.to(tdtype)
  g = np.random.default_rng(seed)
  shapes = ((1280, 6), (1280, 12), (640, 24), (320, 48))
  taps = [g.normal(size=(batch, s, s, c)).astype(np.float32)
          for c, s in shapes]
  t0 = g.normal(size=(batch, 768)).astype(np.float32)
  model = td.HSCMDecoder(dtype=dtype)
  abstract = jax.eval_shape(model.init, jax.random.key(0), tuple(taps), t0)
  params = jax.device_put(tc.apply_rules(
      sd, t2icount_keys.hscm_decoder_rules(""), abstract))
  fn = jax.jit(lambda p, x, t: model.apply(p, x, t)["density"])
  xs = tuple(jnp.asarray(x, dtype) for x in taps)
  jt0 = jnp.asarray(t0, dtype)
  ttaps = [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(tdtype)
           for x in taps]
  tt0 = torch.from_numpy(t0).to(tdtype)

  def run_torch():
    with torch.no_grad():
      return tmodel(ttaps, tt0)

  return {"JAX": lambda: jax.block_until_ready(fn(params, xs, jt0)),
          "PyTorch": run_torch}


def rows(batch: int = 1, iters: int = 5, threads: int = 2) -> list[dict]:
  """Figures per dtype: ``{"dtype", "jax_s", "torch_s", "ratio",
  "compile_s", "max_abs_diff" (float32 only), "peak_mb_jax",
  "peak_mb_torch"}``."""
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  tmodel = TorchHSCMDecoder().eval()
  sd = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
  g = np.random.default_rng(0)
  shapes = ((1280, 6), (1280, 12), (640, 24), (320, 48))
  taps = [g.normal(size=(batch, s, s, c)).astype(np.float32)
          for c, s in shapes]
  t0 = g.normal(size=(batch, 768)).astype(np.float32)
  out = []
  for dtype in (jnp.float32, jnp.bfloat16):
    model = td.HSCMDecoder(dtype=dtype)
    abstract = jax.eval_shape(model.init, jax.random.key(0), tuple(taps), t0)
    params = jax.device_put(tc.apply_rules(
        sd, t2icount_keys.hscm_decoder_rules(""), abstract))
    fn = jax.jit(lambda p, x, t: model.apply(p, x, t)["density"])
    xs = tuple(jnp.asarray(x, dtype) for x in taps)
    t = time.perf_counter()
    dens = jax.block_until_ready(fn(params, xs, jnp.asarray(t0, dtype)))
    compile_s = time.perf_counter() - t
    jax_s = _median(lambda: jax.block_until_ready(
        fn(params, xs, jnp.asarray(t0, dtype))), iters)
    peak_jax = _peak_mb()
    tdtype = torch.float32 if dtype == jnp.float32 else torch.bfloat16
    tm = tmodel.to(tdtype)
    ttaps = [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(tdtype)
             for x in taps]
    tt0 = torch.from_numpy(t0).to(tdtype)
    with torch.no_grad():
      ref = tm(ttaps, tt0)
      torch_s = _median(lambda: tm(ttaps, tt0), iters)
    peak_torch = _peak_mb()
    row = dict(dtype=jnp.dtype(dtype).name, jax_s=jax_s, torch_s=torch_s,
               ratio=torch_s / jax_s, compile_s=compile_s,
               peak_mb_jax=peak_jax, peak_mb_torch=peak_torch)
    if dtype == jnp.float32:
      row["max_abs_diff"] = float(np.abs(
          np.asarray(dens) - ref[:, 0].float().numpy()).max())
    out.append(row)
  tmodel.float()
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--threads", type=int, default=2)
  a = p.parse_args(argv)
  print(f"HSCM decoder forward, batch {a.batch}, 384² crop shapes, "
        f"torch threads {a.threads}, jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__}")
  print(f"{'dtype':9} {'jax s':>8} {'torch s':>8} {'jax/torch speed':>16} "
        f"{'compile s':>10} {'max|diff|':>10} "
        f"{'peak MB (after jax/torch)':>26}")
  for r in rows(a.batch, a.iters, a.threads):
    diff = f"{r['max_abs_diff']:.2e}" if "max_abs_diff" in r else "-"
    print(f"{r['dtype']:9} {r['jax_s']:8.3f} {r['torch_s']:8.3f} "
          f"{r['ratio']:15.2f}x {r['compile_s']:10.1f} {diff:>10} "
          f"{r['peak_mb_jax']:12.0f} / {r['peak_mb_torch']:.0f}")


if __name__ == "__main__":
  main()
