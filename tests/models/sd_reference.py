"""Tiny diffusers / transformers reference models for the Stable Diffusion
tests, their outputs, and the jitted Flax functions (cached, so every Flax
module compiles once per test session). Not collected by pytest."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch

from counting_jax.models import stable_diffusion as sd

TOLERANCE = 1e-4  # max abs difference, float32.
BATCH = 2
IMAGE = 32      # VAE input side (latent 4x4).
LATENT = 16     # UNet input side (taps at 2, 4, 8, 16).
TOKENS = 77
TIMESTEPS = (0.0, 37.0)


def _perturb_norms(module: torch.nn.Module, seed: int) -> None:
  """Random norm scales/biases and biases (defaults 1/0 would hide swaps)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      if p.ndim == 1:
        p.add_(0.2 * torch.randn(p.shape, generator=g))


def state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@functools.lru_cache(maxsize=None)
def torch_vae():
  import diffusers  # pylint: disable=g-import-not-at-top
  cfg = sd.VAEConfig.tiny()
  torch.manual_seed(0)
  n = len(cfg.block_out_channels)
  vae = diffusers.AutoencoderKL(
      in_channels=3, out_channels=3,
      down_block_types=("DownEncoderBlock2D",) * n,
      up_block_types=("UpDecoderBlock2D",) * n,
      block_out_channels=cfg.block_out_channels,
      layers_per_block=cfg.layers_per_block,
      latent_channels=cfg.latent_channels,
      norm_num_groups=cfg.norm_num_groups).eval()
  _perturb_norms(vae, 1)
  return vae


@functools.lru_cache(maxsize=None)
def torch_unet():
  import diffusers  # pylint: disable=g-import-not-at-top
  cfg = sd.UNetConfig.tiny()
  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(
      sample_size=LATENT, in_channels=4, out_channels=4,
      down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
      block_out_channels=cfg.block_out_channels,
      layers_per_block=cfg.layers_per_block,
      cross_attention_dim=cfg.cross_attention_dim,
      attention_head_dim=cfg.num_heads,  # diffusers' legacy name: heads.
      norm_num_groups=cfg.norm_num_groups).eval()
  _perturb_norms(unet, 2)
  return unet


@functools.lru_cache(maxsize=None)
def torch_clip():
  import transformers  # pylint: disable=g-import-not-at-top
  cfg = sd.CLIPTextConfig.tiny()
  torch.manual_seed(0)
  config = transformers.CLIPTextConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.intermediate_size,
      max_position_embeddings=cfg.max_position_embeddings,
      bos_token_id=0, eos_token_id=2, pad_token_id=1)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  clip = transformers.CLIPTextModel(config).eval()
  _perturb_norms(clip, 3)
  return clip


def inputs() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
      "images": rng.uniform(-1, 1, (BATCH, IMAGE, IMAGE, 3)).astype(
          np.float32),
      # T2ICount's unscaled posterior means are several units large.
      "latents": (3 * rng.normal(size=(BATCH, LATENT, LATENT, 4))).astype(
          np.float32),
      "timesteps": np.asarray(TIMESTEPS, np.float32),
      "context": rng.normal(size=(BATCH, TOKENS, sd.UNetConfig.tiny(
          ).cross_attention_dim)).astype(np.float32),
      "input_ids": rng.integers(0, sd.CLIPTextConfig.tiny().vocab_size,
                                (BATCH, TOKENS)).astype(np.int32),
  }


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def _nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().permute(0, 2, 3, 1).numpy()


@functools.lru_cache(maxsize=None)
def torch_vae_mean() -> np.ndarray:
  with torch.no_grad():
    dist = torch_vae().encode(_nchw(inputs()["images"])).latent_dist
    return _nhwc(dist.mean)


@functools.lru_cache(maxsize=None)
def torch_unet_features():
  """(taps, {"down"|"mid"|"up": [maps]}) from forward hooks on diffusers'
  UNet: up_blocks[0].resnets[1], up_blocks[1/2].attentions[1], up_blocks[3]
  outputs; attn2 maps recomputed from each attn2's inputs."""
  unet, x = torch_unet(), inputs()
  taps, maps, hooks = {}, {"down": [], "mid": [], "up": []}, []

  def keep(name):
    def hook(module, args, output):
      del module, args
      taps[name] = _nhwc(output[0] if isinstance(output, tuple) else
                         getattr(output, "sample", output))
    return hook

  def record(group):
    def hook(module, args, kwargs):
      hidden = args[0] if args else kwargs["hidden_states"]
      context = kwargs["encoder_hidden_states"]
      q, k = module.to_q(hidden), module.to_k(context)
      b, n, c = q.shape
      h = module.heads
      q = q.reshape(b, n, h, c // h).transpose(1, 2)
      k = k.reshape(b, k.shape[1], h, c // h).transpose(1, 2)
      probs = torch.softmax(q @ k.transpose(-1, -2) * module.scale, dim=-1)
      maps[group].append(probs.mean(1).numpy())
    return hook

  up = unet.up_blocks
  for name, module in (("A", up[0].resnets[1]), ("B", up[1].attentions[1]),
                       ("C", up[2].attentions[1]), ("D", up[3])):
    hooks.append(module.register_forward_hook(keep(name)))
  for name, module in unet.named_modules():
    if name.endswith("attn2"):
      group = name.split(".")[0].split("_")[0]
      hooks.append(module.register_forward_pre_hook(record(group),
                                                    with_kwargs=True))
  try:
    with torch.no_grad():
      unet(_nchw(x["latents"]), torch.from_numpy(x["timesteps"]),
           encoder_hidden_states=torch.from_numpy(x["context"]))
  finally:
    for h in hooks:
      h.remove()
  return tuple(taps[k] for k in "ABCD"), maps


@functools.lru_cache(maxsize=None)
def torch_clip_states() -> np.ndarray:
  ids = torch.from_numpy(inputs()["input_ids"]).long()
  with torch.no_grad():
    return torch_clip()(input_ids=ids).last_hidden_state.numpy()


@functools.lru_cache(maxsize=None)
def flax_apply(kind: str, dtype=jnp.float32):
  """A jitted fn(variables) -> outputs of the tiny Flax module ``kind``
  ('vae', 'unet' or 'clip') on :func:`inputs`."""
  x = {k: jnp.asarray(v) for k, v in inputs().items()}
  if kind == "vae":
    model = sd.VAEEncoder(sd.VAEConfig.tiny(), dtype=dtype)
    return jax.jit(lambda v: model.apply(v, x["images"]))
  if kind == "unet":
    model = sd.UNet(sd.UNetConfig.tiny(), dtype=dtype)
    return jax.jit(lambda v: model.apply(v, x["latents"], x["timesteps"],
                                         x["context"]))
  model = sd.CLIPTextEncoder(sd.CLIPTextConfig.tiny(), dtype=dtype)
  return jax.jit(lambda v: model.apply(v, x["input_ids"]))


def assert_close(actual, expected, atol=TOLERANCE, what=""):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  diff = float(np.max(np.abs(actual - expected)))
  scale = float(np.max(np.abs(expected)))
  assert scale > 1e-2, f"{what}: reference too small to test: {scale}"
  assert diff <= atol, f"{what}: max abs difference {diff} > {atol} " \
                       f"(scale {scale})"
