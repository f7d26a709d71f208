"""Parity of the mPrompt converter: a PyTorch mPrompt (``torch_reference``: the
official network's structure and key names: HRNet with a stride-1 second
stem conv, layer1 concat, ASPP, segmenter attention) against the converted
Flax model, with both segmenter key names; ImageNet HRNet weights into the
backbone; ``counting-jax convert``; full-size key maps."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from counting_jax import convert
from counting_jax.convert import cli
from counting_jax.models import mprompt as mprompt_model

torch = pytest.importorskip("torch")
import parity  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position

# Mirrors counting_jax.models.mprompt.MPROMPT_TINY.
TINY = dict(widths=(4, 8, 12, 16), stem_width=8, layer1_planes=4,
            layer1_blocks=2, stage_modules=(1, 2, 1), num_blocks=2)
TINY_HEADS = dict(seg=(8, 8, 4), redc=8, count=(8, 4))
W40_HEADS = dict(seg=(128, 64, 32), redc=128, count=(64, 32))
GAMMA = (0.2, 0.6)


@pytest.fixture(scope="module")
def tiny():
  module = tr.randomize(tr.TorchMPrompt(heads=TINY_HEADS, **TINY), seed=5,
                        bn_gamma=GAMMA)
  with torch.no_grad():  # a density that the final ReLU does not zero
    module.countHead.bias.fill_(0.5)
  image = parity.random_image((2, 3, 48, 64))
  with torch.no_grad():
    density, seg = module(image)
  return module, image, density[:, 0].numpy(), seg[:, 0].numpy()


@pytest.mark.parametrize("seg_name", ["last_layer_seg", "last_layer_seg_new"])
def test_converted_model_equals_pytorch(tiny, seg_name):
  module, image, density, seg = tiny
  state = {k.replace("last_layer_seg.", f"{seg_name}."): v
           for k, v in parity.state_dict(module).items()}
  variables = convert.convert_state_dict(state, "mprompt_tiny")
  model = convert.build_model("mprompt_tiny")
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, np.asarray(image.permute(0, 2, 3, 1)))
  assert out["density"].shape == (2, 48, 64)
  parity.assert_close(out["density"], density)
  parity.assert_close(out["seg"], seg)


def test_both_segmenter_names_is_an_error(tiny):
  state = parity.state_dict(tiny[0])
  state["last_layer_seg_new.0.bias"] = state["last_layer_seg.0.bias"]
  with pytest.raises(ValueError, match="both"):
    convert.convert_state_dict(state, "mprompt_tiny", name="x.pth")


def test_imagenet_hrnet_fills_the_backbone():
  """ImageNet HRNet (``hrnet_tiny``) weights have exactly the structure of
  mPrompt's ``backbone`` (the stem conv's stride is no parameter)."""
  imagenet = convert.convert_state_dict(
      parity.meta_state_dict(lambda: tr.TorchHRNet(**TINY)), "hrnet_tiny")
  abstract = convert.abstract_variables(convert.build_model("mprompt_tiny"))
  for col in ("params", "batch_stats"):
    want = jax.tree.map(lambda x: x.shape, abstract[col]["backbone"])
    assert jax.tree.map(np.shape, imagenet[col]) == want


def test_cli_converts_a_checkpoint(tiny, tmp_path, capsys):
  path = tmp_path / "MAE_5.83_Ep_451.pth"
  torch.save(tiny[0].state_dict(), path)
  out = tmp_path / "converted"
  assert cli.main(["--checkpoint", str(path), "--model", "mprompt_tiny",
                   "--out", str(out)]) == 0, capsys.readouterr().err
  model = convert.build_model("mprompt_tiny")
  restored = convert.load_variables(out, convert.abstract_variables(model))
  kernel = np.asarray(restored["params"]["heads"]["count_head"]["kernel"])
  np.testing.assert_array_equal(
      kernel[0, 0, :, 0], tiny[0].countHead.weight.detach().numpy()[0, :, 0, 0])


def test_full_size_key_map():
  state = parity.meta_state_dict(lambda: tr.TorchMPrompt(
      widths=(40, 80, 160, 320), heads=W40_HEADS, layer1_planes=64))
  assert len(state) > 1000 and "last_layer_seg.7.running_var" in state
  variables = convert.convert_state_dict(state, "mprompt_hrnet_w40")
  n = sum(x.size for x in jax.tree.leaves(variables["params"]))
  # The official network's counts (backbone 45,591,936 + heads 2,751,234)
  # include the BN running statistics.
  stats = sum(x.size for x in jax.tree.leaves(variables["batch_stats"]))
  assert n + stats == 45_591_936 + 2_751_234
