"""Seg-then-Count pseudo masks: K-means on patch embeddings, K* by eq. 5.

Xu, Le & Samaras, "Learning to Count from Pseudo-Labeled Segmentation"
(WACV 2025), §3.2. For one image with exemplar boxes:

1. Mask grid: cell (i, j) of the similarity map (stride r = 16 input pixels)
   stands for the patch centred at (j r + r/2, i r + r/2) pixels, of the
   mean exemplar width and height (:func:`patch_boxes`).
2. Patch embeddings f_ij: each patch is cropped, resized to
   ``patch_size`` x ``patch_size`` and embedded by the frozen ImageNet
   ResNet-50: the global average of its ``layer3`` output (1024-d). The
   paper gives neither the layer nor the patch resolution; ``layer3`` is the
   counter's feature layer, and 64 px (``patch_size``) keeps 4 x 4 cells of
   it. Both are arguments.
3. f_B: the mean embedding of the exemplars, cropped the same way.
4. For K in 2..6: K-means on {f_ij} ∪ {f_B}; M^K_ij = 1 where f_ij falls in
   f_B's cluster (:func:`kmeans_labels`, ott-jax's ``ott.tools.k_means``,
   jit-compiled per K; point sets are padded to a fixed size with zero-weight
   copies of a real point so that one compilation serves every image).
5. S^K = S where M^K else δ (eq. 4); D^K = C(w, S^K) with the frozen
   counter; K* = argmin_K ||D^K - D*||² (eq. 5, :func:`choose_k`), with D*
   the Gaussian density of the dot annotations at full resolution.

:func:`write_pseudo_masks` stores the result once as a TFDS data set (masks,
K*, the eq. 5 errors per K) read back by :func:`read_pseudo_masks`.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ott.tools import k_means as ott_k_means

from counting_jax.models import seg_then_count as stc
from counting_jax.models.backbones import resnet

__all__ = ["KS", "make_embedder", "patch_boxes", "kmeans_labels", "cluster_masks",
           "choose_k", "pseudo_masks", "write_pseudo_masks",
           "read_pseudo_masks", "PSEUDO_MASK_DATASET"]

KS = (2, 3, 4, 5, 6)  # the paper's K range
PSEUDO_MASK_DATASET = "seg_then_count_pseudo_masks"


def patch_boxes(grid_hw: tuple[int, int], exemplars, exemplar_mask,
                stride: int = stc.STRIDE) -> np.ndarray:
  """Boxes of the patches around every similarity-map cell (§3.2).

  Args:
    grid_hw: (h, w) cells of the similarity map.
    exemplars: float [E, 4] (x1, y1, x2, y2) input-image pixels.
    exemplar_mask: bool [E]; at least one True.
    stride: input pixels per cell (16).

  Returns:
    float32 [h w, 4] (x1, y1, x2, y2), row-major over cells; each box is
    centred on its cell centre and has the mean exemplar width and height.

  Raises:
    ValueError: when no exemplar is valid.
  """
  ex = np.asarray(exemplars, np.float32)[np.asarray(exemplar_mask, bool)]
  if not len(ex):
    raise ValueError("patch_boxes: needs at least one valid exemplar box")
  bw = float((ex[:, 2] - ex[:, 0]).mean())
  bh = float((ex[:, 3] - ex[:, 1]).mean())
  h, w = grid_hw
  cy, cx = np.meshgrid((np.arange(h) + 0.5) * stride,
                       (np.arange(w) + 0.5) * stride, indexing="ij")
  cx, cy = cx.ravel(), cy.ravel()
  return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2],
                  -1).astype(np.float32)


def make_embedder(variables, *, stage_sizes=(3, 4, 6, 3), width: int = 64,
                  layer: int = 3, chunk: int = 128) -> Callable:
  """The frozen ImageNet ResNet-50 as a patch embedder (§3.2 step 2).

  Args:
    variables: {'params', 'batch_stats'} of ``ResNet(stage_sizes, width,
      num_layers=layer)`` (``counting-jax convert --model resnet50`` of
      torchvision's ImageNet checkpoint).
    stage_sizes, width: the ResNet (ResNet-50 by default).
    layer: the ResNet layer whose global average is the embedding (3: 1024
      channels for ResNet-50; not given in the paper).
    chunk: crops per compiled call (the last chunk is padded; one
      compilation per crop size).

  Returns:
    ``crops float [N, p, p, 3] (normalised) -> float32 numpy [N, C]``.
  """
  net = resnet.ResNet(stage_sizes=tuple(stage_sizes), width=width,
                      num_layers=layer)
  run = jax.jit(lambda v, x: net.apply(v, x, train=False)[-1].astype(
      jnp.float32).mean((1, 2)))

  def embed(crops):
    crops = jnp.asarray(crops, jnp.float32)
    n = crops.shape[0]
    out = []
    for i in range(0, n, chunk):
      part = crops[i:i + chunk]
      pad = chunk - part.shape[0]
      if pad:
        part = jnp.concatenate([part, jnp.repeat(part[:1], pad, 0)])
      out.append(np.asarray(run(variables, part))[:chunk - pad])
    return np.concatenate(out)

  return embed


@functools.partial(jax.jit, static_argnames=("k", "n_init", "max_iterations",
                                             "tol"))
def _kmeans(points, weights, rng, *, k, n_init, max_iterations, tol):
  out = ott_k_means.k_means(points, k, weights=weights, n_init=n_init,
                            max_iterations=max_iterations, tol=tol, rng=rng)
  return out.assignment, out.centroids, out.error


@functools.partial(jax.jit, static_argnames=("k", "max_iterations", "tol"))
def _kmeans_from(points, weights, init, *, k, max_iterations, tol):
  out = ott_k_means.k_means(points, k, weights=weights, n_init=1,
                            init=lambda *_: init, tol=tol,
                            max_iterations=max_iterations)
  return out.assignment, out.centroids, out.error


def _pad(points, bucket: int):
  n = len(points)
  size = -(-n // bucket) * bucket
  padded = np.concatenate([points, np.repeat(points[:1], size - n, 0)])
  weights = np.concatenate([np.ones(n), np.zeros(size - n)])
  return jnp.asarray(padded, jnp.float32), jnp.asarray(weights, jnp.float32)


def kmeans_labels(points, k: int, *, seed: int = 0, n_init: int = 10,
                  max_iterations: int = 300, tol: float = 1e-4, init=None,
                  bucket: int = 256) -> np.ndarray:
  """K-means cluster labels of ``points`` (ott-jax, jit-compiled per k).

  Args:
    points: float [N, D].
    k: number of clusters (static: one compilation per k and padded size).
    seed: seed of the k-means++ initialisations.
    n_init: restarts (the lowest inertia wins), as scikit-learn's default.
    max_iterations: Lloyd iterations per restart.
    tol: stop when the centroids move less than ``tol`` relative to their
      norm (ott-jax's rule).
    init: optional float [k, D] initial centroids (then one run).
    bucket: the point set is padded up to a multiple of ``bucket`` with
      zero-weight copies of ``points[0]`` (they move no centroid and, being
      real points, are harmless if k-means++ picks one).

  Returns:
    int32 [N] labels in [0, k).

  Raises:
    ValueError: when there are fewer than k points.
  """
  points = np.asarray(points, np.float32)
  if points.ndim != 2 or len(points) < k:
    raise ValueError(f"kmeans_labels: need [N >= {k}, D] points, got "
                     f"{points.shape}")
  x, w = _pad(points, bucket)
  if init is None:
    labels, _, _ = _kmeans(x, w, jax.random.key(seed), k=k, n_init=n_init,
                           max_iterations=max_iterations, tol=tol)
  else:
    labels, _, _ = _kmeans_from(x, w, jnp.asarray(init, jnp.float32), k=k,
                                max_iterations=max_iterations, tol=tol)
  return np.asarray(labels[:len(points)], np.int32)


def cluster_masks(patch_embeddings, exemplar_embedding, grid_hw,
                  ks: Sequence[int] = KS, **kmeans_kwargs) -> np.ndarray:
  """M^K for every K (§3.2 step 4).

  Args:
    patch_embeddings: float [h w, D], row-major over cells.
    exemplar_embedding: float [D], f_B.
    grid_hw: (h, w).
    ks: the K values.
    **kmeans_kwargs: for :func:`kmeans_labels`.

  Returns:
    bool [len(ks), h, w]: cells in f_B's cluster.
  """
  pts = np.concatenate([np.asarray(patch_embeddings, np.float32),
                        np.asarray(exemplar_embedding, np.float32)[None]])
  out = []
  for k in ks:
    labels = kmeans_labels(pts, k, **kmeans_kwargs)
    out.append((labels[:-1] == labels[-1]).reshape(grid_hw))
  return np.stack(out)


def choose_k(densities, target) -> tuple[int, np.ndarray]:
  """Eq. 5: the index of argmin_K ||D^K - D*||² and the errors.

  Args:
    densities: float [K, H, W] counter outputs D^K.
    target: float [H, W] ground-truth density D*.

  Returns:
    (index int, errors float64 [K]); the first index wins ties.

  Raises:
    ValueError: on mismatched shapes.
  """
  d = np.asarray(densities, np.float64)
  t = np.asarray(target, np.float64)
  if d.ndim != 3 or d.shape[1:] != t.shape:
    raise ValueError(f"choose_k: densities [K, H, W] and target [H, W] "
                     f"must match, got {d.shape} and {t.shape}")
  err = ((d - t) ** 2).sum((1, 2))
  return int(np.argmin(err)), err


def pseudo_masks(*, embed: Callable, count: Callable, image, similarity,
                 exemplars, exemplar_mask, target, ks: Sequence[int] = KS,
                 patch_size: int = 64, delta: float = 0.0,
                 **kmeans_kwargs) -> dict:
  """Pseudo masks of one image (§3.2, eqs. 4-5).

  Args:
    embed: ``crops float32 [N, p, p, 3] -> float [N, D]`` (frozen ImageNet
      ResNet-50, GAP of ``layer3``).
    count: ``(S^K float32 [K, h, w]) -> D^K float [K, H, W]``: the frozen
      counter on this image's features (computed once by the caller).
    image: float32 [H, W, 3] normalised, H, W multiples of 16.
    similarity: float32 [h, w], S of eq. 1 (h, w = H / 16, W / 16).
    exemplars: float32 [E, 4] (x1, y1, x2, y2) pixels; exemplar_mask bool
      [E].
    target: float32 [H, W] ground-truth density D* (count units).
    ks: K values (2..6).
    patch_size: pixels of the resized patches (not in the paper).
    delta: δ of eq. 4 (not in the paper): S^K outside M^K.
    **kmeans_kwargs: for :func:`kmeans_labels`.

  Returns:
    {"masks": bool [len(ks), h, w], "k_index": int (K* = ks[k_index]),
    "k": int K*, "mask": bool [h, w] M*, "errors": float64 [len(ks)]}.
  """
  image = jnp.asarray(image, jnp.float32)
  h, w = image.shape[0] // stc.STRIDE, image.shape[1] // stc.STRIDE
  boxes = patch_boxes((h, w), exemplars, exemplar_mask)
  crops = stc.crop_boxes(image[None], jnp.asarray(boxes)[None], patch_size)[0]
  patch_emb = np.asarray(embed(crops))
  valid = np.asarray(exemplars, np.float32)[np.asarray(exemplar_mask, bool)]
  ex_crops = stc.crop_boxes(image[None], jnp.asarray(valid)[None],
                            patch_size)[0]
  ex_emb = np.asarray(embed(ex_crops)).mean(0)
  masks = cluster_masks(patch_emb, ex_emb, (h, w), ks, **kmeans_kwargs)
  masked = stc.masked_similarity(jnp.asarray(similarity)[None],
                                 jnp.asarray(masks), delta)
  densities = np.asarray(count(masked))
  idx, errors = choose_k(densities, target)
  return {"masks": masks, "k_index": idx, "k": int(ks[idx]),
          "mask": masks[idx], "errors": errors}


def _features():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.features.FeaturesDict({
      "image_id": tfds.features.Text(),
      "mask": tfds.features.Tensor(shape=(None, None, 1), dtype=np.uint8,
                                   encoding="zlib"),
      "k": tfds.features.Scalar(dtype=np.int32),
      "errors": tfds.features.Tensor(shape=(len(KS),), dtype=np.float32)})


def _builder_class():
  """A TFDS builder over rows given in Python (array_record, no TensorFlow;
  built lazily so that importing this module does not import TFDS)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class SegThenCountPseudoMasks(tfds.core.GeneratorBasedBuilder,
                                skip_registration=True):
    """Seg-then-Count pseudo masks M* with K* and the eq. 5 errors."""
    name = PSEUDO_MASK_DATASET
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, rows=(), split="train", **kwargs):
      self._rows, self._split = list(rows), split
      super().__init__(**kwargs)

    def _info(self):
      return self.dataset_info_from_configs(
          features=_features(), disable_shuffling=True,
          description="Seg-then-Count pseudo masks M* (cells of the "
          "stride-16 similarity map) with K* and the eq. 5 errors for "
          "K = 2..6.")

    def _split_generators(self, dl_manager):
      del dl_manager
      return {self._split: self._generate_examples()}

    def _generate_examples(self):
      for row in self._rows:
        yield row["image_id"], row

  return SegThenCountPseudoMasks


def write_pseudo_masks(records: Iterable[dict], data_dir, *,
                       split: str = "train"):
  """Writes pseudo masks once as a TFDS data set (array_record).

  Args:
    records: dicts with ``image_id`` str (unique), ``mask`` bool [h, w]
      (M*), ``k`` int (K*) and ``errors`` float [5] (eq. 5 per K).
    data_dir: TFDS data directory; the set is named
      ``seg_then_count_pseudo_masks`` (version 1.0.0).
    split: the split name (the FSC-147 split the masks come from).

  Returns:
    the TFDS builder (``builder.as_data_source(split)`` reads it).

  Raises:
    ValueError: when an ``image_id`` repeats.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  rows = [{"image_id": str(r["image_id"]),
           "mask": np.asarray(r["mask"], np.uint8)[..., None],
           "k": int(r["k"]),
           "errors": np.asarray(r["errors"], np.float32)} for r in records]
  ids = [r["image_id"] for r in rows]
  if len(set(ids)) != len(ids):
    raise ValueError("write_pseudo_masks: repeated image_id in records")
  builder = _builder_class()(rows=rows, split=split, data_dir=str(data_dir),
                             file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig())
  return builder


def read_pseudo_masks(data_dir, split: str = "train") -> dict[str, dict]:
  """{image_id: {"mask": bool [h, w], "k": int, "errors": float32 [5]}}.

  Raises:
    FileNotFoundError: naming ``data_dir`` when no pseudo masks are there.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(data_dir) / PSEUDO_MASK_DATASET
  infos = sorted(root.glob("**/dataset_info.json"))
  if not infos:
    raise FileNotFoundError(f"no pseudo masks ({PSEUDO_MASK_DATASET}) under "
                            f"{data_dir}; generate them first")
  builder = tfds.builder_from_directory(str(infos[-1].parent))
  out = {}
  for ex in builder.as_data_source(split):
    image_id = ex["image_id"]
    if isinstance(image_id, bytes):
      image_id = image_id.decode()
    out[image_id] = {"mask": np.asarray(ex["mask"][..., 0], bool),
                     "k": int(ex["k"]), "errors": np.asarray(ex["errors"])}
  return out
