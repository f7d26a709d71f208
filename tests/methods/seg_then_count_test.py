"""Seg-then-Count end to end on the real FSC-147 images, at tiny scale.

The smoke config (small ResNet) trains the base counter a few steps through
the one trainer on a real FSC-147 test image with their official points
and exemplar boxes, generates the pseudo masks with the frozen counter (K =
2..6, K* by eq. 5) into a TFDS set, trains the segmenter a few steps from
the counter (the counter stays frozen), evaluates with masked inference and
predicts with ``--exemplars``-style boxes.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from counting_jax import data
from counting_jax.configs import fsc147_seg_then_count as config_lib
from counting_jax.convert import orbax_io
from counting_jax.methods import seg_then_count as stc_method
from counting_jax.models.backbones import resnet
from counting_jax.train import loop


def _config(stage, manual, data_dir, **extra):
  c = config_lib.get_config(f"stage={stage},smoke=True")
  c.dataset.manual_dir = str(manual)
  c.dataset.data_dir = str(data_dir)
  c.quiet = True
  for k, v in extra.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def test_param_labels_freeze_stem_layer1_batchnorm_and_the_counter():
  labels = {"backbone": {"conv1": {"kernel": 0}, "bn1": {"scale": 0},
                         "layer1_0": {"conv1": {"kernel": 0}},
                         "layer2_0": {"conv1": {"kernel": 0},
                                      "bn2": {"bias": 0},
                                      "downsample_bn": {"scale": 0}}},
            "input_proj": {"kernel": 0},
            "segmenter": {"layer3_0": {"conv2": {"kernel": 0}},
                          "layer1_0": {"conv2": {"kernel": 0}}}}
  got = stc_method.param_labels(labels, with_segmenter=True)
  assert got["backbone"]["conv1"]["kernel"] == "frozen"
  assert got["backbone"]["bn1"]["scale"] == "frozen"
  assert got["backbone"]["layer1_0"]["conv1"]["kernel"] == "frozen"
  assert got["backbone"]["layer2_0"]["conv1"]["kernel"] == "counter"
  assert got["backbone"]["layer2_0"]["bn2"]["bias"] == "frozen"
  assert got["backbone"]["layer2_0"]["downsample_bn"]["scale"] == "frozen"
  assert got["input_proj"]["kernel"] == "counter"
  assert got["segmenter"]["layer3_0"]["conv2"]["kernel"] == "default"
  assert got["segmenter"]["layer1_0"]["conv2"]["kernel"] == "frozen"
  alone = stc_method.param_labels(labels, with_segmenter=False)
  assert alone["backbone"]["layer2_0"]["conv1"]["kernel"] == "default"


@pytest.fixture(scope="module")
def stages(tmp_path_factory, fsc147_release):
  manual, _ = fsc147_release
  root = tmp_path_factory.mktemp("stc")
  tfds_dir = root / "tfds"
  # 1. base counter.
  counter_cfg = _config("counter", manual, tfds_dir)
  counter_metrics = loop.train_and_evaluate(counter_cfg, root / "counter")
  method, state = loop._restore_for_eval(counter_cfg, root / "counter")  # pylint: disable=protected-access
  counter_vars = {"params": jax.device_get(state.params),
                  "batch_stats": jax.device_get(state.batch_stats)}
  # 2. pseudo masks with the frozen counter (a random small "ImageNet"
  # ResNet: the pipeline, not the features, is under test).
  kw = counter_cfg.model.kwargs
  net = resnet.ResNet(stage_sizes=tuple(kw.stage_sizes), width=kw.width,
                      num_layers=3)
  imagenet = net.init(jax.random.key(1), np.zeros((1, 32, 32, 3)))
  source = data.load("fsc147", "test", data_dir=tfds_dir, manual_dir=manual)
  samples = [source[0]]  # the smoke config's test[:1]
  rows = stc_method.generate_pseudo_masks(
      counter_cfg, counter_vars, imagenet, samples, out_dir=root / "masks",
      split="test")
  # 3. segmenter from the counter.
  init = orbax_io.save_variables(counter_vars, root / "counter_vars")
  seg_cfg = _config("segmenter", manual, tfds_dir,
                    **{"pseudo_masks.data_dir": str(root / "masks"),
                       "init_checkpoint": str(init)})
  seg_metrics = loop.train_and_evaluate(seg_cfg, root / "segmenter")
  _, seg_state = loop._restore_for_eval(seg_cfg, root / "segmenter")  # pylint: disable=protected-access
  return dict(root=root, counter=counter_metrics, segmenter=seg_metrics,
              rows=rows, samples=samples, counter_vars=counter_vars,
              seg_params=jax.device_get(seg_state.params), seg_cfg=seg_cfg,
              method=method)


def test_counter_stage_trains_and_evaluates(stages):
  m = stages["counter"]
  assert m["n"] == 1 and np.isfinite(m["mae"]) and np.isfinite(m["rmse"])


def test_pseudo_masks_cover_every_image_with_k_in_range(stages):
  rows = stages["rows"]
  assert len(rows) == len(stages["samples"]) == 1
  for row, s in zip(rows, stages["samples"]):
    h, w = np.asarray(s["image"]).shape[:2]
    assert row["mask"].shape == (-(-h // 16), -(-w // 16))
    assert 2 <= row["k"] <= 6
    assert row["errors"][row["k"] - 2] == row["errors"].min()


def test_segmenter_stage_keeps_the_counter_frozen(stages):
  m = stages["segmenter"]
  assert m["n"] == 1 and np.isfinite(m["mae"])
  before, after = stages["counter_vars"]["params"], stages["seg_params"]
  for key in ("backbone", "input_proj", "exemplar_proj", "counter"):
    for x, y in zip(jax.tree.leaves(before[key]), jax.tree.leaves(after[key])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  init = jax.tree.leaves(before["backbone"]["layer3_0"])
  trained = jax.tree.leaves(after["segmenter"]["layer3_0"])
  assert any(not np.array_equal(a, b) for a, b in zip(init, trained))


def test_masked_inference_predicts_with_exemplar_boxes(stages, tmp_path,
                                                       shared_data):
  # The training image (one compiled shape); a user image has no pseudo
  # mask and needs none.
  name = stages["samples"][0]["image_id"]
  name = (name.decode() if isinstance(name, bytes) else str(name)) + ".jpg"
  images = shared_data("fsc147") / "images_384_VarV2"
  folder = tmp_path / "images"
  folder.mkdir()
  (folder / "user.jpg").symlink_to(images / name)
  boxes = tmp_path / "boxes.json"
  boxes.write_text(json.dumps({"user.jpg": [[100, 100, 140, 150]]}))
  from counting_jax.train import predict as predict_lib  # pylint: disable=g-import-not-at-top
  counts = loop.predict(stages["seg_cfg"], stages["root"] / "segmenter",
                        folder, tmp_path / "out",
                        exemplars=predict_lib.read_exemplars(boxes))
  assert list(counts) == ["user.jpg"] and np.isfinite(counts["user.jpg"])
  with pytest.raises(ValueError, match="exemplar"):
    loop.predict(stages["seg_cfg"], stages["root"] / "segmenter", folder,
                 tmp_path / "out2")
