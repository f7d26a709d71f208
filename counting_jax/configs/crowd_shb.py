"""Crowd counting on ShanghaiTech Part B with the papers' VGG19 counters.

  counting-jax train --config crowd_shb:loss=dm_count \
      --workdir runs/shb_dmc \
      --config.dataset.manual_dir=/data/ShanghaiTech \
      --config.init_checkpoint=/weights/vgg19_orbax

A short run on a copy holding only some images (e.g. the 10 Part B test
images of the project's shared data)::

  counting-jax train --config crowd_shb:smoke=True --workdir runs/shb_smoke \
      --config.dataset.manual_dir=../shared/data/shanghaitech

Arguments (``--config crowd_shb:loss=gl,smoke=True``):
  loss: "bayesian" (BL), "dm_count", "gl", "pml" or "gaussian_l2"; picks the
    paper's counter (BL / DM-Count / GL VGG19 head at stride 8, PML VGG19
    fusion at stride 2) and its recipe. Any loss trains any counter: override
    ``--config.model.name``.
  smoke: tiny counter, 64-px crops, 2 steps, trained on the ``test`` split
    (the images present) and tested on two of its images; no published
    figures are printed (they are for the full protocol).

Recipe (``counting_jax.data.presets``, with the official repositories'
files and lines): random
512x512 crops with horizontal flips, ImageNet normalisation, Adam lr 1e-5
with weight decay 1e-4; BL/GL batch 1, DM-Count batch 10; the papers train
1000 epochs (400 images: 400k steps at batch 1) from ImageNet VGG19 weights
converted with ``counting-jax convert`` (``init_checkpoint``; when it is
empty the counter starts from random weights, and ``counting-jax train``
says so).
"""

import ml_collections

from counting_jax.configs import common
from counting_jax.train import defaults

__all__ = ["get_config"]

_RECIPES = {
    # loss: (model, batch size, loss kwargs)
    "bayesian": ("bl_vgg19", 1, dict(sigma=8.0, use_background=True)),
    "dm_count": ("dm_count_vgg19", 10, {}),
    "gl": ("gl_vgg19", 1, {}),
    "pml": ("pml_vgg19", 1, {}),
    "gaussian_l2": ("bl_vgg19", 1, dict(sigma=4.0)),
}


def get_config(arg=None):
  a = common.parse_arg(arg, loss="dm_count", smoke=False)
  if a["loss"] not in _RECIPES:
    raise ValueError(f"loss must be one of {sorted(_RECIPES)}, got {a['loss']!r}")
  model, batch, loss_kwargs = _RECIPES[a["loss"]]
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = ml_collections.ConfigDict(dict(
      name="shanghaitech_b", train_split="train", test_split="test",
      num_train=ml_collections.config_dict.placeholder(int), draw_seed=0,
      data_dir="", manual_dir=""))
  c.dataset.dot_folder = common.dot_folder_options()
  c.input = ml_collections.ConfigDict(dict(
      batch_size=batch, crop_size=(512, 512), flip=True, vflip=False,
      scale_range=None, max_points=1024, pad_multiple=32, eval_batch_size=1,
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
      cache=False, num_workers=2))  # decode in 2 worker processes
  c.model = ml_collections.ConfigDict(dict(name=model, kwargs={}))
  c.init_checkpoint = ""
  c.density_scale = 1.0
  c.loss = ml_collections.ConfigDict(dict(name=a["loss"], kwargs=loss_kwargs))
  c.optim = ml_collections.ConfigDict(dict(
      name="adam", lr=1e-5, schedule="constant", warmup_steps=0,
      weight_decay=1e-4, clip_norm=0.0))
  c.total_steps = 400_000
  c.log_every = 100
  c.checkpoint_every = 5000
  c.num_panels = 4
  c.panel_sigma = 8.0
  c.published_dataset = ml_collections.ConfigDict(dict(
      name="shanghaitech_b", train_split="train", test_split="test",
      num_train=ml_collections.config_dict.placeholder(int)))
  c.published_protocol = "ShanghaiTech B test, MAE / RMSE"
  c.published = (
      ("BL (Ma et al. 2019)", "7.7 / 12.7"),
      ("DM-Count (Wang et al. 2020)", "7.4 / 11.8"),
      ("GL (Wan et al. 2021)", "7.3 / 11.7"),
      ("PML, VGG19 (Lin, Wan & Chan)", "6.0 / 9.3"),
  )
  c.quiet = False
  if a["smoke"]:
    c.model.name = model + "_tiny" if model != "pml_vgg19" else "pml_vgg19_tiny"
    c.dataset.train_split = "test"
    c.dataset.test_split = "test[:2]"
    c.input.batch_size = 2
    c.input.crop_size = (64, 64)
    c.input.num_workers = 0
    c.optim.lr = 1e-3
    c.total_steps = 2
    c.log_every = 1
    c.checkpoint_every = 2
    c.num_panels = 1
  return defaults.complete(c)  # every trainer field, overridable
