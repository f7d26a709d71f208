"""train_and_evaluate / evaluate / predict: the only readers of a config.

A run folder (``workdir``) holds ``checkpoints/`` (orbax), ``metrics.jsonl``
and ``tb/`` (scalars), ``train_ids.json`` (the images trained on),
``metrics.json`` (test-split MAE, RMSE, NAE, SRE) and ``panels/``.

Scale-out (see ``sharding``): the step runs under ``jax.jit`` on a mesh of
every device of every process; each process loads its own slice of each
global batch. Optional config fields (older configs keep working):
``compute_dtype`` ("float32" or "bfloat16": the model's compute dtype;
parameters and loss stay float32), ``accum_steps`` (micro-batches per
step), ``ema_decay`` (> 0: moving average of the parameters, used for
evaluation) and ``eval_tiling`` (``max_size``, ``tile_size``, ``overlap``,
``blend``, ``tile_batch``: images with a side above ``max_size`` are
evaluated in overlapping tiles). A run killed at any point and restarted
with the same command continues from its newest checkpoint and ends with
the same parameters, ``metrics.jsonl`` rows and ``metrics.json``.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from counting_jax import data as data_lib
from counting_jax import density as density_lib
from counting_jax import localization as localization_lib
from counting_jax import losses as losses_lib
from counting_jax import metrics as metrics_lib
from counting_jax import models as models_lib
from counting_jax.data import pipeline, transforms
from counting_jax.train import checkpoint, optim, panels, pretrained, sharding
from counting_jax.train import compile_options
from counting_jax.train import predict as predict_lib
from counting_jax.train import state as state_lib
from counting_jax.train import step as step_lib
from counting_jax.train import writers

__all__ = ["train_and_evaluate", "evaluate", "predict",
           "select_train_indices"]

_TILING = dict(max_size=2048, tile_size=1024, overlap=128, blend="linear",
               tile_batch=4)


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
  kwargs = dict(config.model.kwargs)
  dtype = config.get("compute_dtype", "float32")
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got "
                     f"{dtype!r}")
  if dtype != "float32":
    kwargs["dtype"] = jnp.dtype(dtype)
  try:
    model = models_lib.get_model(config.model.name, **kwargs)
  except TypeError as e:
    raise ValueError(f"model {config.model.name!r} does not take "
                     f"{sorted(kwargs)} (compute_dtype needs a model with a "
                     f"'dtype' attribute): {e}") from e
  loss_fn = losses_lib.get_loss(config.loss.name, **config.loss.kwargs)
  tx = optim.make_optimizer(total_steps=config.total_steps, **config.optim)
  return model, loss_fn, tx


def _pad_multiple(config):
  return int(config.input.get("pad_multiple", 8))


def _compiler_options(config):
  """XLA options of the jitted steps (``config.xla_cpu_ynn_fusion_type``)."""
  return compile_options.compiler_options(config.get(
      "xla_cpu_ynn_fusion_type", compile_options.DEFAULT_YNN_FUSION_TYPE))


def _ema_decay(config):
  decay = float(config.get("ema_decay", 0.0) or 0.0)
  return decay if decay > 0 else None


def _tiling(config):
  out = dict(_TILING)
  out.update(dict(config.get("eval_tiling", None) or {}))
  return out


def _load(config, split):
  ds = config.dataset
  return data_lib.load(ds.name, split, data_dir=_opt(ds.get("data_dir")),
                       manual_dir=_opt(ds.get("manual_dir")))


def _host(metrics) -> dict:
  """Scalar metrics (device arrays or floats) -> {name: float}."""
  return {k: float(v) for k, v in metrics.items()}


def train_and_evaluate(config, workdir) -> dict:
  """Trains (resuming from the newest checkpoint in ``workdir``), then
  evaluates on the test split; returns the test metrics dict.

  Raises:
    ValueError: when ``input.batch_size`` does not split over the devices
      and ``accum_steps`` micro-batches.
    FloatingPointError: on non-finite metrics, naming the steps.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lead = jax.process_index() == 0
  mesh = sharding.make_mesh()
  repl, dsh = sharding.replicated(mesh), sharding.data_sharded(mesh)
  model, loss_fn, tx = _build(config)
  inp = config.input
  accum = int(config.get("accum_steps", 1))
  ema_decay = _ema_decay(config)
  sharding.check_batch_size(inp.batch_size, mesh, accum_steps=accum)
  n_proc, proc = jax.process_count(), jax.process_index()
  local_bs = sharding.local_batch_size(inp.batch_size, n_proc)

  source = _load(config, config.dataset.train_split)
  indices, ids = select_train_indices(
      source, _opt(config.dataset.get("num_train")), config.dataset.draw_seed)
  if lead:
    (workdir / "train_ids.json").write_text(json.dumps(ids))
  ds = pipeline.train_dataset(
      source, indices=sharding.repeat_to_batch(indices, inp.batch_size),
      batch_size=local_bs,
      max_points=inp.max_points, seed=config.seed,
      crop_size=_opt(inp.get("crop_size")), flip=inp.flip, vflip=inp.vflip,
      scale_range=_opt(inp.get("scale_range")),
      pad_multiple=_pad_multiple(config), mean=inp.mean, std=inp.std)

  def global_batch(step):
    return sharding.shard_batch(
        ds[sharding.process_batch_index(step, proc, n_proc)], mesh)

  first = ds[0]
  state = state_lib.create_train_state(
      model, tx, jax.random.PRNGKey(config.seed),
      (1, *first["image"].shape[1:]), ema=ema_decay is not None)
  init_path = _opt(config.get("init_checkpoint"))
  if init_path:
    state, where = pretrained.load_pretrained(state, init_path)
    if ema_decay is not None:
      state = state.replace(ema_params=state.params)
    if lead:
      print(f"initialised the {where} from {init_path}")
  state = sharding.replicate(state, mesh)
  manager = checkpoint.make_manager(workdir / "checkpoints")
  restored, meta = checkpoint.restore_latest(manager, state)
  pending, start = [], 0
  if restored is not None:
    state, meta = restored, meta or {}
    pending = list(meta.get("pending", []))
    start = int(meta.get("step", np.asarray(sharding.local_copy(state.step))))
    if lead:
      print(f"resumed from step {start} in {workdir}")
  if lead:
    writers.rewind_jsonl(workdir, start)

  train_step = jax.jit(
      step_lib.make_train_step(model.apply, loss_fn, tx, stride=model.stride,
                               density_scale=config.density_scale,
                               accum_steps=accum, ema_decay=ema_decay),
      in_shardings=(repl, dsh), out_shardings=(repl, repl),
      donate_argnums=0, compiler_options=_compiler_options(config))
  writer = writers.MetricWriter(workdir) if lead else None
  bar = tqdm.tqdm(total=config.total_steps, initial=start, desc="train",
                  dynamic_ncols=True,
                  disable=config.get("quiet", False) or not lead)
  t0, n_timed = time.time(), 0
  for step in range(start, config.total_steps):
    state, metrics = train_step(state, global_batch(step))
    pending.append(metrics)
    n_timed += 1
    done = step + 1
    if done % config.log_every == 0 or done == config.total_steps:
      rows = [_host(r) for r in pending]
      means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
      if not all(np.isfinite(v) for v in means.values()):
        raise FloatingPointError(
            f"non-finite metrics in steps {done - len(rows) + 1}..{done}: "
            f"{means}")
      means["steps_per_s"] = n_timed / max(time.time() - t0, 1e-9)
      if writer is not None:
        writer.write_scalars(done, means, prefix="train/")
      bar.set_postfix(loss=f"{means['loss']:.4g}", mae=f"{means['mae']:.2f}")
      bar.update(len(rows))
      pending, t0, n_timed = [], time.time(), 0
    if done % config.checkpoint_every == 0 or done == config.total_steps:
      pending = [_host(r) for r in pending]  # logged after a resume
      checkpoint.save(manager, state, step=done,
                      meta={"step": done, "pending": pending})
  bar.close()
  manager.close()
  result = evaluate(config, workdir, state=state, model=model, writer=writer)
  if writer is not None:
    writer.close()
  return result


def _restore_for_eval(config, workdir):
  """(model, state) of the newest checkpoint in ``workdir``, else of the
  converted whole-model checkpoint ``config.init_checkpoint``.

  Raises:
    FileNotFoundError: when there is neither.
    ValueError: when ``init_checkpoint`` holds only backbone weights.
  """
  model, _, tx = _build(config)
  m = _pad_multiple(config)
  target = state_lib.create_train_state(
      model, tx, jax.random.PRNGKey(config.seed), (1, m, m, 3),
      ema=_ema_decay(config) is not None)
  target = sharding.replicate(target, sharding.make_mesh())
  manager = checkpoint.make_manager(pathlib.Path(workdir) / "checkpoints")
  state, _ = checkpoint.restore_latest(manager, target)
  manager.close()
  init_path = _opt(config.get("init_checkpoint"))
  if state is None and init_path:
    # A converted whole-model checkpoint (counting-jax convert), untrained.
    state, where = pretrained.load_pretrained(target, init_path)
    if where != "model":
      raise ValueError(f"{init_path} holds backbone weights only; evaluating "
                       "needs a whole counter (or a trained run in workdir)")
    if _ema_decay(config) is not None:
      state = state.replace(ema_params=state.params)
    state = sharding.replicate(state, sharding.make_mesh())
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints and no "
                            "config.init_checkpoint")
  return model, state


def _gather(rows, n_total):
  """Rows (index, pred, true, id) of every process, by index (process 0)."""
  if jax.process_count() == 1:
    return sorted(rows)
  k = -(-n_total // jax.process_count())
  idx = np.full((k,), -1, np.int32)
  vals = np.zeros((k, 2), np.float32)
  names = np.zeros((k, 128), np.uint8)
  for j, (i, p, t, name) in enumerate(rows):
    idx[j], vals[j] = i, (p, t)
    raw = str(name).encode("utf-8")[:128]
    names[j, :len(raw)] = np.frombuffer(raw, np.uint8)
  idx, vals, names = multihost_utils.process_allgather((idx, vals, names))
  out = []
  for i, v, n in zip(idx.reshape(-1), vals.reshape(-1, 2),
                     names.reshape(-1, 128)):
    if i >= 0:
      out.append((int(i), float(v[0]), float(v[1]),
                  bytes(n).rstrip(b"\0").decode("utf-8")))
  return sorted(out)


def evaluate(config, workdir, *, state=None, model=None, writer=None) -> dict:
  """Counts every image of the test split at full resolution (images with a
  side above ``eval_tiling.max_size`` in overlapping tiles), writes
  ``metrics.json``, ``counts.json`` and panels, prints MAE/RMSE; returns the
  metrics. Processes share the images (image i goes to process i mod P);
  process 0 gathers the counts and writes the files."""
  workdir = pathlib.Path(workdir)
  inp = config.input
  if model is None or state is None:
    model, state = _restore_for_eval(config, workdir)
  use_ema = _ema_decay(config) is not None
  source = _load(config, config.dataset.test_split)
  predict = predict_lib.make_predict_fn(step_lib.make_eval_step(
      model.apply, density_scale=config.density_scale, use_ema=use_ema),
                                        state, _compiler_options(config))
  panel_dir = workdir / "panels"
  panel_dir.mkdir(parents=True, exist_ok=True)
  n_panels = config.get("num_panels", 4)
  mine = list(range(jax.process_index(), len(source), jax.process_count()))
  rows, loc_pred, loc_true = [], [], []
  for batch in pipeline.eval_batches(
      source, batch_size=inp.eval_batch_size,
      pad_multiple=_pad_multiple(config), mean=inp.mean, std=inp.std,
      indices=mine):
    dens = predict_lib.predict_densities(
        predict, batch["image"], stride=model.stride,
        multiple=_pad_multiple(config), **_tiling(config))
    for b in range(dens.shape[0]):
      index = mine[len(rows)]
      rows.append((index, float(dens[b].sum()), float(batch["count"][b]),
                   str(batch["image_id"][b])))
      loc_pred.append(localization_lib.localize_density(
          dens[b], stride=model.stride,
          **_eval_localization(config, model.stride)[1])[0])
      loc_true.append(batch["points"][b][batch["point_mask"][b]])
      if index >= n_panels:
        continue
      target = density_lib.gaussian_density(
          batch["points"][b], batch["point_mask"][b], dens.shape[1:],
          config.get("panel_sigma", 2.0), stride=model.stride)
      panels.save_panel(panel_dir / f"{batch['image_id'][b]}.png",
                        batch["image"][b], dens[b],
                        target_density=np.asarray(target),
                        true_count=float(batch["count"][b]),
                        title=str(batch["image_id"][b]))
  rows = _gather(rows, len(source))
  _, preds, trues, ids = zip(*rows)
  result = metrics_lib.counting_metrics(list(preds), list(trues))
  result["step"] = int(np.asarray(sharding.local_copy(state.step)))
  result.update(_localization_result(config, model.stride, loc_pred,
                                     loc_true))
  if jax.process_index() == 0:
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
    if "loc_f1" in result:
      print(f"localization ({result['loc_method']}, radius "
            f"{result['loc_radius']:g} px): F1 {result['loc_f1']:.4f}  "
            f"precision {result['loc_precision']:.4f}  "
            f"recall {result['loc_recall']:.4f}")
    published = config.get("published")
    if published:
      print("published (" + config.get("published_protocol", "") + "):")
      for name, value in published:
        print(f"  {name:<36} {value}")
  return result


def _eval_localization(config, stride):
  """(radius, localize_density kwargs) of ``eval``'s localization report.

  Config keys (all optional): ``eval_loc_radius`` (matching radius in input
  pixels, default 8), ``eval_loc_method`` (default "local_maxima"),
  ``eval_loc_threshold`` (local maxima: peak threshold in count units per
  density pixel; default half the peak of a unit Gaussian of
  ``eval_loc_sigma`` = 4 input pixels on the stride grid,
  0.5 * min(1, stride^2 / (2 pi sigma^2))), ``eval_loc_max_points`` (4096).
  """
  method = config.get("eval_loc_method", "local_maxima")
  kwargs = {"method": method,
            "max_points": config.get("eval_loc_max_points", 4096)}
  if method == "local_maxima":
    sigma = config.get("eval_loc_sigma", 4.0)
    default = 0.5 * min(1.0, stride ** 2 / (2 * np.pi * sigma ** 2))
    kwargs["threshold"] = config.get("eval_loc_threshold", default)
  return float(config.get("eval_loc_radius", 8.0)), kwargs


def _localization_result(config, stride, loc_pred, loc_true) -> dict:
  """Precision/recall/F1 at a fixed radius over all processes' images
  (empty when the test split has no points)."""
  radius, kwargs = _eval_localization(config, stride)
  m = metrics_lib.localization_metrics_fixed_radius(loc_pred, loc_true, radius)
  counts = np.array([m["tp"], m["fp"], m["fn"]], np.int64)
  if jax.process_count() > 1:
    counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
  tp, fp, fn = (int(v) for v in counts)
  if tp + fn == 0:
    return {}
  p, r = tp / (tp + fp + 1e-20), tp / (tp + fn + 1e-20)
  return {"loc_precision": p, "loc_recall": r,
          "loc_f1": 2 * p * r / (p + r) if p + r > 0 else 0.0,
          "loc_radius": radius, "loc_method": kwargs["method"]}


def localize(config, workdir, images_dir, out_dir,
             method: str = "local_maxima") -> dict:
  """``counting-jax localize``: points of every image of ``images_dir`` from
  the newest checkpoint's density maps (``localization.localize_images``:
  per-image JSON, ``nwpu_pred.txt`` for integer file names, panels)."""
  files = predict_lib.list_images(images_dir)
  model, state = _restore_for_eval(config, workdir)
  fn = predict_lib.make_predict_fn(step_lib.make_eval_step(
      model.apply, density_scale=config.density_scale,
      use_ema=_ema_decay(config) is not None), state,
      _compiler_options(config))
  multiple = _pad_multiple(config)

  def density_fn(image):
    sample = transforms.pad_to_multiple(
        {"image": image, "points": np.zeros((0, 2), np.float32),
         "boxes": np.zeros((0, 4), np.float32)}, multiple)
    x = pipeline.normalize(sample["image"], config.input.mean,
                           config.input.std)[None]
    return predict_lib.predict_densities(fn, x, stride=model.stride,
                                         multiple=multiple,
                                         **_tiling(config))[0]

  _, kwargs = _eval_localization(config, model.stride)
  kwargs.pop("method")
  if method != "local_maxima":
    kwargs.pop("threshold", None)
  max_points = kwargs.pop("max_points")
  return localization_lib.localize_images(
      density_fn, files, out_dir, stride=model.stride, method=method,
      max_points=max_points, method_kwargs=kwargs)


def predict(config, workdir, images_dir, out_dir) -> dict:
  """``counting-jax predict``: counts every image of ``images_dir`` with the
  newest checkpoint of ``workdir`` (EMA parameters when the config enables
  them; large images in tiles, ``eval_tiling``), writing ``counts.csv`` and
  density panels to ``out_dir``; returns {file name: count}.

  Raises:
    FileNotFoundError: when ``images_dir`` has no image or ``workdir`` no
      checkpoint.
  """
  files = predict_lib.list_images(images_dir)
  model, state = _restore_for_eval(config, workdir)
  fn = predict_lib.make_predict_fn(step_lib.make_eval_step(
      model.apply, density_scale=config.density_scale,
      use_ema=_ema_decay(config) is not None), state,
      _compiler_options(config))
  return predict_lib.count_images(
      fn, files, out_dir, stride=model.stride,
      multiple=_pad_multiple(config), mean=config.input.mean,
      std=config.input.std, tiling_kwargs=_tiling(config))
