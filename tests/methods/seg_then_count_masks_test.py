"""Seg-then-Count pseudo masks: K-means against scikit-learn on real FSC-147
images, eq. 5's K* on a constructed case, the TFDS artefact."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from counting_jax.methods import seg_then_count_masks as masks_lib
from counting_jax.models import seg_then_count as stc
from counting_jax.models.backbones import resnet

sklearn_cluster = pytest.importorskip("sklearn.cluster")

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _same_partition(a, b) -> bool:
  """Labels equal up to a permutation of the label values."""
  pairs = set(zip(a.tolist(), b.tolist()))
  return (len(pairs) == len(set(a.tolist())) == len(set(b.tolist())))


@pytest.fixture(scope="module")
def embeddings(fsc147_release, shared_data):
  """Patch + exemplar embeddings of two real FSC-147 test images by a small
  random ResNet (the clustering, not the features, is under test)."""
  _, converted = fsc147_release
  net = resnet.ResNet(stage_sizes=(1, 1, 1), width=8, num_layers=3)
  variables = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  # The default chunk (128 crops) shares its compilation with the
  # end-to-end test's pseudo-mask generation.
  embed = masks_lib.make_embedder(variables, stage_sizes=(1, 1, 1), width=8)
  out = {}
  for name in ("336.jpg", "2.jpg"):
    with Image.open(shared_data("fsc147") / "images_384_VarV2" / name) as im:
      image = (np.asarray(im.convert("RGB"), np.float32) / 255 - MEAN) / STD
    image = image[:, :image.shape[1] // 16 * 16]
    boxes = np.array([[x1, y1, x2, y2] for y1, x1, y2, x2 in
                      converted[name]["boxes"][:3]], np.float32)
    grid = (image.shape[0] // 16, image.shape[1] // 16)
    patch = masks_lib.patch_boxes(grid, boxes, np.ones(3, bool))
    crops = stc.crop_boxes(jnp.asarray(image)[None],
                           jnp.asarray(patch)[None], 32)[0]
    ex = stc.crop_boxes(jnp.asarray(image)[None], jnp.asarray(boxes)[None],
                        32)[0]
    points = np.concatenate([embed(crops), embed(ex).mean(0)[None]])
    out[name] = points.astype(np.float64)
  return out


@pytest.mark.parametrize("name", ["336.jpg", "2.jpg"])
def test_kmeans_equals_scikit_learn_from_the_same_start(embeddings, name):
  points = embeddings[name]
  assert len(points) > 500 and points.std(0).max() > 0
  rng = np.random.default_rng(0)
  for k in masks_lib.KS:
    init = points[rng.choice(len(points), k, replace=False)]
    ours = masks_lib.kmeans_labels(points, k, init=init, tol=0.0,
                                   max_iterations=500)
    ref = sklearn_cluster.KMeans(k, init=init, n_init=1, tol=0.0,
                                 max_iter=500, algorithm="lloyd").fit(points)
    assert _same_partition(ours, ref.labels_), k


def test_kmeans_pp_finds_scikit_learns_two_and_three_clusters(embeddings):
  points = embeddings["336.jpg"]
  for k in (2, 3):
    ours = masks_lib.kmeans_labels(points, k, seed=1)
    ref = sklearn_cluster.KMeans(k, n_init=10, random_state=0).fit(points)
    # Same partition, so the same exemplar mask.
    assert _same_partition(ours, ref.labels_), k


def test_map_vmap_and_threads_agree_on_real_embeddings(embeddings):
  # "map" (the CPU default) and "vmap" (GPU / TPU), on one host thread or
  # with the restarts shared by two, run the same restarts from the same
  # keys; one K per call keeps the row the same too.
  points = embeddings["2.jpg"]
  ks = (3, 6)
  kw = dict(seed=3, n_init=4)
  by_map = masks_lib.kmeans_multi(points, ks, restarts="map", threads=1,
                                  **kw)
  by_vmap = masks_lib.kmeans_multi(points, ks, restarts="vmap", threads=1,
                                   **kw)
  shared = masks_lib.kmeans_multi(points, ks, restarts="map", threads=2,
                                  **kw)
  assert by_map.shape == (2, len(points)) and by_map.dtype == np.int32
  np.testing.assert_array_equal(shared, by_map)
  for a, b, k in zip(by_map, by_vmap, ks):
    assert _same_partition(a, b), k
    assert set(a.tolist()) == set(range(k)), k
  alone = masks_lib.kmeans_labels(points, 6, restarts="map", threads=2,
                                  **kw)
  np.testing.assert_array_equal(alone, by_map[1])
  with pytest.raises(ValueError, match="restarts"):
    masks_lib.kmeans_multi(points, ks, restarts="pmap")
  with pytest.raises(ValueError, match="threads must be >= 1"):
    masks_lib.kmeans_multi(points, ks, threads=0)
  with pytest.raises(ValueError, match="N >= 6"):
    masks_lib.kmeans_multi(points[:5], ks)


def test_padding_is_zero_weight_copies_of_a_real_point():
  points = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0],
                     [50.0, 50.0]])
  x, w = masks_lib._pad(points.astype(np.float32), 8)  # pylint: disable=protected-access
  assert x.shape == (8, 2) and np.asarray(w).tolist() == [1] * 5 + [0] * 3
  np.testing.assert_array_equal(np.asarray(x[5:]), np.repeat(points[:1], 3, 0))
  labels = masks_lib.kmeans_labels(points, 3, bucket=8)
  assert labels.shape == (5,)
  assert _same_partition(labels, np.array([0, 0, 1, 1, 2]))


def test_choose_k_is_eq5_argmin():
  target = np.zeros((4, 4))
  target[1, 1] = 1.0
  densities = np.stack([target * s for s in (0.0, 2.0, 1.0, 1.0, 0.9)])
  idx, errors = masks_lib.choose_k(densities, target)
  assert idx == 2  # exact; the later tie (index 3) loses
  np.testing.assert_allclose(errors, [1.0, 1.0, 0.0, 0.0, 0.01])
  with pytest.raises(ValueError, match="must match"):
    masks_lib.choose_k(densities, target[:3])


def test_pseudo_masks_pick_the_k_that_isolates_the_exemplar_class():
  # Three colours on whole 16-px cells, A close to B; exemplars in colour A.
  # Patches the size of a cell embed to their colour. The counter turns S^K into one
  # count per kept cell, the target counts the colour-A cells: K = 2 must
  # merge A with another colour, K = 3 separates it exactly (K >= 4 cannot
  # do better on 3 distinct points, so the first minimum, K = 3, wins).
  h, w = 4, 6
  colours = np.array([[1.0, 0, 0], [0.8, 0.2, 0], [0, 0, 1.0]], np.float32)
  cells = np.array([[0, 0, 1, 1, 2, 2]] * 2 + [[2, 2, 0, 0, 1, 1]] * 2)
  image = np.repeat(np.repeat(colours[cells], 16, 0), 16, 1)
  exemplars = np.array([[0, 0, 16, 16], [16, 0, 32, 16], [0, 0, 16, 16]],
                       np.float32)

  def embed(crops):
    return np.asarray(crops).mean((1, 2))

  def count(masked):  # one object per kept cell, spread over its pixels
    cell = (np.asarray(masked) > 0.5).astype(np.float32) / 256
    return np.repeat(np.repeat(cell, 16, 1), 16, 2)

  target = np.repeat(np.repeat((cells == 0) / 256, 16, 0), 16, 1)
  out = masks_lib.pseudo_masks(
      embed=embed, count=count, image=image, similarity=np.ones((h, w)),
      exemplars=exemplars, exemplar_mask=np.ones(3, bool), target=target,
      patch_size=4, delta=0.0)
  assert out["k"] == 3 and out["k_index"] == 1
  np.testing.assert_array_equal(out["mask"], cells == 0)
  assert out["errors"][0] > 0 and out["errors"][1] == 0
  assert out["masks"].shape == (5, h, w)


def test_pseudo_masks_roundtrip_through_tfds(tmp_path):
  rows = [{"image_id": "336", "mask": np.eye(3, 4, dtype=bool), "k": 4,
           "errors": np.arange(5.0)},
          {"image_id": "2", "mask": np.ones((2, 5), bool), "k": 2,
           "errors": np.ones(5)}]
  masks_lib.write_pseudo_masks(rows, tmp_path, split="train")
  back = masks_lib.read_pseudo_masks(tmp_path, "train")
  assert sorted(back) == ["2", "336"]
  np.testing.assert_array_equal(back["336"]["mask"], np.eye(3, 4, dtype=bool))
  assert back["336"]["k"] == 4 and back["2"]["k"] == 2
  np.testing.assert_allclose(back["336"]["errors"], np.arange(5.0))
  with pytest.raises(FileNotFoundError, match="generate them first"):
    masks_lib.read_pseudo_masks(tmp_path / "nothing")
