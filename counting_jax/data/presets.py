"""Preprocessing presets of the papers: resize rules, crops, strides.

The builders store images at their original resolution; what each method
does before training and evaluation is recorded here as plain frozen
dataclasses, one per (method, data set), each with the source of its
numbers. ``counting_jax.data.transforms`` / ``pipeline`` apply them; this
module only holds the numbers and :func:`resize_shape`, the exact size a
resize rule gives.

Resize rules (whole images, applied offline to train *and* test images by
the official preprocessing scripts unless ``train_only``):

``none``
  Keep the stored size.
``short_side_range`` (BL ``preprocess_dataset.py:10-33``, DM-Count
  ``preprocess/preprocess_dataset_qnrf.py:10-33``)
  If the shorter side is < ``min_size`` scale it up to ``min_size``; if it is
  > ``max_size`` scale it down to ``max_size``; else keep. One ratio r for
  both axes; the longer side becomes ``round(side * r)`` (Python rounding)
  and the official code scales the points by r.
``fit_multiple`` (DM-Count ``preprocess/preprocess_dataset_nwpu.py:8-28``)
  r = max_size / H, or max_size / W when that makes W too large; the sides
  are floored to multiples of ``multiple``; if a side would fall below
  ``min_size``, r is recomputed from that side; finally each side is
  floor(side * r / multiple) * multiple clamped to [min_size, max_size]. H and
  W get separate ratios (points scaled per axis). Note that this *upscales*
  small images until the longer side is ~``max_size``.
``long_side_max``
  If the longer side is > ``max_size`` scale it down to ``max_size`` (one
  ratio, other side rounded); else keep.
``short_side_min_train`` (DM-Count ``datasets/crowd.py`` ShanghaiTech
  loader)
  Training only: if the shorter side is < ``min_size`` (the crop size) scale
  it up (bicubic) to ``min_size``; evaluation uses the stored size.

Strides: ``stride`` is the density-map stride (input pixels per density
pixel), the "downsample ratio" of BL/DM-Count (8; density cell k centred at
8k + 4 in their code, see ``counting_jax.grid``).

Sources are given as ``repo file:line`` at these commits: BL
ZhihengCV/Bayesian-Crowd-Counting@5f10bfc, DM-Count
cvlab-stonybrook/DM-Count@cc5f213, GL
jia-wan/GeneralizedLoss-Counting-Pytorch@4f367fc, PML Elin24/pml@d49bf69,
P2PNet TencentYoutuResearch/CrowdCounting-P2PNet@5c91a81, T2ICount
cha15yq/T2ICount@289d3fb; items marked [unverified] were not found in an
official script.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Preset", "PRESETS", "get_preset", "resize_shape", "RULES"]

RULES = ("none", "short_side_range", "fit_multiple", "long_side_max",
         "short_side_min_train")


@dataclasses.dataclass(frozen=True)
class Preset:
  """Preprocessing of one data set by one method.

  Attributes:
    method, dataset: names ('dm_count', 'shanghaitech_a' as in ``DATASETS``).
    resize: one of ``RULES`` (see module docstring).
    min_size, max_size: bounds of the resize rule, input pixels (None when
      unused).
    multiple: sides made multiples of this by the resize rule (1 = free).
    crop_size: side of the square random training crop, pixels of the
      resized image (None = whole images).
    num_crops: crops drawn per image and step.
    scale_range: (low, high) random rescale factor of training images before
      cropping, or None.
    stride: density-map stride = downsample ratio (input pixels).
    pad_multiple: evaluation images are zero-padded (after normalisation) to a
      multiple of this (1 = none).
    source: where each number comes from.
  """
  method: str
  dataset: str
  resize: str = "none"
  min_size: int | None = None
  max_size: int | None = None
  multiple: int = 1
  crop_size: int | None = None
  num_crops: int = 1
  scale_range: tuple[float, float] | None = None
  stride: int = 8
  pad_multiple: int = 1
  source: str = ""

  def __post_init__(self):
    if self.resize not in RULES:
      raise ValueError(f"resize must be one of {RULES}, got {self.resize!r}")


_BL = "ZhihengCV/Bayesian-Crowd-Counting@5f10bfc"
_DMC = "cvlab-stonybrook/DM-Count@cc5f213"
_GL = "jia-wan/GeneralizedLoss-Counting-Pytorch@4f367fc"
_PML = "Elin24/pml@d49bf69"
_P2P = "TencentYoutuResearch/CrowdCounting-P2PNet@5c91a81"

_ENTRIES = [
    # BL (Ma et al., ICCV 2019).
    Preset("bl", "ucf_qnrf", "short_side_range", 512, 2048, crop_size=512,
           stride=8, source=f"{_BL} preprocess_dataset.py:10-33,69-70 "
           "(min 512, max 2048); train.py crop-size 512, downsample-ratio 8"),
    # DM-Count (Wang et al., NeurIPS 2020).
    Preset("dm_count", "shanghaitech_a", "short_side_min_train", 256,
           crop_size=256, stride=8, source=f"{_DMC} train.py:15-53 and "
           "datasets/dataset_cfg.json crop 256 (issue #2); datasets/crowd.py "
           "SH loader upscales when the short side < crop; no offline resize"),
    Preset("dm_count", "shanghaitech_b", "short_side_min_train", 512,
           crop_size=512, stride=8, source=f"{_DMC} train.py:15-53, "
           "dataset_cfg.json crop 512 (issue #2)"),
    Preset("dm_count", "ucf_qnrf", "short_side_range", 512, 2048,
           crop_size=512, stride=8, source=f"{_DMC} "
           "preprocess/preprocess_dataset_qnrf.py:10-33,51 (512, 2048); "
           "dataset_cfg.json crop 512"),
    Preset("dm_count", "nwpu_crowd", "fit_multiple", 384, 1920, multiple=16,
           crop_size=384, stride=8, source=f"{_DMC} "
           "preprocess/preprocess_dataset_nwpu.py:8-28,99 (384, 1920, x16); "
           "dataset_cfg.json crop 384"),
    # GL (Wan et al., CVPR 2021): BL's preprocessed QNRF (README), crop 512
    # "for all experiments, some 256" (issue #6).
    Preset("gl", "ucf_qnrf", "short_side_range", 512, 2048, crop_size=512,
           stride=8, source=f"{_GL} README (BL data), train.py:15 crop 512"),
    Preset("gl", "shanghaitech_a", crop_size=512, stride=8,
           source=f"{_GL} issue #6: crop 512 for all data sets (some runs "
           "256) [unverified per data set]"),
    Preset("gl", "shanghaitech_b", crop_size=512, stride=8,
           source=f"{_GL} issue #6: crop 512"),
    # PML (Lin & Chan, ICLR 2025): random scale s ~ U[0.5, 1.5), crop side
    # round(512 / s) resized to 512, stride 2, padding x32.
    Preset("pml", "ucf_qnrf", "long_side_max", max_size=1536, crop_size=512,
           scale_range=(0.5, 1.5), stride=2, pad_multiple=32,
           source=f"{_PML} datasets/utils.py (scale, crop 512), main.py:162 "
           "(stride 2); long side 1536 [unverified: inferred from the data "
           "folder name QNRF_PNG_SE_1536, script not released]"),
    Preset("pml", "shanghaitech_a", crop_size=512, scale_range=(0.5, 1.5),
           stride=2, pad_multiple=32, source=f"{_PML} datasets/utils.py, "
           "run.sh; SH resizing not in the repository [unverified]"),
    # P2PNet (Song et al., ICCV 2021): 4 random 128 crops per image, scale
    # U[0.7, 1.3] when scale * short side > 128, padding to x128.
    Preset("p2pnet", "shanghaitech_a", crop_size=128, num_crops=4,
           scale_range=(0.7, 1.3), stride=8, pad_multiple=128,
           source=f"{_P2P} crowd_datasets/SHHA/SHHA.py:58-77,111-133, "
           "util/misc.py:300-331"),
    Preset("p2pnet", "shanghaitech_b", crop_size=128, num_crops=4,
           scale_range=(0.7, 1.3), stride=8, pad_multiple=128,
           source=f"{_P2P} same loader as SHA"),
    # JHU-Crowd++: no surveyed official repository (BL, DM-Count, GL, PML)
    # ships a JHU recipe; BL's QNRF rule is what BL/DM-Count-derived code
    # applies (e.g. MPCount utils/preprocess_data.py generate_data_jhu).
    Preset("dm_count", "jhu_crowd", "short_side_range", 512, 2048,
           crop_size=512, stride=8, source="[unverified] BL's QNRF rule "
           "(512, 2048) and crop 512 as used by third-party DM-Count/BL "
           "code on JHU-Crowd++"),
    # T2ICount (FSC-147 height 384 as stored): scale U[1, 2) with p = 0.5,
    # random 384 crop, GT summed in 8x8 blocks; evaluation on 384 tiles.
    Preset("t2icount", "fsc147", crop_size=384, scale_range=(1.0, 2.0),
           stride=8, source="T2ICount datasets/dataset.py:146-169, "
           "train.py:12-52 (crop 384, stride 8); test tiles 384, stride 384 "
           "(utils/tools.py:4-16)"),
    Preset("t2icount", "carpk", stride=8, source="T2ICount "
           "datasets/carpk.py, test.py:34-38: test split, full 1280x720 "
           "resolution, 384 tiles, prompt 'cars'"),
]

PRESETS: dict[tuple[str, str], Preset] = {
    (p.method, p.dataset): p for p in _ENTRIES}


def get_preset(method: str, dataset: str) -> Preset:
  """The preset of ``method`` on ``dataset``.

  Raises:
    ValueError: listing the valid (method, dataset) pairs when unknown.
  """
  try:
    return PRESETS[(method, dataset)]
  except KeyError:
    raise ValueError(f"no preset for ({method!r}, {dataset!r}); valid: "
                     f"{sorted(PRESETS)}") from None


def resize_shape(preset: Preset, height: int, width: int, *,
                 train: bool = False) -> tuple[int, int]:
  """(new_height, new_width) that ``preset``'s resize rule gives an image.

  Args:
    preset: a :class:`Preset` (only ``resize``, ``min_size``, ``max_size``
      and ``multiple`` are read).
    height, width: stored image size, pixels.
    train: whether the image is a training image (``short_side_min_train``
      only resizes those).

  Returns:
    The resized (H, W) in pixels; the point scale per axis is new / old
    (BL/DM-Count ``short_side_range`` scale points by the short-side ratio,
    which differs from new / old on the long side by < 0.5 / old).

  Raises:
    ValueError: for a non-positive size.
  """
  if height <= 0 or width <= 0:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  rule, lo, hi, m = preset.resize, preset.min_size, preset.max_size, \
      preset.multiple
  if rule == "none" or (rule == "short_side_min_train" and not train):
    return height, width
  short, long_ = min(height, width), max(height, width)
  if rule in ("short_side_range", "short_side_min_train"):
    if short < lo:
      ratio = lo / short
    elif hi is not None and short > hi:
      ratio = hi / short
    else:
      return height, width
    new_short, new_long = (lo if short < lo else hi), round(long_ * ratio)
  elif rule == "long_side_max":
    if long_ <= hi:
      return height, width
    new_short, new_long = round(short * hi / long_), hi
  else:  # fit_multiple
    rate = hi / height
    if width * rate > hi:
      rate = hi / width
    if math.floor(height * rate / m) * m < lo:
      rate = lo / height
    if math.floor(width * rate / m) * m < lo:
      rate = lo / width
    clamp = lambda s: min(max(math.floor(s * rate / m) * m, lo), hi)
    return clamp(height), clamp(width)
  return ((new_short, new_long) if height <= width else (new_long, new_short))
