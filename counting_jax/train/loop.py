"""train_and_evaluate / evaluate / predict: the only readers of a config.

A run folder (``workdir``) holds ``checkpoints/`` (orbax), ``metrics.jsonl``
and ``tb/`` (scalars), ``train_ids.json`` (the images trained on),
``metrics.json`` (test-split MAE, RMSE, NAE, SRE) and ``panels/``.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np
import tqdm

from counting_jax import data as data_lib
from counting_jax import density as density_lib
from counting_jax import losses as losses_lib
from counting_jax import metrics as metrics_lib
from counting_jax import models as models_lib
from counting_jax.data import pipeline
from counting_jax.train import checkpoint, optim, panels, sharding, state as state_lib, step as step_lib, writers

__all__ = ["train_and_evaluate", "evaluate", "select_train_indices"]


def _opt(value):
  """ConfigDict placeholders / empty strings -> None."""
  return None if value in (None, "") else value


def select_train_indices(source, num_train, seed: int) -> tuple[list, list]:
  """Draws ``num_train`` images (all when None) with ``seed`` from the images
  of ``source`` sorted by image id; returns (indices, image ids)."""
  ids = [source[i]["image_id"] for i in range(len(source))]
  order = sorted(range(len(ids)), key=lambda i: ids[i])
  if num_train is not None:
    if num_train > len(order):
      raise ValueError(f"num_train={num_train} exceeds the {len(order)} "
                       "images of the training split")
    pick = np.random.default_rng(seed).choice(len(order), num_train,
                                              replace=False)
    order = [order[i] for i in sorted(pick)]
  return order, [ids[i] for i in order]


def _build(config):
  model = models_lib.get_model(config.model.name, **config.model.kwargs)
  loss_fn = losses_lib.get_loss(config.loss.name, **config.loss.kwargs)
  tx = optim.make_optimizer(total_steps=config.total_steps, **config.optim)
  return model, loss_fn, tx


def _pad_multiple(config):
  return int(config.input.get("pad_multiple", 8))


def _load(config, split):
  ds = config.dataset
  return data_lib.load(ds.name, split, data_dir=_opt(ds.get("data_dir")),
                       manual_dir=_opt(ds.get("manual_dir")))


def train_and_evaluate(config, workdir) -> dict:
  """Trains (resuming from the newest checkpoint in ``workdir``), then
  evaluates on the test split; returns the test metrics dict."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh()
  repl, dsh = sharding.replicated(mesh), sharding.data_sharded(mesh)
  model, loss_fn, tx = _build(config)
  inp = config.input

  source = _load(config, config.dataset.train_split)
  indices, ids = select_train_indices(
      source, _opt(config.dataset.get("num_train")), config.dataset.draw_seed)
  (workdir / "train_ids.json").write_text(json.dumps(ids))
  ds = pipeline.train_dataset(
      source, indices=indices, batch_size=inp.batch_size,
      max_points=inp.max_points, seed=config.seed,
      crop_size=_opt(inp.get("crop_size")), flip=inp.flip, vflip=inp.vflip,
      scale_range=_opt(inp.get("scale_range")),
      pad_multiple=_pad_multiple(config), mean=inp.mean, std=inp.std)

  first = ds[0]
  state = state_lib.create_train_state(
      model, tx, jax.random.PRNGKey(config.seed), first["image"].shape)
  state = jax.device_put(state, repl)
  manager = checkpoint.make_manager(workdir / "checkpoints")
  restored, _ = checkpoint.restore_latest(manager, state)
  if restored is not None:
    state = jax.device_put(restored, repl)
    print(f"resumed from step {int(state.step)} in {workdir}")

  train_step = jax.jit(
      step_lib.make_train_step(model.apply, loss_fn, tx, stride=model.stride,
                               density_scale=config.density_scale),
      in_shardings=(repl, dsh), out_shardings=(repl, repl),
      donate_argnums=0)
  writer = writers.MetricWriter(workdir)
  start = int(state.step)
  bar = tqdm.tqdm(total=config.total_steps, initial=start, desc="train",
                  dynamic_ncols=True, disable=config.get("quiet", False))
  pending, t0 = [], time.time()
  for step in range(start, config.total_steps):
    batch = sharding.shard_batch(ds[step], mesh)
    state, metrics = train_step(state, batch)
    pending.append(metrics)
    done = step + 1
    if done % config.log_every == 0 or done == config.total_steps:
      rows = jax.device_get(pending)
      means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
      if not all(np.isfinite(v) for v in means.values()):
        raise FloatingPointError(
            f"non-finite metrics in steps {done - len(rows) + 1}..{done}: "
            f"{means}")
      means["steps_per_s"] = len(rows) / max(time.time() - t0, 1e-9)
      writer.write_scalars(done, means, prefix="train/")
      bar.set_postfix(loss=f"{means['loss']:.4g}", mae=f"{means['mae']:.2f}")
      bar.update(len(rows))
      pending, t0 = [], time.time()
    if done % config.checkpoint_every == 0 or done == config.total_steps:
      checkpoint.save(manager, state, meta={"step": done})
  bar.close()
  manager.close()
  result = evaluate(config, workdir, state=state, model=model, writer=writer)
  writer.close()
  return result


def evaluate(config, workdir, *, state=None, model=None, writer=None) -> dict:
  """Counts every image of the test split at full resolution, writes
  ``metrics.json`` and panels, prints MAE/RMSE; returns the metrics."""
  workdir = pathlib.Path(workdir)
  inp = config.input
  if model is None or state is None:
    model, _, tx = _build(config)
    source = _load(config, config.dataset.test_split)
    shape = (1, *pipeline.transforms.pad_to_multiple(
        source[0], _pad_multiple(config))["image"].shape)
    target = state_lib.create_train_state(model, tx,
                                          jax.random.PRNGKey(config.seed),
                                          shape)
    manager = checkpoint.make_manager(workdir / "checkpoints")
    state, _ = checkpoint.restore_latest(manager, target)
    manager.close()
    if state is None:
      raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
  source = _load(config, config.dataset.test_split)
  eval_step = jax.jit(step_lib.make_eval_step(
      model.apply, density_scale=config.density_scale))
  preds, trues, ids = [], [], []
  panel_dir = workdir / "panels"
  panel_dir.mkdir(parents=True, exist_ok=True)
  n_panels = config.get("num_panels", 4)
  for batch in pipeline.eval_batches(
      source, batch_size=inp.eval_batch_size,
      pad_multiple=_pad_multiple(config), mean=inp.mean, std=inp.std):
    dens = np.asarray(eval_step(state, batch["image"]))
    preds.extend(dens.sum((1, 2)).tolist())
    trues.extend(batch["count"].tolist())
    ids.extend(batch["image_id"].tolist())
    for b in range(dens.shape[0]):
      if len(ids) - dens.shape[0] + b >= n_panels:
        break
      target = density_lib.gaussian_density(
          batch["points"][b], batch["point_mask"][b], dens.shape[1:],
          config.get("panel_sigma", 2.0), stride=model.stride)
      panels.save_panel(panel_dir / f"{batch['image_id'][b]}.png",
                        batch["image"][b], dens[b],
                        target_density=np.asarray(target),
                        true_count=float(batch["count"][b]),
                        title=str(batch["image_id"][b]))
  result = metrics_lib.counting_metrics(preds, trues)
  result["step"] = int(jax.device_get(state.step))
  (workdir / "metrics.json").write_text(json.dumps(result, indent=2))
  (workdir / "counts.json").write_text(json.dumps(
      {i: {"pred": p, "true": t} for i, p, t in zip(ids, preds, trues)}))
  if writer is not None:
    writer.write_scalars(result["step"], {k: result[k] for k in
                                          ("mae", "rmse", "nae", "sre")},
                         prefix="test/")
  print(f"test {config.dataset.name}/{config.dataset.test_split}: "
        f"MAE {result['mae']:.3f}  RMSE {result['rmse']:.3f}  "
        f"NAE {result['nae']:.4f}  SRE {result['sre']:.4f}  "
        f"({result['n']} images)")
  published = config.get("published")
  if published:
    print("published (" + config.get("published_protocol", "") + "):")
    for name, value in published:
      print(f"  {name:<36} {value}")
  return result
