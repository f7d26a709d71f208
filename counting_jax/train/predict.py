"""Count objects in a folder of images with a trained run."""

from __future__ import annotations

import csv
import pathlib

import jax
import numpy as np

from counting_jax.data import pipeline, transforms, vgg_cells
from counting_jax.train import checkpoint, loop, panels, state as state_lib, step as step_lib

__all__ = ["predict_folder"]

_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def predict_folder(config, workdir, images_dir, out_dir) -> dict:
  """Counts every image in ``images_dir`` (full resolution, zero-padded to
  the model's multiple), writes ``counts.csv`` and one panel per image to
  ``out_dir``; returns {file name: count}.

  Raises:
    FileNotFoundError: when ``images_dir`` has no image or ``workdir`` no
      checkpoint.
  """
  images_dir, out_dir = pathlib.Path(images_dir), pathlib.Path(out_dir)
  files = sorted(p for p in images_dir.iterdir()
                 if p.suffix.lower() in _EXTENSIONS)
  if not files:
    raise FileNotFoundError(f"no image files ({sorted(_EXTENSIONS)}) in "
                            f"{images_dir}")
  out_dir.mkdir(parents=True, exist_ok=True)
  model, _, tx = loop._build(config)  # pylint: disable=protected-access
  multiple = loop._pad_multiple(config)  # pylint: disable=protected-access
  manager = checkpoint.make_manager(pathlib.Path(workdir) / "checkpoints")
  target = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0),
                                        (1, multiple, multiple, 3))
  state, _ = checkpoint.restore_latest(manager, target)
  manager.close()
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
  eval_step = jax.jit(step_lib.make_eval_step(
      model.apply, density_scale=config.density_scale))
  counts = {}
  for path in files:
    image = vgg_cells.read_image(path)
    sample = transforms.pad_to_multiple(
        {"image": image, "points": np.zeros((0, 2), np.float32),
         "boxes": np.zeros((0, 4), np.float32)}, multiple)
    x = pipeline.normalize(sample["image"], config.input.mean,
                           config.input.std)[None]
    dens = np.asarray(eval_step(state, x))[0]
    counts[path.name] = float(dens.sum())
    panels.save_panel(out_dir / f"{path.stem}_density.png", image,
                      dens[:image.shape[0] // model.stride,
                           :image.shape[1] // model.stride],
                      title=path.name)
  with open(out_dir / "counts.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["image", "count"])
    for name, c in counts.items():
      w.writerow([name, f"{c:.3f}"])
  return counts
