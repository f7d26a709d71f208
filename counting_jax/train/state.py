"""The train state: a plain pytree that orbax saves and jit shards."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

__all__ = ["TrainState", "create_train_state"]


@flax.struct.dataclass
class TrainState:
  """step int32 [], params (float32), batch_stats (may be {}), opt_state, rng
  (raw uint32 [2] key; per-step keys are ``fold_in(rng, step)``) and
  ema_params (an exponential moving average of params, or {} when off)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = flax.struct.field(default_factory=dict)


def create_train_state(model, tx, rng, example_inputs, *,
                       ema: bool = False) -> TrainState:
  """Initialises ``model`` on example inputs.

  Args:
    model: a linen module called as ``model(*inputs, train=False)``.
    tx: the optax optimiser.
    rng: a raw ``jax.random.PRNGKey``; the first half initialises the
      parameters, the second seeds the per-step keys.
    example_inputs: the image shape [B, H, W, 3] (zeros are used), or a
      tuple of arrays passed to the model in order (the fields
      ``method.inputs`` of ``method.dummy_batch``).
    ema: keep a moving average of the parameters, starting as a copy.

  Parameters are float32 whatever the model's compute ``dtype``.
  """
  if all(isinstance(d, int) for d in example_inputs):
    example_inputs = (jnp.zeros(tuple(example_inputs), jnp.float32),)
  init_rng, step_rng = jax.random.split(rng)
  variables = jax.jit(lambda r, xs: model.init(r, *xs, train=False))(
      init_rng, tuple(example_inputs))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=step_rng,
                    ema_params=jax.tree.map(jnp.copy, params) if ema else {})
