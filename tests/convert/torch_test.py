"""Tests of the generic converter: layouts, wrappers, files, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from counting_jax import convert
from counting_jax.convert import torch as tc

torch = pytest.importorskip("torch")
import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def vgg_state():
  """A tiny torchvision-layout VGG16-bn (with classifier), random weights."""
  model = tr.randomize(tr.TorchVGG((2, 2, 3, 3, 3), (4, 4, 8, 8, 8), True))
  return {k: v.numpy() for k, v in model.state_dict().items()}


def test_layouts_and_batch_norm(vgg_state):
  variables = convert.convert_state_dict(vgg_state, "vgg16_bn_tiny")
  # features.3 is conv1_2 (conv 0, BN 1, ReLU 2, conv 3): OIHW -> HWIO.
  np.testing.assert_array_equal(variables["params"]["conv1_2"]["kernel"],
                                vgg_state["features.3.weight"].transpose(
                                    2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["bn1_2"]["scale"],
                                vgg_state["features.4.weight"])
  np.testing.assert_array_equal(variables["batch_stats"]["bn5_3"]["var"],
                                vgg_state["features.41.running_var"])
  np.testing.assert_array_equal(variables["batch_stats"]["bn3_1"]["mean"],
                                vgg_state["features.15.running_mean"])
  assert "classifier" not in variables["params"]


def test_linear_layout():
  rules = tc.linear_rules("fc", ("Dense_0",))
  weight = np.arange(6, dtype=np.float32).reshape(2, 3)  # [out, in]
  abstract = {"params": {"Dense_0": {"kernel": np.zeros((3, 2)),
                                     "bias": np.zeros(2)}}}
  out = tc.apply_rules({"fc.weight": weight, "fc.bias": np.ones(2)}, rules,
                       abstract)
  np.testing.assert_array_equal(out["params"]["Dense_0"]["kernel"], weight.T)


def test_unwrap_wrappers_and_module_prefix(vgg_state):
  wrapped = {"epoch": 3, "model_state_dict":
             {f"module.{k}": v for k, v in vgg_state.items()}}
  assert tc.unwrap_state_dict({"model": wrapped}).keys() == vgg_state.keys()
  assert tc.unwrap_state_dict({"state_dict": vgg_state}).keys() == \
      vgg_state.keys()


def test_unwrap_refuses_collisions_and_non_dicts():
  with pytest.raises(ValueError, match="collides"):
    tc.unwrap_state_dict({"a": 1, "module.a": 2})
  with pytest.raises(ValueError, match="expected a state_dict"):
    tc.unwrap_state_dict([1, 2])


def test_pth_file_with_wrapper_and_prefix(tmp_path, vgg_state):
  path = tmp_path / "ckpt.pth"
  torch.save({"model": {f"module.{k}": torch.from_numpy(v)
                        for k, v in vgg_state.items()}, "max_accuracy": 1.0},
             path)
  variables = convert.convert_checkpoint(path, "vgg16_bn_tiny")
  np.testing.assert_array_equal(variables["params"]["conv5_3"]["bias"],
                                vgg_state["features.40.bias"])


def test_safetensors_round_trip(tmp_path, vgg_state):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  path = tmp_path / "vgg.safetensors"
  safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in
                               vgg_state.items()}, str(path))
  from_st = convert.convert_checkpoint(path, "vgg16_bn_tiny")
  from_dict = convert.convert_state_dict(vgg_state, "vgg16_bn_tiny")
  for a, b in zip(tc._flatten(from_st).items(), tc._flatten(from_dict).items()):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def test_refuses_missing_unexpected_and_misshaped(vgg_state):
  state = dict(vgg_state)
  del state["features.0.weight"]
  state["features.99.weight"] = np.zeros(3, np.float32)
  state["features.7.weight"] = np.zeros((4, 4, 5, 5), np.float32)
  with pytest.raises(ValueError) as info:
    convert.convert_state_dict(state, "vgg16_bn_tiny", name="bad.pth")
  message = str(info.value)
  assert "bad.pth does not match the model" in message
  assert "missing keys (1):\n    features.0.weight" in message
  assert "unexpected keys (1):\n    features.99.weight" in message
  assert ("features.7.weight: (4, 4, 5, 5) -> params/conv2_1/kernel "
          "(5, 5, 4, 4), model expects (3, 3, 4, 4)") in message


def test_num_batches_tracked_is_optional(vgg_state):
  state = {k: v for k, v in vgg_state.items()
           if not k.endswith("num_batches_tracked")}
  convert.convert_state_dict(state, "vgg16_bn_tiny")


def test_refuses_wrong_family(vgg_state):
  with pytest.raises(ValueError, match="missing keys") as info:
    convert.convert_state_dict(vgg_state, "resnet50_tiny")
  assert "conv1.weight" in str(info.value)
  assert "features.0.weight" in str(info.value)


def test_unknown_model_and_missing_file(tmp_path):
  with pytest.raises(ValueError, match="no checkpoint converter for model"):
    convert.build_model("nope")
  with pytest.raises(ValueError, match="does not exist"):
    convert.convert_checkpoint(tmp_path / "absent.pth", "vgg19_tiny")


def test_refuses_pickles_with_objects(tmp_path):
  path = tmp_path / "pml.pth"
  torch.save({"model": {}, "config": _Config()}, path)
  with pytest.raises(ValueError, match="weights_only=True"):
    tc.load_state_dict(path)


class _Config:  # Stands for PML's yacs CfgNode.
  pass
