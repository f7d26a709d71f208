"""Data sets as tensorflow-datasets builders over manually downloaded files.

``DATASETS`` maps a name to (builder class, default manual directory or
None). Builders with options (``dot_folder``: a user's own folder, see
``counting_jax.data.dot_folder``) take them as ``options`` (a dict; from a
config, ``config.dataset.<name>``). :func:`load` prepares the array_record files on first use
(TensorFlow-free) and returns a random-access source of samples
(``counting_jax.data.sample``), ready for grain.

The prepared data remember their source: ``counting_jax_source.json`` next
to tfds' ``dataset_info.json`` holds the manual folder and a fingerprint of
its listing (relative paths and sizes). A later :func:`builder` call given
a manual folder with another listing rebuilds the prepared data (the old
copy is restored if the rebuild fails); without one, it uses them and says
once which folder they came from. Data prepared before sources were
recorded are used as they are, with a note. Preparation holds a file lock
(``<data_dir>/.<name>.prepare.lock``), so concurrent runs prepare once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pathlib
import shutil
import sys
import time

import tensorflow_datasets as tfds

from counting_jax.data import vgg_cells
from counting_jax.data.builders.vgg_cells import VggCells
from counting_jax.data.builders.carpk import Carpk
from counting_jax.data.builders.dot_folder import DotFolder
from counting_jax.data.builders.exemplar_folder import ExemplarFolder
from counting_jax.data.builders.fsc147 import Fsc147
from counting_jax.data.builders.fsc147_s import Fsc147S
from counting_jax.data.builders.fsc147_synthetic import Fsc147Synthetic
from counting_jax.data.builders.jhu_crowd import JhuCrowd
from counting_jax.data.builders.nwpu_crowd import NwpuCrowd
from counting_jax.data.builders.shanghaitech import ShanghaiTechA
from counting_jax.data.builders.shanghaitech import ShanghaiTechB
from counting_jax.data.builders.ucf_qnrf import UcfQnrf

DATASETS = {
    "vgg_cells": (VggCells, vgg_cells.DEFAULT_ROOT),
    "shanghaitech_a": (ShanghaiTechA, None),
    "shanghaitech_b": (ShanghaiTechB, None),
    "ucf_qnrf": (UcfQnrf, None),
    "jhu_crowd": (JhuCrowd, None),
    "nwpu_crowd": (NwpuCrowd, None),
    "fsc147": (Fsc147, None),
    "fsc147_synthetic": (Fsc147Synthetic, None),
    "fsc147_s": (Fsc147S, None),
    "carpk": (Carpk, None),
    "dot_folder": (DotFolder, None),
    "exemplar_folder": (ExemplarFolder, None),
}

__all__ = ["DATASETS", "builder", "load", "default_data_dir",
           "source_fingerprint", "SOURCE_RECORD"]

SOURCE_RECORD = "counting_jax_source.json"
_ANNOUNCED = set()


class _QuietTfds(logging.Filter):
  """Drops two tfds warnings that carry no information here: OpenCV
  missing (PIL decodes our images; tfds logs it on every run) and "Variant
  folder ... has no dataset_info.json" (logged while preparing)."""

  def filter(self, record):
    msg = record.getMessage()
    return not (msg.startswith("OpenCV is not installed")
                or (msg.startswith("Variant folder")
                    and "has no dataset_info.json" in msg))


logging.getLogger("absl").addFilter(_QuietTfds())


def source_fingerprint(folder) -> str:
  """SHA-256 (hex) of the listing of ``folder``: every file's path relative
  to it and size in bytes, symlinks followed, sorted.

  Raises:
    FileNotFoundError: naming ``folder`` when it is not a folder.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"manual_dir not found: {folder}")
  rows = []
  for root, _, names in os.walk(folder, followlinks=True):
    for n in names:
      p = pathlib.Path(root) / n
      try:
        size = p.stat().st_size
      except OSError:  # a broken symlink
        size = -1
      rows.append(f"{p.relative_to(folder).as_posix()}\t{size}")
  return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def _read_record(b):
  path = pathlib.Path(b.data_dir) / SOURCE_RECORD
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def _prepare(b, name, manual_dir, fingerprint):
  """tfds' download_and_prepare without its "Downloading and preparing
  dataset Unknown size" lines and bars (one line of ours instead), then the
  source record."""
  print(f"preparing data set {name} from {manual_dir} into {b.data_dir} "
        "(once)", file=sys.stderr, flush=True)
  t0 = time.time()
  config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else str(manual_dir))
  tqdm_utils = tfds.core.utils.tqdm_utils
  active = tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      b.download_and_prepare(download_config=config)
  finally:
    tfds.display_progress_bar(active)
  record = {"manual_dir": None if manual_dir is None
                          else str(pathlib.Path(manual_dir).resolve()),
            "fingerprint": fingerprint}
  (pathlib.Path(b.data_dir) / SOURCE_RECORD).write_text(json.dumps(record))
  print(f"prepared {name} in {time.time() - t0:.1f} s", file=sys.stderr,
        flush=True)


def default_data_dir() -> str:
  """``$COUNTING_JAX_DATA_DIR`` or ``~/tensorflow_datasets``."""
  return os.environ.get("COUNTING_JAX_DATA_DIR",
                        str(pathlib.Path.home() / "tensorflow_datasets"))


def builder(name: str, *, data_dir=None, manual_dir=None, options=None):
  """The prepared builder of data set ``name``.

  Args:
    name: a key of ``DATASETS``.
    data_dir: where prepared array_record files live (default
      :func:`default_data_dir`).
    manual_dir: the user's downloaded files (default: the data set's own, e.g.
      the shipped VGG cells copy).
    options: dict of builder options (``dot_folder``: keys of
      ``counting_jax.data.dot_folder.OPTIONS``); they and the folder name
      the prepared copy, so other options prepare another copy.

  Already prepared data are used when ``manual_dir`` is None (and the data
  set has no default), when its listing matches the recorded fingerprint,
  or when they have no record (prepared by an older version; a note says
  so); otherwise they are rebuilt from ``manual_dir``.

  Raises:
    ValueError: for an unknown name, options given to a builder without
      any, or a bad option.
    FileNotFoundError: naming ``manual_dir`` when it is not a folder.
    AssertionError (from tfds): when no ``manual_dir`` is given and the
      data are not prepared; the message repeats the data set's
      MANUAL_DOWNLOAD_INSTRUCTIONS.
  """
  if name not in DATASETS:
    raise ValueError(f"unknown data set {name!r}; valid: {sorted(DATASETS)}")
  cls, default_manual = DATASETS[name]
  data_dir = str(data_dir or default_data_dir())
  manual_dir = manual_dir or default_manual
  kwargs = {}
  if hasattr(cls, "make_config"):
    kwargs["config"] = cls.make_config(manual_dir, dict(options or {}))
  elif options:
    raise ValueError(f"data set {name!r} takes no options, got "
                     f"{sorted(dict(options))}")
  fingerprint = (None if manual_dir is None
                 else source_fingerprint(manual_dir))
  b = cls(data_dir=data_dir, file_format="array_record", **kwargs)
  if b.is_prepared() and _usable(b, name, manual_dir, fingerprint):
    return b
  # One process prepares at a time; the others then find it prepared.
  with _lock(pathlib.Path(data_dir) / f".{name}.prepare.lock"):
    b = cls(data_dir=data_dir, file_format="array_record", **kwargs)
    if not b.is_prepared():
      _prepare(b, name, manual_dir, fingerprint)
      return b
    if _usable(b, name, manual_dir, fingerprint):
      return b
    record = _read_record(b)
    print(f"{name}: the data prepared in {b.data_dir} came from "
          f"{record['manual_dir']}, whose files differ from {manual_dir}; "
          "rebuilding", file=sys.stderr)
    old = pathlib.Path(b.data_dir)
    aside = old.with_name(old.name + ".replaced")
    shutil.rmtree(aside, ignore_errors=True)
    old.rename(aside)
    b = cls(data_dir=data_dir, file_format="array_record", **kwargs)
    try:
      _prepare(b, name, manual_dir, fingerprint)
    except BaseException:
      shutil.rmtree(old, ignore_errors=True)
      aside.rename(old)
      raise
    shutil.rmtree(aside, ignore_errors=True)
    return b


def _usable(b, name, manual_dir, fingerprint) -> bool:
  """Whether prepared data may be used as they are: their recorded source
  matches ``manual_dir``'s listing, or there is nothing to compare (no
  manual_dir given, or data prepared before sources were recorded: used,
  and said once)."""
  record = _read_record(b)
  key = (name, b.data_dir)
  if manual_dir is None or record is None:
    if key not in _ANNOUNCED:
      _ANNOUNCED.add(key)
      if record is None:
        print(f"{name}: using the data prepared in {b.data_dir} (no record "
              "of their source; delete the folder to rebuild them from "
              "manual_dir)", file=sys.stderr)
      else:
        print(f"{name}: using the data prepared in {b.data_dir} from "
              f"{record['manual_dir']} (no manual_dir given)",
              file=sys.stderr)
    return True
  return record.get("fingerprint") == fingerprint


@contextlib.contextmanager
def _lock(path: pathlib.Path):
  """An exclusive lock on ``path`` across processes (POSIX ``flock``; none
  elsewhere)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  with open(path, "a", encoding="utf-8") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def load(name: str, split: str, *, data_dir=None, manual_dir=None,
         options=None):
  """Random-access source of the samples of ``name``/``split``.

  Returns a sequence (``len``, ``__getitem__``) of sample dicts with numpy
  values; text fields are ``str``. Splits accept tfds slicing
  (``"train[:32]"``).

  Raises:
    ValueError: naming the split (and the prepared ones, and their source)
      when the prepared data lack it; as :func:`builder`.
  """
  b = builder(name, data_dir=data_dir, manual_dir=manual_dir,
              options=options)
  have = sorted(b.info.splits.keys())
  for part in split.split("+"):
    base = part.split("[", 1)[0].strip()
    if base not in have:
      record = _read_record(b) or {}
      raise ValueError(
          f"data set {name} has no split {base!r} (prepared splits: "
          f"{have}, from {record.get('manual_dir') or manual_dir}); check "
          "dataset.manual_dir or choose dataset.train_split / test_split")
  return _Decoded(b.as_data_source(split))


class _Decoded:
  """Wraps a tfds data source: every bytes (text) field -> str."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    ex = dict(self._source[index])
    for key, value in ex.items():
      if isinstance(value, bytes):
        ex[key] = value.decode("utf-8")
    return ex
