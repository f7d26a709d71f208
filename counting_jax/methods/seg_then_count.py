"""Seg-then-Count (Xu, Le & Samaras, WACV 2025) as trainer methods.

Three stages on FSC-147 (§4.1), picked by ``config.method.stage``:

``counter``
  The base counter (``counting_jax.models.seg_then_count.SegThenCount``):
  image + 3 exemplar boxes -> similarity map (eq. 1) -> full-resolution
  density; loss eq. 3, the pixel L2 to the Gaussian density of the dot
  annotations (``counting_jax.losses.gaussian_l2_loss`` at stride 1,
  ``reduction="mean"``, scale 1: mean squared error, as the same author's
  public counter). AdamW 1e-5, batch 8, 300 epochs.
``pseudo_masks``
  Not a training stage: :func:`generate_pseudo_masks` runs §3.2 with the
  trained counter frozen (``counting_jax.methods.seg_then_count_masks``) and
  writes the masks M* with their K* once, as a TFDS data set.
``segmenter``
  ``SegThenCount(with_segmenter=True)``: the counter (frozen) plus the
  exemplar segmenter; loss eq. 7, the mean squared error of the cosine map
  M^p (eq. 6) to M* over the similarity cells; inference masks the
  similarity map at M^p >= 0.6 with δ (eq. 4) before the counter, so the
  stage's ``density`` is the masked count. AdamW 1e-5, batch 8, 20 epochs.

Parameter groups (``config.optim.groups``): ``frozen`` = every BatchNorm
scale / bias (FrozenBatchNorm) and the stem and ``layer1`` of each ResNet;
``counter`` = the base counter's parameters in the segmenter stage (frozen
there); everything else ``default``.

Config fields read: ``method.stage``, ``model.kwargs`` (``SegThenCount``
attributes: ``stage_sizes``, ``width``, ``proj_dim``, ``exemplar_size``,
``head_widths``, ``threshold``, ``delta``), ``input.max_exemplars``,
``loss.kwargs`` (``sigma``, ``scale`` of the density target; counter
stage), ``pseudo_masks.data_dir`` / ``pseudo_masks.split`` (segmenter
stage), ``compute_dtype``.

Pseudo masks in the batch: a ``before_augment`` hook looks the sample's
``image_id`` up in the pseudo-mask data set and adds ``masks`` float32
[H, W, 1], each mask cell spread over its 16 x 16 input pixels (cells
anchored at the top-left of the stored image), so the mask moves with every
transform; the loss reads it back at the cell centres.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from counting_jax import losses as losses_lib
from counting_jax.data import transforms
from counting_jax.methods import base
from counting_jax.methods import seg_then_count_masks as masks_lib
from counting_jax.models import seg_then_count as stc

__all__ = ["build", "param_labels", "segmentation_loss", "counter_loss",
           "centre_pad_hook", "pseudo_mask_hook", "generate_pseudo_masks", "STAGES"]

STAGES = ("counter", "segmenter")


def _label(path, *, with_segmenter: bool) -> str:
  names = [getattr(k, "key", str(k)) for k in path]
  top = names[0]
  if top in ("backbone", "segmenter"):
    sub = names[1]
    if (sub in ("conv1", "bn1") or sub.startswith("layer1_")
        or any(n.startswith("bn") or n == "downsample_bn" for n in names)):
      return "frozen"
  if with_segmenter and top != "segmenter":
    return "counter"
  return "default"


def param_labels(params, *, with_segmenter: bool):
  """Group name of every parameter (``frozen``, ``counter``, ``default``;
  see the module docstring)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: _label(p, with_segmenter=with_segmenter), params)


def counter_loss(outputs, batch, *, sigma, scale):
  """Eq. 3: mean squared error of the full-resolution density to the
  Gaussian density (σ = ``sigma`` input pixels) of ``batch['points']``.

  Returns ``(loss float32 [], {"l2": [B], "count": [B]})``; finite on images
  without points.
  """
  return losses_lib.gaussian_l2_loss(
      outputs["density"], batch["points"], batch["point_mask"], stride=1,
      sigma=sigma, scale=scale, reduction="mean")


def segmentation_loss(outputs, batch):
  """Eq. 7: mean over cells of (M^p_ij - M*_ij)², M* read from
  ``batch['masks']`` float32 [B, H, W, 1] at the cell centres (8 + 16 i).

  Returns ``(loss float32 [], {"seg_l2": [B], "count": [B]})``.

  Raises:
    KeyError: when the batch carries no ``masks``.
  """
  if "masks" not in batch:
    raise KeyError("segmenter stage: the batch has no pseudo masks; generate "
                   "them for the training split (generate_pseudo_masks) and "
                   "set config.pseudo_masks.data_dir / split")
  seg = outputs["segmentation"]
  h, w = seg.shape[1:]
  half = stc.STRIDE // 2
  target = batch["masks"][:, half::stc.STRIDE, half::stc.STRIDE, 0]
  target = target[:, :h, :w].astype(jnp.float32)
  per_image = ((seg - target) ** 2).mean((1, 2))
  return per_image.mean(), {"seg_l2": per_image,
                            "count": outputs["density"].sum((1, 2))}


def _density(outputs):
  return outputs["density"]


_CACHE = {}


def _masks_of(data_dir, split):
  key = (str(data_dir), split)
  if key not in _CACHE:
    _CACHE[key] = masks_lib.read_pseudo_masks(data_dir, split)
  return _CACHE[key]


def pseudo_mask_hook(sample, *, data_dir, split):
  """``before_augment`` hook: adds ``masks`` float32 [H, W, 1] (M* spread
  over its 16 x 16 pixel cells, cropped or zero-padded to the image).

  The trainer runs the hook for evaluation and ``predict`` too, where no
  pseudo mask exists (other splits, user images) and none is needed: such a
  sample gets no ``masks``. A training batch without them fails in
  :func:`segmentation_loss` with a KeyError naming the pseudo-mask set; a
  batch mixing images with and without masks fails when it is stacked.
  """
  masks = _masks_of(data_dir, split)
  image_id = str(sample["image_id"])
  if image_id not in masks:
    return sample
  cell = masks[image_id]["mask"].astype(np.float32)
  full = np.repeat(np.repeat(cell, stc.STRIDE, 0), stc.STRIDE, 1)
  h, w = sample["image"].shape[:2]
  out = np.zeros((h, w, 1), np.float32)
  hh, ww = min(h, full.shape[0]), min(w, full.shape[1])
  out[:hh, :ww, 0] = full[:hh, :ww]
  sample = dict(sample)
  sample["masks"] = out
  return sample


def centre_pad_hook(sample, *, multiple: int):
  """``before_augment`` hook: zero-pads the image equally on both sides to a
  multiple of ``multiple`` (§4.1: FSC-147 images 384 px high, centre-padded
  to a multiple of 32); points, boxes and pseudo masks move with it
  (:func:`counting_jax.data.transforms.pad_to_multiple`). The trainer's own
  bottom/right padding is then a no-op. Evaluation counts the whole padded
  density map (``image_size`` is the padded size), as padding carries no
  points.
  """
  return transforms.pad_to_multiple(sample, multiple, centre=True)


def _compose(hooks):
  if not hooks:
    return None
  if len(hooks) == 1:
    return hooks[0]

  def run(sample):
    for hook in hooks:
      sample = hook(sample)
    return sample
  return run


def _model(config, with_segmenter):
  kwargs = dict(config.model.kwargs)
  for k in ("stage_sizes", "head_widths"):
    if k in kwargs:
      kwargs[k] = tuple(kwargs[k])
  if config.compute_dtype != "float32":
    kwargs["dtype"] = jnp.dtype(config.compute_dtype)
  return stc.SegThenCount(with_segmenter=with_segmenter, **kwargs)


def build(config) -> base.Method:
  """The Seg-then-Count :class:`~counting_jax.methods.base.Method` of
  ``config.method.stage`` (``counter`` or ``segmenter``).

  Raises:
    ValueError: for another stage, or ``input.max_exemplars`` < 1.
  """
  stage = str(config.method.get("stage", "counter"))
  if stage not in STAGES:
    raise ValueError(f"config.method.stage must be one of {STAGES}, got "
                     f"{stage!r} (pseudo masks: generate_pseudo_masks)")
  max_exemplars = int(config.input.max_exemplars)
  if max_exemplars < 1:
    raise ValueError(f"input.max_exemplars must be >= 1, got "
                     f"{max_exemplars}")
  with_segmenter = stage == "segmenter"
  model = _model(config, with_segmenter)
  hooks = []
  if with_segmenter:
    pm = config.pseudo_masks
    hooks.append(functools.partial(pseudo_mask_hook,
                                   data_dir=str(pm.data_dir),
                                   split=str(pm.split)))
  if config.input.get("centre_pad", False):
    hooks.append(functools.partial(centre_pad_hook,
                                   multiple=int(config.input.pad_multiple)))
  fields = base.BatchFields(max_exemplars=max_exemplars,
                            before_augment=_compose(hooks))
  if with_segmenter:
    loss = segmentation_loss
  else:
    kw = dict(config.loss.kwargs)
    loss = functools.partial(counter_loss, sigma=kw.get("sigma", 4.0),
                             scale=kw.get("scale", 1.0))
  return base.Method(
      name="seg_then_count", model=model, loss=loss, density=_density,
      inputs=("image", "exemplars", "exemplar_mask"), fields=fields,
      param_labels=functools.partial(param_labels,
                                     with_segmenter=with_segmenter))


def generate_pseudo_masks(config, counter_variables, imagenet_variables,
                          samples, *, out_dir, split: str = "train",
                          normalize=None, progress=None):
  """§3.2 for every sample; writes the TFDS pseudo-mask set, returns rows.

  Args:
    config: the counter-stage config (``model.kwargs``, ``loss.kwargs``
      ``sigma``, ``pseudo_masks`` with ``patch_size``, ``ks``, ``layer``,
      ``seed``).
    counter_variables: {'params', 'batch_stats'} of the trained base
      counter (frozen).
    imagenet_variables: the ImageNet ResNet's {'params', 'batch_stats'}
      (ResNet with the config's ``stage_sizes`` / ``width``).
    samples: iterable of samples (``image`` uint8 [H, W, 3], ``points``
      float32 [N, 2], ``boxes`` float32 [K, 4], ``image_id``), e.g.
      ``counting_jax.data.load('fsc147', split)``.
    out_dir: TFDS data directory for the masks.
    split: the split name written.
    normalize: ``uint8 image -> float32`` (ImageNet mean / std by default).
    progress: optional callable wrapping the iterable (e.g. ``tqdm``).

  Returns:
    the list of rows written ({image_id, mask, k, errors}).
  """
  from counting_jax import density as density_lib  # pylint: disable=g-import-not-at-top
  from counting_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if normalize is None:
    normalize = lambda im: pipeline.normalize(im, pipeline.IMAGENET_MEAN,  # pylint: disable=g-long-lambda
                                              pipeline.IMAGENET_STD)
  pm = config.pseudo_masks
  model = _model(config, False)
  embed = masks_lib.make_embedder(
      imagenet_variables, stage_sizes=model.stage_sizes, width=model.width,
      layer=int(pm.layer))
  e = int(config.input.max_exemplars)
  sigma = float(dict(config.loss.kwargs).get("sigma", 4.0))

  @jax.jit
  def encode(image, boxes, mask):
    return model.apply(counter_variables, image, boxes, mask,
                       method=stc.SegThenCount.encode)

  @jax.jit
  def count(feats, sims):
    k = sims.shape[0]
    return model.apply(counter_variables, jnp.repeat(feats, k, 0), sims,
                       method=stc.SegThenCount.count)

  rows = []
  it = samples if progress is None else progress(samples)
  for s in it:
    image = np.asarray(s["image"])
    h, w = image.shape[:2]
    hp, wp = -(-h // stc.STRIDE) * stc.STRIDE, -(-w // stc.STRIDE) * stc.STRIDE
    img = np.zeros((hp, wp, 3), np.float32)
    img[:h, :w] = normalize(image)
    boxes = np.asarray(s["boxes"], np.float32).reshape(-1, 4)[:e]
    ex = np.zeros((e, 4), np.float32)
    ex[:len(boxes)] = boxes
    ex_mask = np.arange(e) < len(boxes)
    feats, sim = encode(img[None], ex[None], ex_mask[None])
    points = np.asarray(s["points"], np.float32).reshape(-1, 2)
    target = np.asarray(density_lib.gaussian_density(
        jnp.asarray(points), jnp.ones((len(points),), bool), (hp, wp),
        sigma, stride=1))
    out = masks_lib.pseudo_masks(
        embed=embed, count=functools.partial(count, feats),
        image=img, similarity=np.asarray(sim[0]), exemplars=ex,
        exemplar_mask=ex_mask, target=target,
        ks=tuple(pm.ks), patch_size=int(pm.patch_size),
        delta=float(model.delta), seed=int(pm.seed))
    image_id = s["image_id"]
    if isinstance(image_id, bytes):
      image_id = image_id.decode()
    rows.append({"image_id": str(image_id), "mask": out["mask"],
                 "k": out["k"], "errors": out["errors"]})
  masks_lib.write_pseudo_masks(rows, out_dir, split=split)
  return rows
