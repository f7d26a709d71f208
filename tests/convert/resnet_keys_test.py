"""Parity of the torchvision ResNet converter (``torch_reference.py``)."""

from __future__ import annotations

import jax
import pytest

from counting_jax import convert

torch = pytest.importorskip("torch")
import parity  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = dict(stage_sizes=(2, 1, 1, 1), width=8)  # RESNET50_TINY.


@pytest.fixture(scope="module")
def module():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield tr.randomize(tr.TorchResNet(**TINY))
  torch.set_num_threads(threads)


def test_resnet_backbone(module):
  image = parity.random_image(shape=(2, 3, 62, 66))  # Odd stride-2 sizes.
  with torch.no_grad():
    expected = module(image)
  actual = parity.flax_outputs("resnet50_tiny", module, image)
  assert len(actual) == 4
  for a, e in zip(actual, expected):
    parity.assert_close(a, parity.nhwc(e))


def test_truncated_resnet_ignores_later_layers(module):
  image = parity.random_image(shape=(1, 3, 64, 64))
  with torch.no_grad():
    expected = module(image)[2]
  actual = parity.flax_outputs("resnet50_tiny", module, image, num_layers=3)
  assert len(actual) == 3
  parity.assert_close(actual[2], parity.nhwc(expected))


def test_full_size_key_map():
  state = parity.meta_state_dict(tr.TorchResNet)
  variables = convert.convert_state_dict(state, "resnet50")
  # apply_rules has checked that exactly the model's variables are filled,
  # each with the shape of init; conv kernels must come out HWIO.
  kernels = [x for x in jax.tree.leaves(variables["params"]) if x.ndim == 4]
  assert kernels and all(k.shape[0] == k.shape[1] for k in kernels)
