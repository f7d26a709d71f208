"""Exemplar-conditioned counting on FSC-147 with the small similarity counter.

  counting-jax train --config fsc147_exemplar --workdir runs/fsc \
      --config.dataset.manual_dir=/data/FSC147_384_V2
  counting-jax predict --config fsc147_exemplar --workdir runs/fsc \
      --images DIR --out DIR --exemplars boxes.json

The method (``counting_jax.methods.exemplar_similarity``) is the smallest
class-agnostic counter: it shows what an exemplar method supplies to the
trainer (three exemplar boxes per image in the batch, a similarity map and a
density out); it is not a published recipe and no published table applies.
Arguments (``--config fsc147_exemplar:smoke=True``):
  smoke: a few steps on downscaled 32-px crops (tests on the real FSC-147
    images and labels in ../shared/data).

Crops: training images (FSC-147 stores them 384 px high) are rescaled by
``scale_range`` and cropped to ``crop_size``; exemplar boxes move with the
pixels, and a box cropped away is masked out (``exemplar_mask``).
"""

import ml_collections

from counting_jax.configs import common
from counting_jax.train import defaults

__all__ = ["get_config"]


def get_config(arg=None):
  a = common.parse_arg(arg, smoke=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = ml_collections.ConfigDict(dict(name="exemplar_similarity"))
  c.dataset = ml_collections.ConfigDict(dict(
      name="fsc147", train_split="train", test_split="val",
      num_train=ml_collections.config_dict.placeholder(int), draw_seed=0,
      data_dir="", manual_dir=""))
  c.input = ml_collections.ConfigDict(dict(
      batch_size=8, crop_size=(256, 256), flip=True, vflip=False,
      scale_range=(0.66, 1.0), max_points=4096, max_exemplars=3,
      pad_multiple=8, eval_batch_size=1, cache=False, num_workers=2,
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
  c.model = ml_collections.ConfigDict(dict(
      name="exemplar_similarity", kwargs=dict(width=32, depth=2)))
  c.density_scale = 100.0
  c.loss = ml_collections.ConfigDict(dict(
      name="gaussian_l2", kwargs=dict(sigma=4.0, scale=100.0)))
  c.optim = ml_collections.ConfigDict(dict(
      name="adam", lr=1e-3, schedule="cosine", warmup_steps=200,
      weight_decay=0.0, clip_norm=10.0))
  c.total_steps = 20_000
  c.log_every = 50
  c.checkpoint_every = 1000
  c.num_panels = 4
  c.panel_sigma = 4.0
  c.eval_tiling = ml_collections.ConfigDict(dict(
      max_size=4096, tile_size=1024, overlap=128, blend="linear",
      tile_batch=4))
  if a["smoke"]:
    c.model.kwargs = dict(width=4, depth=2)
    c.dataset.train_split = "test"
    c.dataset.test_split = "test[:2]"
    c.input.batch_size = 2
    c.input.crop_size = (32, 32)
    c.input.scale_range = (0.1, 0.12)
    c.input.max_points = 600
    c.input.num_workers = 0
    c.input.eval_batch_size = 1
    c.total_steps = 6
    c.log_every = 2
    c.checkpoint_every = 2
    c.num_panels = 1
  return defaults.complete(c)  # every trainer field, overridable
