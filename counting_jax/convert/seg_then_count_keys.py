"""Key map of a BMNet+-style base counter -> Seg-then-Count's base counter.

Seg-then-Count (Xu, Le & Samaras, WACV 2025) has no released code; its base
counter has the layout of the same author's BMNet+-style class-agnostic
counter (ResNet-50 to ``layer3`` with FrozenBatchNorm, no refiner), whose
PyTorch state_dict names are:

* ``backbone.body.<torchvision resnet50 name>`` (``conv1``, ``bn1``,
  ``layer{1,2,3}.*``; FrozenBatchNorm keeps ``weight``, ``bias``,
  ``running_mean``, ``running_var``, no ``num_batches_tracked``);
* ``input_proj.{weight,bias}``: 1x1 conv 1024 -> 256;
* ``EPF_extractor.patch2query.{weight,bias}``: linear 1024 -> 256;
* ``counter.regressor.{0,3,6,9,12}.{weight,bias}``: the 5 convs of the
  counter (indices of ``nn.Sequential(conv, ReLU, Upsample, ...)``).

Not part of the paper's counter, and refused with a clear error unless
dropped explicitly: ``EPF_extractor.scale_embedding.weight`` (BMNet+'s
exemplar scale embedding) and ``refiner.*`` / ``matcher.*`` parameters
(BMNet+'s self-similarity refiner and learned metric). Pass
``ignore_extra=True`` to :func:`convert_base_counter` to drop them (the
converted counter then differs from the checkpoint's).

Command line (:data:`CONVERTERS`, registered in ``counting_jax.convert``)::

  counting-jax convert --checkpoint model_best.pth --model seg_then_count \
      --out runs/stc_base_counter [--set ignore_extra=True]

``seg_then_count`` is the paper's size (ResNet-50, 256-d projection, head
widths 196 / 128 / 64 / 32); ``seg_then_count_tiny`` the smoke config's
(tests). ``--set`` changes any :class:`SegThenCount` attribute that
shapes parameters (``stage_sizes``, ``width``, ``proj_dim``,
``head_widths``). The result is a whole counter: pass it as
``config.init_checkpoint`` of the ``counter`` stage (to evaluate or
fine-tune it) or to ``counting-jax pseudo-masks``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from counting_jax.convert import resnet_keys
from counting_jax.convert import torch as tc

__all__ = ["base_counter_rules", "convert_base_counter",
           "EXTRA_PREFIXES", "SIZES", "CONVERTERS"]

EXTRA_PREFIXES = ("EPF_extractor.scale_embedding.", "refiner.", "matcher.")
_COUNTER_INDICES = (0, 3, 6, 9, 12)

# Model sizes by converter name (SegThenCount attributes; the paper's are
# the class defaults; the tiny one is configs' ``smoke=True`` model).
SIZES = {
    "seg_then_count": {},
    "seg_then_count_tiny": dict(stage_sizes=(1, 1, 1), width=8, proj_dim=16,
                                exemplar_size=32, head_widths=(8, 8, 8, 8)),
}


def base_counter_rules(model) -> list[tc.Rule]:
  """Rules for :class:`~counting_jax.models.seg_then_count.SegThenCount`'s
  counter (backbone, ``input_proj``, ``exemplar_proj``, ``counter``)."""
  rules = tc.conv_rules("conv1", ("conv1",), bias=False)
  rules += tc.bn_rules("bn1", ("bn1",))
  for layer in range(3):
    for k in range(model.stage_sizes[layer]):
      rules += resnet_keys.bottleneck_rules(
          f"layer{layer + 1}.{k}", (f"layer{layer + 1}_{k}",),
          project=k == 0)
  rules = tc.prefixed(rules, "backbone.body.", ("backbone",))
  rules = [r for r in rules if r.target is not None]  # FrozenBN: no counter
  rules += tc.conv_rules("input_proj", ("input_proj",), bias=True)
  rules += tc.linear_rules("EPF_extractor.patch2query", ("exemplar_proj",))
  for i, idx in enumerate(_COUNTER_INDICES):
    rules += tc.conv_rules(f"counter.regressor.{idx}",
                           ("counter", f"conv{i}"), bias=True)
  return rules


def convert_base_counter(state_dict, *, name: str = "checkpoint",
                         ignore_extra: bool = False, **model_kwargs) -> dict:
  """Converts a BMNet+-style base-counter state_dict.

  Args:
    state_dict: {PyTorch key: numpy array} (``counting_jax.convert.torch
      .load_state_dict(path)`` reads a ``.pth``), or a path.
    name: the checkpoint's name for messages.
    ignore_extra: drop BMNet+'s parts that are not in the paper's counter
      (:data:`EXTRA_PREFIXES`) instead of raising.
    **model_kwargs: :class:`SegThenCount` attributes (``stage_sizes``,
      ``width``, ``proj_dim``, ``head_widths``); ``with_segmenter`` must be
      False.

  Returns:
    {'params', 'batch_stats'} of ``SegThenCount(**model_kwargs)``.

  Raises:
    ValueError: listing missing, unexpected (e.g. a scale embedding) and
      mis-shaped keys, naming ``name``.
  """
  from counting_jax.models import seg_then_count as stc  # pylint: disable=g-import-not-at-top
  if not isinstance(state_dict, dict):
    name = str(state_dict)
    state_dict = tc.load_state_dict(state_dict)
  model = stc.SegThenCount(**model_kwargs)
  if model.with_segmenter:
    raise ValueError("convert_base_counter: the checkpoint holds the base "
                     "counter only; build it with with_segmenter=False")
  image = jnp.zeros((1, 32, 32, 3), jnp.float32)
  boxes = jnp.array([[[0.0, 0.0, 8.0, 8.0]]])
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), image, boxes, jnp.ones((1, 1), bool)))
  ignore = EXTRA_PREFIXES if ignore_extra else ()
  return tc.apply_rules(state_dict, base_counter_rules(model), abstract,
                        ignore=ignore, name=name)


# Name -> fn(state_dict, name=..., **attributes) for
# ``counting_jax.convert.convert_checkpoint`` / ``counting-jax convert``.
CONVERTERS = {name: functools.partial(convert_base_counter, **kwargs)
              for name, kwargs in SIZES.items()}
