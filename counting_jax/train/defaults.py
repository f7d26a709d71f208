"""The trainer's optional config fields and their defaults, in one place.

Config files set what an experiment needs; :func:`complete` adds every
optional field the trainer reads, with the default below, so the loop reads
``config.x`` directly and never carries a second default. Fields:

- ``method.name``: ``counting_jax.methods`` builder ("density").
- ``compute_dtype``: "float32" or "bfloat16" (model compute; parameters and
  loss stay float32).
- ``accum_steps``: micro-batches per optimiser step.
- ``ema_decay``: > 0 keeps a moving average of the parameters, used for
  evaluation.
- ``eval_tiling``: ``mode`` "tiles": images with a side above ``max_size``
  input pixels are evaluated in ``tile_size`` tiles overlapping by
  ``overlap``; "nine_patch": every image in the mPrompt 9 patches;
  "t2icount": every image in T2ICount's official tiling
  (``predict.predict_densities``).
- ``xla_cpu_ynn_fusion_type``: XLA:CPU YNNPACK fusion kinds of the jitted
  steps (``counting_jax.train.compile_options``).
- ``input.scale_prob``: probability of the ``input.scale_range`` rescale.
- ``input.cache``: hold the decoded training split in memory (small sets).
- ``input.num_workers``: input worker processes (0 = a background thread).
- ``input.max_exemplars``: exemplar boxes per image (exemplar methods).
- ``input.color_jitter``: None, or ``counting_jax.data.transforms.
  color_jitter``'s arguments (brightness, contrast, saturation, hue).
- ``optim.groups``: per parameter group ``{"frozen": bool, "lr": float,
  "weight_decay": float}``.
- ``published``, ``published_protocol``, ``published_dataset``: a results
  table and the data set fields it was measured on
  (``counting_jax.train.published``).
- ``eval_loc_*``: the localization that ``eval`` reports next to the
  counts (``loop._eval_localization``).
- ``init_checkpoint``, ``num_panels``, ``panel_sigma``, ``quiet``.
"""

from __future__ import annotations

import copy

import ml_collections

__all__ = ["DEFAULTS", "complete", "DEFAULT_YNN_FUSION_TYPE"]

# XLA:CPU: YNNPACK for dots only, XLA's Eigen convolutions
# (``counting_jax.train.compile_options`` says why and what it buys).
DEFAULT_YNN_FUSION_TYPE = "LIBRARY_FUSION_TYPE_DOT"

DEFAULTS = {
    "method": {"name": "density"},
    "compute_dtype": "float32",
    "accum_steps": 1,
    "ema_decay": 0.0,
    "eval_tiling": {"max_size": 2048, "tile_size": 1024, "overlap": 128,
                    "blend": "linear", "tile_batch": 4, "mode": "tiles"},
    "xla_cpu_ynn_fusion_type": DEFAULT_YNN_FUSION_TYPE,
    "init_checkpoint": "",
    "num_panels": 4,
    "panel_sigma": 2.0,
    "published": (),
    "published_protocol": "",
    "published_dataset": {},
    "quiet": False,
    "eval_loc_method": "local_maxima",
    "eval_loc_radius": 8.0,
    "eval_loc_sigma": 4.0,
    "eval_loc_threshold": None,
    "eval_loc_max_points": 4096,
    "input": {"pad_multiple": 8, "cache": True, "num_workers": 0,
              "scale_prob": 1.0, "max_exemplars": 0,
              "color_jitter": None},
    "optim": {"groups": {}},
}


def _fill(config, defaults):
  for key, value in defaults.items():
    if isinstance(value, dict):
      if key not in config or config[key] is None:
        config[key] = ml_collections.ConfigDict()
      _fill(config[key], value)
    elif key not in config:
      config[key] = value


def complete(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` with every missing optional field (``DEFAULTS``)
  added; fields the config sets are kept. The copy is unlocked."""
  out = copy.deepcopy(config)  # keeps placeholders' types
  out.unlock()
  _fill(out, DEFAULTS)
  return out
