"""Optimisers from explicit arguments (optax)."""

from __future__ import annotations

import optax

__all__ = ["make_schedule", "make_optimizer"]


def make_schedule(lr: float, *, schedule: str = "constant", total_steps: int,
                  warmup_steps: int = 0, end_factor: float = 0.0):
  """Learning-rate schedule: "constant" or "cosine" (to ``lr*end_factor``),
  each after an optional linear warm-up from 0.

  Raises:
    ValueError: for an unknown schedule name.
  """
  if schedule == "constant":
    main = optax.constant_schedule(lr)
  elif schedule == "cosine":
    main = optax.cosine_decay_schedule(
        lr, max(1, total_steps - warmup_steps), alpha=end_factor)
  else:
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
  if warmup_steps <= 0:
    return main
  warm = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warm, main], [warmup_steps])


def make_optimizer(name: str = "adam", *, lr: float, total_steps: int,
                   schedule: str = "constant", warmup_steps: int = 0,
                   weight_decay: float = 0.0, clip_norm: float | None = None,
                   momentum: float = 0.9, end_factor: float = 0.0):
  """An optax optimiser: "adam" (weight decay coupled as L2, as PyTorch's
  ``Adam(weight_decay=...)`` in the official repos), "adamw" or "sgd"
  (momentum), optionally after global-norm gradient clipping.

  Raises:
    ValueError: for an unknown optimiser name.
  """
  lr_fn = make_schedule(lr, schedule=schedule, total_steps=total_steps,
                        warmup_steps=warmup_steps, end_factor=end_factor)
  if name == "adam":
    core = optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.adam(lr_fn)) if weight_decay else optax.adam(lr_fn)
  elif name == "adamw":
    core = optax.adamw(lr_fn, weight_decay=weight_decay)
  elif name == "sgd":
    core = optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(lr_fn, momentum=momentum))
  else:
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {name!r}")
  if clip_norm:
    return optax.chain(optax.clip_by_global_norm(clip_norm), core)
  return core
