"""Pure train and eval steps: (state, batch) -> (state, metrics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["make_train_step", "make_eval_step"]


def _variables(params, batch_stats):
  v = {"params": params}
  if batch_stats:
    v["batch_stats"] = batch_stats
  return v


def make_train_step(apply_fn, loss_fn, tx, *, stride: int,
                    density_scale: float = 1.0):
  """Builds ``train_step(state, batch) -> (state, metrics)``.

  Args:
    apply_fn: ``model.apply``; the model output divided by ``density_scale``
      is the density in count units (cell counting regresses density x100).
    loss_fn: ``loss(density, points, point_mask, *, stride) -> (loss, aux)``.
    tx: optax optimiser.
    stride: the model's density stride.
    density_scale: see ``apply_fn``.

  The returned metrics are float32 scalars: ``loss``, the batch means of the
  loss's aux terms, batch ``mae`` of the counts, ``grad_norm``,
  ``param_norm``. Gradients are averaged over the (global) batch by the
  loss's own reduction; under a data-sharded jit XLA inserts the
  cross-device reduction.
  """

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def objective(params):
      out, mutated = apply_fn(
          _variables(params, state.batch_stats), batch["image"], train=True,
          mutable=["batch_stats"], rngs={"dropout": rng})
      density = out.astype(jnp.float32) / density_scale
      loss, aux = loss_fn(density, batch["points"], batch["point_mask"],
                          stride=stride)
      return loss, (aux, mutated.get("batch_stats", {}), density)

    (loss, (aux, batch_stats, density)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    pred = density.sum((1, 2))
    true = batch["point_mask"].sum(-1).astype(jnp.float32)
    metrics = {f"loss/{k}": jnp.mean(v) for k, v in aux.items()}
    metrics.update(loss=loss, mae=jnp.mean(jnp.abs(pred - true)),
                   grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params))
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(apply_fn, *, density_scale: float = 1.0):
  """Builds ``eval_step(state, image) -> density`` float32 [B, h, w] in count
  units (BatchNorm in inference mode)."""

  def eval_step(state, image):
    out = apply_fn(_variables(state.params, state.batch_stats), image,
                   train=False)
    return out.astype(jnp.float32) / density_scale

  return eval_step
