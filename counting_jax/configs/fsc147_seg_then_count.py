"""Seg-then-Count on FSC-147: the paper's three stages (§4.1).

  # 0. torchvision's ImageNet ResNet-50, to layer3
  counting-jax convert --checkpoint resnet50-0676ba61.pth --model resnet50 \
      --set num_layers=3 --out resnet50_imagenet
  # 1. base counter (300 epochs)
  counting-jax train --config fsc147_seg_then_count:stage=counter \
      --workdir runs/stc_counter --config.dataset.manual_dir=/data/FSC147 \
      --config.init_checkpoint=resnet50_imagenet
  # 2. pseudo masks with the frozen counter (K = 2..6, K* by eq. 5; the
  #    patches embedded by config.init_checkpoint, or --imagenet DIR)
  counting-jax pseudo-masks --workdir runs/stc_counter --masks_dir runs/masks
  # 3. segmenter (20 epochs), counter frozen, then masked inference
  counting-jax train --config fsc147_seg_then_count:stage=segmenter \
      --workdir runs/stc_seg --config.pseudo_masks.data_dir=runs/masks ...
  counting-jax predict --config fsc147_seg_then_count:stage=segmenter \
      --workdir runs/stc_seg --images DIR --out DIR --exemplars boxes.json

Paper numbers (§4.1): ResNet-50 ImageNet to layer3, AdamW lr 1e-5, batch 8,
300 epochs (counter) / 20 epochs (segmenter), images 384 px high, exemplars
resized to 128 x 128, segmentation threshold 0.6. Steps: FSC-147 train has
3,659 images, ceil(3659 / 8) = 458 steps per epoch.

Choices where the paper is silent (each an argument here):
  delta (model.kwargs.delta, 0.0): δ of eq. 4, the similarity outside the
    mask;
  patch layer (pseudo_masks.layer, 3): the ResNet layer whose global average
    embeds a patch for K-means;
  patch_size (pseudo_masks.patch_size, 64): pixels a patch is resized to;
  sigma (loss.kwargs.sigma, 4.0): σ (input pixels) of the Gaussian density
    target (FSC-147's released maps are adaptive; not stored here);
  crop_size (384 x 384 random crops, flip): batches of 8 need one size.
Input (input.centre_pad, True): images are centre-padded to a multiple of
  input.pad_multiple (32) before cropping and for evaluation (§4.1).
From the same author's public counter: AdamW weight decay 5e-4, gradient
clipping 0.1.

Arguments (``--config fsc147_seg_then_count:stage=segmenter,smoke=True``):
  stage: ``counter`` or ``segmenter``.
  smoke: a few steps on one real FSC-147 test image with a small ResNet
    (tests).
"""

import ml_collections

from counting_jax.configs import common
from counting_jax.train import defaults

__all__ = ["get_config"]

STEPS_PER_EPOCH = 458  # ceil(3659 / 8)


def get_config(arg=None):
  a = common.parse_arg(arg, stage="counter", smoke=False)
  stage = str(a["stage"])
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = ml_collections.ConfigDict(dict(name="seg_then_count",
                                            stage=stage))
  c.dataset = ml_collections.ConfigDict(dict(
      name="fsc147", train_split="train", test_split="val",
      num_train=ml_collections.config_dict.placeholder(int), draw_seed=0,
      data_dir="", manual_dir=""))
  c.input = ml_collections.ConfigDict(dict(
      batch_size=8, crop_size=(384, 384), flip=True, vflip=False,
      scale_range=None, max_points=4096, max_exemplars=3, pad_multiple=32,
      centre_pad=True,
      eval_batch_size=1, cache=False, num_workers=2,
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
  c.model = ml_collections.ConfigDict(dict(
      name="seg_then_count", kwargs=dict(
          stage_sizes=(3, 4, 6, 3), width=64, proj_dim=256,
          exemplar_size=128, head_widths=(196, 128, 64, 32), threshold=0.6,
          delta=0.0)))
  c.density_scale = 1.0
  c.loss = ml_collections.ConfigDict(dict(
      name="l2", kwargs=dict(sigma=4.0, scale=1.0)))
  c.pseudo_masks = ml_collections.ConfigDict(dict(
      data_dir="", split="train", ks=(2, 3, 4, 5, 6), layer=3,
      patch_size=64, seed=0))
  epochs = 300 if stage == "counter" else 20
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-5, schedule="constant", warmup_steps=0,
      weight_decay=5e-4, clip_norm=0.1,
      groups={"frozen": {"frozen": True}, "counter": {"frozen": True}}))
  c.total_steps = epochs * STEPS_PER_EPOCH
  c.log_every = 100
  c.checkpoint_every = STEPS_PER_EPOCH
  c.num_panels = 4
  c.panel_sigma = 4.0
  c.eval_tiling = ml_collections.ConfigDict(dict(
      max_size=4096, tile_size=1024, overlap=128, blend="linear",
      tile_batch=1))
  if a["smoke"]:
    c.model.kwargs.update(stage_sizes=(1, 1, 1), width=8, proj_dim=16,
                          exemplar_size=32, head_widths=(8, 8, 8, 8))
    c.pseudo_masks.patch_size = 32
    c.dataset.train_split = "test[:1]"
    c.dataset.test_split = "test[:1]"
    c.pseudo_masks.split = "test"
    c.input.batch_size = 1
    c.input.crop_size = (64, 64)
    c.input.max_points = 600
    c.input.num_workers = 0
    c.optim.lr = 1e-3
    c.total_steps = 3
    c.log_every = 1
    c.checkpoint_every = 3
    c.num_panels = 0
  return defaults.complete(c)  # every trainer field, overridable
