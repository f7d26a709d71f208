"""train_and_evaluate / evaluate / predict: the one loop, for every method.

The loop knows nothing of a paper: a method (``counting_jax.methods``:
``config.method.name``) supplies the model, the batch fields the pipeline
builds, the loss on (model outputs, batch), the density used for counting,
parameter groups and between-epoch hooks. Optional config fields and their
defaults: ``counting_jax.train.defaults``.

A run folder (``workdir``) holds ``checkpoints/`` (orbax), ``metrics.jsonl``
and ``tb/`` (scalars), ``train_ids.json`` (the images trained on),
``metrics.json`` (test-split MAE, RMSE, NAE, SRE), ``counts.json`` and
``panels/``.

Scale-out (see ``sharding``): the step runs under ``jax.jit`` on a mesh of
every device of every process; each process loads its own slice of each
global batch, decoded in ``input.num_workers`` worker processes. A run
killed at any point and restarted with the same command continues from its
newest checkpoint and ends with the same parameters, ``metrics.jsonl`` rows
and ``metrics.json``. Metrics are checked for NaN/inf before every
checkpoint, so a saved state is never a diverged one.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from counting_jax import data as data_lib
from counting_jax import density as density_lib
from counting_jax import localization as localization_lib
from counting_jax import methods as methods_lib
from counting_jax import metrics as metrics_lib
from counting_jax.data import pipeline
from counting_jax.train import checkpoint, optim, panels, pretrained, sharding
from counting_jax.train import compile_options, defaults
from counting_jax.train import published as published_lib
from counting_jax.train import predict as predict_lib
from counting_jax.train import state as state_lib
from counting_jax.train import step as step_lib
from counting_jax.train import writers

__all__ = ["train_and_evaluate", "evaluate", "predict",
           "select_train_indices", "epochs_done"]


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
  """(method, optimiser) of a completed config."""
  method = methods_lib.build(config)
  optim_kwargs = dict(config.optim)
  optim_kwargs["groups"] = dict(optim_kwargs.get("groups") or {})
  tx = optim.make_optimizer(total_steps=config.total_steps,
                            param_labels=method.param_labels, **optim_kwargs)
  return method, tx


def _compiler_options(config):
  """XLA options of the jitted steps (``config.xla_cpu_ynn_fusion_type``)."""
  return compile_options.compiler_options(config.xla_cpu_ynn_fusion_type)


def _ema_decay(config):
  decay = float(config.ema_decay or 0.0)
  return decay if decay > 0 else None


def epochs_done(steps: int, batch_size: int, epoch_size: int) -> int:
  """Complete passes over ``epoch_size`` training elements after ``steps``
  global batches of ``batch_size``."""
  return steps * batch_size // epoch_size


def _check_finite(rows, last_step):
  """Raises FloatingPointError naming the steps when a metric is not
  finite."""
  for i, row in enumerate(rows):
    bad = {k: v for k, v in row.items() if not np.isfinite(v)}
    if bad:
      step = last_step - len(rows) + i + 1
      raise FloatingPointError(
          f"non-finite metrics at step {step} (of steps "
          f"{last_step - len(rows) + 1}..{last_step}; nothing saved after "
          f"the previous checkpoint): {bad}")


def _load(config, split):
  ds = config.dataset
  return data_lib.load(ds.name, split, data_dir=_opt(ds.get("data_dir")),
                       manual_dir=_opt(ds.get("manual_dir")),
                       options=_opt(ds.get(ds.name)))


def _host(metrics) -> dict:
  """Scalar metrics (device arrays or floats) -> {name: float}."""
  return {k: float(v) for k, v in metrics.items()}


def train_and_evaluate(config, workdir) -> dict:
  """Trains (resuming from the newest checkpoint in ``workdir``), then
  evaluates on the test split; returns the test metrics dict.

  Raises:
    ValueError: when ``input.batch_size`` does not split over the devices
      and ``accum_steps`` micro-batches, or for an unknown method, model or
      loss.
    FloatingPointError: on non-finite metrics, naming the step (checked at
      every log and before every checkpoint).
  """
  config = defaults.complete(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lead = jax.process_index() == 0
  mesh = sharding.make_mesh()
  repl, dsh = sharding.replicated(mesh), sharding.data_sharded(mesh)
  method, tx = _build(config)
  inp = config.input
  accum = int(config.accum_steps)
  ema_decay = _ema_decay(config)
  sharding.check_batch_size(inp.batch_size, mesh, accum_steps=accum)
  n_proc, proc = jax.process_count(), jax.process_index()
  local_bs = sharding.local_batch_size(inp.batch_size, n_proc)

  source = _load(config, config.dataset.train_split)
  indices, ids = select_train_indices(
      source, _opt(config.dataset.get("num_train")), config.dataset.draw_seed)
  if lead:
    (workdir / "train_ids.json").write_text(json.dumps(ids))
  stream = sharding.repeat_to_batch(indices, inp.batch_size)
  ds = pipeline.train_dataset(
      source, indices=stream, batch_size=local_bs,
      max_points=inp.max_points, seed=config.seed,
      crop_size=_opt(inp.get("crop_size")), flip=inp.flip, vflip=inp.vflip,
      scale_range=_opt(inp.get("scale_range")), scale_prob=inp.scale_prob,
      pad_multiple=inp.pad_multiple, mean=inp.mean, std=inp.std,
      cache=inp.cache, fields=method.fields,
      color_jitter=_opt(inp.get("color_jitter")))

  first = ds[0]
  state = state_lib.create_train_state(
      method.model, tx, jax.random.PRNGKey(config.seed),
      tuple(np.asarray(first[k][:1]) for k in method.inputs),
      ema=ema_decay is not None)
  init_path = _opt(config.init_checkpoint)
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
      step_lib.make_train_step(method, tx, accum_steps=accum,
                               ema_decay=ema_decay),
      in_shardings=(repl, dsh), out_shardings=(repl, repl),
      donate_argnums=0, compiler_options=_compiler_options(config))
  batches = pipeline.iterate(ds, start, process_index=proc,
                             process_count=n_proc,
                             num_workers=int(inp.num_workers))
  writer = writers.MetricWriter(workdir) if lead else None
  bar = tqdm.tqdm(total=config.total_steps, initial=start, desc="train",
                  dynamic_ncols=True, disable=config.quiet or not lead)
  t0, n_timed = time.time(), 0
  try:
    for step in range(start, config.total_steps):
      batch = next(batches)
      # The 0-based epoch of this step, for losses that change with it
      # (mPrompt's online prompt); other losses ignore the field.
      batch["epoch"] = np.full(
          (len(batch["image"]),),
          epochs_done(step, inp.batch_size, len(stream)), np.int32)
      state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
      pending.append(metrics)
      n_timed += 1
      done = step + 1
      epoch = epochs_done(done, inp.batch_size, len(stream))
      if (method.on_epoch_end is not None
          and epoch > epochs_done(step, inp.batch_size, len(stream))):
        state = method.on_epoch_end(state, epoch)
      if done % config.log_every == 0 or done == config.total_steps:
        rows = [_host(r) for r in pending]
        _check_finite(rows, done)
        means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        means["steps_per_s"] = n_timed / max(time.time() - t0, 1e-9)
        if writer is not None:
          writer.write_scalars(done, means, prefix="train/")
        bar.set_postfix(loss=f"{means['loss']:.4g}", mae=f"{means['mae']:.2f}")
        bar.update(len(rows))
        pending, t0, n_timed = [], time.time(), 0
      if done % config.checkpoint_every == 0 or done == config.total_steps:
        pending = [_host(r) for r in pending]  # logged after a resume
        _check_finite(pending, done)
        # Asynchronous: orbax copies the arrays to the host before returning
        # and writes them in the background, atomically (a kill mid-write
        # leaves the previous step intact).
        checkpoint.save(manager, state, step=done, wait=False,
                        meta={"step": done, "pending": list(pending)})
  finally:
    # Saves already started are of checked states: let them finish.
    bar.close()
    manager.wait_until_finished()
    manager.close()
  result = evaluate(config, workdir, state=state, method=method,
                    writer=writer)
  if writer is not None:
    writer.close()
  return result


def _restore_for_eval(config, workdir):
  """(method, state) of the newest checkpoint in ``workdir``, else of the
  converted whole-model checkpoint ``config.init_checkpoint``.

  Raises:
    FileNotFoundError: when there is neither.
    ValueError: when ``init_checkpoint`` holds only backbone weights.
  """
  method, tx = _build(config)
  m = int(config.input.pad_multiple)
  dummy = method.dummy_batch(m * method.stride, m * method.stride)
  target = state_lib.create_train_state(
      method.model, tx, jax.random.PRNGKey(config.seed),
      tuple(dummy[k] for k in method.inputs),
      ema=_ema_decay(config) is not None)
  target = sharding.replicate(target, sharding.make_mesh())
  manager = checkpoint.make_manager(pathlib.Path(workdir) / "checkpoints")
  state, _ = checkpoint.restore_latest(manager, target)
  manager.close()
  init_path = _opt(config.init_checkpoint)
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
  return method, state


def _gather(rows, n_total, width: int = 2):
  """Rows (index, value_1, ..., value_width) of every process, sorted by
  index (numbers only: every process loads the same split, so image ids are
  looked up by index afterwards)."""
  if jax.process_count() == 1:
    return sorted(rows)
  k = -(-n_total // jax.process_count())
  idx = np.full((k,), -1, np.int32)
  vals = np.zeros((k, width), np.float32)
  for j, (i, *v) in enumerate(rows):
    idx[j], vals[j] = i, v
  idx, vals = multihost_utils.process_allgather((idx, vals))
  return sorted((int(i), *(float(x) for x in v))
                for i, v in zip(idx.reshape(-1), vals.reshape(-1, width))
                if i >= 0)


def half_counts(density, batch, b: int, stride: int):
  """(ŷ_in, ŷ_out) of image ``b`` of an evaluation batch of a two-class
  synthetic set (``fsc147_synthetic``: ``half`` 0 / 1, ``split_x`` input
  pixels): the density map float [h, w] (stride ``stride``) summed on each
  side of ``split_x``, rounded to the nearest density column (the boundary
  need not be a multiple of the stride). Used by :func:`evaluate` for the
  error |y - ŷ_in| + ŷ_out (Seg-then-Count §4.2).
  """
  split = int(round(float(batch["split_x"][b]) / stride)) * stride
  return metrics_lib.half_counts(np.asarray(density), split,
                                 int(batch["half"][b]), stride=stride)


class _WithUserInputs:
  """A source whose samples take the user's ``--text`` (as class name) and
  ``--exemplars`` (boxes by image id or file name)."""

  def __init__(self, source, text=None, exemplars=None):
    self._source, self._text, self._exemplars = source, text, exemplars

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    sample = dict(self._source[i])
    if self._text is not None:
      sample["class_name"] = self._text
    if self._exemplars is not None:
      sample["boxes"] = predict_lib.boxes_for(self._exemplars,
                                              sample["image_id"])
    return sample


def _check_exemplars(method, source, indices):
  """Raises ValueError before any compilation when an exemplar method meets
  a test image without exemplar boxes."""
  if "exemplars" not in method.inputs:
    return
  for i in indices:
    if len(source[i]["boxes"]) == 0:
      raise ValueError(f"image {source[i]['image_id']!r} has no exemplar "
                       f"boxes; method {method.name!r} needs them (give "
                       "--exemplars boxes.json)")


def evaluate(config, workdir, *, state=None, method=None, writer=None,
             text=None, exemplars=None) -> dict:
  """Counts every image of the test split at full resolution (images with a
  side above ``eval_tiling.max_size`` in overlapping tiles), writes
  ``metrics.json``, ``counts.json`` and panels, prints MAE/RMSE; returns the
  metrics. Processes share the images (image i goes to process i mod P);
  process 0 gathers the counts and writes the files.

  Args:
    config, workdir: the run's config and folder.
    state, method: the trained state and its method (default: restored
      from the newest checkpoint).
    writer: a ``writers.MetricWriter`` for the test scalars.
    text: a text prompt replacing every test image's class name (text-guided
      methods); default ``config.dataset.prompt`` when set (T2ICount on
      CARPK: "cars").
    exemplars: {image id or file name: boxes [K, 4]} replacing the data
      set's exemplar boxes (``predict.read_exemplars``).

  Raises:
    ValueError: when an exemplar method meets an image without exemplars.
    FileNotFoundError: when there is no checkpoint to evaluate.
  """
  config = defaults.complete(config)
  workdir = pathlib.Path(workdir)
  inp = config.input
  source = _load(config, config.dataset.test_split)
  if text is None and config.dataset.get("prompt"):
    text = str(config.dataset.prompt)
  if text is not None or exemplars is not None:
    source = _WithUserInputs(source, text, exemplars)
  mine = list(range(jax.process_index(), len(source), jax.process_count()))
  if method is None or state is None:
    _check_exemplars(methods_lib.build(config), source, mine)
    method, state = _restore_for_eval(config, workdir)
  _check_exemplars(method, source, mine)
  use_ema = _ema_decay(config) is not None
  predict = predict_lib.make_predict_fn(
      step_lib.make_eval_step(method, use_ema=use_ema), state,
      _compiler_options(config))
  panel_dir = workdir / "panels"
  panel_dir.mkdir(parents=True, exist_ok=True)
  n_panels = config.num_panels
  rows, halves, loc_pred, loc_true = [], [], [], []
  for batch in pipeline.eval_batches(
      source, batch_size=inp.eval_batch_size, pad_multiple=inp.pad_multiple,
      mean=inp.mean, std=inp.std, indices=mine, fields=method.fields):
    dens, counts = predict_lib.predict_counts(
        predict, predict_lib.model_inputs(batch, method), batch["image_size"],
        stride=method.stride, multiple=inp.pad_multiple,
        **dict(config.eval_tiling))
    for b in range(dens.shape[0]):
      index = mine[len(rows)]
      rows.append((index, float(counts[b]), float(batch["count"][b])))
      if "split_x" in batch and "half" in batch:
        halves.append((index, *half_counts(dens[b], batch, b,
                                           method.stride),
                       float(batch["count"][b])))
      loc_pred.append(localization_lib.localize_density(
          density_lib.crop_to_image(dens[b], batch["image_size"][b],
                                    method.stride),
          stride=method.stride,
          **_eval_localization(config, method.stride)[1])[0])
      loc_true.append(batch["points"][b][batch["point_mask"][b]])
      if index >= n_panels:
        continue
      (h, w), pred = batch["image_size"][b], density_lib.crop_to_image(
          dens[b], batch["image_size"][b], method.stride)
      target = density_lib.gaussian_density(
          batch["points"][b], batch["point_mask"][b], pred.shape,
          config.panel_sigma, stride=method.stride)
      panels.save_panel(panel_dir / f"{batch['image_id'][b]}.png",
                        batch["image"][b][:h, :w], pred,
                        target_density=np.asarray(target),
                        true_count=float(batch["count"][b]),
                        title=str(batch["image_id"][b]))
  rows = _gather(rows, len(source))
  index, preds, trues = zip(*rows)
  result = metrics_lib.counting_metrics(list(preds), list(trues))
  halves = _gather(halves, len(source), width=3)
  if halves:
    _, pin, pout, ytrue = zip(*halves)
    result.update({f"synthetic_{k}": v for k, v in
                   metrics_lib.synthetic_counting_metrics(
                       pin, pout, ytrue).items()})
  result["step"] = int(np.asarray(sharding.local_copy(state.step)))
  result.update(_localization_result(config, method.stride, loc_pred,
                                     loc_true))
  if jax.process_index() == 0:
    ids = [str(source[i]["image_id"]) for i in index]
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
    if "synthetic_mae" in result:
      print(f"synthetic two-class error |y - y_in| + y_out: "
            f"MAE {result['synthetic_mae']:.3f}  "
            f"RMSE {result['synthetic_rmse']:.3f}  "
            f"NAE {result['synthetic_nae']:.4f}  "
            f"SRE {result['synthetic_sre']:.4f}")
    if "loc_f1" in result:
      print(f"localization ({result['loc_method']}, radius "
            f"{result['loc_radius']:g} px): F1 {result['loc_f1']:.4f}  "
            f"precision {result['loc_precision']:.4f}  "
            f"recall {result['loc_recall']:.4f}")
    published = published_lib.published_table(config)
    if published:
      print("published (" + published[0] + "):")
      for name, value in published[1]:
        print(f"  {name:<36} {value}")
  return result


def _eval_localization(config, stride):
  """(radius, localize_density kwargs) of ``eval``'s localization report.

  Config keys (``counting_jax.train.defaults``): ``eval_loc_radius``
  (matching radius in input pixels, 8), ``eval_loc_method``
  ("local_maxima"), ``eval_loc_threshold`` (local maxima: peak threshold in
  count units per density pixel; None: half the peak of a unit Gaussian of
  ``eval_loc_sigma`` = 4 input pixels on the stride grid,
  0.5 * min(1, stride^2 / (2 pi sigma^2))), ``eval_loc_max_points`` (4096).
  """
  method = config.eval_loc_method
  kwargs = {"method": method, "max_points": int(config.eval_loc_max_points)}
  if method == "local_maxima":
    sigma = float(config.eval_loc_sigma)
    default = 0.5 * min(1.0, stride ** 2 / (2 * np.pi * sigma ** 2))
    threshold = config.eval_loc_threshold
    kwargs["threshold"] = default if threshold is None else float(threshold)
  return float(config.eval_loc_radius), kwargs


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


def localize(config, workdir, images, out_dir,
             method: str = "local_maxima", *, text=None,
             exemplars=None) -> dict:
  """``counting-jax localize``: points of every image of ``images`` from
  the newest checkpoint's density maps (``localization.localize_images``:
  per-image JSON, ``nwpu_pred.txt`` for integer file names, panels), with
  the method's user inputs (``text``, ``exemplars``) as in :func:`predict`.
  """
  config = defaults.complete(config)
  files = predict_lib.list_images(images)
  predict_lib.check_user_inputs(methods_lib.build(config), files, text=text,
                                exemplars=exemplars)
  counting, state = _restore_for_eval(config, workdir)
  fn = predict_lib.make_predict_fn(step_lib.make_eval_step(
      counting, use_ema=_ema_decay(config) is not None), state,
      _compiler_options(config))
  inp = config.input

  def density_fn(image, path):
    batch, size = predict_lib.image_inputs(
        image, pathlib.Path(path).name, counting,
        multiple=inp.pad_multiple, mean=inp.mean, std=inp.std, text=text,
        exemplars=exemplars)
    dens = predict_lib.predict_densities(
        fn, batch, stride=counting.stride, multiple=inp.pad_multiple,
        image_size=size, **dict(config.eval_tiling))[0]
    return density_lib.crop_to_image(dens, size[0], counting.stride)

  _, kwargs = _eval_localization(config, counting.stride)
  kwargs.pop("method")
  if method != "local_maxima":
    kwargs.pop("threshold", None)
  max_points = kwargs.pop("max_points")
  return localization_lib.localize_images(
      density_fn, files, out_dir, stride=counting.stride, method=method,
      max_points=max_points, method_kwargs=kwargs)


def predict(config, workdir, images, out_dir, *, text=None,
            exemplars=None) -> dict:
  """``counting-jax predict``: counts every image of ``images`` with the
  newest checkpoint of ``workdir`` (EMA parameters when the config enables
  them; large images in tiles, ``eval_tiling``), writing ``counts.csv`` and
  density panels to ``out_dir``; returns {file name: count}.

  Args:
    config, workdir: the run's config and folder.
    images: a folder of images.
    out_dir: where ``counts.csv`` and the panels go.
    text: the text prompt of a text-guided method (every image).
    exemplars: {file name or stem: boxes [K, 4] input pixels} of an exemplar
      method (``predict.read_exemplars``).

  Raises:
    FileNotFoundError: when ``images`` has no image or ``workdir`` no
      checkpoint.
    ValueError: when the method needs ``text`` or ``exemplars`` and they are
      not given, or an image has no exemplar boxes (checked before the
      model is built).
  """
  config = defaults.complete(config)
  files = predict_lib.list_images(images)
  predict_lib.check_user_inputs(methods_lib.build(config), files, text=text,
                                exemplars=exemplars)
  method, state = _restore_for_eval(config, workdir)
  fn = predict_lib.make_predict_fn(step_lib.make_eval_step(
      method, use_ema=_ema_decay(config) is not None), state,
      _compiler_options(config))
  return predict_lib.count_images(
      fn, files, out_dir, method=method,
      multiple=config.input.pad_multiple, mean=config.input.mean,
      std=config.input.std, tiling_kwargs=dict(config.eval_tiling),
      text=text, exemplars=exemplars)
