"""VGG synthetic cells, N=32 training images, density regression (the main job).

  counting-jax train --config configs/cells.py --workdir runs/cells

Protocol (Lempitsky & Zisserman 2010): N=32 images drawn with a fixed seed
from images 001-100, test on 101-200. Arguments
(``--config cells:model=fcrn_a,draw=3,smoke=True``):
  model: "unet" (default) or "fcrn_a".
  width: U-Net width of the first level (doubling at each of 4 levels).
  draw: seed of the draw of the 32 training images (experiments use 0..4).
  smoke: tiny model and a few steps, for tests.
"""

import ml_collections

from counting_jax.configs import common
from counting_jax.train import defaults

__all__ = ["get_config"]


def get_config(arg=None):
  a = common.parse_arg(arg, model="unet", draw=0, smoke=False, width=8)
  c = ml_collections.ConfigDict()
  c.seed = a["draw"]
  c.dataset = ml_collections.ConfigDict(dict(
      name="vgg_cells", train_split="train", test_split="test", num_train=32,
      draw_seed=a["draw"], data_dir="", manual_dir=""))
  # Options of name="dot_folder" (your own folder, manual_dir), e.g.
  # --config.dataset.dot_folder.split=fraction; counting_jax.data.dot_folder.
  c.dataset.dot_folder = common.dot_folder_options()
  c.input = ml_collections.ConfigDict(dict(
      batch_size=8, crop_size=(128, 128), flip=True, vflip=True,
      scale_range=None, max_points=320, pad_multiple=8, eval_batch_size=20,
      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
  kwargs = {}
  if a["model"] == "unet":
    kwargs["widths"] = tuple(a["width"] * 2 ** i for i in range(4))
  c.model = ml_collections.ConfigDict(dict(name=a["model"], kwargs=kwargs))
  # Density x100 (common for cells), σ = 2 px Gaussian targets, summed L2.
  c.density_scale = 100.0
  c.loss = ml_collections.ConfigDict(dict(
      name="gaussian_l2", kwargs=dict(sigma=2.0, scale=100.0)))
  c.optim = ml_collections.ConfigDict(dict(
      name="adam", lr=3e-3, schedule="cosine", warmup_steps=50,
      weight_decay=0.0, clip_norm=10.0))
  c.total_steps = 1500
  c.log_every = 25
  c.checkpoint_every = 200
  c.num_panels = 4
  c.panel_sigma = 2.0
  # Printed after evaluation only for this data set and protocol
  # (counting_jax/train/published.py).
  c.published_dataset = ml_collections.ConfigDict(dict(
      name="vgg_cells", train_split="train", test_split="test",
      num_train=32))
  c.published_protocol = "VGG cells, N=32, MAE mean ± std over 5 draws"
  c.published = (
      ("Lempitsky & Zisserman 2010", "3.5 ± 0.2"),
      ("Fiaschi et al. 2012", "3.2 ± 0.1"),
      ("Arteta et al. 2014", "3.5 ± 0.1"),
      ("FCRN-A, Xie et al. 2016", "2.9 ± 0.2"),
      ("Count-ception, Cohen et al. 2017", "2.4 ± 0.4"),
  )
  c.quiet = False
  # Scale-out (counting_jax/train/loop.py): compute dtype ("bfloat16" keeps
  # float32 params and loss), micro-batches per step, parameter EMA (0 = off,
  # else used for evaluation) and tiled evaluation of images above max_size.
  c.compute_dtype = "float32"
  c.accum_steps = 1
  c.ema_decay = 0.0
  # On CPU, YNNPACK for dots only, XLA's Eigen convolutions (faster for VGG19
  # on CPU; None = XLA's defaults; train/compile_options.py).
  c.xla_cpu_ynn_fusion_type = "LIBRARY_FUSION_TYPE_DOT"
  c.eval_tiling = ml_collections.ConfigDict(dict(
      max_size=2048, tile_size=1024, overlap=128, blend="linear",
      tile_batch=4))
  if a["smoke"]:
    c.model.name = a["model"] + "_tiny"
    c.model.kwargs = {}
    c.dataset.num_train = 4
    c.dataset.test_split = "test[:10]"
    c.input.batch_size = 2
    c.input.crop_size = (32, 32)
    c.total_steps = 6
    c.log_every = 2
    c.checkpoint_every = 3
    c.num_panels = 1
  return defaults.complete(c)  # every trainer field, overridable
