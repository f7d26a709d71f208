"""``counting-jax convert --checkpoint PATH --model NAME --out DIR``.

Converts a PyTorch checkpoint (``.pth``/``.pt``/``.safetensors``) into an
orbax checkpoint of Flax variables for a registered model; see
:mod:`counting_jax.convert`. Model attributes that change parameter shapes
can be given as ``--set name=value`` (value parsed as a Python literal).
Example::

  counting-jax convert --checkpoint best_model.pth --model bl_vgg19 \
      --out /tmp/bl_qnrf
"""

from __future__ import annotations

import argparse
import ast
import sys

import jax
import numpy as np

from counting_jax import convert

__all__ = ["main"]


def _parse_set(items) -> dict:
  kwargs = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set expects name=value, got {item!r}")
    try:
      kwargs[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      kwargs[key] = value
  return kwargs


def main(argv=None) -> int:
  """Runs the conversion; returns 0, or 2 with the error on stderr."""
  parser = argparse.ArgumentParser(
      prog="counting-jax convert",
      description="PyTorch checkpoint -> orbax checkpoint of Flax variables.")
  parser.add_argument("--checkpoint", required=True,
                      help=".pth/.pt/.bin/.tar or .safetensors file")
  parser.add_argument("--model", required=True,
                      help=f"one of: {', '.join(convert.MODEL_NAMES)}")
  parser.add_argument("--out", required=True, help="directory to create")
  parser.add_argument("--set", action="append", default=[], metavar="K=V",
                      help="model attribute (repeatable)")
  parser.add_argument("--force", action="store_true",
                      help="overwrite --out if it exists")
  args = parser.parse_args(argv)
  try:
    variables = convert.convert_checkpoint(args.checkpoint, args.model,
                                           **_parse_set(args.set))
    out = convert.save_variables(variables, args.out, force=args.force)
  except ValueError as e:
    print(f"counting-jax convert: error: {e}", file=sys.stderr)
    return 2
  sizes = {k: sum(np.size(x) for x in jax.tree.leaves(v))
           for k, v in variables.items()}
  print(f"converted {args.checkpoint} for {args.model}: " +
        ", ".join(f"{k} {n:,} values" for k, n in sizes.items()) +
        f" -> {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
