"""T2ICount forward on one 384x384 crop: JAX vs PyTorch, float32 / bfloat16.

The full-size feature extractor (SD-1.5 VAE encoder -> posterior mean; CLIP
ViT-L/14 text encoder on 77 tokens; UNet at t = 0 up to ldm output block 11,
with the four taps and the attn2 maps) with random weights, against
diffusers' ``AutoencoderKL`` / ``UNet2DConditionModel`` and transformers'
``CLIPTextModel`` holding the same weights (converted with
``counting_jax.convert.stable_diffusion``), side by side in one run. The
PyTorch UNet is stopped after ``up_blocks[3]`` (a forward hook), so both
sides compute the same layers; it uses diffusers' default attention
(``scaled_dot_product_attention``, no maps) and 2 threads.

Prints, per part and in total: median seconds per forward over ``--iters``
runs after a warm-up (JAX and PyTorch alternating), the JAX / PyTorch speed
ratio, the peak resident memory added during one forward (Linux
``VmHWM`` after resetting it, minus ``VmRSS`` before; MB) and XLA's temp
buffer size, and the largest float32 difference of the UNet taps.

  .venv/bin/python benchmarks/t2icount.py                 # both dtypes
  .venv/bin/python benchmarks/t2icount.py --dtypes float32 --iters 1

Memory: the float32 weights are held twice (PyTorch and JAX, ~4.3 GB each);
bfloat16 casts both in place of the float32 copies.

The HSCM decoder of the T2ICount head is timed too ("decoder": the Flax
module against a PyTorch module of the same architecture from
``benchmarks/t2icount_decoder.py``, which also runs alone).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from counting_jax.convert import stable_diffusion as conv
from counting_jax.models import stable_diffusion as sd
from counting_jax.train import compile_options


class _Stop(Exception):
  """Raised by the hook that ends the PyTorch UNet after up_blocks[3]."""


_HOOKS = []  # handles of the PyTorch forward hooks of the current dtype.


def torch_models():
  """Full-size diffusers / transformers modules, random weights (seed 0)."""
  import diffusers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  vae_cfg, unet_cfg, clip_cfg = (sd.VAEConfig.sd15(), sd.UNetConfig.sd15(),
                                 sd.CLIPTextConfig.clip_vit_l14())
  n = len(vae_cfg.block_out_channels)
  vae = diffusers.AutoencoderKL(
      down_block_types=("DownEncoderBlock2D",) * n,
      up_block_types=("UpDecoderBlock2D",) * n,
      block_out_channels=vae_cfg.block_out_channels, layers_per_block=2,
      latent_channels=4, norm_num_groups=32).eval()
  vae.decoder = None  # as T2ICount: the VAE decoder is deleted.
  unet = diffusers.UNet2DConditionModel(
      cross_attention_dim=unet_cfg.cross_attention_dim,
      attention_head_dim=unet_cfg.num_heads).eval()
  clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=clip_cfg.vocab_size, hidden_size=clip_cfg.hidden_size,
      num_hidden_layers=clip_cfg.num_layers,
      num_attention_heads=clip_cfg.num_heads,
      intermediate_size=clip_cfg.intermediate_size,
      max_position_embeddings=77)).eval()
  return {"vae": vae, "unet": unet, "clip": clip}


def _numpy_state(module) -> dict:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def jax_variables(modules) -> dict:
  """The PyTorch weights converted for the Flax modules (float32)."""
  return {
      "vae": conv.convert_vae_encoder(_numpy_state(modules["vae"])),
      "unet": conv.convert_unet(_numpy_state(modules["unet"])),
      "clip": conv.convert_clip_text(_numpy_state(modules["clip"])),
  }


def inputs(size: int, batch: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  ids = np.full((batch, 77), 49407, np.int32)  # EOS padding, as SD.
  ids[:, 0] = 49406
  ids[:, 1:4] = rng.integers(1000, 40000, (batch, 3))
  return {"image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(
              np.float32),
          "input_ids": ids}


def jax_functions(variables, x, dtype, options):
  """{part: zero-argument fn}, compiled; also returns XLA temp sizes and a
  function giving the UNet taps as float32 numpy arrays."""
  vae, unet, clip = (sd.VAEEncoder(dtype=dtype), sd.UNet(dtype=dtype),
                     sd.CLIPTextEncoder(dtype=dtype))
  image = jnp.asarray(x["image"], dtype)
  ids = jnp.asarray(x["input_ids"])
  t = jnp.zeros((image.shape[0],), jnp.float32)

  def compile_(fn, *args):
    return jax.jit(fn, compiler_options=options).lower(*args).compile()

  start = time.perf_counter()
  f_vae = compile_(vae.apply, variables["vae"], image)
  f_clip = compile_(clip.apply, variables["clip"], ids)
  latents = f_vae(variables["vae"], image)
  context = f_clip(variables["clip"], ids)
  f_unet = compile_(unet.apply, variables["unet"], latents, t, context)
  print(f"  JAX {jnp.dtype(dtype).name} compile: "
        f"{time.perf_counter() - start:.0f} s")
  temp = {name: f.memory_analysis().temp_size_in_bytes / 2**20
          for name, f in (("vae", f_vae), ("unet", f_unet),
                          ("clip", f_clip))}
  fns = {
      "vae": lambda: f_vae(variables["vae"], image).block_until_ready(),
      "clip": lambda: f_clip(variables["clip"], ids).block_until_ready(),
      "unet": lambda: jax.block_until_ready(
          f_unet(variables["unet"], latents, t, context)),
  }
  taps = lambda: [np.asarray(a, np.float32) for a in  # pylint: disable=g-long-lambda
                  f_unet(variables["unet"], latents, t, context).taps]
  return fns, temp, taps


def torch_functions(modules, x, dtype):
  """{part: zero-argument fn} and a function giving the UNet taps."""
  image = torch.from_numpy(x["image"]).permute(0, 3, 1, 2).to(dtype)
  ids = torch.from_numpy(x["input_ids"]).long()
  vae, unet, clip = modules["vae"], modules["unet"], modules["clip"]
  up = unet.up_blocks
  taps = {}
  while _HOOKS:
    _HOOKS.pop().remove()

  def keep(name, stop=False):
    def hook(module, args, output):
      del module, args
      taps[name] = output[0] if isinstance(output, tuple) else output
      if stop:
        raise _Stop
    return hook

  for name, module in (("A", up[0].resnets[1]), ("B", up[1].attentions[1]),
                       ("C", up[2].attentions[1])):
    _HOOKS.append(module.register_forward_hook(keep(name)))
  _HOOKS.append(up[3].register_forward_hook(keep("D", stop=True)))
  with torch.inference_mode():
    latents = vae.encode(image).latent_dist.mean
    context = clip(input_ids=ids).last_hidden_state
  t = torch.zeros(image.shape[0])

  def run_unet():
    with torch.inference_mode():
      try:
        unet(latents, t, encoder_hidden_states=context)
      except _Stop:
        pass

  def run_vae():
    with torch.inference_mode():
      vae.encode(image).latent_dist.mean  # pylint: disable=expression-not-assigned

  def run_clip():
    with torch.inference_mode():
      clip(input_ids=ids).last_hidden_state  # pylint: disable=expression-not-assigned

  def get_taps():
    run_unet()
    return [taps[k].float().permute(0, 2, 3, 1).numpy() for k in "ABCD"]

  return {"vae": run_vae, "clip": run_clip, "unet": run_unet}, get_taps


def decoder_functions(dtype):
  """{"JAX": fn, "PyTorch": fn} of the HSCM decoder forward on the 384²
  tap shapes (random weights, the same on both sides; the PyTorch module
  of ``benchmarks/t2icount_decoder.py``)."""
  import t2icount_decoder  # pylint: disable=g-import-not-at-top
  return t2icount_decoder.callables(dtype)


def _status(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  return 0


def peak_mb(fn) -> float:
  """Peak resident memory added during ``fn()`` (MB; Linux only)."""
  gc.collect()
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets VmHWM to the current RSS.
  except OSError:
    return float("nan")
  before = _status("VmRSS")
  fn()
  return (_status("VmHWM") - before) / 2**20


def measure(functions: dict, iters: int) -> dict:
  """Median seconds per call; frameworks alternate within each round."""
  times = {fw: {p: [] for p in fns} for fw, fns in functions.items()}
  for it in range(iters + 1):  # the first round warms up.
    for part in functions["JAX"]:
      for fw, fns in functions.items():
        start = time.perf_counter()
        fns[part]()
        if it:
          times[fw][part].append(time.perf_counter() - start)
  return {fw: {p: statistics.median(t) for p, t in d.items()}
          for fw, d in times.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=384)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--iters", type=int, default=2)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  args = parser.parse_args(argv)
  torch.set_num_threads(2)
  print(f"T2ICount feature extractor, batch {args.batch}, {args.size}x"
        f"{args.size}, median of {args.iters} (jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__}, 2 threads)")
  modules = torch_models()
  variables = jax_variables(modules)
  x = inputs(args.size, args.batch)
  options = compile_options.compiler_options()
  for name in args.dtypes.split(","):
    jdt, tdt = {"float32": (jnp.float32, torch.float32),
                "bfloat16": (jnp.bfloat16, torch.bfloat16)}[name]
    if name != "float32":  # cast in place of the float32 copies.
      variables = jax.tree.map(lambda a, d=jdt: jnp.asarray(a, d), variables)
      for m in modules.values():
        m.to(tdt)
    else:
      variables = jax.tree.map(jnp.asarray, variables)
    print(f"{name}:")
    jax_fns, temp, jax_taps = jax_functions(variables, x, jdt, options)
    torch_fns, torch_taps = torch_functions(modules, x, tdt)
    functions = {"JAX": jax_fns, "PyTorch": torch_fns}
    decoder = decoder_functions(jdt)
    if decoder is not None:
      for fw in functions:
        functions[fw]["decoder"] = decoder[fw]
    diffs = [float(np.max(np.abs(a - b)))
             for a, b in zip(jax_taps(), torch_taps())]
    print("  UNet taps A-D, max |JAX - PyTorch|: " +
          ", ".join(f"{d:.2e}" for d in diffs))
    result = measure(functions, args.iters)
    peaks = {fw: {p: peak_mb(fn) for p, fn in fns.items()}
             for fw, fns in functions.items()}
    print(f"  {'part':<8}{'JAX s':>9}{'PyTorch s':>11}{'JAX/PT speed':>14}"
          f"{'JAX peak MB':>13}{'PT peak MB':>12}{'XLA temp MB':>13}")
    for part in [*functions["JAX"], "total"]:
      if part == "total":
        tj, tt = (sum(result[fw].values()) for fw in ("JAX", "PyTorch"))
        pj = pt = tm = float("nan")
      else:
        tj, tt = result["JAX"][part], result["PyTorch"][part]
        pj, pt = peaks["JAX"][part], peaks["PyTorch"][part]
        tm = temp.get(part, float("nan"))
      print(f"  {part:<8}{tj:>9.3f}{tt:>11.3f}{tt / tj:>14.2f}{pj:>13.0f}"
            f"{pt:>12.0f}{tm:>13.0f}")


if __name__ == "__main__":
  main()
