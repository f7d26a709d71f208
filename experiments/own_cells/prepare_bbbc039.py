"""BBBC039 nuclei as a user's own dot-annotated folder (``dot_folder``).

  python experiments/own_cells/prepare_bbbc039.py \\
      --src "../shared/data/bbbc039/cell nuclei" --out runs/bbbc039_dots

Copies each 16-bit TIFF image and writes ``<stem>.csv`` with one (x, y)
point per nucleus: the centroid of each connected component of the mask's
nucleus-interior class (R == 1), in input pixels (pixel (r, c) spans
[c, c+1) x [r, r+1)). This stands for what a user brings: images and a
point file (or dot map) each.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil

import numpy as np
import scipy.ndimage as ndi
from PIL import Image


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--src", required=True,
                      help="folder with images/*.tif and masks/*.png")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  src, out = pathlib.Path(args.src), pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  images = sorted((src / "images").glob("*.tif"))
  if not images:
    raise FileNotFoundError(f"no images/*.tif under {src}")
  for image in images:
    mask_file = src / "masks" / f"{image.stem}.png"
    interior = np.asarray(Image.open(mask_file))[..., 0] == 1
    labels, n = ndi.label(interior)
    rc = np.asarray(ndi.center_of_mass(interior, labels,
                                       np.arange(1, n + 1))).reshape(-1, 2)
    np.savetxt(out / f"{image.stem}.csv", rc[:, ::-1] + 0.5, delimiter=",",
               header="x,y", comments="", fmt="%.2f")
    shutil.copy(image, out / image.name)
    print(f"{image.name}: {n} nuclei")


if __name__ == "__main__":
  main()
