"""PyTorch checkpoint -> Flax variables, by model name.

``convert_checkpoint(path, model_name, **model_kwargs)`` builds the model
(a name of :data:`counting_jax.models.MODELS` or of
:data:`counting_jax.models.backbones.BACKBONES`), reads the checkpoint
(:func:`counting_jax.convert.torch.load_state_dict`), maps its keys with the
model's key map (:data:`KEY_MAPS`) and checks every shape against the
model's ``init``. ``save_variables`` / ``load_variables`` write and read the
result as an orbax checkpoint. Command line:
``counting-jax convert --checkpoint PATH --model NAME --out DIR``
(:mod:`counting_jax.convert.cli`).

The Stable Diffusion 1.5 feature extractor (``sd15_vae_encoder``,
``sd15_unet``, ``clip_vit_l14_text``, ``sd15_feature_extractor``: an ldm
single file, e.g. T2ICount's checkpoint) and the whole T2ICount model
(``t2icount``: SD-1.5 parts + HSCM decoder) have their own converters
(:data:`FUNCTION_CONVERTERS`: ``stable_diffusion.CONVERTERS`` and
``t2icount.CONVERTERS``), reached through the same functions. So does
Seg-then-Count's base counter from a BMNet+-style checkpoint
(``seg_then_count``, ``seg_then_count_tiny``:
``seg_then_count_keys.CONVERTERS``), the one function converter that takes
model attributes (``--set``; :data:`ATTRIBUTE_CONVERTERS`).

To start a counter from ImageNet weights, convert them for the backbone name
(e.g. ``'vgg19'``) and replace the counter's ``params['backbone']`` (and
``batch_stats['backbone']``) with the result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from counting_jax.convert import hrnet_keys
from counting_jax.convert import mprompt_keys
from counting_jax.convert import resnet_keys
from counting_jax.convert import seg_then_count_keys
from counting_jax.convert import stable_diffusion
from counting_jax.convert import t2icount
from counting_jax.convert import vgg_keys
from counting_jax.convert.orbax_io import load_variables
from counting_jax.convert.orbax_io import save_variables
from counting_jax.convert.torch import apply_rules
from counting_jax.convert.torch import load_state_dict

__all__ = ["KEY_MAPS", "KEY_NORMALIZERS", "MODEL_NAMES",
           "FUNCTION_CONVERTERS", "ATTRIBUTE_CONVERTERS", "build_model",
           "abstract_variables",
           "convert_state_dict", "convert_checkpoint", "save_variables",
           "load_variables"]

# Model name -> key map: fn(model) -> (rules, ignored key prefixes).
KEY_MAPS = {
    # Backbones (ImageNet checkpoints; classifiers ignored).
    "vgg16_bn": vgg_keys.vgg_backbone,
    "vgg19": vgg_keys.vgg_backbone,
    "resnet50": resnet_keys.resnet_backbone,
    "hrnet_w40": hrnet_keys.hrnet_backbone,
    "hrnet_w48": hrnet_keys.hrnet_backbone,
    "vgg16_bn_tiny": vgg_keys.vgg_backbone,
    "vgg19_tiny": vgg_keys.vgg_backbone,
    "resnet50_tiny": resnet_keys.resnet_backbone,
    "hrnet_tiny": hrnet_keys.hrnet_backbone,
    # Counters (the papers' released or trained checkpoints).
    "bl_vgg19": vgg_keys.bl_vgg19,
    "dm_count_vgg19": vgg_keys.dm_count_vgg19,
    "gl_vgg19": vgg_keys.gl_vgg19,
    "pml_vgg19": vgg_keys.pml_vgg,
    "pml_vgg16_bn": vgg_keys.pml_vgg,
    "pml_hrnet_w48": hrnet_keys.pml_hrnet,
    "pml_hrnet_w40": hrnet_keys.pml_hrnet,
    "bl_vgg19_tiny": vgg_keys.bl_vgg19,
    "dm_count_vgg19_tiny": vgg_keys.dm_count_vgg19,
    "gl_vgg19_tiny": vgg_keys.gl_vgg19,
    "pml_vgg19_tiny": vgg_keys.pml_vgg,
    "pml_hrnet_tiny": hrnet_keys.pml_hrnet,
    "mprompt_hrnet_w40": mprompt_keys.mprompt,
    "mprompt_tiny": mprompt_keys.mprompt,
}

# Model name -> fn(state_dict, name) -> state_dict applied before the key
# map (legacy key names of released checkpoints).
KEY_NORMALIZERS = {
    "mprompt_hrnet_w40": mprompt_keys.normalize,
    "mprompt_tiny": mprompt_keys.normalize,
}

# Model name -> fn(state_dict, name=...) -> variables, for models converted
# part by part rather than by one key map.
FUNCTION_CONVERTERS = {**stable_diffusion.CONVERTERS, **t2icount.CONVERTERS,
                       **seg_then_count_keys.CONVERTERS}

# Function converters that take model attributes as keyword arguments.
ATTRIBUTE_CONVERTERS = frozenset(seg_then_count_keys.CONVERTERS)

# Every name ``convert_checkpoint`` accepts.
MODEL_NAMES = tuple(sorted({*KEY_MAPS, *FUNCTION_CONVERTERS}))

# Parameter shapes do not depend on the image size; 64 suits every stride.
_INIT_SIZE = 64


def build_model(model_name: str, **model_kwargs):
  """The counter or backbone registered as ``model_name``.

  Raises:
    ValueError: if no key map exists for ``model_name`` (lists the valid
      names).
  """
  # Imported here: counting_jax.models imports nothing from convert.
  from counting_jax.models import MODELS  # pylint: disable=g-import-not-at-top
  from counting_jax.models.backbones import BACKBONES  # pylint: disable=g-import-not-at-top
  if model_name not in KEY_MAPS:
    raise ValueError(f"no checkpoint converter for model {model_name!r}; "
                     f"valid: {sorted(KEY_MAPS)}")
  registry = MODELS if model_name in MODELS else BACKBONES
  return registry[model_name](**model_kwargs)


def abstract_variables(model):
  """``jax.eval_shape`` of ``model.init`` (no compilation, no memory)."""
  image = jnp.zeros((1, _INIT_SIZE, _INIT_SIZE, 3), jnp.float32)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), image, train=False))


def convert_state_dict(state_dict, model_name: str, *,
                       name: str = "checkpoint", **model_kwargs) -> dict:
  """Converts an in-memory state_dict {key: numpy array} for ``model_name``.

  Returns and raises as :func:`convert_checkpoint`.
  """
  if model_name in FUNCTION_CONVERTERS:
    if model_kwargs and model_name not in ATTRIBUTE_CONVERTERS:
      raise ValueError(f"{model_name} takes no model attributes, got "
                       f"{sorted(model_kwargs)}")
    try:
      return FUNCTION_CONVERTERS[model_name](state_dict, name=name,
                                             **model_kwargs)
    except TypeError as e:  # an attribute the model does not have
      raise ValueError(f"{model_name}: bad model attributes "
                       f"{sorted(model_kwargs)}: {e}") from e
  model = build_model(model_name, **model_kwargs)
  rules, ignore = KEY_MAPS[model_name](model)
  if model_name in KEY_NORMALIZERS:
    state_dict = KEY_NORMALIZERS[model_name](state_dict, name)
  return apply_rules(state_dict, rules, abstract_variables(model),
                     ignore=ignore, name=name)


def convert_checkpoint(path, model_name: str, **model_kwargs) -> dict:
  """Reads a PyTorch checkpoint and returns the Flax variables of a model.

  Args:
    path: ``.pth``/``.pt``/``.bin``/``.tar`` (torch.save; ``module.``
      prefixes and ``{'model'|'state_dict'|'model_state_dict': ...}``
      wrappers handled) or ``.safetensors``.
    model_name: a key of :data:`KEY_MAPS` (counters and backbones) or of
      :data:`FUNCTION_CONVERTERS`.
    **model_kwargs: attributes of the model (e.g. ``fuse_upsample``); only
      those that change parameter shapes matter.

  Returns:
    ``{'params': ..., ['batch_stats': ...]}``, nested dicts of float32 numpy
    arrays with the structure of ``model.init``; use as
    ``model.apply(variables, image, train=False)``.
    ``sd15_feature_extractor`` returns {"vae_encoder", "unet",
    "text_encoder"} -> ``{'params': ...}``.

  Raises:
    ValueError: unknown model name, unreadable file, or a checkpoint that
      does not match the model (missing, unexpected and mis-shaped keys are
      all listed).
  """
  state_dict = load_state_dict(path)
  return convert_state_dict(state_dict, model_name, name=str(path),
                            **model_kwargs)
