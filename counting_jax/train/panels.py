"""PNG panels: image | target density | predicted density, with counts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

__all__ = ["save_panel"]


def save_panel(path, image, pred_density, *, target_density=None,
               true_count=None, title: str = ""):
  """Writes a PNG panel to ``path``.

  Args:
    path: output file.
    image: uint8 or float [H, W, 3] (float is min-max scaled for display).
    pred_density: float [h, w] predicted density (count units).
    target_density: optional float [h, w] target density.
    true_count: optional ground-truth count for the title.
    title: prefix for the figure title (e.g. the image id).
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    lo, hi = image.min(), image.max()
    image = (image - lo) / max(hi - lo, 1e-8)
  panels = [("image", image, None)]
  if target_density is not None:
    panels.append((f"target  {np.sum(target_density):.1f}", target_density,
                   "magma"))
  panels.append((f"predicted  {np.sum(pred_density):.1f}", pred_density,
                 "magma"))
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
  for ax, (name, arr, cmap) in zip(np.atleast_1d(axes), panels):
    ax.imshow(arr, cmap=cmap)
    ax.set_title(name)
    ax.axis("off")
  head = title
  if true_count is not None:
    head += f"  true count {true_count:.0f}"
  fig.suptitle(head.strip())
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
