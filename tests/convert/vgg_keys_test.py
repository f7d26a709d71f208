"""Parity of the VGG-family converters: torchvision VGG, BL, DM-Count, GL,
PML-VGG (PyTorch modules in ``torch_reference.py``, official key names)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from counting_jax import convert
from counting_jax.models.vgg19_density import normalize_density

torch = pytest.importorskip("torch")
import parity  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = (4, 4, 8, 8, 8)


@pytest.fixture(scope="module", autouse=True)
def _threads():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.mark.parametrize("name,depths,batch_norm", [
    ("vgg19_tiny", (2, 2, 4, 4, 4), False),
    ("vgg16_bn_tiny", (2, 2, 3, 3, 3), True),
])
def test_torchvision_vgg_backbone(name, depths, batch_norm):
  module = tr.randomize(tr.TorchVGG(depths, TINY, batch_norm))
  image = parity.random_image()
  with torch.no_grad():
    expected = module(image)
  actual = parity.flax_outputs(name, module, image)
  assert len(actual) == 5
  for a, e in zip(actual, expected):
    parity.assert_close(a, parity.nhwc(e))


@pytest.mark.parametrize("repo", ["bl", "gl", "dm_count"])
def test_vgg19_density(repo):
  module = tr.randomize(tr.TorchVGG19Density(repo, TINY, (8, 4)), seed=1)
  last = (module.density_layer if repo == "dm_count" else module.reg_layer)
  with torch.no_grad():  # Densities of order 1, so that 1e-4 means something.
    last[-1 if repo != "dm_count" else 0].weight.mul_(30.0)
  image = parity.random_image()
  with torch.no_grad():
    expected = module(image)
  actual = parity.flax_outputs(f"{repo}_vgg19_tiny", module, image)
  if repo == "dm_count":
    expected, expected_normed = expected
    parity.assert_close(normalize_density(actual), expected_normed[:, 0],
                        atol=1e-5)
  assert actual.shape == (2, 8, 8)
  parity.assert_close(actual, expected[:, 0].numpy())


@pytest.mark.parametrize("name,kwargs,torch_kwargs", [
    ("pml_vgg19_tiny", {}, {}),
    ("pml_vgg16_bn", dict(widths=TINY),
     dict(depths=(2, 2, 3, 3, 3), batch_norm=True)),
])
def test_pml_vgg(name, kwargs, torch_kwargs):
  module = tr.randomize(tr.TorchPMLVGG(widths=TINY, **torch_kwargs), seed=2)
  image = parity.random_image()
  with torch.no_grad():
    expected = module(image)[:, 0].numpy()
  actual = parity.flax_outputs(name, module, image, **kwargs)
  assert actual.shape == (2, 32, 32)
  parity.assert_close(actual, expected)


@pytest.mark.parametrize("name,make", [
    ("vgg19", lambda: tr.TorchVGG((2, 2, 4, 4, 4), (64, 128, 256, 512, 512),
                                  False)),
    ("vgg16_bn", lambda: tr.TorchVGG((2, 2, 3, 3, 3), (64, 128, 256, 512, 512),
                                     True)),
    ("bl_vgg19", lambda: tr.TorchVGG19Density("bl")),
    ("gl_vgg19", lambda: tr.TorchVGG19Density("gl")),
    ("dm_count_vgg19", lambda: tr.TorchVGG19Density("dm_count")),
    ("pml_vgg19", tr.TorchPMLVGG),
    ("pml_vgg16_bn", lambda: tr.TorchPMLVGG((2, 2, 3, 3, 3), batch_norm=True)),
])
def test_full_size_key_maps(name, make):
  """Full-size checkpoints: every key maps and every shape matches init."""
  state = parity.meta_state_dict(make)
  variables = convert.convert_state_dict(state, name)
  # apply_rules has checked that exactly the model's variables are filled,
  # each with the shape of init; conv kernels must come out HWIO.
  kernels = [x for x in jax.tree.leaves(variables["params"]) if x.ndim == 4]
  assert kernels and all(k.shape[0] == k.shape[1] for k in kernels)


def test_torchvision_indices():
  layers, pools = convert.vgg_keys.torchvision_layers((2, 2, 4, 4, 4), False)
  assert [l[2] for l in layers] == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23,
                                    25, 28, 30, 32, 34]
  assert pools == [4, 9, 18, 27]
  layers, pools = convert.vgg_keys.torchvision_layers((2, 2, 3, 3, 3), True)
  assert [l[2] for l in layers] == [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34,
                                    37, 40]
  assert [l[3] for l in layers][-1] == 41
  assert pools == [6, 13, 23, 33]
