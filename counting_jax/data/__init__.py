"""Data sets as tensorflow-datasets builders over manually downloaded files.

``DATASETS`` maps a name to (builder class, default manual directory or
None). Builders with options (``dot_folder``: a user's own folder, see
``counting_jax.data.dot_folder``) take them as ``options`` (a dict; from a
config, ``config.dataset.<name>``). :func:`load` prepares the array_record
files on first use (TensorFlow-free) and returns a random-access source of
samples (``counting_jax.data.sample``), ready for grain.
"""

from __future__ import annotations

import os
import pathlib

import tensorflow_datasets as tfds

from counting_jax.data import vgg_cells
from counting_jax.data.builders.vgg_cells import VggCells
from counting_jax.data.builders.carpk import Carpk
from counting_jax.data.builders.dot_folder import DotFolder
from counting_jax.data.builders.fsc147 import Fsc147
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
    "carpk": (Carpk, None),
    "dot_folder": (DotFolder, None),
}

__all__ = ["DATASETS", "builder", "load", "default_data_dir"]


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

  Raises:
    ValueError: for an unknown name, options given to a builder without
      any, or a bad option.
    AssertionError (from tfds): when ``manual_dir`` is missing or empty; the
      message repeats the data set's MANUAL_DOWNLOAD_INSTRUCTIONS.
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
  b = cls(data_dir=data_dir, file_format="array_record", **kwargs)
  if not b.is_prepared():
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(manual_dir))
    b.download_and_prepare(download_config=config)
  return b


def load(name: str, split: str, *, data_dir=None, manual_dir=None,
         options=None):
  """Random-access source of the samples of ``name``/``split``.

  Returns a sequence (``len``, ``__getitem__``) of sample dicts with numpy
  values; text fields are ``str``. Splits accept tfds slicing
  (``"train[:32]"``).
  """
  b = builder(name, data_dir=data_dir, manual_dir=manual_dir,
              options=options)
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
