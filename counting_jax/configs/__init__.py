"""Built-in configs (ml_collections files), shipped with the package.

``counting-jax train --config cells`` resolves the name ``cells`` to
``counting_jax/configs/cells.py``; a path to any config file works too.
"""

from __future__ import annotations

import pathlib

__all__ = ["NAMES", "path_of"]

_HERE = pathlib.Path(__file__).parent
# Every module here except the helpers is a config.
NAMES = tuple(sorted(p.stem for p in _HERE.glob("*.py")
                     if not p.stem.startswith("_") and p.stem != "common"))


def path_of(name: str) -> pathlib.Path:
  """The file of built-in config ``name`` (e.g. 'cells').

  Raises:
    KeyError: for a name that is not a built-in config.
  """
  if name not in NAMES:
    raise KeyError(f"no built-in config {name!r}; built-in: {list(NAMES)}")
  return _HERE / f"{name}.py"
