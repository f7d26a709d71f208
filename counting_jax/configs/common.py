"""Helpers shared by config files."""

from __future__ import annotations

import ast

import ml_collections

__all__ = ["parse_arg", "dot_folder_options", "DOT_FOLDER_OPTIONS"]


def parse_arg(arg: str | None, **defaults) -> dict:
  """Parses the ``--config file.py:key=value,key2=value2`` argument.

  Values are Python literals where they parse as one (``n=32``,
  ``smoke=True``), strings otherwise; keys must be among ``defaults``.

  Raises:
    ValueError: for an unknown key or an item without ``=``.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config argument {item!r} is not key=value")
    key, value = item.split("=", 1)
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; valid: "
                       f"{sorted(defaults)}")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


# The options of the ``dot_folder`` data set and their defaults, here so
# that config files read them without importing the data package
# (tensorflow-datasets); ``counting_jax.data.dot_folder`` documents them.
DOT_FOLDER_OPTIONS = dict(
    image_suffix="", dots_suffix="_dots", points_suffix="",
    dot_threshold=0, dot_channels="any", blob_centres=False,
    point_offset=0.0, split="auto", split_list="", test_fraction=0.2,
    split_seed=0, rescale=1.0, class_name="")


def dot_folder_options() -> ml_collections.ConfigDict:
  """``config.dataset.dot_folder``: every option of the ``dot_folder`` data
  set (a user's own folder; ``counting_jax.data.dot_folder.OPTIONS``) at its
  default, so each can be set on the command line
  (``--config.dataset.dot_folder.blob_centres=True``)."""
  return ml_collections.ConfigDict(dict(DOT_FOLDER_OPTIONS))
