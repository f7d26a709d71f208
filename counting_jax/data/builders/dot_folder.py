"""tensorflow-datasets builder for a user's own dot-annotated folder.

From the command line::

  counting-jax train --config configs/cells.py --workdir runs/mine \\
      --config.dataset.name=dot_folder --config.dataset.manual_dir=DIR \\
      --config.dataset.dot_folder.split=fraction

The options (``counting_jax.data.dot_folder.OPTIONS``) and the folder make
the builder config (:meth:`DotFolder.make_config`): its name is a hash of
the options, the resolved folder and the folder's listing (file names, sizes
and modification times), so changing an option or a file prepares a new copy
under ``<data_dir>/dot_folder/<name>/`` instead of reusing a stale one.
Splits are named by the folder (``folders``), the list file (``list``), or
``train`` / ``test`` (``fraction``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import tensorflow_datasets as tfds

from counting_jax.data import dot_folder
from counting_jax.data import features as features_lib

__all__ = ["DotFolder", "DotFolderConfig"]

_VERSION = tfds.core.Version("1.0.0")


@dataclasses.dataclass(eq=False)
class DotFolderConfig(tfds.core.BuilderConfig):
  """A folder and its reading options (``dot_folder.OPTIONS``)."""

  # Left out of the repr: tfds logs it for every custom config.
  manual_dir: str = dataclasses.field(default="", repr=False)
  options: dict = dataclasses.field(default_factory=dict, repr=False)


def _listing(root: pathlib.Path) -> list:
  """(relative path, size, mtime_ns) of every file under ``root``."""
  out = []
  for p in sorted(root.rglob("*")):
    if p.is_file():
      st = p.stat()
      out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
  return out


class DotFolder(tfds.core.GeneratorBasedBuilder):
  """Images with dot maps or point files in a user's folder."""

  VERSION = _VERSION
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Pass the folder of your images and their dot maps / point files as "
      "manual_dir (--config.dataset.manual_dir=DIR); see "
      "counting_jax.data.dot_folder for the layout.")

  @classmethod
  def make_config(cls, manual_dir, options=None) -> DotFolderConfig:
    """The config of folder ``manual_dir`` read with ``options``.

    Raises:
      ValueError: when ``manual_dir`` is not given, or for a bad option.
      FileNotFoundError: when ``manual_dir`` is not a folder.
    """
    if not manual_dir:
      raise ValueError("dot_folder needs manual_dir: the folder of your "
                       "images (--config.dataset.manual_dir=DIR)")
    root = pathlib.Path(manual_dir).expanduser().resolve()
    if not root.is_dir():
      raise FileNotFoundError(f"dot_folder: manual_dir {root} is not a "
                              "folder")
    opts = dot_folder.check_options(options)
    key = json.dumps([str(root), sorted(opts.items()), _listing(root)],
                     default=str)
    name = "h" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return DotFolderConfig(name=name, version=_VERSION, manual_dir=str(root),
                           options=opts, description=str(root))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=features_lib.features())

  def _split_generators(self, dl_manager):
    del dl_manager  # The folder is the config's (part of its name).
    cfg = self.builder_config
    splits = dot_folder.find_images(cfg.manual_dir, cfg.options)
    return {name: self._generate_examples(images, cfg.options)
            for name, images in splits.items()}

  def _generate_examples(self, images, options):
    for image_id, path in images.items():
      sample = dot_folder.read_sample(path, image_id, options)
      yield image_id, features_lib.to_example(sample)
