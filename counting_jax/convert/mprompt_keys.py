"""Key map of mPrompt's official checkpoints (csguomy/mPrompt@e7ae00d).

The released state_dicts are saved from the bare network (no ``module.``
prefix): the HRNet backbone under the ImageNet HRNet names (``conv1``,
``bn1``, ``conv2``, ``bn2``, ``layer1.*``, ``transition{1,2,3}.*``,
``stage{2,3,4}.*``; :mod:`counting_jax.convert.hrnet_keys`), and the heads
``last_layer_seg.{0,3,6}`` (conv, bias) / ``.{1,4,7}`` (BN), ``segHead``,
``redc_layer.{0,1}``, ``aspp.{0,2,4,6}`` (dilated convs, bias) /
``aspp.{1,3,5,7}`` (BN), ``last_layer_count.{0,3}`` / ``.{1,4}`` and
``countHead``. Models trained with the network as first released call the
segmenter ``last_layer_seg_new`` (renamed 2024-08-01); :func:`normalize`
accepts both. ``num_batches_tracked`` is dropped.
"""

from __future__ import annotations

from counting_jax.convert import torch as tc
from counting_jax.convert.hrnet_keys import hrnet_rules

__all__ = ["head_rules", "mprompt", "normalize"]

_LEGACY = "last_layer_seg_new."
_SEG = "last_layer_seg."


def _conv_bn(conv, bn, target_conv, target_bn, prefix):
  return (tc.conv_rules(conv, (*prefix, target_conv), bias=True) +
          tc.bn_rules(bn, (*prefix, target_bn)))


def head_rules(prefix=("heads",)) -> list[tc.Rule]:
  """Rules of :class:`~counting_jax.models.mprompt.MPromptHeads` (official
  names, ``last_layer_seg``)."""
  rules = []
  for i, k in enumerate((0, 3, 6)):
    rules += _conv_bn(f"last_layer_seg.{k}", f"last_layer_seg.{k + 1}",
                      f"seg_conv{i}", f"seg_bn{i}", prefix)
  rules += tc.conv_rules("segHead", (*prefix, "seg_head"), bias=True)
  rules += _conv_bn("redc_layer.0", "redc_layer.1", "redc_conv", "redc_bn",
                    prefix)
  for k in range(4):
    rules += _conv_bn(f"aspp.{2 * k}", f"aspp.{2 * k + 1}", f"aspp_conv{k}",
                      f"aspp_bn{k}", prefix)
  for i, k in enumerate((0, 3)):
    rules += _conv_bn(f"last_layer_count.{k}", f"last_layer_count.{k + 1}",
                      f"count_conv{i}", f"count_bn{i}", prefix)
  rules += tc.conv_rules("countHead", (*prefix, "count_head"), bias=True)
  return rules


def mprompt(model):
  """Official mPrompt checkpoint -> :class:`~counting_jax.models.mprompt.
  MPrompt` (nothing ignored)."""
  hrnet = {k: v for k, v in dict(model.hrnet).items()
           if k in ("layer1_planes", "layer1_blocks", "stage_modules",
                    "num_blocks")}
  rules = tc.prefixed(hrnet_rules(model.widths, **hrnet),
                      target=("backbone",))
  return rules + head_rules(), ()


def normalize(state_dict, name: str = "checkpoint") -> dict:
  """``last_layer_seg_new.*`` keys renamed ``last_layer_seg.*``.

  Raises:
    ValueError: naming the checkpoint when it holds both names.
  """
  legacy = [k for k in state_dict if k.startswith(_LEGACY)]
  if not legacy:
    return dict(state_dict)
  if any(k.startswith(_SEG) for k in state_dict):
    raise ValueError(f"{name}: holds both {_LEGACY}* and {_SEG}* keys")
  return {(_SEG + k[len(_LEGACY):] if k.startswith(_LEGACY) else k): v
          for k, v in state_dict.items()}
