"""Helpers shared by config files."""

from __future__ import annotations

import ast

__all__ = ["parse_arg"]


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
