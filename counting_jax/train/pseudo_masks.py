"""``counting-jax pseudo-masks``: Seg-then-Count's pseudo masks of a split.

Stage 2 of Seg-then-Count (Xu, Le & Samaras, WACV 2025, §3.2) from the
command line: the trained base counter of a run folder (stage ``counter``;
or a converted whole counter, ``config.init_checkpoint``) and the frozen
ImageNet ResNet-50 give, for every image of a split, the masks M^K for K =
2..6, K* by eq. 5 and M* = M^{K*}
(:func:`counting_jax.methods.seg_then_count.generate_pseudo_masks`),
written once as a TFDS data set that the ``segmenter`` stage reads
(``config.pseudo_masks.data_dir`` / ``split``)::

  counting-jax convert --checkpoint resnet50-0676ba61.pth --model resnet50 \\
      --set num_layers=3 --out runs/resnet50_imagenet
  counting-jax pseudo-masks --workdir runs/stc_counter \\
      --imagenet runs/resnet50_imagenet --masks_dir runs/masks
  counting-jax train --config fsc147_seg_then_count:stage=segmenter \\
      --workdir runs/stc_seg --config.pseudo_masks.data_dir=runs/masks ...
"""

from __future__ import annotations

import functools
import pathlib

import flax
import jax

__all__ = ["imagenet_path", "generate"]


def _base_split(split: str) -> str:
  """``"train[:100]"`` -> ``"train"`` (the name the masks are written
  under)."""
  return split.split("[", 1)[0].strip()


def _first_line(e) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0]


def imagenet_path(config, imagenet=None) -> str:
  """The ImageNet backbone weights to embed patches with.

  Args:
    config: the counter-stage config.
    imagenet: ``--imagenet`` (an orbax folder written by ``counting-jax
      convert --model resnet50``), or None for ``config.init_checkpoint``.

  Returns:
    the folder, as a string.

  Raises:
    ValueError: when neither is given.
    FileNotFoundError: naming the folder when it does not exist.
  """
  path = imagenet or config.get("init_checkpoint", "") or ""
  if not path:
    raise ValueError("--imagenet is required (the ImageNet ResNet-50 of "
                     "counting-jax convert --model resnet50 --set "
                     "num_layers=3) when config.init_checkpoint is empty")
  if not pathlib.Path(path).is_dir():
    raise FileNotFoundError(f"--imagenet: folder not found: {path}")
  return str(path)


def generate(config, workdir, *, imagenet=None, masks_dir=None, split=None,
             progress: bool = True) -> tuple[list, pathlib.Path, str]:
  """Pseudo masks of ``split`` with the counter of ``workdir``.

  Args:
    config: a ``seg_then_count`` config of stage ``counter`` (its
      ``model.kwargs``, ``input.max_exemplars``, ``loss.kwargs.sigma`` and
      ``pseudo_masks`` fields; ``dataset`` names the images).
    workdir: the counter's run folder (its newest checkpoint), or a folder
      without one when ``config.init_checkpoint`` is a converted whole
      counter.
    imagenet: the converted ImageNet backbone (:func:`imagenet_path`);
      must hold a backbone's variables (``params`` without ``backbone``),
      shaped like ``model.kwargs``' ``stage_sizes`` / ``width``.
    masks_dir: TFDS data folder to write (default
      ``config.pseudo_masks.data_dir``).
    split: data split to read, tfds slicing allowed (default
      ``config.pseudo_masks.split``); the masks are written under its base
      name (``train[:100]`` -> ``train``).
    progress: show a tqdm bar.

  Returns:
    (rows written, masks_dir, split name written); a row is {"image_id",
    "mask" bool [ceil(H / 16), ceil(W / 16)], "k" int, "errors" float64 [5]}.

  Raises:
    ValueError: for another method or stage, no masks folder, an
      ``imagenet`` folder holding a whole counter, or weights that do not
      fit the model.
    FileNotFoundError: when ``workdir`` has no checkpoint and there is no
      ``config.init_checkpoint``, or ``imagenet`` is missing.
  """
  from counting_jax.convert import orbax_io  # pylint: disable=g-import-not-at-top
  from counting_jax.methods import seg_then_count as stc_method  # pylint: disable=g-import-not-at-top
  from counting_jax.train import loop  # pylint: disable=g-import-not-at-top
  if config.method.name != "seg_then_count":
    raise ValueError(f"pseudo-masks: needs a seg_then_count config, got "
                     f"method {config.method.name!r}")
  if str(config.method.get("stage", "counter")) != "counter":
    raise ValueError("pseudo-masks: needs the counter stage's run folder and "
                     "config (method.stage=counter), got stage "
                     f"{config.method.stage!r}")
  masks_dir = masks_dir or config.pseudo_masks.get("data_dir", "") or ""
  if not masks_dir:
    raise ValueError("pseudo-masks: --masks_dir is required when "
                     "config.pseudo_masks.data_dir is empty")
  split = split or str(config.pseudo_masks.split)
  imagenet = imagenet_path(config, imagenet)
  backbone = orbax_io.load_variables(imagenet)
  if "params" not in backbone or "backbone" in backbone["params"]:
    raise ValueError(f"--imagenet {imagenet}: expected the variables of an "
                     "ImageNet ResNet (counting-jax convert --model "
                     "resnet50), found a whole model's")
  _, state = loop._restore_for_eval(config, workdir)  # pylint: disable=protected-access
  counter = {"params": jax.device_get(state.params),
             "batch_stats": jax.device_get(state.batch_stats)}
  source = loop._load(config, split)  # pylint: disable=protected-access
  samples = (source[i] for i in range(len(source)))
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = functools.partial(tqdm.tqdm, total=len(source),
                            desc="pseudo masks")
  name = _base_split(split)
  try:
    rows = stc_method.generate_pseudo_masks(
        config, counter, backbone, samples, out_dir=masks_dir, split=name,
        progress=bar)
  except flax.errors.FlaxError as e:  # missing or misshaped weights
    raise ValueError(f"--imagenet {imagenet} does not fit model.kwargs "
                     f"(stage_sizes / width): {_first_line(e)}") from e
  return rows, pathlib.Path(masks_dir), name
