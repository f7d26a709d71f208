"""Densities of whole images on this process's devices; counting a folder.

:func:`make_predict_fn` runs a jitted eval step on the local devices (the
batch padded to a multiple of their number and sharded over them);
:func:`predict_densities` sends images larger than ``max_size`` through
overlapping tiles (``counting_jax.train.tiling``) and the others through
the model whole; :func:`predict_counts` adds the counts, summed over the
density cells that cover each real image only (not its zero padding,
``counting_jax.density.count_in_image``); :func:`count_images` writes
``counts.csv`` and density panels for a folder of images. The model inputs
are a dict of the method's input fields (``image`` and, for conditioned
methods, ``exemplars`` / ``exemplar_mask`` or ``tokens``);
:func:`read_exemplars` reads the user's ``--exemplars`` file.
"""

from __future__ import annotations

import csv
import json
import pathlib

import jax
import numpy as np

from counting_jax import density as density_lib
from counting_jax.data import files as files_lib
from counting_jax.data import pipeline, transforms
from counting_jax.train import image_list, panels, sharding, tiling
from counting_jax.train import t2icount_tiling

__all__ = ["make_predict_fn", "predict_densities", "predict_counts",
           "count_images", "list_images", "predict_folder", "model_inputs",
           "read_exemplars", "boxes_for", "image_inputs", "check_user_inputs",
           "EXTENSIONS"]

EXTENSIONS = image_list.EXTENSIONS


def make_predict_fn(eval_step, state, compiler_options=None, devices=None):
  """``predict(inputs) -> float32 [b, h, w]``: ``inputs`` is the images
  float32 [b, H, W, 3] or a dict of model input fields with leading axis b.

  Args:
    eval_step: ``(state, inputs dict) -> density`` (``step.make_eval_step``).
    state: the train state (replicated arrays, possibly multi-process); this
      process's copy is replicated over ``devices``.
    compiler_options: XLA options for ``jax.jit``
      (:func:`counting_jax.train.compile_options.compiler_options`).
    devices: default ``jax.local_devices()``.
  """
  mesh = sharding.make_mesh(devices or jax.local_devices())
  n = mesh.devices.size
  local = jax.device_put(sharding.local_copy(state), sharding.replicated(mesh))
  dsh = sharding.data_sharded(mesh)
  run = jax.jit(eval_step, out_shardings=dsh,
                compiler_options=compiler_options)

  def pad(x):
    x = np.asarray(x)
    extra = (-x.shape[0]) % n
    if extra:
      x = np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)])
    return jax.device_put(x, dsh)

  def predict(inputs):
    if not isinstance(inputs, dict):
      inputs = {"image": inputs}
    inputs = dict(inputs, image=np.asarray(inputs["image"], np.float32))
    b = inputs["image"].shape[0]
    return np.asarray(run(local, {k: pad(v) for k, v in inputs.items()}))[:b]

  return predict


def model_inputs(batch, method) -> dict:
  """The fields ``method.inputs`` of a batch (``image`` float32)."""
  return {k: (np.asarray(batch[k], np.float32) if k == "image"
              else np.asarray(batch[k])) for k in method.inputs}


def predict_densities(predict, inputs, *, stride: int, multiple: int,
                      max_size: int | None = None, tile_size: int = 1024,
                      overlap: int = 128, blend: str = "linear",
                      tile_batch: int = 4, mode: str = "tiles",
                      image_size=None):
  """Densities float32 [b, H // stride, W // stride] of a batch of padded,
  normalised images float32 [b, H, W, 3] (H, W multiples of ``multiple``),
  or of a dict of model inputs holding them as ``image``.

  ``mode`` "tiles" (``eval_tiling.mode``): images with a side above
  ``max_size`` input pixels (never when None) are cut into ``tile_size``
  tiles overlapping by ``overlap`` and stitched with ``blend`` weights
  (``tiling.predict_tiled``), ``tile_batch`` tiles per call, each tile with
  its image's other inputs (e.g. text tokens); the others go through the
  model whole, as one batch.

  ``mode`` "nine_patch": every image, whatever its size, is cut into the 9
  half-size patches of the mPrompt evaluation (``tiling.nine_patch_boxes``,
  H and W multiples of 8) and their central regions are stitched
  (``blend="core"``).

  ``mode`` "t2icount": every image, cropped to its real ``image_size``
  (int [b, 2] height, width before padding; the whole padded image when
  None), goes through T2ICount's official tiling
  (``t2icount_tiling.official_tiled_density``: ``tile_size`` tiles at
  stride ``tile_size``, the last shifted to the border, ``tile_batch``
  tiles per call, maps upsampled to full resolution and overlaps
  averaged); the full-resolution density is summed back into
  ``stride`` x ``stride`` cells of the padded image (zero over the
  padding), so the count is the official one. ``max_size``, ``overlap``
  and ``blend`` are not used.

  Raises:
    ValueError: for an unknown ``mode``, or when a tiled image has exemplar
      boxes (a box is defined in the whole image, not in a tile): raise
      ``max_size``.
  """
  if mode not in ("tiles", "nine_patch", "t2icount"):
    raise ValueError("eval_tiling.mode must be 'tiles', 'nine_patch' or "
                     f"'t2icount', got {mode!r}")
  if not isinstance(inputs, dict):
    inputs = {"image": inputs}
  images = np.asarray(inputs["image"], np.float32)
  if mode == "tiles" and (max_size is None
                          or max(images.shape[1:3]) <= max_size):
    return predict(dict(inputs, image=images))
  if "exemplars" in inputs:
    raise ValueError(f"images of {images.shape[1:3]} px exceed "
                     f"eval_tiling.max_size={max_size} (or eval_tiling.mode "
                     f"is {mode!r}); tiled prediction is not defined for "
                     "exemplar boxes: raise max_size")
  out = []
  for i, im in enumerate(images):
    rest = {k: v[i] for k, v in inputs.items() if k != "image"}

    def tiles_fn(tiles, rest=rest):
      return predict({"image": tiles, **{
          k: np.repeat(v[None], len(tiles), 0) for k, v in rest.items()}})

    if mode == "tiles":
      out.append(tiling.predict_tiled(
          tiles_fn, im, tile=tile_size, overlap=overlap, stride=stride,
          multiple=multiple, blend=blend, batch_size=tile_batch))
      continue
    if mode == "nine_patch":
      boxes = tiling.nine_patch_boxes(*im.shape[:2])
      tiles = tiling.tile_image(im, boxes)
      dens = np.concatenate([np.asarray(tiles_fn(tiles[j:j + tile_batch]))
                             for j in range(0, len(tiles), tile_batch)])
      out.append(tiling.stitch(dens, boxes, *im.shape[:2], stride=stride,
                               overlap=0, blend="core"))
      continue
    h, w = (im.shape[:2] if image_size is None
            else (int(image_size[i][0]), int(image_size[i][1])))
    full = np.zeros(im.shape[:2], np.float32)
    full[:h, :w] = t2icount_tiling.official_tiled_density(
        tiles_fn, im[:h, :w], tile=tile_size, stride=stride,
        chunk=tile_batch, density_scale=1.0)  # predict gives counts
    hh, ww = im.shape[0] // stride, im.shape[1] // stride
    out.append(full.reshape(hh, stride, ww, stride).sum((1, 3)))
  return np.stack(out)


def read_exemplars(path) -> dict:
  """The user's exemplar boxes: a JSON object ``{"<image file name or
  stem>": [[x1, y1, x2, y2], ...], ...}`` in input-image pixels of the
  stored image.

  Returns:
    {key: float32 [K, 4]}.

  Raises:
    FileNotFoundError: when ``path`` is missing.
    ValueError: naming ``path`` and the key when the file is not such an
      object or a box is not 4 finite numbers with x1 < x2, y1 < y2.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--exemplars file not found: {path}")
  try:
    raw = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: not JSON: {e}") from e
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: expected {{\"image name\": [[x1, y1, x2, "
                     "y2], ...]}}")
  out = {}
  for key, boxes in raw.items():
    try:
      b = np.asarray(boxes, np.float32).reshape(-1, 4)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{path} [{key!r}]: boxes must be [[x1, y1, x2, y2], "
                       f"...]: {e}") from e
    if (not np.all(np.isfinite(b)) or np.any(b[:, 2] <= b[:, 0])
        or np.any(b[:, 3] <= b[:, 1])):
      raise ValueError(f"{path} [{key!r}]: every box needs finite x1 < x2 "
                       f"and y1 < y2, got {b.tolist()}")
    out[str(key)] = b
  return out


def boxes_for(exemplars: dict, name: str) -> np.ndarray:
  """Boxes of image ``name`` (a file name or an image id) in ``exemplars``
  (the same key, else the same stem: "IMG_1" finds "IMG_1.jpg" and back);
  float32 [0, 4] when absent."""
  name = str(name)
  if name in exemplars:
    return exemplars[name]
  stem = pathlib.Path(name).stem
  for key, boxes in exemplars.items():
    if pathlib.Path(key).stem == stem:
      return boxes
  return np.zeros((0, 4), np.float32)


def check_user_inputs(method, files, *, text=None, exemplars=None) -> None:
  """Checks, before any model is built, that the user gave what
  ``method`` needs: ``text`` for a method reading ``tokens``, exemplar
  boxes for every file for one reading ``exemplars``.

  Raises:
    ValueError: naming the missing argument (and the files without boxes).
  """
  needs = method.user_inputs
  if "tokens" in needs and not text:
    raise ValueError(f"method {method.name!r} counts what a text names: "
                     "give --text \"...\"")
  if "exemplars" in needs:
    if exemplars is None:
      raise ValueError(f"method {method.name!r} counts the objects of "
                       "exemplar boxes: give --exemplars boxes.json")
    missing = [p.name for p in files if not len(boxes_for(exemplars, p.name))]
    if missing:
      raise ValueError(f"--exemplars has no boxes for {len(missing)} "
                       f"image(s): {missing[:5]}")


def predict_counts(predict, images, image_size, *, stride: int,
                   multiple: int, **tiling_kwargs):
  """(densities, counts) of a batch of padded, normalised images.

  Args:
    predict, images, stride, multiple, tiling_kwargs: as
      :func:`predict_densities` (tiled or whole).
    image_size: int [b, 2], each real image's (height, width) before
      zero-padding (``pipeline.eval_batches``' ``image_size``).

  Returns:
    (float32 [b, H // stride, W // stride] densities of the padded images,
    float64 [b] counts over the cells that cover each real image:
    ``density.count_in_image``, which counts a cell straddling the image
    edge in full and leaves out cells of padding only).
  """
  dens = predict_densities(predict, images, stride=stride,
                           multiple=multiple, image_size=image_size,
                           **tiling_kwargs)
  counts = np.asarray(density_lib.count_in_image(dens, image_size, stride),
                      np.float64)
  return dens, counts


def list_images(images) -> list:
  """Image files of ``images`` (a file, folder or glob, or a sequence of
  them), naturally sorted (``image_list.expand``).

  Raises:
    FileNotFoundError: naming the input that names no image.
  """
  return image_list.expand(images)


def image_inputs(image, name: str, method, *, multiple: int, mean, std,
                 text=None, exemplars=None):
  """(model inputs of one image with batch axis 1, its (height, width)
  int32 [1, 2] before padding): the image zero-padded to ``multiple`` and
  normalised, and the method's fields (``exemplars`` of ``name`` from the
  user's boxes, ``tokens`` of ``text``), as evaluation builds them."""
  sample = {"image": image, "points": np.zeros((0, 2), np.float32),
            "boxes": boxes_for(exemplars or {}, name),
            "class_name": text or "", "image_id": pathlib.Path(name).stem}
  if method.fields.before_augment is not None:
    sample = method.fields.before_augment(sample)
  size = np.asarray([sample["image"].shape[:2]], np.int32)
  sample = transforms.pad_to_multiple(sample, multiple)
  if method.fields.after_augment is not None:
    sample = method.fields.after_augment(sample)
  sample = pipeline.add_fields(sample, method.fields)
  batch = {k: np.asarray(v)[None] for k, v in sample.items()
           if k in method.inputs}
  batch["image"] = pipeline.normalize(sample["image"], mean, std)[None]
  return batch, size


def count_images(predict, files, out_dir, *, method, multiple: int,
                 mean, std, tiling_kwargs=None, panels_too: bool = True,
                 text=None, exemplars=None):
  """Counts each image file at full resolution (zero-padded at the bottom/
  right to ``multiple``; the count sums the density cells that cover the
  real image, as in evaluation: :func:`predict_counts`), writes
  ``counts.csv`` (one row per image, in the order of ``files``, flushed as
  each count is made, so an interrupted run keeps what it counted) and, with
  ``panels_too``, one ``<stem>_density.png`` panel per image (the cells
  covering the image) to ``out_dir``; returns {file name: count} (the path
  where two files share a name).

  Args:
    predict: :func:`make_predict_fn`.
    files: image paths.
    out_dir: output folder (created).
    method: the ``counting_jax.methods.Method`` (inputs, fields, stride).
    multiple: images are padded to a multiple of this.
    mean, std: normalisation.
    tiling_kwargs: :func:`predict_densities` tiling arguments.
    panels_too: write the panels.
    text: class name given to every image (text-guided methods).
    exemplars: {file name or stem: boxes [K, 4]} (exemplar methods).

  Raises:
    image_list.UnreadableImagesError: after counting every readable image,
      naming the files that could not be read (their rows are left out).
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  names = [p.name for p in map(pathlib.Path, files)]
  counts, failures = {}, []
  stride = method.stride
  with open(out_dir / "counts.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["image", "count"])
    f.flush()
    for path in map(pathlib.Path, files):
      name = path.name if names.count(path.name) == 1 else str(path)
      try:
        image = files_lib.read_rgb(path)
      except (OSError, ValueError) as e:
        failures.append((path, str(e).split(": ", 1)[-1]))
        continue
      batch, size = image_inputs(image, path.name, method,
                                 multiple=multiple, mean=mean, std=std,
                                 text=text, exemplars=exemplars)
      dens, count = predict_counts(predict, batch, size, stride=stride,
                                   multiple=multiple,
                                   **(tiling_kwargs or {}))
      counts[name] = float(count[0])
      w.writerow([name, f"{counts[name]:.3f}"])
      f.flush()
      if panels_too:
        stem = pathlib.Path(name).with_suffix("").as_posix().replace("/", "_")
        panels.save_panel(out_dir / f"{stem}_density.png", image,
                          density_lib.crop_to_image(dens[0], size[0], stride),
                          title=name)
  if failures:
    raise image_list.UnreadableImagesError(counts, failures)
  return counts


def predict_folder(config, workdir, images_dir, out_dir, **user_inputs):
  """``counting-jax predict``: the config-reading entry point lives in
  ``loop.predict``; kept here for the CLI."""
  from counting_jax.train import loop  # pylint: disable=g-import-not-at-top
  return loop.predict(config, workdir, images_dir, out_dir, **user_inputs)
