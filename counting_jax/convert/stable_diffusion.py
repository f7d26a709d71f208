"""Stable Diffusion 1.5 / CLIP checkpoints -> Flax variables.

Reads the diffusers (``AutoencoderKL``, ``UNet2DConditionModel``),
transformers (``CLIPTextModel`` or ``CLIPModel``) and ldm single-file layouts
(SD-1.5 ``.ckpt``/``.safetensors``; T2ICount's ``Count`` state_dict) with the
key maps of :mod:`counting_jax.convert.stable_diffusion_keys`; the layout is
detected from the keys. Every converter checks every tensor against the
model's shapes (:func:`counting_jax.convert.torch.apply_rules`) and refuses
missing, unexpected and mis-shaped tensors, listing them.

``.safetensors`` files are read with ``safetensors.numpy`` (no PyTorch).
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from counting_jax.convert import stable_diffusion_keys as keys
from counting_jax.convert.torch import apply_rules
from counting_jax.models import stable_diffusion as sd

__all__ = ["convert_vae_encoder", "convert_unet", "convert_clip_text",
           "convert_ldm", "abstract_variables", "CONVERTERS"]


def abstract_variables(model):
  """Shapes of ``model``'s variables (``jax.eval_shape`` of ``init``)."""
  if isinstance(model, sd.VAEEncoder):
    s = model.config.stride
    args = (jnp.zeros((1, s, s, model.config.in_channels)),)
  elif isinstance(model, sd.UNet):
    s = 2 ** (len(model.config.block_out_channels) - 1)
    args = (jnp.zeros((1, s, s, model.config.in_channels)), jnp.zeros((1,)),
            jnp.zeros((1, 1, model.config.cross_attention_dim)))
  elif isinstance(model, sd.CLIPTextEncoder):
    args = (jnp.zeros((1, 1), jnp.int32),)
  else:
    raise ValueError(f"not a Stable Diffusion module: {type(model).__name__}")
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *args))


def _ldm_part(state_dict: Mapping, part: str, name: str):
  """``state_dict``'s ``part`` if it is a single-file ldm checkpoint."""
  prefixes = [p for q, p in keys.LDM_PREFIXES if q == part]
  if any(k.startswith(p) for k in state_dict for p in prefixes):
    parts, _ = keys.split_ldm(state_dict)
    if not parts[part]:
      raise ValueError(f"{name}: no {part} tensors found")
    return parts[part], True
  return state_dict, False


def convert_vae_encoder(state_dict: Mapping[str, np.ndarray],
                        config: sd.VAEConfig = sd.VAEConfig(), *,
                        name: str = "checkpoint") -> dict:
  """Converts a VAE (diffusers ``AutoencoderKL``, ldm first stage, or a whole
  ldm checkpoint) for :class:`VAEEncoder`; the decoder is ignored.

  Returns:
    ``{'params': ...}`` (float32 numpy arrays).

  Raises:
    ValueError: listing missing, unexpected or mis-shaped tensors.
  """
  state_dict, _ = _ldm_part(state_dict, "vae", name)
  ldm = any(k.startswith("encoder.down.") for k in state_dict)
  rules, ignore = keys.vae_rules(config, "ldm" if ldm else "diffusers")
  return apply_rules(keys.normalise_vae(state_dict), rules,
                     abstract_variables(sd.VAEEncoder(config)),
                     ignore=ignore, name=name)


def convert_unet(state_dict: Mapping[str, np.ndarray],
                 config: sd.UNetConfig = sd.UNetConfig(), *,
                 name: str = "checkpoint") -> dict:
  """Converts a UNet (diffusers ``UNet2DConditionModel``, or the UNet of an
  ldm checkpoint) for :class:`UNet`; layers after the last tap are ignored.

  Returns and raises as :func:`convert_vae_encoder`.
  """
  state_dict, _ = _ldm_part(state_dict, "unet", name)
  ldm = "input_blocks.0.0.weight" in state_dict
  rules, ignore = keys.unet_rules(config, "ldm" if ldm else "diffusers")
  return apply_rules(state_dict, rules, abstract_variables(sd.UNet(config)),
                     ignore=ignore, name=name)


def convert_clip_text(state_dict: Mapping[str, np.ndarray],
                      config: sd.CLIPTextConfig = sd.CLIPTextConfig(), *,
                      name: str = "checkpoint") -> dict:
  """Converts a transformers ``CLIPTextModel`` / ``CLIPModel`` (vision tower
  ignored) or an ldm checkpoint's text encoder for :class:`CLIPTextEncoder`.

  Returns and raises as :func:`convert_vae_encoder`.
  """
  state_dict, _ = _ldm_part(state_dict, "clip", name)
  rules, ignore = keys.clip_rules(config)
  return apply_rules(keys.normalise_clip(state_dict), rules,
                     abstract_variables(sd.CLIPTextEncoder(config)),
                     ignore=ignore, name=name)


def convert_ldm(state_dict: Mapping[str, np.ndarray], *,
                vae: sd.VAEConfig = sd.VAEConfig(),
                unet: sd.UNetConfig = sd.UNetConfig(),
                clip: sd.CLIPTextConfig = sd.CLIPTextConfig(),
                name: str = "checkpoint"):
  """Converts an ldm single-file checkpoint (SD-1.5, or T2ICount's
  ``Count`` state_dict) into the three feature-extractor modules.

  Returns:
    ``(variables, decoder)``: variables {"vae_encoder", "unet",
    "text_encoder"} -> ``{'params': ...}``; decoder: the checkpoint's
    ``decoder.*`` tensors (T2ICount's counting head) with their keys
    unchanged, empty for SD-1.5.

  Raises:
    ValueError: for keys of no known part (other than the ldm schedule and
      EMA buffers), or as the part converters.
  """
  parts, unknown = keys.split_ldm(state_dict)
  if unknown:
    shown = ", ".join(unknown[:20])
    raise ValueError(f"{name}: {len(unknown)} keys belong to no known part "
                     f"(UNet, VAE, CLIP, decoder): {shown}")
  for part in ("unet", "vae", "clip"):
    if not parts[part]:
      raise ValueError(f"{name}: no {part} tensors found (prefixes "
                       f"{[p for q, p in keys.LDM_PREFIXES if q == part]})")
  variables = {
      "vae_encoder": convert_vae_encoder(parts["vae"], vae, name=name),
      "unet": convert_unet(parts["unet"], unet, name=name),
      "text_encoder": convert_clip_text(parts["clip"], clip, name=name),
  }
  return variables, parts["decoder"]


def _feature_extractor(state_dict, *, name="checkpoint", vae=None, unet=None,
                       clip=None):
  variables, decoder = convert_ldm(state_dict, vae=vae, unet=unet, clip=clip,
                                   name=name)
  if decoder:
    import warnings  # pylint: disable=g-import-not-at-top
    warnings.warn(f"{name}: {len(decoder)} 'decoder.*' tensors (T2ICount's "
                  "counting head) are not part of the feature extractor and "
                  "were not converted")
  return variables


def _registry(suffix: str, vae, unet, clip) -> dict:
  return {
      f"sd15_vae_encoder{suffix}": functools.partial(convert_vae_encoder,
                                                     config=vae),
      f"sd15_unet{suffix}": functools.partial(convert_unet, config=unet),
      f"clip_vit_l14_text{suffix}": functools.partial(convert_clip_text,
                                                      config=clip),
      f"sd15_feature_extractor{suffix}": functools.partial(
          _feature_extractor, vae=vae, unet=unet, clip=clip),
  }


# Model name -> fn(state_dict, name=...) -> variables; ``*_tiny`` are the
# test configurations (``VAEConfig.tiny()`` etc.).
CONVERTERS = {
    **_registry("", sd.VAEConfig.sd15(), sd.UNetConfig.sd15(),
                sd.CLIPTextConfig.clip_vit_l14()),
    **_registry("_tiny", sd.VAEConfig.tiny(), sd.UNetConfig.tiny(),
                sd.CLIPTextConfig.tiny()),
}
