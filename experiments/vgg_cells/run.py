"""VGG cells, N=32: 5 random draws from images 1-100, test on 101-200.

  python experiments/vgg_cells/run.py --workdir runs/vgg_cells [--draws 0,1,2,3,4]
      [--config_arg model=unet] [--override total_steps=600 ...]

Trains ``configs/cells.py:draw=k`` for each draw k, then prints the mean ± std
MAE (and RMSE) over the draws beside the published table, and writes
``<workdir>/results.json``. Draws already finished (their ``metrics.json``
exists) are not retrained.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from configs import cells  # pylint: disable=g-import-not-at-top,wrong-import-position
from counting_jax.train import loop  # pylint: disable=wrong-import-position


def _override(config, item: str):
  key, value = item.split("=", 1)
  node = config
  *path, last = key.split(".")
  for p in path:
    node = node[p]
  node[last] = type(node[last])(value) if node[last] is not None else value


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--draws", default="0,1,2,3,4")
  parser.add_argument("--config_arg", default="")
  parser.add_argument("--override", nargs="*", default=[])
  args = parser.parse_args(argv)
  results = {}
  for draw in [int(d) for d in args.draws.split(",")]:
    workdir = pathlib.Path(args.workdir) / f"draw{draw}"
    metrics_file = workdir / "metrics.json"
    config = cells.get_config(",".join(filter(None, [args.config_arg,
                                                     f"draw={draw}"])))
    config.quiet = True
    for item in args.override:
      _override(config, item)
    if metrics_file.exists():
      results[draw] = json.loads(metrics_file.read_text())
    else:
      results[draw] = loop.train_and_evaluate(config, workdir)
    print(f"draw {draw}: MAE {results[draw]['mae']:.3f}  "
          f"RMSE {results[draw]['rmse']:.3f}", flush=True)
  mae = np.array([r["mae"] for r in results.values()])
  rmse = np.array([r["rmse"] for r in results.values()])
  summary = {"draws": results, "mae_mean": float(mae.mean()),
             "mae_std": float(mae.std()), "rmse_mean": float(rmse.mean()),
             "rmse_std": float(rmse.std()), "config_arg": args.config_arg,
             "override": args.override}
  pathlib.Path(args.workdir, "results.json").write_text(
      json.dumps(summary, indent=2))
  print(f"\nVGG cells, N=32, {len(mae)} draws (MAE mean ± std):")
  print(f"  {'counting_jax (this run)':<36} {mae.mean():.2f} ± {mae.std():.2f}")
  for name, value in config.published:
    print(f"  {name:<36} {value}")


if __name__ == "__main__":
  main()
