"""Own cell images with the main job's recipe (configs/cells.py).

  python experiments/own_cells/run.py --folder DIR --workdir runs/own \\
      [--rescale 0.5] [--test_fraction 0.3] [--steps 600]

``DIR`` is a ``dot_folder`` (images with dot maps or point files). The
recipe: U-Net, Gaussian L2 on density x100, Adam 3e-3 cosine, random
128x128 crops with flips; σ = 0.25 x the median nearest-dot distance of the
training images (``density.spacing_sigma``), max_points from the largest
count. After training it counts the test images twice from the same
checkpoint, over the cells covering each image (what evaluation does) and
over the whole zero-padded map (what it did before), and writes
``<workdir>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import cells
from counting_jax import data, density, metrics
from counting_jax.data import pipeline
from counting_jax.train import loop
from counting_jax.train import step as step_lib
# pylint: enable=g-import-not-at-top,wrong-import-position


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--folder", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--rescale", type=float, default=1.0)
  parser.add_argument("--test_fraction", type=float, default=0.3)
  parser.add_argument("--steps", type=int, default=600)
  args = parser.parse_args(argv)
  config = cells.get_config()
  ds = config.dataset
  ds.name, ds.manual_dir, ds.data_dir = "dot_folder", args.folder, \
      args.data_dir
  ds.num_train, ds.test_split = None, "test"
  ds.dot_folder.rescale = args.rescale
  ds.dot_folder.test_fraction = args.test_fraction
  train = data.load(ds.name, "train", data_dir=ds.data_dir or None,
                    manual_dir=ds.manual_dir, options=ds.dot_folder)
  pts = [train[i]["points"] for i in range(len(train))]
  sigma = density.spacing_sigma(pts)
  config.loss.kwargs.sigma = config.panel_sigma = round(sigma, 2)
  config.input.max_points = max(64, -(-max(map(len, pts)) // 64) * 64)
  config.total_steps = args.steps
  config.quiet = True
  print(f"{len(train)} training images, median nearest-dot distance "
        f"{density.median_nearest_distance(pts):.2f} px -> σ = "
        f"{config.loss.kwargs.sigma} px; max_points "
        f"{config.input.max_points}", flush=True)
  t0 = time.time()
  result = loop.train_and_evaluate(config, args.workdir)
  minutes = (time.time() - t0) / 60

  # Same checkpoint: counts inside the image vs the whole padded map.
  # pylint: disable-next=protected-access
  model, state = loop._restore_for_eval(config, args.workdir)
  step = jax.jit(step_lib.make_eval_step(model.apply,
                                         density_scale=config.density_scale))
  test = data.load(ds.name, "test", data_dir=ds.data_dir or None,
                   manual_dir=ds.manual_dir, options=ds.dot_folder)
  inside, whole, true = [], [], []
  for batch in pipeline.eval_batches(test, batch_size=1, pad_multiple=8,
                                     mean=config.input.mean,
                                     std=config.input.std):
    dens = np.asarray(step(jax.device_get(state), batch["image"]))
    inside += list(np.asarray(density.count_in_image(
        dens, batch["image_size"], model.stride)))
    whole += list(dens.sum((1, 2)))
    true += list(batch["count"])
  shape = test[0]["image"].shape[:2]
  out = dict(
      images=dict(train=len(train), test=len(test), size=list(shape)),
      sigma=config.loss.kwargs.sigma, steps=args.steps,
      minutes=round(minutes, 2), test=result,
      mean_true_count=float(np.mean(true)),
      inside=metrics.counting_metrics(inside, true),
      whole_padded_map=metrics.counting_metrics(whole, true),
      mean_padding_mass=float(np.mean(np.array(whole) - np.array(inside))))
  pathlib.Path(args.workdir, "results.json").write_text(
      json.dumps(out, indent=2))
  print(f"test images {len(test)} ({shape[0]}x{shape[1]}, mean count "
        f"{np.mean(true):.1f}): MAE {out['inside']['mae']:.2f} RMSE "
        f"{out['inside']['rmse']:.2f} counting inside the image; whole "
        f"padded map MAE {out['whole_padded_map']['mae']:.2f} (padding "
        f"carries {out['mean_padding_mass']:+.2f} per image); "
        f"{minutes:.1f} min")


if __name__ == "__main__":
  main()
