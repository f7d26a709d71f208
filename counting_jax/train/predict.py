"""Densities of whole images on this process's devices; counting a folder.

:func:`make_predict_fn` runs a jitted eval step on the local devices (the
batch padded to a multiple of their number and sharded over them);
:func:`predict_densities` sends images larger than ``max_size`` through
overlapping tiles (``counting_jax.train.tiling``) and the others through
the model whole; :func:`predict_counts` adds the counts, summed over the
density cells that cover each real image only (not its zero padding,
``counting_jax.density.count_in_image``); :func:`count_images` writes
``counts.csv`` and density panels for a folder of images.
"""

from __future__ import annotations

import csv
import pathlib

import jax
import numpy as np

from counting_jax import density as density_lib
from counting_jax.data import files as files_lib
from counting_jax.data import pipeline, transforms
from counting_jax.train import panels, sharding, tiling

__all__ = ["make_predict_fn", "predict_densities", "predict_counts",
           "count_images",
           "list_images", "predict_folder", "EXTENSIONS"]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


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
                           multiple=multiple, **tiling_kwargs)
  counts = np.asarray(density_lib.count_in_image(dens, image_size, stride),
                      np.float64)
  return dens, counts


def list_images(images_dir) -> list:
  """Image files (``EXTENSIONS``) of a folder, sorted.

  Raises:
    FileNotFoundError: when the folder is missing or holds no image.
  """
  images_dir = pathlib.Path(images_dir)
  if not images_dir.is_dir():
    raise FileNotFoundError(f"images folder not found: {images_dir}")
  files = sorted(p for p in images_dir.iterdir()
                 if p.suffix.lower() in EXTENSIONS)
  if not files:
    raise FileNotFoundError(f"no image files ({list(EXTENSIONS)}) in "
                            f"{images_dir}")
  return files


def count_images(predict, files, out_dir, *, stride: int, multiple: int,
                 mean, std, tiling_kwargs=None, panels_too: bool = True):
  """Counts each image file at full resolution (zero-padded at the bottom/
  right to ``multiple``; the count sums the density cells that cover the
  real image, as in evaluation: :func:`predict_counts`), writes
  ``counts.csv`` and, with ``panels_too``, one ``<stem>_density.png`` panel
  per image (the cells covering the image) to ``out_dir``; returns
  {file name: count}.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  counts = {}
  for path in files:
    image = files_lib.read_rgb(path)
    sample = transforms.pad_to_multiple(
        {"image": image, "points": np.zeros((0, 2), np.float32),
         "boxes": np.zeros((0, 4), np.float32)}, multiple)
    x = pipeline.normalize(sample["image"], mean, std)[None]
    size = np.asarray([image.shape[:2]], np.int32)
    dens, count = predict_counts(predict, x, size, stride=stride,
                                 multiple=multiple, **(tiling_kwargs or {}))
    counts[path.name] = float(count[0])
    if panels_too:
      panels.save_panel(out_dir / f"{path.stem}_density.png", image,
                        density_lib.crop_to_image(dens[0], size[0], stride),
                        title=path.name)
  with open(out_dir / "counts.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["image", "count"])
    for name, c in counts.items():
      w.writerow([name, f"{c:.3f}"])
  return counts


def predict_folder(config, workdir, images_dir, out_dir) -> dict:
  """``counting-jax predict``: the config-reading entry point lives in
  ``loop.predict``; kept here for the CLI."""
  from counting_jax.train import loop  # pylint: disable=g-import-not-at-top
  return loop.predict(config, workdir, images_dir, out_dir)
