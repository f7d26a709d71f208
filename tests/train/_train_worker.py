"""Subprocess side of the scale-out tests (not collected by pytest).

  python _train_worker.py equivalence OUT.json          (8 fake CPU devices)
  python _train_worker.py multiprocess OUT.npz ADDR P I (one of P processes)

The XLA device-count flag and ``jax.distributed`` must be set before JAX
initialises, hence subprocesses. Shared helpers (``synthetic_source``,
``run_steps``) are also imported by the in-process tests.
"""

from __future__ import annotations

import functools
import json
import sys

import numpy as np

BATCH = 8
STEPS = 2
OT_LOSSES = ("dm_count", "generalized_loss", "generalized", "gl")


def synthetic_source(n=6, size=24, seed=0):
  """``n`` random uint8 images with 3..9 points each (a list of samples)."""
  from counting_jax.data import sample as sample_lib  # pylint: disable=g-import-not-at-top
  g = np.random.default_rng(seed)
  out = []
  for i in range(n):
    k = int(g.integers(3, 10))
    out.append(sample_lib.make_sample(
        g.integers(0, 256, (size, size, 3), dtype=np.uint8),
        g.uniform(0.5, size - 0.5, (k, 2)), f"img{i:02d}"))
  return out


def tiny_model(batch_norm=True, dtype="float32"):
  """conv3x3(4) -> (BatchNorm) -> ReLU -> conv3x3(1) -> softplus: a
  non-negative density (OT losses need one) at stride 1, cheap to compile."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  class Tiny(nn.Module):
    batch_norm: bool = True
    dtype: jnp.dtype = jnp.float32
    stride: int = 1

    @nn.compact
    def __call__(self, x, *, train=False):
      x = nn.Conv(4, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         dtype=self.dtype)(x)
      x = nn.Conv(1, (3, 3), dtype=self.dtype)(nn.relu(x))[..., 0]
      return jax.nn.softplus(x.astype(jnp.float32)) * 0.05

  return Tiny(batch_norm=batch_norm, dtype=jnp.dtype(dtype))


def build(loss_name="gaussian_l2", *, batch_norm=True, accum_steps=1,
          ema_decay=None, dtype="float32"):
  """(model, train_step fn, tx) of a tiny conv counter trained with SGD."""
  from counting_jax import losses, methods  # pylint: disable=g-import-not-at-top
  from counting_jax.train import optim, step  # pylint: disable=g-import-not-at-top
  model = tiny_model(batch_norm, dtype)
  kw = dict(sigma=2.0) if loss_name == "gaussian_l2" else {}
  loss_fn = losses.get_loss(loss_name, **kw)
  tx = optim.make_optimizer("sgd", lr=2e-2, momentum=0.9, total_steps=10,
                            clip_norm=100.0)
  fn = step.make_train_step(methods.density.from_model(model, loss_fn), tx,
                            accum_steps=accum_steps, ema_decay=ema_decay)
  return model, fn, tx


@functools.lru_cache(maxsize=None)
def _compiled(mesh, loss_name, kw):
  """(jitted step, initial host state) per mesh and settings (compile once)."""
  import jax  # pylint: disable=g-import-not-at-top
  from counting_jax.train import sharding, state as state_lib  # pylint: disable=g-import-not-at-top
  kw = dict(kw)
  model, fn, tx = build(loss_name, **kw)
  state = state_lib.create_train_state(
      model, tx, jax.random.PRNGKey(0), (1, 16, 16, 3),
      ema=kw.get("ema_decay") is not None)
  repl, dsh = sharding.replicated(mesh), sharding.data_sharded(mesh)
  step = jax.jit(fn, in_shardings=(repl, dsh), out_shardings=(repl, repl),
                 donate_argnums=0)
  return step, jax.device_get(state)


def run_steps(mesh, batches, loss_name="gaussian_l2", **kw):
  """Trains from a fixed init on ``batches`` (process-local numpy dicts);
  returns (local copy of the final state, list of host metric dicts)."""
  import jax  # pylint: disable=g-import-not-at-top
  from counting_jax.train import sharding  # pylint: disable=g-import-not-at-top
  step, state = _compiled(mesh, loss_name, tuple(sorted(kw.items())))
  state = sharding.replicate(state, mesh)
  rows = []
  for batch in batches:
    state, m = step(state, sharding.shard_batch(batch, mesh))
    rows.append({k: float(v) for k, v in m.items()})
  return jax.device_get(sharding.local_copy(state)), rows


def dataset(batch_size, global_batch_size=None):
  """Training batches of ``batch_size`` rows of a stream made for
  ``global_batch_size`` (as ``loop.train_and_evaluate`` builds it)."""
  from counting_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from counting_jax.train import sharding  # pylint: disable=g-import-not-at-top
  source = synthetic_source()
  indices = sharding.repeat_to_batch(range(len(source)),
                                     global_batch_size or batch_size)
  return pipeline.train_dataset(
      source, indices=indices, batch_size=batch_size, max_points=12, seed=3,
      crop_size=(16, 16), flip=True, vflip=True, pad_multiple=2,
      mean=(0.5,) * 3, std=(0.25,) * 3)


def max_diff(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64)
                                                   - np.asarray(y)))), a, b)
  return max(jax.tree.leaves(d) or [0.0])


def equivalence(out_path):
  """8 devices vs 1 device on the same global batches, per loss."""
  import jax  # pylint: disable=g-import-not-at-top
  from counting_jax import losses, methods  # pylint: disable=g-import-not-at-top
  from counting_jax.train import sharding  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8, jax.devices()
  ds = dataset(BATCH)
  batches = [ds[i] for i in range(STEPS)]
  big = dataset(2 * BATCH)
  big_batches = [big[i] for i in range(2)]
  mesh8, mesh1 = sharding.make_mesh(), sharding.make_mesh(jax.devices()[:1])
  result = {"ot_loss": None}
  names = ["gaussian_l2"] + [n for n in OT_LOSSES if n in losses.LOSSES][:1]
  result["ot_loss"] = names[1] if len(names) > 1 else None
  initial = run_steps(mesh1, [])[0]
  for name in names:
    s8, m8 = run_steps(mesh8, batches, name)
    s1, m1 = run_steps(mesh1, batches, name)
    result[name] = dict(
        params=max_diff(s8.params, s1.params),
        batch_stats=max_diff(s8.batch_stats, s1.batch_stats),
        moved=max_diff(s1.params, initial.params),
        loss8=[r["loss"] for r in m8], loss1=[r["loss"] for r in m1],
        mae8=[r["mae"] for r in m8], mae1=[r["mae"] for r in m1])
  # Accumulation over 2 micro-batches, each over all 8 devices, with EMA.
  s8, _ = run_steps(mesh8, big_batches, accum_steps=2, ema_decay=0.9)
  s1, _ = run_steps(mesh1, big_batches, accum_steps=2, ema_decay=0.9)
  result["accum"] = dict(params=max_diff(s8.params, s1.params),
                         ema=max_diff(s8.ema_params, s1.ema_params))
  with open(out_path, "w", encoding="utf-8") as f:
    json.dump(result, f)



def multiprocess(out_path, address, num_processes, process_id):
  """One of ``num_processes`` processes training on its slice of each batch."""
  from counting_jax.train import sharding  # pylint: disable=g-import-not-at-top
  assert sharding.initialize_distributed(address, num_processes, process_id)
  import jax  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  sharding.check_batch_size(BATCH, mesh)
  local = sharding.local_batch_size(BATCH, jax.process_count())
  ds = dataset(local, BATCH)
  batches = [ds[sharding.process_batch_index(s, jax.process_index(),
                                             jax.process_count())]
             for s in range(STEPS)]
  state, rows = run_steps(mesh, batches)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(
              {"params": state.params, "batch_stats": state.batch_stats})}
  flat["loss"] = np.asarray([r["loss"] for r in rows])
  flat["image_ids"] = np.asarray([i for b in batches for i in b["image_id"]])
  flat["devices"] = np.asarray([jax.device_count(), jax.local_device_count(),
                                jax.process_count()])
  np.savez(out_path, **flat)
  jax.distributed.shutdown()


if __name__ == "__main__":
  if sys.argv[1] == "equivalence":
    equivalence(sys.argv[2])
  else:
    multiprocess(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
