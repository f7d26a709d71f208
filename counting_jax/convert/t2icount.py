"""The official T2ICount checkpoint -> variables of the whole model.

T2ICount's released checkpoint is one ldm-layout ``state_dict`` of its
``Count`` module: the SD-1.5 VAE (its decoder unused), UNet and CLIP text
encoder under ldm or T2ICount prefixes, and the HSCM decoder under
``decoder.``. :func:`convert_t2icount` splits it
(:func:`counting_jax.convert.stable_diffusion.convert_ldm`), converts the
decoder with :func:`counting_jax.convert.t2icount_keys.hscm_decoder_rules`
and returns ``{"params": {"vae", "clip", "unet", "decoder"}}``, the tree
of :class:`counting_jax.models.t2icount.T2ICount` (``config.init_checkpoint``
of ``fsc147_t2icount``). ``counting-jax convert --model t2icount`` runs it.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from counting_jax.convert import t2icount_keys
from counting_jax.convert.stable_diffusion import convert_ldm
from counting_jax.convert.torch import apply_rules

__all__ = ["convert_t2icount", "CONVERTERS"]


def _abstract_decoder(model):
  """The decoder's variable shapes, from the UNet taps' shapes (each part
  traced alone, so a test may pair parts whose widths would not run
  together)."""
  from counting_jax.models import stable_diffusion as sd  # pylint: disable=g-import-not-at-top
  from counting_jax.models import t2icount_decoder  # pylint: disable=g-import-not-at-top
  unet = model.unet
  side = 2 ** (len(unet.block_out_channels) - 1)
  latents = jnp.zeros((1, side, side, unet.in_channels), jnp.float32)
  context = jnp.zeros((1, model.clip.max_position_embeddings,
                       unet.cross_attention_dim), jnp.float32)
  unet_module = sd.UNet(unet)
  taps = jax.eval_shape(lambda: unet_module.apply(
      unet_module.init(jax.random.key(0), latents, jnp.zeros((1,)), context),
      latents, jnp.zeros((1,)), context)).taps
  taps = [jnp.zeros(t.shape, jnp.float32) for t in taps]
  text0 = jnp.zeros((1, model.clip.hidden_size), jnp.float32)
  decoder = t2icount_decoder.HSCMDecoder(model.decoder_dims,
                                         model.decoder_heads)
  return jax.eval_shape(lambda: decoder.init(jax.random.key(0), taps, text0))


def convert_t2icount(state_dict: Mapping[str, np.ndarray], *,
                     size: str = "sd15", model=None,
                     name: str = "checkpoint") -> dict:
  """Converts T2ICount's ``Count`` state_dict ({key: float array}).

  Args:
    state_dict: the checkpoint's tensors (``counting_jax.convert.torch.
      load_state_dict`` of the ``.pth``; ``.safetensors`` needs no PyTorch).
    size: the model's size as ``counting_jax.methods.t2icount.build_model``
      ("sd15": the released model; "tiny": the test configuration).
    model: a :class:`~counting_jax.models.t2icount.T2ICount` to convert
      for instead of ``size`` (other configurations).
    name: the checkpoint's name, for messages.

  Returns:
    ``{"params": {"vae", "clip", "unet", "decoder"}}`` float32 numpy.

  Raises:
    ValueError: when the decoder's tensors are absent (an SD-1.5 file, not
      a T2ICount one), for unknown, missing or mis-shaped tensors (listing
      them), or for another ``size``.
  """
  if model is None:
    from counting_jax.methods import t2icount as method  # pylint: disable=g-import-not-at-top
    model = method.build_model(size)
  variables, decoder = convert_ldm(state_dict, vae=model.vae,
                                   unet=model.unet, clip=model.clip,
                                   name=name)
  if not decoder:
    raise ValueError(f"{name}: no 'decoder.*' tensors: this is not a "
                     "T2ICount checkpoint (an SD-1.5 file converts with "
                     "--model sd15_feature_extractor)")
  dec = apply_rules(decoder, t2icount_keys.hscm_decoder_rules("decoder."),
                    _abstract_decoder(model), name=name)
  return {"params": {"vae": variables["vae_encoder"]["params"],
                     "clip": variables["text_encoder"]["params"],
                     "unet": variables["unet"]["params"],
                     "decoder": dec["params"]}}


# Model name -> fn(state_dict, name=...) -> variables.
CONVERTERS = {
    "t2icount": functools.partial(convert_t2icount, size="sd15"),
    "t2icount_tiny": functools.partial(convert_t2icount, size="tiny"),
}
