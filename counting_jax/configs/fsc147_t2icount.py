"""T2ICount on FSC-147: text-guided zero-shot counting (Qian et al., CVPR
2025) with the official recipe.

  counting-jax train --config fsc147_t2icount --workdir runs/t2i \
      --config.dataset.manual_dir=/data/FSC147_384_V2 \
      --config.init_checkpoint=converted_sd15/
  counting-jax predict --config fsc147_t2icount --workdir runs/t2i \
      --images DIR --out DIR --text "apples"

Official recipe: SD-1.5 UNet fine-tuned with AdamW lr 5e-6 (wd 5e-6), the
HSCM decoder at 5e-5 (wd 5e-5), VAE and CLIP frozen, batch 16, 384² crops
after a random rescale s ~ U[1, 2) with p = 0.5 (``scale_prob``), horizontal
flips, negative-prompt (p = 0.25) and mosaic (p = 0.25) samples
(``method.negative_prob``, ``mosaic_prob``, ``mosaic_tile``,
``target_density``), no schedule, validation from epoch 50, best by val
MAE + RMSE
(paper model: val 13.78 / 58.78, test 11.76 / 97.86 MAE / RMSE). Images
are normalised to [-1, 1]; the density is x60 (count = sum / 60).
Evaluation and predict (``eval_tiling.mode = "t2icount"``): the official
procedure (``counting_jax.train.t2icount_tiling``) on each real image
(padding cut off): 384² tiles at stride 384, the last shifted to the
border, 16 tiles per call, tile maps upsampled x8 bilinearly, / 64,
overlaps averaged at full resolution.

Evaluation protocols (``--config fsc147_t2icount:eval=...``; each sets
``dataset.name``, ``test_split``, ``prompt`` and the published table;
they are for ``eval`` of a run trained with the default config, whose
``dataset`` fields ``eval`` may change; ``train`` would train on that
data set):
  fsc147 (default: FSC-147 val, the official model selection), fsc147_test,
  fsc147_s (FSC-147-S v2, 230 images, prompts and counts from the user's
  ``FSC-147-S.json``, data set ``fsc147_s``: ``counting_jax.data.fsc147_s``;
  manual_dir = the FSC-147 folder holding the json), fsc147_s_v1 (the
  paper's 196-image v1, ``FSC-147-S-v1.json``) and carpk (CARPK test,
  1280 x 720 at full size, prompt ``dataset.prompt = "cars"``; manual_dir =
  the CARPK folder). All tile as above.

  counting-jax eval --workdir runs/t2i --config fsc147_t2icount:eval=carpk \
      --config.dataset.manual_dir=/data/CARPK

Arguments (``--config fsc147_t2icount:smoke=True,eval=carpk``):
  smoke: a few steps of a tiny random-weight model on 64-px crops of the
    real FSC-147 images (tests).
  eval: the evaluation protocol (above).
"""

import ml_collections

from counting_jax.configs import common
from counting_jax.train import defaults

__all__ = ["get_config", "EVAL_PROTOCOLS"]

# eval protocol -> (data set, test split, prompt ("" = class names),
# published T2ICount MAE / RMSE of the paper model or None).
EVAL_PROTOCOLS = {
    "fsc147": ("fsc147", "val", "", "13.78 / 58.78"),
    "fsc147_test": ("fsc147", "test", "", "11.76 / 97.86"),
    "fsc147_s": ("fsc147_s", "test", "", "5.99 / 10.55"),
    "fsc147_s_v1": ("fsc147_s", "v1", "", None),
    "carpk": ("carpk", "test", "cars", "8.61 / 13.47"),
}


def get_config(arg=None):
  a = common.parse_arg(arg, smoke=False, eval="fsc147")
  if a["eval"] not in EVAL_PROTOCOLS:
    raise ValueError(f"fsc147_t2icount: eval={a['eval']!r}; valid: "
                     f"{sorted(EVAL_PROTOCOLS)}")
  name, test_split, prompt, published = EVAL_PROTOCOLS[a["eval"]]
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Official training samples: plain 0.5, negative prompt 0.25, mosaic
  # 0.25 (224² tiles); GT = the full-image density moved with the pixels.
  c.method = ml_collections.ConfigDict(dict(
      name="t2icount", negative_prob=0.25, mosaic_prob=0.25,
      mosaic_tile=224, target_density="image"))
  c.dataset = ml_collections.ConfigDict(dict(
      name=name, train_split="train", test_split=test_split,
      num_train=ml_collections.config_dict.placeholder(int), draw_seed=0,
      data_dir="", manual_dir="", prompt=prompt))
  c.input = ml_collections.ConfigDict(dict(
      batch_size=16, crop_size=(384, 384), flip=True, vflip=False,
      scale_range=(1.0, 2.0), scale_prob=0.5, max_points=4096, pad_multiple=64,
      eval_batch_size=1, cache=False, num_workers=4,
      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
  c.model = ml_collections.ConfigDict(dict(
      name="t2icount", kwargs=dict(size="sd15")))
  c.density_scale = 60.0
  c.loss = ml_collections.ConfigDict(dict(name="t2icount", kwargs=dict(
      tv_weight=0.1, rrc_weight=0.01, gamma=2.0, ambiguity_threshold=0.3)))
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=5e-5, schedule="constant", warmup_steps=0,
      weight_decay=5e-5, clip_norm=None,
      groups=dict(vae=dict(frozen=True), clip=dict(frozen=True),
                  unet=dict(lr=5e-6, weight_decay=5e-6),
                  decoder=dict(lr=5e-5, weight_decay=5e-5))))
  # 300 epochs of 3659 images at batch 16.
  c.total_steps = 300 * (3659 // 16)
  c.log_every = 50
  c.checkpoint_every = 3659 // 16
  c.num_panels = 4
  c.panel_sigma = 4.0
  c.eval_tiling = ml_collections.ConfigDict(dict(
      mode="t2icount", max_size=384, tile_size=384, overlap=0,
      blend="linear", tile_batch=16))
  if published is not None:
    c.published_dataset = ml_collections.ConfigDict(dict(
        name=name, test_split=test_split,
        num_train=ml_collections.config_dict.placeholder(int)))
    c.published_protocol = (f"{name} {test_split}"
                            + (f", prompt {prompt!r}" if prompt else "")
                            + ", MAE / RMSE")
    c.published = (("T2ICount, paper model (Qian et al. 2025)",
                    published),)
  if a["smoke"]:
    c.model.kwargs = dict(size="tiny")
    c.dataset.train_split = "test"
    c.dataset.test_split = "test[:2]"
    c.input.batch_size = 2
    c.input.crop_size = (64, 64)
    c.input.scale_range = (0.25, 0.3)
    c.input.max_points = 600
    c.input.num_workers = 0
    c.total_steps = 3
    c.log_every = 1
    c.checkpoint_every = 3
    c.num_panels = 0
    c.eval_tiling.max_size = 64
    c.eval_tiling.tile_size = 64
    c.eval_tiling.tile_batch = 2
  return defaults.complete(c)  # every trainer field, overridable
