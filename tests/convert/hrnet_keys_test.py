"""Parity of the HRNet converters: ImageNet HRNet (nearest and bilinear fuse
upsampling) and the PML HRNet counter (``torch_reference.py``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from counting_jax import convert

torch = pytest.importorskip("torch")
import parity  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position

# Mirrors counting_jax.models.backbones.hrnet.HRNET_TINY.
TINY = dict(widths=(4, 8, 12, 16), stem_width=8, layer1_planes=4,
            layer1_blocks=2, stage_modules=(1, 2, 1), num_blocks=2)
GAMMA = (0.2, 0.6)  # BN scales keeping HRNet's activations O(1).


@pytest.fixture(scope="module", autouse=True)
def _threads():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone_outputs():
  """{mode: (Flax outputs, PyTorch outputs)} of one random tiny HRNet."""
  out = {}
  for mode in ("nearest", "bilinear"):
    module = tr.randomize(tr.TorchHRNet(fuse_upsample=mode, **TINY),
                          bn_gamma=GAMMA)
    image = parity.random_image()
    with torch.no_grad():
      expected = [parity.nhwc(e) for e in module(image)]
    out[mode] = (parity.flax_outputs("hrnet_tiny", module, image,
                                     fuse_upsample=mode), expected)
  return out


@pytest.mark.parametrize("fuse_upsample", ["nearest", "bilinear"])
def test_hrnet_backbone(backbone_outputs, fuse_upsample):
  actual, expected = backbone_outputs[fuse_upsample]
  assert [a.shape[1] for a in actual] == [16, 8, 4, 2]
  for a, e in zip(actual, expected):
    parity.assert_close(a, e)


def test_fuse_upsampling_modes_differ(backbone_outputs):
  """The two modes are different networks on the same weights (same seed)."""
  nearest, bilinear = (backbone_outputs[m][0][0] for m in ("nearest",
                                                            "bilinear"))
  assert np.max(np.abs(nearest - bilinear)) > 1e-2


def test_pml_hrnet():
  module = tr.randomize(tr.TorchPMLHRNet(**TINY), seed=3, bn_gamma=GAMMA)
  with torch.no_grad():  # Densities of order 1, so that 1e-4 means something.
    module.decoders[2].weight.mul_(10.0)
  image = parity.random_image()
  with torch.no_grad():
    expected = module(image)[:, 0].numpy()
  actual = parity.flax_outputs("pml_hrnet_tiny", module, image)
  assert actual.shape == (2, 32, 32)
  parity.assert_close(actual, expected)


@pytest.mark.parametrize("name,make", [
    ("hrnet_w48", tr.TorchHRNet),
    ("pml_hrnet_w40", lambda: tr.TorchPMLHRNet(widths=(40, 80, 160, 320))),
])
def test_full_size_key_maps(name, make):
  """Full-size checkpoints: every key maps and every shape matches init.

  (W40 and W48 differ only in widths; one of each family keeps this fast.)
  """
  state = parity.meta_state_dict(make)
  variables = convert.convert_state_dict(state, name)
  # apply_rules has checked that exactly the model's variables are filled,
  # each with the shape of init; conv kernels must come out HWIO.
  kernels = [x for x in jax.tree.leaves(variables["params"]) if x.ndim == 4]
  assert kernels and all(k.shape[0] == k.shape[1] for k in kernels)


def test_imagenet_head_is_ignored_but_backbone_keys_are_not():
  state = parity.meta_state_dict(lambda: tr.TorchHRNet(**TINY))
  assert any(k.startswith("classifier.") for k in state)
  convert.convert_state_dict(state, "hrnet_tiny")
  state["stage4.0.fuse_layers.3.0.2.0.weight"] = state.pop(
      "stage4.0.fuse_layers.3.0.2.0.weight")[:, :2]
  with pytest.raises(ValueError, match="mis-shaped tensors"):
    convert.convert_state_dict(state, "hrnet_tiny")
