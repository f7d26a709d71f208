"""Optimisers from explicit arguments (optax)."""

from __future__ import annotations

import jax
import optax

__all__ = ["make_schedule", "make_optimizer"]


def make_schedule(lr: float, *, schedule: str = "constant", total_steps: int,
                  warmup_steps: int = 0, end_factor: float = 0.0,
                  step_boundaries=(), step_factor: float = 0.1):
  """Learning-rate schedule: "constant", "cosine" (to ``lr*end_factor``) or
  "step" (``lr`` multiplied by ``step_factor`` at each of the optimiser
  steps ``step_boundaries``, as PyTorch's ``StepLR``/``MultiStepLR``: the
  step at a boundary already has the decayed rate), each after an optional
  linear warm-up from 0. Boundaries count from step 0, warm-up included.

  Raises:
    ValueError: for an unknown schedule name, or "step" boundaries that are
      not increasing or not after the warm-up.
  """
  if schedule == "constant":
    main = optax.constant_schedule(lr)
  elif schedule == "cosine":
    main = optax.cosine_decay_schedule(
        lr, max(1, total_steps - warmup_steps), alpha=end_factor)
  elif schedule == "step":
    bounds = [int(b) for b in (step_boundaries or ())]
    if any(b <= warmup_steps for b in bounds) or bounds != sorted(set(bounds)):
      raise ValueError("optim.step_boundaries must be increasing steps after "
                       f"warmup_steps={warmup_steps}, got {tuple(bounds)}")
    # join_schedules below shifts the main schedule by the warm-up.
    main = optax.piecewise_constant_schedule(
        lr, {b - warmup_steps: float(step_factor) for b in bounds})
  else:
    raise ValueError("schedule must be 'constant', 'cosine' or 'step', got "
                     f"{schedule!r}")
  if warmup_steps <= 0:
    return main
  warm = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warm, main], [warmup_steps])


def make_optimizer(name: str = "adam", *, lr: float, total_steps: int,
                   schedule: str = "constant", warmup_steps: int = 0,
                   weight_decay: float = 0.0, clip_norm: float | None = None,
                   momentum: float = 0.9, end_factor: float = 0.0,
                   step_boundaries=(), step_factor: float = 0.1,
                   groups=None, param_labels=None):
  """An optax optimiser: "adam" (weight decay coupled as L2, as PyTorch's
  ``Adam(weight_decay=...)`` in the official repos), "adamw" or "sgd"
  (momentum), optionally after global-norm gradient clipping (of all
  trainable gradients together). ``schedule``, ``warmup_steps``,
  ``end_factor``, ``step_boundaries`` and ``step_factor``: see
  :func:`make_schedule`.

  Parameter groups (``groups`` with ``param_labels``): ``param_labels(params)``
  names each parameter's group (a method's ``param_labels``); ``groups``
  maps group names to ``{"frozen": bool, "lr": float, "weight_decay":
  float}``: a frozen group gets no update (``optax.set_to_zero``: its
  optimiser state is empty, its parameters stay bit-identical), a group
  with ``lr`` / ``weight_decay`` gets the same optimiser and schedule with
  that peak learning rate / weight decay (e.g. T2ICount's UNet: 0.1x the
  decoder's lr and weight decay). Parameters of groups not named in
  ``groups`` train with the arguments above.

  Raises:
    ValueError: for an unknown optimiser name, groups without
      ``param_labels``, or a group entry with other keys than frozen / lr /
      weight_decay.
  """
  if groups:
    if param_labels is None:
      raise ValueError(f"optim.groups {sorted(groups)} given but the method "
                       "defines no parameter groups (param_labels)")
    return _grouped(dict(groups), param_labels, name=name, lr=lr,
                    total_steps=total_steps, schedule=schedule,
                    warmup_steps=warmup_steps, weight_decay=weight_decay,
                    clip_norm=clip_norm, momentum=momentum,
                    end_factor=end_factor, step_boundaries=step_boundaries,
                    step_factor=step_factor)
  lr_fn = make_schedule(lr, schedule=schedule, total_steps=total_steps,
                        warmup_steps=warmup_steps, end_factor=end_factor,
                        step_boundaries=step_boundaries,
                        step_factor=step_factor)
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


def _grouped(groups, param_labels, *, clip_norm, lr, weight_decay,
             **kwargs):
  transforms = {"default": make_optimizer(lr=lr, weight_decay=weight_decay,
                                          **kwargs)}
  for group, spec in groups.items():
    spec = dict(spec)
    unknown = set(spec) - {"frozen", "lr", "weight_decay"}
    if unknown:
      raise ValueError(f"optim.groups.{group}: unknown keys {sorted(unknown)}"
                       " (valid: frozen, lr, weight_decay)")
    if spec.get("frozen", False):
      transforms[group] = optax.set_to_zero()
    else:
      transforms[group] = make_optimizer(
          lr=float(spec.get("lr", lr)),
          weight_decay=float(spec.get("weight_decay", weight_decay)),
          **kwargs)

  def labels(params):
    return jax.tree.map(lambda g: g if g in groups else "default",
                        param_labels(params))

  tx = optax.multi_transform(transforms, labels)
  if not clip_norm:
    return tx
  # Frozen gradients are zeroed before the global norm is taken.
  zero_frozen = optax.multi_transform(
      {g: optax.set_to_zero() if dict(groups.get(g, {})).get("frozen")
       else optax.identity() for g in transforms}, labels)
  return optax.chain(zero_frozen, optax.clip_by_global_norm(clip_norm), tx)
