"""Reader for a user's own folder of dot-annotated images (``dot_folder``).

Layout (``manual_dir``): image files ``<id><image_suffix>.<ext>`` (``.png``,
``.jpg``, ``.tif``, ``.bmp``...), each with exactly one annotation in the same
folder:

* a dot map ``<id><dots_suffix>.<ext>`` of the image's size, in which every
  dot pixel is one object: a pixel is a dot when its value in
  ``dot_channels`` ("any" colour channel, or one of "r", "g", "b", "a"
  (alpha)) is above ``dot_threshold`` (0: any non-zero pixel). A dot at
  pixel (row r, column c) becomes the point (c + 0.5, r + 0.5), the pixel's
  centre (``counting_jax.grid``). With ``blob_centres`` each 8-connected
  blob of dot pixels is one object, at the blob's centroid (dots drawn as
  discs, or dots saved lossily: use it with a ``dot_threshold``);
* or a point file ``<id><points_suffix>.csv`` / ``.json``: (x, y) in
  input-image pixels, top-left corner of the image at (0, 0). CSV: a header
  with columns ``x`` and ``y`` (any case; other columns ignored, as in
  ImageJ's exports) or no header and x, y in the first two columns. JSON: a
  list of [x, y] or of {"x": .., "y": ..}, or an object with such a list
  under "points". ``point_offset`` is added to both coordinates (0.5 for
  tools that write the integer column/row of the dot pixel).

An image with no object needs an empty annotation (an all-zero dot map, an
empty point file): an image without one raises, so nothing is dropped.

Splits (``split``): "folders" (each sub-folder of ``manual_dir`` holding
images is a split named after it, e.g. ``train/`` and ``test/``), "list"
(``split_list``: a text file, relative to ``manual_dir`` or absolute, with
one ``<id> <split>`` line per image, separated by a comma or spaces; every
image must be listed exactly once) or "fraction" (a ``test_fraction`` of
the images, drawn with ``split_seed`` from the images sorted by id, is
``test``, the rest ``train``); "list" and "fraction" read the images of
``manual_dir`` itself. "auto": "list" when ``split_list`` is given, else
"fraction" when ``manual_dir`` itself holds images (sub-folders are then
not read, and a warning names those holding images), else "folders".

``rescale`` (> 0, 1 = off) resizes every image once, when the data set is
prepared, by that factor (bilinear; points move with the pixels by the exact
per-axis factors), so training and evaluation see the same scale.
Images with more than 8 bits (16-bit TIFF microscopy) are scaled linearly
from [0, image maximum] to [0, 255].

Lossy dot maps: a JPEG dot map turns compression noise into dots (about 12x
too many points on real data). A dot map stored as JPEG, or with more than
``LOSSY_RATIO`` times as many dot pixels as connected blobs, raises a
ValueError naming the file and the options that fix it (``blob_centres``
with a ``dot_threshold``).
"""

from __future__ import annotations

import csv
import json
import logging
import pathlib

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

from counting_jax.configs.common import DOT_FOLDER_OPTIONS
from counting_jax.data import files
from counting_jax.data import sample as sample_lib
from counting_jax.data import transforms

__all__ = ["OPTIONS", "LOSSY_RATIO", "IMAGE_EXTENSIONS", "check_options",
           "read_dot_map", "read_point_file", "find_images",
           "read_sample"]

# Defaults of every option (the builder's config and ``config.dataset``'s
# ``dot_folder`` field take the same keys; "" means unset).
OPTIONS = DOT_FOLDER_OPTIONS  # defined beside the configs that expose them

# A dot map with more than this many dot pixels per 8-connected blob raises
# (one-pixel dots: VGG cells has 35,192 dot pixels in 34,741 blobs, 1.01).
LOSSY_RATIO = 2.0
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
_LOSSY_FORMATS = ("JPEG", "MPO", "JPEG2000")
_CHANNELS = ("any", "r", "g", "b", "a")
_SPLITS = ("auto", "folders", "list", "fraction")
_EIGHT = np.ones((3, 3), bool)


def check_options(options=None) -> dict:
  """``OPTIONS`` updated with ``options`` and validated.

  Raises:
    ValueError: naming an unknown option or a bad value.
  """
  out = dict(OPTIONS)
  for key, value in dict(options or {}).items():
    if key not in OPTIONS:
      raise ValueError(f"dot_folder: unknown option {key!r}; valid: "
                       f"{sorted(OPTIONS)}")
    out[key] = value
  if out["dot_channels"] not in _CHANNELS:
    raise ValueError(f"dot_folder: dot_channels must be one of {_CHANNELS}, "
                     f"got {out['dot_channels']!r}")
  if out["split"] not in _SPLITS:
    raise ValueError(f"dot_folder: split must be one of {_SPLITS}, got "
                     f"{out['split']!r}")
  if not 0 < float(out["test_fraction"]) < 1:
    raise ValueError(f"dot_folder: test_fraction must be in (0, 1), got "
                     f"{out['test_fraction']}")
  if not float(out["rescale"]) > 0:
    raise ValueError(f"dot_folder: rescale must be > 0, got "
                     f"{out['rescale']}")
  if out["dots_suffix"] == out["image_suffix"]:
    raise ValueError("dot_folder: dots_suffix and image_suffix must differ")
  return out


def _dot_pixels(array, channels: str, threshold) -> np.ndarray:
  """bool [H, W]: pixels whose value in ``channels`` exceeds ``threshold``.

  ``array`` is [H, W] (gray), [H, W, 2] (gray, alpha), [H, W, 3] (RGB) or
  [H, W, 4] (RGBA); "any" looks at the colour channels (not alpha), "r",
  "g", "b" at one of them (the gray value of a gray map), "a" at alpha.
  """
  if array.ndim == 2:
    array = array[..., None]
  has_alpha = array.shape[-1] in (2, 4)
  colour = array[..., :-1] if has_alpha else array
  if channels == "a":
    if not has_alpha:
      raise ValueError("has no alpha channel (dot_channels='a')")
    return array[..., -1] > threshold
  if channels != "any" and colour.shape[-1] == 3:
    colour = colour[..., "rgb".index(channels)][..., None]
  return (colour > threshold).any(axis=-1)


def read_dot_map(path, image_shape=None, *, dot_threshold=0,
                 dot_channels: str = "any",
                 blob_centres: bool = False) -> np.ndarray:
  """Points float32 [N, 2] (x, y), input pixels, from a dot-map image.

  Args:
    path: dot-map file (module docstring).
    image_shape: (H, W) of the image it annotates; checked when given.
    dot_threshold: a pixel is a dot when its value is above this.
    dot_channels: "any", "r", "g", "b" or "a".
    blob_centres: one point per 8-connected blob, at its centroid (pixel
      centres averaged), instead of one per dot pixel.

  Returns:
    float32 [N, 2]: dot pixel centres in row-major order, or blob centroids
    in the order of their first pixel.

  Raises:
    FileNotFoundError / ValueError: naming ``path`` when it is missing,
      unreadable, of another size than ``image_shape``, lossy (JPEG) without
      ``blob_centres`` and a ``dot_threshold``, or with more than
      ``LOSSY_RATIO`` dot pixels per blob without ``blob_centres``.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"dot annotation file not found: {path}")
  try:
    with Image.open(path) as im:
      fmt = im.format
      if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
      dots = np.asarray(im)
  except Exception as e:  # PIL raises several types for broken files.
    raise ValueError(f"cannot read dot annotation {path}: {e}") from e
  if image_shape is not None and dots.shape[:2] != tuple(image_shape):
    raise ValueError(f"dot map {path} is {dots.shape[:2]} but its image is "
                     f"{tuple(image_shape)}")
  fix = ("set blob_centres=True (one point per connected blob of dot "
         "pixels) with a dot_threshold above the noise (e.g. "
         "dot_threshold=127), or save the dots losslessly (PNG) as single "
         "pixels")
  if fmt in _LOSSY_FORMATS and not (blob_centres and dot_threshold > 0):
    raise ValueError(
        f"dot map {path} is stored as {fmt}, a lossy format: compression "
        f"noise around each dot becomes extra dots. {fix}.")
  try:
    mask = _dot_pixels(dots, dot_channels, dot_threshold)
  except ValueError as e:
    raise ValueError(f"dot map {path} {e}") from e
  labels, n_blobs = ndi.label(mask, structure=_EIGHT)
  if blob_centres:
    if n_blobs == 0:
      return np.zeros((0, 2), np.float32)
    centres = ndi.center_of_mass(mask, labels, np.arange(1, n_blobs + 1))
    rc = np.asarray(centres, np.float64).reshape(-1, 2)
    return (rc[:, ::-1] + 0.5).astype(np.float32)
  n_dots = int(mask.sum())
  if n_dots > LOSSY_RATIO * n_blobs and n_dots > n_blobs + 2:
    raise ValueError(
        f"dot map {path} has {n_dots} dot pixels but only {n_blobs} "
        f"connected blobs: its dots are drawn larger than one pixel or "
        f"carry compression noise, so counting pixels would count each "
        f"object ~{n_dots / max(n_blobs, 1):.0f} times. {fix}.")
  rows, cols = np.nonzero(mask)
  return np.stack([cols, rows], axis=-1).astype(np.float32) + 0.5


def _numbers(row):
  try:
    return [float(v) for v in row]
  except ValueError:
    return None


def read_point_file(path, *, point_offset: float = 0.0) -> np.ndarray:
  """Points float32 [N, 2] (x, y) from a CSV or JSON point file (module
  docstring), plus ``point_offset``.

  Raises:
    FileNotFoundError / ValueError: naming ``path`` when it is missing or
      malformed.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"point file not found: {path}")
  try:
    text = path.read_text(encoding="utf-8-sig")
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"cannot read point file {path}: {e}") from e
  if path.suffix.lower() == ".json":
    try:
      obj = json.loads(text) if text.strip() else []
      if isinstance(obj, dict):
        obj = obj["points"]
      pts = [(p["x"], p["y"]) if isinstance(p, dict) else tuple(p)
             for p in obj]
      pts = np.asarray(pts, np.float64).reshape(-1, 2)
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"point file {path}: expected a list of [x, y] or "
                       f"{{'x', 'y'}} (optionally under 'points'): {e}") from e
  else:
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip()
                                                            for c in r)]
    cols = (0, 1)
    if rows and _numbers(rows[0][:2]) is None:
      head = [c.strip().lower() for c in rows[0]]
      if "x" not in head or "y" not in head:
        raise ValueError(f"point file {path}: header {rows[0]} has no 'x' "
                         "and 'y' columns")
      cols = (head.index("x"), head.index("y"))
      rows = rows[1:]
    pts = []
    for i, r in enumerate(rows):
      xy = _numbers([r[c] for c in cols]) if len(r) > max(cols) else None
      if xy is None:
        raise ValueError(f"point file {path}: row {i + 1} {r} has no "
                         "numeric x, y")
      pts.append(xy)
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
  return (pts + point_offset).astype(np.float32)


def _is_image(path, opts) -> bool:
  stem = path.stem
  return (path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
          and stem.endswith(opts["image_suffix"])
          and not (opts["dots_suffix"] and stem.endswith(opts["dots_suffix"])))


def _image_id(path, opts) -> str:
  stem = path.stem
  return stem[:len(stem) - len(opts["image_suffix"])]


def _images_in(folder, opts) -> dict:
  """{image id: image path} of the images directly in ``folder``."""
  out = {}
  for p in sorted(pathlib.Path(folder).iterdir()):
    if _is_image(p, opts):
      image_id = _image_id(p, opts)
      if image_id in out:
        raise ValueError(f"two images with id {image_id!r}: {out[image_id]} "
                         f"and {p}")
      out[image_id] = p
  return out


def find_images(root, options=None) -> dict:
  """{split name: {image id: image path}} (module docstring, "Splits").

  Raises:
    FileNotFoundError: naming ``root`` when it is missing or holds no image,
      or the list file when it is missing.
    ValueError: naming the image or list line for an id found twice, an
      unlisted image or a listed id without image.
  """
  opts = check_options(options)
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"dot_folder: manual_dir {root} is not a folder")
  subs = {d.name: _images_in(d, opts) for d in sorted(root.iterdir())
          if d.is_dir()}
  subs = {k: v for k, v in subs.items() if v}
  images = _images_in(root, opts)
  mode = opts["split"]
  if mode == "auto":
    mode = ("list" if opts["split_list"] else "fraction" if images else
            "folders")
  if mode == "folders":
    if not subs:
      raise FileNotFoundError(f"dot_folder: no sub-folder of {root} holds "
                              f"images ({list(IMAGE_EXTENSIONS)})")
    if images:
      raise ValueError(
          f"dot_folder: split='folders' reads the sub-folders {sorted(subs)} "
          f"of {root}, but {root} itself holds images, e.g. "
          f"{next(iter(images.values()))}; move them or use another split")
    seen = {}
    for name, images in subs.items():
      for image_id, p in images.items():
        if image_id in seen:
          raise ValueError(f"image id {image_id!r} in two splits: "
                           f"{seen[image_id]} and {p}")
        seen[image_id] = p
    return subs
  if subs:
    logging.warning("dot_folder: %s: sub-folders %s also hold images; "
                    "they are not read (split=%r reads %s itself)", root,
                    sorted(subs), mode, root)
  if not images:
    raise FileNotFoundError(
        f"dot_folder: no images (<id>{opts['image_suffix']}"
        f"{{{','.join(IMAGE_EXTENSIONS)}}}) in {root}")
  return _split(images, opts, root, mode)


def _split(images: dict, opts: dict, root, mode: str) -> dict:
  """Splits {id: path} by a list file ("list") or a seeded fraction."""
  ids = sorted(images)
  if mode == "fraction":
    n_test = max(1, round(len(ids) * float(opts["test_fraction"])))
    if n_test >= len(ids):
      raise ValueError(f"dot_folder: {len(ids)} image(s) in {root} cannot "
                       f"be split with test_fraction={opts['test_fraction']}")
    perm = np.random.default_rng(int(opts["split_seed"])).permutation(
        len(ids))
    test = {ids[i] for i in perm[:n_test]}
    return {"train": {i: images[i] for i in ids if i not in test},
            "test": {i: images[i] for i in ids if i in test}}
  path = pathlib.Path(opts["split_list"])
  if not opts["split_list"]:
    raise ValueError("dot_folder: split='list' needs split_list")
  path = path if path.is_absolute() else root / path
  if not path.is_file():
    raise FileNotFoundError(f"dot_folder: split list {path} not found")
  out, seen = {}, set()
  for n, line in enumerate(path.read_text().splitlines(), 1):
    line = line.split("#", 1)[0].replace(",", " ").split()
    if not line:
      continue
    if len(line) != 2:
      raise ValueError(f"{path}:{n}: expected '<id> <split>', got {line}")
    image_id, split = line
    if image_id not in images:
      raise ValueError(f"{path}:{n}: no image with id {image_id!r} in {root}")
    if image_id in seen:
      raise ValueError(f"{path}:{n}: image {image_id!r} listed twice")
    seen.add(image_id)
    out.setdefault(split, {})[image_id] = images[image_id]
  missing = [i for i in ids if i not in seen]
  if missing:
    raise ValueError(f"{path}: {len(missing)} image(s) of {root} not listed, "
                     f"e.g. {images[missing[0]]}")
  return out


def _annotation(image_path, image_id, opts) -> pathlib.Path:
  folder = image_path.parent
  dots = [folder / f"{image_id}{opts['dots_suffix']}{e}" for e in
          IMAGE_EXTENSIONS]
  pts = [folder / f"{image_id}{opts['points_suffix']}{e}" for e in
         (".csv", ".json")]
  found = [p for p in dots + pts if p.is_file()]
  if not found:
    raise FileNotFoundError(
        f"no annotation for image {image_path}: expected a dot map "
        f"{image_id}{opts['dots_suffix']}.png or a point file "
        f"{image_id}{opts['points_suffix']}.csv/.json in {folder} (an image "
        "without objects needs an empty one)")
  if len(found) > 1:
    raise ValueError(f"image {image_path} has several annotations: "
                     f"{[p.name for p in found]}")
  return found[0]


def _read_image(path) -> np.ndarray:
  """uint8 RGB [H, W, 3]; > 8-bit images scaled from [0, max] to [0, 255]."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"image file not found: {path}")
  try:
    with Image.open(path) as im:
      if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im, np.float64)
        a = np.clip(a, 0, None) * (255.0 / max(float(a.max()), 1e-12))
        return np.repeat(np.round(a).astype(np.uint8)[..., None], 3, -1)
  except Exception as e:  # PIL raises several types for broken files.
    raise ValueError(f"cannot read image {path}: {e}") from e
  return files.read_rgb(path)


def read_sample(image_path, image_id: str, options=None) -> dict:
  """The sample (``counting_jax.data.sample``) of one image and its
  annotation, rescaled by ``options['rescale']``.

  Raises:
    FileNotFoundError / ValueError: naming the image or annotation file.
  """
  opts = check_options(options)
  image_path = pathlib.Path(image_path)
  image = _read_image(image_path)
  ann = _annotation(image_path, image_id, opts)
  h, w = image.shape[:2]
  if ann.suffix.lower() in (".csv", ".json"):
    points = read_point_file(ann, point_offset=float(opts["point_offset"]))
    points, _ = files.clip_points(points, w, h, source=ann)
  else:
    points = read_dot_map(ann, (h, w), dot_threshold=opts["dot_threshold"],
                          dot_channels=opts["dot_channels"],
                          blob_centres=bool(opts["blob_centres"]))
  sample = sample_lib.make_sample(image, points, image_id,
                                  class_name=opts["class_name"])
  f = float(opts["rescale"])
  if f != 1.0:
    sample = transforms.resize(sample, max(1, round(h * f)),
                               max(1, round(w * f)))
    logging.debug("%s: rescaled by %g to %s", image_path, f,
                  sample["image"].shape[:2])
  return sample
