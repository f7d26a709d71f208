"""Pure train and eval steps of any method.

``train_step(state, batch) -> (state, metrics)``, ``eval_step(state, inputs)
-> density``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["make_train_step", "make_eval_step", "split_micro_batches"]


def _variables(params, batch_stats):
  v = {"params": params}
  if batch_stats:
    v["batch_stats"] = batch_stats
  return v


def split_micro_batches(batch: dict, accum_steps: int) -> dict:
  """[B, ...] fields -> [accum_steps, B / accum_steps, ...].

  Micro-batch m holds rows ``m, m + A, m + 2A, ...`` (A = ``accum_steps``):
  with the batch sharded in contiguous blocks over D devices and B a
  multiple of A x D, every micro-batch keeps B / (A D) rows on every device.

  Raises:
    ValueError: when a field's batch size is not a multiple of A.
  """
  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(f"batch size {x.shape[0]} is not a multiple of "
                       f"accum_steps={accum_steps}")
    return x.reshape(x.shape[0] // accum_steps, accum_steps,
                     *x.shape[1:]).swapaxes(0, 1)

  return jax.tree.map(split, batch)


def _float32(tree):
  """Floating leaves -> float32 (bfloat16 model outputs before the loss)."""
  return jax.tree.map(
      lambda x: x.astype(jnp.float32)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_train_step(method, tx, *, accum_steps: int = 1,
                    ema_decay: float | None = None):
  """Builds ``train_step(state, batch) -> (state, metrics)``.

  Args:
    method: a :class:`counting_jax.methods.Method`: its model is applied to
      the batch fields ``method.inputs`` (train mode, ``batch_stats``
      mutable, a ``dropout`` key), the outputs are cast to float32 (the
      model may compute in bfloat16; parameters, gradients and optimiser
      state stay float32), and ``method.loss(outputs, batch)`` gives the
      scalar loss and its per-image aux terms; ``method.density(outputs)``
      gives the counts of the ``mae`` metric.
    tx: optax optimiser (frozen parameter groups are ``set_to_zero``
      inside it, see ``optim.make_optimizer``).
    accum_steps: gradient accumulation: the batch is cut into this many
      micro-batches (:func:`split_micro_batches`) run one after the other in
      a ``lax.scan``; their float32 gradients are averaged and the optimiser
      updates once per call. An explicit scan rather than
      ``optax.MultiSteps``: one call stays one optimiser step on one global
      batch, so step counts, schedules, checkpoints and exact resume need no
      change. Equals the full-batch step for losses that are batch means,
      up to BatchNorm (statistics per micro-batch, running averages updated
      once per micro-batch) and dropout keys (``fold_in(key, m)`` per
      micro-batch). Losses summed over the batch (DM-Count's OT term) come
      out divided by ``accum_steps``.
    ema_decay: when set, ``state.ema_params`` <- d * ema + (1 - d) * params
      after every update (a constant decay, no bias correction; the average
      starts at the initial parameters).

  The returned metrics are float32 scalars, means over the global batch:
  ``loss``, the loss's aux terms (``loss/<name>``), ``mae`` of the counts,
  and ``grad_norm``, ``param_norm``. Under a data-sharded jit the batch
  reductions are global, so XLA inserts the cross-device reductions
  (gradients, BatchNorm statistics, metrics).
  """

  def grads_and_metrics(params, batch_stats, batch, rng):
    def objective(params):
      out, mutated = method.apply(
          _variables(params, batch_stats), batch, train=True,
          mutable=["batch_stats"], rngs={"dropout": rng})
      out = _float32(out)
      loss, aux = method.loss(out, batch)
      return loss.astype(jnp.float32), (aux, mutated.get("batch_stats", {}),
                                        method.density(out))

    (loss, (aux, new_stats, density)), grads = jax.value_and_grad(
        objective, has_aux=True)(params)
    pred = density.sum((1, 2))
    true = batch["point_mask"].sum(-1).astype(jnp.float32)
    metrics = {f"loss/{k}": jnp.mean(v).astype(jnp.float32)
               for k, v in aux.items()}
    metrics.update(loss=loss, mae=jnp.mean(jnp.abs(pred - true)))
    return grads, new_stats, metrics

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if accum_steps == 1:
      grads, batch_stats, metrics = grads_and_metrics(
          state.params, state.batch_stats, batch, rng)
    else:
      def micro_step(carry, xs):
        grad_sum, stats = carry
        micro, m = xs
        grads, stats, metrics = grads_and_metrics(
            state.params, stats, micro, jax.random.fold_in(rng, m))
        return (jax.tree.map(jnp.add, grad_sum, grads), stats), metrics

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grad_sum, batch_stats), per_micro = jax.lax.scan(
          micro_step, (zeros, state.batch_stats),
          (split_micro_batches(batch, accum_steps),
           jnp.arange(accum_steps)))
      grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
      metrics = jax.tree.map(lambda v: v.mean(0), per_micro)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema_decay is not None:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                         ema, params)
    metrics.update(grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params))
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=batch_stats, opt_state=opt_state,
                              ema_params=ema)
    return new_state, metrics

  return train_step


def make_eval_step(method, *, use_ema: bool = False):
  """Builds ``eval_step(state, inputs) -> density`` float32 [B, h, w] in
  count units (``method.density`` of the model outputs, BatchNorm in
  inference mode), with ``state.ema_params`` in place of ``state.params``
  when ``use_ema``. ``inputs`` is a dict holding at least the fields
  ``method.inputs``."""

  def eval_step(state, inputs):
    params = state.ema_params if use_ema else state.params
    out = method.apply(_variables(params, state.batch_stats), inputs,
                       train=False)
    return method.density(_float32(out))

  return eval_step
