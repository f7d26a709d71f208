"""mPrompt (Guo et al., CVPR 2024) on ShanghaiTech A/B, UCF-QNRF, NWPU-Crowd.

  counting-jax train --config mprompt:dataset=sha --workdir runs/mprompt_sha \
      --config.dataset.manual_dir=/data/ShanghaiTech \
      --config.init_checkpoint=/weights/hrnet_w40_orbax

Arguments (``--config mprompt:dataset=qnrf,smoke=True``):
  dataset: "sha", "shb", "qnrf" or "nwpu".
  smoke: tiny network (``mprompt_tiny``), 64-px crops, 2 steps on the
    ``test`` split (the images present, e.g. the project's shared
    ShanghaiTech copy), tested on two of its images.

Recipe of the official code (csguomy/mPrompt@e7ae00d): images resized by
the data set's rule (``counting_jax.methods.mprompt_targets``: SHA short
side >= 416; SHB unchanged; QNRF/NWPU long side <= 2048, short side >= 512,
aspect <= 4; multiples of 32), ColorJitter(brightness / contrast /
saturation / hue 0.2) on the resized image (``input.color_jitter``),
random 400 x 400 crops with horizontal flips,
ImageNet normalisation, Adam lr 1e-4 without weight decay and its StepLR
decay (x0.4 at epochs 300 and 600: ``optim.schedule = "step"`` at the
first optimiser step of those epochs, ``optim.step_boundaries``; recompute
them when overriding ``dataset.num_train`` or the batch size), batch 16, 700
epochs, loss weights all 1 with the count term (``method.loss_weights =
"paper"`` for eq. 4), the online prompt from epoch 50, evaluation in 9
half-size patches stitched by their central regions (``eval_tiling.mode =
"nine_patch"``; "tiles" evaluates whole images, tiled above
``eval_tiling.max_size``).
Initialisation: the paper starts from ImageNet HRNet-W40 (convert it with
``counting-jax convert --model hrnet_w40`` and pass it as
``init_checkpoint``); the released code never loads it.
"""

import math

import ml_collections

from counting_jax.configs import common
from counting_jax.train import defaults

__all__ = ["get_config", "decay_steps"]

_DATASETS = {
    # dataset: (name, test split, resize rule, train images, max points)
    "sha": ("shanghaitech_a", "test", "sha", 300, 4096),
    "shb": ("shanghaitech_b", "test", "none", 400, 1024),
    "qnrf": ("ucf_qnrf", "test", "large", 1201, 8192),
    "nwpu": ("nwpu_crowd", "val", "large", 3109, 8192),
}
# Paper Table 1, mPrompt (HRNet), MAE / RMSE.
_PUBLISHED = {"sha": "52.5 / 88.9", "shb": "5.8 / 9.6",
              "qnrf": "72.2 / 133.1", "nwpu": "50.2 / 219.0"}
_EPOCHS = 700
_BATCH = 16
_DECAY_EPOCHS = (300, 600)  # StepLR(step_size=300, gamma=0.4)
_DECAY = 0.4


def decay_steps(n_train: int, batch_size: int, epochs=_DECAY_EPOCHS):
  """First optimiser steps of ``epochs`` (0-based) when an epoch is
  ``n_train`` images in global batches of ``batch_size``: the trainer's step
  ``s`` is in epoch ``s * batch_size // n_train``."""
  return tuple(math.ceil(e * n_train / batch_size) for e in epochs)


def get_config(arg=None):
  a = common.parse_arg(arg, dataset="sha", smoke=False)
  if a["dataset"] not in _DATASETS:
    raise ValueError(f"dataset must be one of {sorted(_DATASETS)}, got "
                     f"{a['dataset']!r}")
  name, test, rule, n_train, max_points = _DATASETS[a["dataset"]]
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = ml_collections.ConfigDict(dict(
      name="mprompt", resize_rule=rule, prompt="points", knn_k=3, sigma=4.0,
      loss_weights="code", context="iou", online_after=50))
  c.dataset = ml_collections.ConfigDict(dict(
      name=name, train_split="train", test_split=test,
      num_train=ml_collections.config_dict.placeholder(int), draw_seed=0,
      data_dir="", manual_dir=""))
  c.input = ml_collections.ConfigDict(dict(
      batch_size=_BATCH, crop_size=(400, 400), flip=True, vflip=False,
      scale_range=None, max_points=max_points, pad_multiple=32,
      eval_batch_size=1, mean=(0.485, 0.456, 0.406),
      std=(0.229, 0.224, 0.225), cache=False, num_workers=2,
      color_jitter=ml_collections.ConfigDict(dict(
          brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2))))
  c.model = ml_collections.ConfigDict(dict(name="mprompt_hrnet_w40",
                                           kwargs={}))
  c.init_checkpoint = ""
  c.eval_tiling = ml_collections.ConfigDict(dict(
      max_size=2048, tile_size=1024, overlap=128, blend="linear",
      tile_batch=9, mode="nine_patch"))
  c.optim = ml_collections.ConfigDict(dict(
      name="adam", lr=1e-4, schedule="step", warmup_steps=0,
      step_boundaries=decay_steps(n_train, _BATCH), step_factor=_DECAY,
      weight_decay=0.0, clip_norm=0.0))
  c.total_steps = math.ceil(_EPOCHS * n_train / _BATCH)
  c.log_every = 50
  c.checkpoint_every = 1000
  c.num_panels = 4
  c.panel_sigma = 4.0
  c.published_dataset = ml_collections.ConfigDict(dict(
      name=name, train_split="train", test_split=test,
      num_train=ml_collections.config_dict.placeholder(int)))
  c.published_protocol = f"{name} {test}, MAE / RMSE"
  c.published = (("mPrompt, HRNet (Guo et al. 2024)",
                  _PUBLISHED[a["dataset"]]),)
  c.quiet = False
  if a["smoke"]:
    c.model.name = "mprompt_tiny"
    c.model.kwargs = dict(hrnet=(
        ("stem_width", 8), ("layer1_planes", 4), ("layer1_blocks", 1),
        ("stage_modules", (1, 1, 1)), ("num_blocks", 1)))
    c.dataset.train_split = "test"
    c.dataset.test_split = "test[:2]"
    c.input.batch_size = 2
    c.input.crop_size = (64, 64)
    c.input.num_workers = 0
    c.total_steps = 2
    c.log_every = 1
    c.checkpoint_every = 2
    c.num_panels = 0
  return defaults.complete(c)  # every trainer field, overridable
