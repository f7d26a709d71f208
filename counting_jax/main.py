"""The ``counting-jax`` command: train, eval, predict, localize, config,
convert, localization-metrics, pseudo-masks.

  counting-jax train   --config cells --workdir runs/cells
  counting-jax eval    --workdir runs/cells
  counting-jax predict --workdir runs/cells --images DIR --out DIR
  counting-jax localize --workdir runs/cells --images DIR --out DIR \
                        [--method local_maxima|ot_m]
  counting-jax config  cells
  counting-jax convert --checkpoint W.pth --model NAME --out DIR
  counting-jax localization-metrics --gt GT.txt --pred PRED.txt
  counting-jax pseudo-masks --workdir runs/stc_counter \
                            --imagenet DIR --masks_dir DIR

``--config`` takes a built-in config name (cells, crowd_shb) or a config
file path; config fields are overridden on the command line
(``--config.total_steps=50``) and configs take arguments
(``--config cells:model=fcrn_a``). ``train`` saves the resolved config in
the run folder (``config.py``); ``eval``, ``predict`` and a resumed
``train`` use it when ``--config`` is not given. ``counting-jax COMMAND
--help`` lists a command's flags.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import pathlib
import shutil
import sys
import textwrap
import traceback

__all__ = ["run", "main", "UserError"]

# pylint: disable=g-import-not-at-top
# Everything beyond the standard library is imported where it is used, so
# help and input errors come before the imports of JAX, Flax and tfds.

_COMMANDS = ("train", "eval", "predict", "localize", "config", "convert",
             "localization-metrics", "pseudo-masks")
_SUMMARY = {
    "train": "train in a run folder (or resume it), then evaluate",
    "eval": "evaluate a run folder's newest checkpoint on the test split",
    "predict": "count images (files, folders, globs) with a run folder",
    "config": "print a config's arguments, fields and defaults",
    "localize": "points of images (local maxima or OT-M) with a run folder",
    "convert": "convert a PyTorch checkpoint to an orbax one",
    "localization-metrics": "the NWPU-Crowd localization metric of a "
                            "prediction file",
    "pseudo-masks": "Seg-then-Count: write the pseudo masks of a split with "
                    "a counter run folder",
}
# (name, kind, help); kind: "str", "int", "multi" (repeatable str), "bool".
_FLAGS = {
    "config": ("str", "built-in config name (cells, crowd_shb) or config "
               "file, with optional ':arguments'; eval/predict and a resumed "
               "train default to the run folder's config.py"),
    "workdir": ("str", "run folder (checkpoints, logs, metrics, config.py)"),
    "images": ("multi", "image file, folder or glob (repeatable)"),
    "out": ("str", "output folder for counts.csv and the density panels"),
    "text": ("str", "text prompt naming what to count (text-guided methods; "
             "replaces the test images' class names in eval)"),
    "exemplars": ("str", "JSON file {\"<image name>\": [[x1, y1, x2, y2], "
                  "...]} of exemplar boxes in input pixels (exemplar "
                  "methods)"),
    "coordinator": ("str", "multi-process: host:port of process 0 (or "
                    "$JAX_COORDINATOR_ADDRESS; auto-detected under Slurm/"
                    "Open MPI/TPU)"),
    "num_processes": ("int", "multi-process: number of processes (or "
                      "$JAX_NUM_PROCESSES)"),
    "process_id": ("int", "multi-process: this process's index (or "
                   "$JAX_PROCESS_ID)"),
    "method": ("str", "localize: local_maxima (default) or ot_m"),
    "imagenet": ("str", "pseudo-masks: the ImageNet ResNet-50 that embeds "
                 "the patches, an orbax folder of counting-jax convert "
                 "--model resnet50 --set num_layers=3 (default: "
                 "config.init_checkpoint)"),
    "masks_dir": ("str", "pseudo-masks: TFDS data folder the masks are "
                  "written to (default: config.pseudo_masks.data_dir)"),
    "split": ("str", "pseudo-masks: the data split, tfds slicing allowed "
              "(default: config.pseudo_masks.split); written under its "
              "base name"),
    "debug": ("bool", "show the Python traceback of an error"),
}
_MULTI = ("coordinator", "num_processes", "process_id")
_COMMAND_FLAGS = {
    "train": ("config", "workdir", *_MULTI, "debug"),
    "eval": ("config", "workdir", "text", "exemplars", *_MULTI, "debug"),
    "predict": ("config", "workdir", "images", "out", "text", "exemplars",
                "debug"),
    "localize": ("config", "workdir", "images", "out", "method", "text",
                 "exemplars", "debug"),
    "pseudo-masks": ("config", "workdir", "imagenet", "masks_dir", "split",
                     "debug"),
}


class UserError(Exception):
  """An error in what the user asked for: printed as one line."""


# Exceptions printed as one line (with --debug: the traceback).
_USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, ValueError,
                KeyError, FloatingPointError, AssertionError)


# ------------------------------------------------------------------ help ---


def _overview() -> str:
  lines = ["usage: counting-jax COMMAND [flags]   (counting-jax COMMAND "
           "--help for its flags)", "", "commands:"]
  lines += [f"  {c:<8} {_SUMMARY[c]}" for c in _COMMANDS]
  return "\n".join(lines) + "\n\n" + __doc__.split("\n\n", 1)[1]


def _command_help(command) -> str:
  lines = [f"usage: counting-jax {command} [flags] [--config.FIELD=VALUE ...]",
           "", _SUMMARY[command] + ".", "", "flags:"]
  for name in _COMMAND_FLAGS[command]:
    kind, text = _FLAGS[name]
    arg = "" if kind == "bool" else "=" + name.upper()
    lines.append(f"  --{name}{arg}")
    lines.append(textwrap.fill(text, 78, initial_indent=" " * 6,
                               subsequent_indent=" " * 6))
  lines += ["", "Config fields: counting-jax config NAME_OR_FILE lists them "
            "with their defaults."]
  return "\n".join(lines)


# ------------------------------------------------------------- configs ---


def _resolve_spec(spec: str) -> str:
  """``--config`` value -> file path (with ':arguments' kept).

  Raises:
    UserError: when it names neither a file nor a built-in config.
  """
  from counting_jax import configs
  name, sep, arg = spec.partition(":")
  if pathlib.Path(name).is_file():
    return spec
  if name in configs.NAMES:
    return str(configs.path_of(name)) + sep + arg
  raise UserError(f"--config: no config file or built-in config named "
                  f"{name!r} (built-in: {', '.join(configs.NAMES)})")


def _load_config(spec: str):
  """``get_config(arg)`` of a resolved ``--config`` value.

  Raises:
    UserError: naming the file and the config's own error.
  """
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(
      "_counting_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"--config {spec}: {type(e).__name__}: "
                    f"{_first_line(e)}") from e
  return module, config


def _check_overrides(config, argv):
  """Every ``--config.a.b=v`` names an existing field.

  Raises:
    UserError: naming the flag and the closest field names.
  """
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    dotted = arg[len("--config."):].split("=", 1)[0]
    node, done = config, []
    for key in dotted.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if key not in keys:
        where = ".".join(done) or "the config"
        close = difflib.get_close_matches(key, keys, n=3)
        hint = (f"; did you mean {', '.join(close)}?" if close
                else f"; fields: {', '.join(sorted(keys))}" if keys else "")
        raise UserError(f"{arg}: {where} has no field {key!r}{hint}")
      node, done = node[key], done + [key]


def _config_command(argv) -> int:
  if not argv or argv[0] in ("-h", "--help"):
    print("usage: counting-jax config NAME_OR_FILE[:ARGUMENTS]\n\n"
          + _SUMMARY["config"] + ".")
    return 0 if argv else 2
  module, config = _load_config(_resolve_spec(argv[0]))
  if module.__doc__:
    print(module.__doc__.strip() + "\n")
  print(f"fields of {argv[0]} (override with --config.FIELD=VALUE):")
  from counting_jax.train import run_folder
  for name, value in run_folder.flat_fields(config).items():
    print(f"  {name} = {value!r}")
  return 0


# ---------------------------------------------------------------- flags ---


def _parse(command, argv):
  """absl flags of ``command`` only (their own FlagValues, so --help and
  errors list these, not absl's ~80)."""
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  for name in _COMMAND_FLAGS[command]:
    kind, text = _FLAGS[name]
    if name == "config":
      config_flags.DEFINE_config_file(name, None, text, flag_values=fv,
                                      lock_config=True, sys_argv=argv)
    else:
      define = {"str": flags.DEFINE_string, "int": flags.DEFINE_integer,
                "multi": flags.DEFINE_multi_string,
                "bool": flags.DEFINE_bool}[kind]
      define(name, False if kind == "bool" else None, text, flag_values=fv)
  try:
    rest = fv(argv)
  except flags.Error as e:
    raise UserError(_first_line(e)) from e
  if len(rest) > 1:
    raise UserError(f"unexpected argument {rest[1]!r} (flags are "
                    f"--name=value; counting-jax {command} --help)")
  return fv


def _config_argv(command, argv, workdir):
  """argv with ``--config`` resolved to a file, or set to the run folder's
  saved config when absent; (argv, explicit)."""
  from counting_jax.train import run_folder
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      argv[i + 1] = _resolve_spec(argv[i + 1])
      return argv, argv[i + 1]
    if arg.startswith("--config="):
      spec = _resolve_spec(arg.split("=", 1)[1])
      argv[i] = "--config=" + spec
      return argv, spec
  saved = run_folder.path(workdir) if workdir else None
  if saved is None or not saved.is_file():
    where = (f"{workdir} holds no saved config ({run_folder.CONFIG_FILE})"
             if workdir else "no --workdir")
    raise UserError(f"--config is required: {where}")
  return argv + [f"--config={saved}"], None


def _flag_value(argv, name):
  for i, arg in enumerate(argv):
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
  return None


# -------------------------------------------------------------- commands ---


def _first_line(e) -> str:
  text = str(e).strip().strip("'\"")
  if "Traceback (most recent call last)" in text:  # a wrapped config error
    lines = [l for l in text.splitlines() if l.strip()]
    text = lines[0].rstrip(":") + " " + lines[-1].strip()
  lines = [l.strip() for l in text.replace("\\n", "\n").splitlines()
           if l.strip()]
  return " ".join(lines[:2]) if lines else type(e).__name__


def _has_init_checkpoint(config) -> bool:
  return bool(config.get("init_checkpoint", ""))


def _check_inputs(command, config, workdir, fv):
  """Checks that need no computation, before anything is built."""
  from counting_jax.train import run_folder
  workdir = pathlib.Path(workdir)
  init = config.get("init_checkpoint", "") or ""
  if init and not pathlib.Path(init).exists():
    raise UserError(f"config.init_checkpoint not found: {init}")
  manual = config.dataset.get("manual_dir", "") or ""
  if manual and not pathlib.Path(manual).is_dir():
    raise UserError(f"config.dataset.manual_dir: folder not found: {manual}")
  if command in ("eval", "predict", "localize", "pseudo-masks"):
    if not run_folder.has_checkpoint(workdir) and not init:
      what = (f"run folder not found: {workdir}" if not workdir.exists()
              else f"no checkpoint in {workdir / 'checkpoints'}")
      raise UserError(f"--workdir: {what} (train first, or set "
                      "--config.init_checkpoint to a converted counter)")
  if command == "localize" and (fv["method"].value or "local_maxima") not in (
      "local_maxima", "ot_m"):
    raise UserError(f"--method must be local_maxima or ot_m, got "
                    f"{fv['method'].value!r}")
  if command in ("predict", "localize"):
    if not fv["images"].value:
      raise UserError("--images is required (a file, folder or glob)")
    if not fv["out"].value:
      raise UserError("--out is required (output folder)")
    from counting_jax.train import image_list
    try:
      return image_list.expand(fv["images"].value)
    except FileNotFoundError as e:
      raise UserError(f"--images: {e}") from e
  return None


def _check_saved(command, config, workdir):
  """A conflicting config fails here, naming the fields, not later in a
  checkpoint restore."""
  from counting_jax.train import run_folder
  saved = run_folder.load(workdir)
  if saved is None:
    return
  diff = run_folder.differences(saved, config,
                                ignore=run_folder.RUNTIME_FIELDS[command])
  if diff:
    raise UserError(
        f"--config differs from the run's saved config "
        f"({run_folder.path(workdir)}) in {', '.join(diff)}; omit --config "
        "to use the saved one, or use another --workdir")


def _check_data(config, splits):
  """Prepares/opens the data set's splits (refusing a missing split or a
  manual_dir of the wrong layout) before a run folder is made."""
  from counting_jax import data as data_lib
  ds = config.dataset
  for split in splits:
    try:
      data_lib.load(ds.name, split, data_dir=ds.get("data_dir") or None,
                    manual_dir=ds.get("manual_dir") or None)
    except (FileNotFoundError, ValueError, AssertionError) as e:
      raise UserError(f"data set {ds.name} ({split}): {_first_line(e)}"
                      ) from e


def _only_setup_files(workdir: pathlib.Path) -> bool:
  """Whether a run folder holds nothing a failed run would want kept: no
  checkpoint and no logged step."""
  from counting_jax.train import run_folder
  return (not run_folder.has_checkpoint(workdir)
          and not (workdir / "metrics.jsonl").exists()
          and not (workdir / "metrics.json").exists())


def _run_folder_command(command, argv) -> int:
  if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
    print(_command_help(command))
    return 0
  workdir = _flag_value(argv, "workdir")
  if not workdir:
    raise UserError("--workdir is required (the run folder)")
  argv, explicit = _config_argv(command, argv, workdir)
  spec = explicit if explicit else _flag_value(argv, "config")
  _, plain = _load_config(spec)
  _check_overrides(plain, argv)
  fv = _parse(command, ["counting-jax"] + argv)
  config = fv["config"].value
  _check_saved(command, config, workdir)
  files = _check_inputs(command, config, workdir, fv)

  from absl import flags, logging
  flags.FLAGS.mark_as_parsed()  # absl logging without its "before flag
  # parsing" notice; this command's flags live in their own FlagValues.
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  from counting_jax.train import run_folder, sharding
  if command not in ("predict", "localize", "pseudo-masks"):
    sharding.initialize_distributed(fv["coordinator"].value,
                                    fv["num_processes"].value,
                                    fv["process_id"].value)
  workdir = pathlib.Path(workdir)
  if command == "train":
    _check_data(config, (config.dataset.train_split,
                         config.dataset.test_split))
    import jax
    lead = jax.process_index() == 0
    created = not workdir.exists()
    if lead:
      workdir.mkdir(parents=True, exist_ok=True)
      if not run_folder.path(workdir).exists():
        run_folder.save(config, workdir)
      if ("init_checkpoint" in config and not _has_init_checkpoint(config)
          and not run_folder.has_checkpoint(workdir)):
        print(f"note: no config.init_checkpoint: {config.model.name} starts "
              "from random weights (not the papers' ImageNet "
              "initialisation; see counting-jax convert)", flush=True)
    from counting_jax.train import loop
    try:
      loop.train_and_evaluate(config, workdir)
    except BaseException:
      if lead and created and _only_setup_files(workdir):
        shutil.rmtree(workdir, ignore_errors=True)
      raise
  elif command == "eval":
    _check_data(config, (config.dataset.test_split,))
    from counting_jax.train import loop
    loop.evaluate(config, workdir, **_user_inputs(fv))
  elif command == "pseudo-masks":
    from counting_jax.train import pseudo_masks
    rows, where, split = pseudo_masks.generate(
        config, workdir, imagenet=fv["imagenet"].value,
        masks_dir=fv["masks_dir"].value, split=fv["split"].value,
        progress=not config.get("quiet", False))
    print(f"wrote the pseudo masks of {len(rows)} image"
          f"{'s' * (len(rows) != 1)} (split {split}) to {where}; train the "
          f"segmenter with --config.pseudo_masks.data_dir={where} "
          f"--config.pseudo_masks.split={split}")
  elif command == "localize":
    from counting_jax.train import loop
    out = pathlib.Path(fv["out"].value)
    points = loop.localize(config, workdir, files, out,
                           fv["method"].value or "local_maxima",
                           **_user_inputs(fv))
    print(f"localized {len(points)} image{'s' * (len(points) != 1)}: points "
          f"in {out}/points.json and {out}/<image>.json, panels in {out}")
  else:
    return _predict(config, workdir, files, pathlib.Path(fv["out"].value),
                    _user_inputs(fv))
  return 0


def _user_inputs(fv) -> dict:
  """--text / --exemplars, only when given (methods that need them)."""
  out = {}
  if fv["text"].value:
    out["text"] = fv["text"].value
  if fv["exemplars"].value:
    from counting_jax.train import predict as predict_lib
    out["exemplars"] = predict_lib.read_exemplars(fv["exemplars"].value)
  return out


def _predict(config, workdir, files, out, user_inputs) -> int:
  from counting_jax.train import image_list, loop
  failures = []
  try:
    counts = loop.predict(config, workdir, files, out, **user_inputs)
  except image_list.UnreadableImagesError as e:
    counts, failures = e.counts, e.failures
  print(f"counted {len(counts)} image{'s' * (len(counts) != 1)}: counts in "
        f"{out / 'counts.csv'}, density panels in {out}/*_density.png")
  if failures:
    print(f"counting-jax predict: error: {len(failures)} image"
          f"{'s' * (len(failures) != 1)} could not be read (no row in "
          "counts.csv):", file=sys.stderr)
    for path, reason in failures:
      print(f"  {path}: {reason}", file=sys.stderr)
    return 1
  return 0


def main(argv) -> int:
  """Runs ``counting-jax`` with ``argv`` (without the program name);
  returns the exit status. Expected errors print one line (``--debug``: the
  traceback) and return 1."""
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_overview())
    return 0 if argv else 2
  command, rest = argv[0], list(argv[1:])
  if command not in _COMMANDS:
    print(f"counting-jax: unknown command {command!r}\n\n{_overview()}",
          file=sys.stderr)
    return 2
  if command == "convert":
    from counting_jax.convert import cli
    return cli.main(rest)
  if command == "localization-metrics":
    from counting_jax.localization import cli as loc_cli
    return loc_cli.main(rest)
  debug = "--debug" in rest or "--debug=true" in rest
  try:
    if command == "config":
      return _config_command(rest)
    return _run_folder_command(command, rest)
  except _USER_ERRORS as e:
    if debug:
      traceback.print_exc()
    print(f"counting-jax {command}: error: {_first_line(e)}"
          + ("" if debug else "  (--debug: traceback)"), file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"counting-jax {command}: interrupted", file=sys.stderr)
    return 130


def run():
  """Console-script entry point."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run()
