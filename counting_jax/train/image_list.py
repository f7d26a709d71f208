"""The images a ``predict`` command counts: files, folders and globs.

Light (no JAX): the command line lists and checks its inputs before it
builds a model. Files are ordered naturally (``IMG_2`` before ``IMG_10``).
"""

from __future__ import annotations

import glob
import pathlib
import re

__all__ = ["EXTENSIONS", "expand", "natural_key", "UnreadableImagesError"]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def natural_key(path) -> tuple:
  """Sort key: the name's digit runs compare as numbers, the rest
  case-insensitively (``IMG_2.jpg`` < ``IMG_10.jpg``); the full path breaks
  ties."""
  name = pathlib.Path(path).name
  parts = re.split(r"(\d+)", name)
  return (tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower())
                for p in parts), str(path))


def _is_image(path: pathlib.Path) -> bool:
  return path.suffix.lower() in EXTENSIONS


def expand(inputs) -> list[pathlib.Path]:
  """Image files named by ``inputs``, naturally sorted, without duplicates.

  Args:
    inputs: one or a sequence of str / path-like, each an image file (any
      extension: an explicitly named file is always counted), a folder (its
      files with an ``EXTENSIONS`` suffix, not recursive) or a glob pattern
      (``'shots/*.jpg'``, ``'**'`` recursive).

  Raises:
    FileNotFoundError: naming the first input that is neither an existing
      file, a folder nor a pattern matching a file, or when nothing is left.
  """
  if isinstance(inputs, (str, pathlib.PurePath)):
    inputs = [inputs]
  found = {}
  for item in inputs:
    path = pathlib.Path(item)
    if path.is_file():
      hits = [path]
    elif path.is_dir():
      hits = [p for p in path.iterdir() if p.is_file() and _is_image(p)]
      if not hits:
        raise FileNotFoundError(f"no image files ({', '.join(EXTENSIONS)}) "
                                f"in folder {path}")
    elif glob.has_magic(str(item)):
      hits = [pathlib.Path(p) for p in glob.glob(str(item), recursive=True)]
      hits = [p for p in hits if p.is_file() and _is_image(p)]
      if not hits:
        raise FileNotFoundError(f"no image file matches {item}")
    else:
      raise FileNotFoundError(f"image file or folder not found: {item}")
    for p in hits:
      found.setdefault(p.resolve(), p)
  if not found:
    raise FileNotFoundError("no images given")
  return sorted(found.values(), key=natural_key)


class UnreadableImagesError(ValueError):
  """Some images could not be read; the others were counted.

  Attributes:
    counts: {file name: count} of the images counted.
    failures: [(path, reason)] of the unreadable ones, in input order.
  """

  def __init__(self, counts, failures):
    self.counts, self.failures = counts, failures
    names = "; ".join(f"{p} ({reason})" for p, reason in failures)
    super().__init__(f"{len(failures)} of {len(counts) + len(failures)} "
                     f"images could not be read: {names}")
