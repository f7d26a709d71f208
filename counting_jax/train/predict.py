"""Densities of whole images on this process's devices; counting a folder.

:func:`make_predict_fn` runs a jitted eval step on the local devices (the
batch padded to a multiple of their number and sharded over them);
:func:`predict_densities` sends images larger than ``max_size`` through
overlapping tiles (``counting_jax.train.tiling``) and the others through
the model whole; :func:`count_images` writes ``counts.csv`` and density
panels for a folder of images.
"""

from __future__ import annotations

import csv
import pathlib

import jax
import numpy as np

from counting_jax.data import files as files_lib
from counting_jax.data import pipeline, transforms
from counting_jax.train import image_list, panels, sharding, tiling

__all__ = ["make_predict_fn", "predict_densities", "count_images",
           "list_images", "predict_folder", "EXTENSIONS"]

EXTENSIONS = image_list.EXTENSIONS


def make_predict_fn(eval_step, state, compiler_options=None, devices=None):
  """``predict(images float32 [b, H, W, 3]) -> float32 [b, h, w]``.

  Args:
    eval_step: ``(state, image) -> density`` (``step.make_eval_step``).
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

  def predict(images):
    images = np.asarray(images, np.float32)
    b = images.shape[0]
    pad = (-b) % n
    if pad:
      images = np.concatenate(
          [images, np.zeros((pad, *images.shape[1:]), np.float32)])
    return np.asarray(run(local, jax.device_put(images, dsh)))[:b]

  return predict


def predict_densities(predict, images, *, stride: int, multiple: int,
                      max_size: int | None = None, tile_size: int = 1024,
                      overlap: int = 128, blend: str = "linear",
                      tile_batch: int = 4):
  """Densities float32 [b, H // stride, W // stride] of a batch of padded,
  normalised images float32 [b, H, W, 3] (H, W multiples of ``multiple``).

  Images with a side above ``max_size`` input pixels (never when None) are
  cut into ``tile_size`` tiles overlapping by ``overlap`` and stitched with
  ``blend`` weights (``tiling.predict_tiled``), ``tile_batch`` tiles per
  call; the others go through the model whole, as one batch.
  """
  images = np.asarray(images, np.float32)
  if max_size is None or max(images.shape[1:3]) <= max_size:
    return predict(images)
  return np.stack([tiling.predict_tiled(
      predict, im, tile=tile_size, overlap=overlap, stride=stride,
      multiple=multiple, blend=blend, batch_size=tile_batch)
                   for im in images])


def list_images(images) -> list:
  """Image files of ``images`` (a file, folder or glob, or a sequence of
  them), naturally sorted (``image_list.expand``).

  Raises:
    FileNotFoundError: naming the input that names no image.
  """
  return image_list.expand(images)


def count_images(predict, files, out_dir, *, stride: int, multiple: int,
                 mean, std, tiling_kwargs=None, panels_too: bool = True):
  """Counts each image file at full resolution (zero-padded at the bottom/
  right to ``multiple``; the count sums the whole padded density map, as in
  evaluation), writes ``counts.csv`` (one row per image, in the order of
  ``files``, flushed as each count is made, so an interrupted run keeps
  what it counted) and, with ``panels_too``, one ``<stem>_density.png``
  panel per image to ``out_dir``; returns {file name: count} (the path
  where two files share a name).

  Raises:
    image_list.UnreadableImagesError: after counting every readable image,
      naming the files that could not be read (their rows are left out).
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  names = [p.name for p in map(pathlib.Path, files)]
  counts, failures = {}, []
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
      sample = transforms.pad_to_multiple(
          {"image": image, "points": np.zeros((0, 2), np.float32),
           "boxes": np.zeros((0, 4), np.float32)}, multiple)
      x = pipeline.normalize(sample["image"], mean, std)[None]
      dens = predict_densities(predict, x, stride=stride, multiple=multiple,
                               **(tiling_kwargs or {}))[0]
      counts[name] = float(dens.sum())
      w.writerow([name, f"{counts[name]:.3f}"])
      f.flush()
      if panels_too:
        stem = pathlib.Path(name).with_suffix("").as_posix().replace("/", "_")
        panels.save_panel(out_dir / f"{stem}_density.png", image,
                          dens[:image.shape[0] // stride,
                               :image.shape[1] // stride],
                          title=name)
  if failures:
    raise image_list.UnreadableImagesError(counts, failures)
  return counts


def predict_folder(config, workdir, images_dir, out_dir) -> dict:
  """``counting-jax predict``: the config-reading entry point lives in
  ``loop.predict``; kept here for the CLI."""
  from counting_jax.train import loop  # pylint: disable=g-import-not-at-top
  return loop.predict(config, workdir, images_dir, out_dir)
