"""What a counting method supplies to the one trainer: :class:`Method`.

A method is a frozen record of plain values and pure functions; the trainer
(``counting_jax.train.loop``) never looks inside it. It says

- **model**: a linen module with a ``stride`` attribute (input pixels per
  density pixel), called as ``model.apply(variables, *batch[inputs],
  train=...)``; its output is any pytree (one density map, or a dict of
  heads);
- **inputs**: the batch fields the model reads, in call order
  (``("image",)``, ``("image", "exemplars", "exemplar_mask")``,
  ``("image", "tokens")``);
- **fields**: the optional per-sample fields the data pipeline must build on
  the host with fixed shapes (:class:`BatchFields`: exemplar boxes, text
  token ids, dense masks), and the host-side hooks that add method targets
  before / after augmentation;
- **loss**: ``loss(outputs, batch) -> (scalar, {name: [B] terms})``, pure
  and jit-compiled inside the train step (``outputs`` float32); in
  training the trainer adds ``batch["epoch"]`` int32 [B], the 0-based epoch
  of the step (losses that change with the epoch, e.g. mPrompt's online
  prompt);
- **density**: ``density(outputs) -> float32 [B, h, w]`` in count units: what
  counting metrics, panels, ``eval`` and ``predict`` use;
- optionally **param_labels** (``params -> pytree of group names`` for
  ``config.optim.groups``: frozen groups and per-group learning rates) and
  **on_epoch_end** (``(state, epoch) -> state``, between-epoch hooks).

Methods are built from a config by the builders of
``counting_jax.methods.METHODS``; a new method is one module with one
``build(config) -> Method`` function.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from counting_jax.data.fields import BatchFields

__all__ = ["Method", "BatchFields", "USER_INPUTS"]

# Per-image inputs a user gives ``eval`` / ``predict`` on the command line,
# by the batch field they fill.
USER_INPUTS = {"exemplars": "--exemplars boxes.json", "tokens": "--text TEXT"}


def _identity_density(outputs):
  return outputs


@dataclasses.dataclass(frozen=True)
class Method:
  """A counting method as the trainer sees it (see module docstring).

  Attributes:
    name: the method's name (``config.method.name``).
    model: linen module with a ``stride`` attribute.
    loss: ``(outputs, batch) -> (loss float32 [], aux {name: [B]})``.
    density: ``outputs -> float32 [B, h, w]`` count units.
    inputs: batch fields passed to the model, in order.
    fields: the per-sample fields the pipeline builds (:class:`BatchFields`).
    param_labels: ``params -> pytree of str`` (same structure) naming each
      parameter's group for ``config.optim.groups``, or None (one group).
    on_epoch_end: ``(state, epoch) -> state`` run on the host after each
      epoch (``epoch`` counts from 1), or None. It must be a deterministic
      function of its arguments: a resumed run calls it again for every
      epoch boundary it crosses, never for those before the checkpoint.
  """
  name: str
  model: Any
  loss: Callable
  density: Callable = _identity_density
  inputs: tuple[str, ...] = ("image",)
  fields: BatchFields = BatchFields()
  param_labels: Callable | None = None
  on_epoch_end: Callable | None = None

  @property
  def stride(self) -> int:
    """Input pixels per density pixel."""
    return int(self.model.stride)

  def apply(self, variables, batch, **kwargs):
    """``model.apply(variables, *[batch[k] for k in inputs], **kwargs)``.

    Raises:
      KeyError: naming the missing input field and how a user supplies it.
    """
    missing = [k for k in self.inputs if k not in batch]
    if missing:
      hints = [USER_INPUTS[k] for k in missing if k in USER_INPUTS]
      raise KeyError(f"method {self.name!r} needs batch field(s) {missing}"
                     + (f" (give {', '.join(hints)})" if hints else ""))
    return self.model.apply(variables, *(batch[k] for k in self.inputs),
                            **kwargs)

  @property
  def user_inputs(self) -> tuple[str, ...]:
    """The ``USER_INPUTS`` fields (``exemplars``, ``tokens``) the model
    reads: what ``predict`` needs from the user besides the images."""
    return tuple(k for k in self.inputs if k in USER_INPUTS)

  def dummy_batch(self, height: int, width: int) -> dict:
    """Zeros of every model input for one image of ``height`` x ``width``
    (initialising parameters and restoring checkpoints without data)."""
    out = {"image": np.zeros((1, height, width, 3), np.float32)}
    if self.fields.max_exemplars:
      e = self.fields.max_exemplars
      out["exemplars"] = np.tile(np.array([[[0, 0, 1, 1]]], np.float32),
                                 (1, e, 1))
      out["exemplar_mask"] = np.ones((1, e), bool)
    if self.fields.tokenize is not None:
      out["tokens"] = np.asarray(self.fields.tokenize(""))[None]
    return out
