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
   f_B's cluster (:func:`kmeans_multi`, ott-jax's ``ott.tools.k_means``
   with scikit-learn's settings, every K in one compiled call, the restarts
   shared by the host's CPU threads; point sets
   are padded to a multiple of 128 points with zero-weight copies of a real
   point so that one compilation serves images of similar size).
5. S^K = S where M^K else δ (eq. 4); D^K = C(w, S^K) with the frozen
   counter; K* = argmin_K ||D^K - D*||² (eq. 5, :func:`choose_k`), with D*
   the Gaussian density of the dot annotations at full resolution.

:func:`write_pseudo_masks` stores the result once as a TFDS data set (masks,
K*, the eq. 5 errors per K) read back by :func:`read_pseudo_masks`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import pathlib
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ott.tools import k_means as ott_k_means

from counting_jax.models import seg_then_count as stc
from counting_jax.models.backbones import resnet

__all__ = ["KS", "RESTARTS", "make_embedder", "patch_boxes", "kmeans_multi",
           "kmeans_labels", "cluster_masks", "choose_k", "pseudo_masks",
           "write_pseudo_masks", "read_pseudo_masks", "PSEUDO_MASK_DATASET"]

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


RESTARTS = ("auto", "map", "vmap")
_POOLS = {}


def _restart_mode(restarts: str) -> str:
  """``restarts`` resolved for the default backend.

  XLA:CPU runs ott-jax's own restarts (``k_means(n_init=10)``, a ``vmap``)
  slowly: under ``vmap`` the centroid update's ``segment_sum`` becomes a
  batched scatter of the broadcast points, 12 ms per iteration for 10
  restarts of 865 x 1024 points against 0.5 ms for 10 unbatched scatters
  (2 cores, jaxlib 0.10). ``lax.map`` over the restarts keeps every scatter
  unbatched: the five K values of one image took 57-70 ms with ``map``
  against 187-197 ms with ``vmap`` (one host thread). GPUs and TPUs batch
  the scatter well, so ``vmap`` stays theirs. Both modes run the same
  restarts from the same keys (a test checks that they give the same
  labels).

  Raises:
    ValueError: for a mode not in :data:`RESTARTS`.
  """
  if restarts not in RESTARTS:
    raise ValueError(f"restarts must be one of {RESTARTS}, got {restarts!r}")
  if restarts == "auto":
    return "map" if jax.default_backend() == "cpu" else "vmap"
  return restarts


def _default_threads() -> int:
  """Host threads for the restarts: the CPU count on CPU, else 1.

  XLA:CPU runs one call's independent loops mostly one after another
  (about 1.1 cores busy), while calls from different host threads run side
  by side: two threads, each with half of the restarts, took 63-66 ms
  against 88-89 ms for one call (K = 2..6, 865 x 1024 points, 2 cores).
  """
  if jax.default_backend() != "cpu":
    return 1
  return max(1, os.cpu_count() or 1)


def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
  if threads not in _POOLS:
    _POOLS[threads] = concurrent.futures.ThreadPoolExecutor(
        threads, thread_name_prefix="kmeans")
  return _POOLS[threads]


def _abs_tol(points, weights, tol):
  """scikit-learn's tolerance: ``tol`` times the mean over features of the
  (weighted) variance of the points."""
  wsum = weights.sum()
  mean = (weights[:, None] * points).sum(0) / wsum
  var = (weights[:, None] * (points - mean) ** 2).sum(0) / wsum
  return tol * var.mean()


@functools.partial(jax.jit, static_argnames=("ks", "n_init"))
def _restart_keys(key, *, ks, n_init):
  """Key [len(ks), n_init]: restart r of K is ``split(fold_in(key, K),
  n_init)[r]``."""
  return jnp.stack([jax.random.split(jax.random.fold_in(key, k), n_init)
                    for k in ks])


@functools.partial(jax.jit, static_argnames=("ks", "max_iterations", "mode"))
def _kmeans_runs(points, weights, keys, tol, *, ks, max_iterations, mode):
  """One k-means++ run per key (ott-jax), every K in one compiled call.

  Args:
    points: float32 [N, D]; weights: float32 [N].
    keys: key [len(ks), R]: row i seeds the R runs of K = ks[i].
    tol: relative tolerance (see :func:`_abs_tol`).

  Returns:
    (labels int32 [len(ks), R, N], inertia float32 [len(ks), R]).
  """
  tol = _abs_tol(points, weights, tol)
  labels, errors = [], []
  for i, k in enumerate(ks):
    def run(rng, k=k):
      res = ott_k_means.k_means(points, k, weights=weights, n_init=1,
                                max_iterations=max_iterations, tol=tol,
                                rng=rng)
      return res.assignment.astype(jnp.int32), res.error
    lab, err = (jax.vmap(run) if mode == "vmap" else
                functools.partial(jax.lax.map, run))(keys[i])
    labels.append(lab)
    errors.append(err)
  return jnp.stack(labels), jnp.stack(errors)


@functools.partial(jax.jit, static_argnames=("k", "max_iterations"))
def _kmeans_from(points, weights, init, tol, *, k, max_iterations):
  tol = _abs_tol(points, weights, tol)
  out = ott_k_means.k_means(points, k, weights=weights, n_init=1,
                            init=lambda *_: init, tol=tol,
                            max_iterations=max_iterations)
  return out.assignment.astype(jnp.int32)


def _pad(points, bucket: int):
  n = len(points)
  size = -(-n // bucket) * bucket
  padded = np.concatenate([points, np.repeat(points[:1], size - n, 0)])
  weights = np.concatenate([np.ones(n), np.zeros(size - n)])
  return jnp.asarray(padded, jnp.float32), jnp.asarray(weights, jnp.float32)


def kmeans_multi(points, ks: Sequence[int] = KS, *, seed: int = 0,
                 n_init: int = 10, max_iterations: int = 300,
                 tol: float = 1e-4, bucket: int = 128,
                 restarts: str = "auto",
                 threads: int | None = None) -> np.ndarray:
  """K-means labels of ``points`` for every K.

  ott-jax's ``ott.tools.k_means`` (Lloyd's algorithm, k-means++
  initialisation with 2 + floor(log k) local trials, empty clusters
  refilled by the farthest points) with scikit-learn's settings: the best
  (lowest inertia; the first restart on ties) of ``n_init`` restarts, at
  most ``max_iterations`` iterations, stopping when no label changes or
  when the squared Frobenius norm of the centroid shift falls to ``tol``
  times the mean variance of the features (scikit-learn's rule; ott-jax's
  own ``tol`` is absolute). Every K runs in one compiled call; on CPU the
  restarts are split over ``threads`` host threads, each running that call
  on its share (the same compilation when the shares are equal).

  Args:
    points: float [N, D] (cast to float32).
    ks: the K values (static: one compilation per tuple of K values,
      restarts per thread and padded size).
    seed: restart r of K uses key ``split(fold_in(key(seed), K),
      n_init)[r]``, so a K's labels depend neither on the other K values
      nor on ``restarts`` / ``threads``.
    n_init: restarts per K (scikit-learn's ``n_init``).
    max_iterations: Lloyd iterations per restart (``max_iter``).
    tol: relative tolerance (scikit-learn's ``tol``).
    bucket: the point set is padded up to a multiple of ``bucket`` with
      zero-weight copies of ``points[0]`` (they move no centroid and, being
      real points, are harmless if k-means++ picks one), so images of
      similar size share a compilation (about 5 s for K = 2..6 on 2 CPU
      cores).
    restarts: "map" (restarts one after another, ``lax.map``), "vmap"
      (batched) or "auto" ("map" on CPU, "vmap" elsewhere; see
      :func:`_restart_mode`).
    threads: host threads sharing the restarts (default: the CPU count on
      CPU, 1 on other backends; at most ``n_init``).

  Returns:
    int32 [len(ks), N] labels, row i in [0, ks[i]).

  Raises:
    ValueError: when there are fewer points than the largest K, a K < 1,
      ``n_init`` or ``threads`` < 1, or an unknown ``restarts``.
  """
  points = np.asarray(points, np.float32)
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"kmeans_multi: ks must be positive, got {ks}")
  if points.ndim != 2 or len(points) < max(ks):
    raise ValueError(f"kmeans_multi: need [N >= {max(ks)}, D] points, got "
                     f"{points.shape}")
  threads = _default_threads() if threads is None else int(threads)
  if n_init < 1 or threads < 1:
    raise ValueError(f"kmeans_multi: n_init and threads must be >= 1, got "
                     f"{n_init} and {threads}")
  mode = _restart_mode(restarts)
  x, w = _pad(points, bucket)
  keys = _restart_keys(jax.random.key(seed), ks=ks, n_init=int(n_init))
  tol = jnp.float32(tol)

  def call(share):
    return _kmeans_runs(x, w, keys[:, share[0]:share[-1] + 1], tol, ks=ks,
                        max_iterations=int(max_iterations), mode=mode)

  shares = np.array_split(np.arange(n_init), min(threads, n_init))
  if len(shares) == 1:
    parts = [call(shares[0])]
  else:
    parts = list(_pool(len(shares)).map(call, shares))
  labels = np.concatenate([np.asarray(p[0]) for p in parts], 1)
  errors = np.concatenate([np.asarray(p[1]) for p in parts], 1)
  best = errors.argmin(1)  # the lowest inertia wins, the first on ties
  return labels[np.arange(len(ks)), best, :len(points)]


def kmeans_labels(points, k: int, *, seed: int = 0, n_init: int = 10,
                  max_iterations: int = 300, tol: float = 1e-4, init=None,
                  bucket: int = 128, restarts: str = "auto",
                  threads: int | None = None) -> np.ndarray:
  """K-means cluster labels of ``points`` for one K (ott-jax).

  Args:
    points: float [N, D].
    k: number of clusters.
    seed, n_init, max_iterations, tol, bucket, restarts, threads: as
      :func:`kmeans_multi` (the same seed gives the same labels as its row
      for this K).
    init: optional float [k, D] initial centroids (then one run, no
      k-means++).

  Returns:
    int32 [N] labels in [0, k).

  Raises:
    ValueError: when there are fewer than k points.
  """
  points = np.asarray(points, np.float32)
  if points.ndim != 2 or len(points) < k:
    raise ValueError(f"kmeans_labels: need [N >= {k}, D] points, got "
                     f"{points.shape}")
  if init is None:
    return kmeans_multi(points, (k,), seed=seed, n_init=n_init,
                        max_iterations=max_iterations, tol=tol,
                        bucket=bucket, restarts=restarts, threads=threads)[0]
  x, w = _pad(points, bucket)
  labels = _kmeans_from(x, w, jnp.asarray(init, jnp.float32),
                        jnp.float32(tol), k=int(k),
                        max_iterations=int(max_iterations))
  return np.asarray(labels)[:len(points)]


def cluster_masks(patch_embeddings, exemplar_embedding, grid_hw,
                  ks: Sequence[int] = KS, **kmeans_kwargs) -> np.ndarray:
  """M^K for every K (§3.2 step 4).

  Args:
    patch_embeddings: float [h w, D], row-major over cells.
    exemplar_embedding: float [D], f_B.
    grid_hw: (h, w).
    ks: the K values.
    **kmeans_kwargs: for :func:`kmeans_multi`.

  Returns:
    bool [len(ks), h, w]: cells in f_B's cluster.
  """
  pts = np.concatenate([np.asarray(patch_embeddings, np.float32),
                        np.asarray(exemplar_embedding, np.float32)[None]])
  labels = kmeans_multi(pts, ks, **kmeans_kwargs)
  return (labels[:, :-1] == labels[:, -1:]).reshape(len(labels), *grid_hw)


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
    **kmeans_kwargs: for :func:`kmeans_multi`.

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
