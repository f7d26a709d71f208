"""The ``counting-jax`` command: train, eval, predict, localize, convert,
localization-metrics.

  counting-jax train   --config configs/cells.py --workdir runs/cells
  counting-jax eval    --config configs/cells.py --workdir runs/cells
  counting-jax predict --config configs/cells.py --workdir runs/cells \
                       --images DIR --out DIR [--text T] [--exemplars B.json]
  counting-jax localize --config configs/cells.py --workdir runs/cells \
                        --images DIR --out DIR [--method local_maxima|ot_m]
  counting-jax convert --checkpoint W.pth --model NAME --out DIR
  counting-jax localization-metrics --gt GT.txt --pred PRED.txt \
                                    [--json OUT.json]

Config fields are overridden on the command line (``--config.total_steps=50``)
and config files take arguments (``--config configs/cells.py:model=fcrn_a``).
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_COMMANDS = ("train", "eval", "predict", "localize", "convert",
             "localization-metrics")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder.")
_IMAGES = flags.DEFINE_string("images", None,
                              "predict, localize: folder of images.")
_OUT = flags.DEFINE_string("out", None, "predict, localize: output folder.")
_METHOD = flags.DEFINE_enum("method", "local_maxima",
                            ["local_maxima", "ot_m"],
                            "localize: points by local maxima or OT-M.")
_TEXT = flags.DEFINE_string(
    "text", None, "eval/predict/localize: text prompt naming what to count "
    "(text-guided methods; replaces the test images' class names in eval).")
_EXEMPLARS = flags.DEFINE_string(
    "exemplars", None, "eval/predict/localize: JSON file {\"<image name>\": "
    "[[x1, y1, x2, y2], ...]} of exemplar boxes in input pixels (exemplar "
    "methods).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "Multi-process: host:port of process 0 (or "
    "$JAX_COORDINATOR_ADDRESS; auto-detected under Slurm/Open MPI/TPU).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process: number of processes (or "
    "$JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process: this process's index (or "
    "$JAX_PROCESS_ID).")


def _main(command, argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  from counting_jax.train import loop, predict, sharding  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                  _PROCESS_ID.value)
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required")
  user_inputs = dict(text=_TEXT.value, exemplars=(
      predict.read_exemplars(_EXEMPLARS.value) if _EXEMPLARS.value else None))
  if command == "train":
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  elif command == "eval":
    loop.evaluate(_CONFIG.value, _WORKDIR.value, **user_inputs)
  elif command == "predict":
    if not _IMAGES.value or not _OUT.value:
      raise app.UsageError("predict needs --images and --out")
    predict.predict_folder(_CONFIG.value, _WORKDIR.value, _IMAGES.value,
                           _OUT.value, **user_inputs)
  elif command == "localize":
    if not _IMAGES.value or not _OUT.value:
      raise app.UsageError("localize needs --images and --out")
    loop.localize(_CONFIG.value, _WORKDIR.value, _IMAGES.value, _OUT.value,
                  _METHOD.value, **user_inputs)


def _config_root_on_path(argv):
  """Config files import ``configs.common``: put the folder holding
  ``configs/`` on sys.path."""
  for i, arg in enumerate(argv):
    value = None
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value:
      path = pathlib.Path(value.split(":", 1)[0]).resolve()
      sys.path.insert(0, str(path.parent.parent))


def run():
  argv = list(sys.argv)
  if len(argv) < 2 or argv[1] not in _COMMANDS:
    print(__doc__)
    sys.exit(2)
  command = argv.pop(1)
  if command == "convert":
    from counting_jax.convert import cli  # pylint: disable=g-import-not-at-top
    sys.exit(cli.main(argv[1:]))
  if command == "localization-metrics":
    # pylint: disable-next=g-import-not-at-top
    from counting_jax.localization import cli as loc_cli
    sys.exit(loc_cli.main(argv[1:]))
  _config_root_on_path(argv)
  app.run(lambda a: _main(command, a), argv=argv)


if __name__ == "__main__":
  run()
