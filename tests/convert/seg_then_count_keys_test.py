"""Seg-then-Count's base counter against a PyTorch module written here.

The PyTorch module has the BMNet+-style layout and key names (ResNet-50 to
layer3 with frozen BatchNorm under ``backbone.body``, ``input_proj``,
``EPF_extractor.patch2query``, ``counter.regressor`` with
``nn.UpsamplingBilinear2d``); its exemplar crops are made independently with
``F.grid_sample``. Converted weights must give the same density (≤ 1e-4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.convert import seg_then_count_keys as keys
from counting_jax.models import seg_then_count as stc

torch = pytest.importorskip("torch")
from torch import nn  # pylint: disable=g-import-not-at-top,wrong-import-position
from torch.nn import functional as F  # pylint: disable=g-import-not-at-top,wrong-import-position
import parity  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = dict(stage_sizes=(1, 1, 1), width=8, proj_dim=16, exemplar_size=32,
            head_widths=(12, 10, 8, 6))


def _torch_crops(image, boxes, size):
  """[B, 3, H, W], [B, E, 4] -> [B, E, 3, size, size] via grid_sample."""
  b, _, h, w = image.shape
  t = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
  out = []
  for i in range(b):
    crops = []
    for x1, y1, x2, y2 in boxes[i].tolist():
      xs = (x1 + x2) / 2 + max(x2 - x1, 1.0) * t
      ys = (y1 + y2) / 2 + max(y2 - y1, 1.0) * t
      gy, gx = torch.meshgrid(2 * ys / h - 1, 2 * xs / w - 1, indexing="ij")
      grid = torch.stack([gx, gy], -1)[None]
      crops.append(F.grid_sample(image[i:i + 1], grid, mode="bilinear",
                                 padding_mode="border",
                                 align_corners=False)[0])
    out.append(torch.stack(crops))
  return torch.stack(out)


class TorchBaseCounter(nn.Module):
  """BMNet+-style base counter, no refiner, inner-product matcher."""

  def __init__(self, stage_sizes, width, proj_dim, head_widths,
               exemplar_size):
    super().__init__()
    self.size = exemplar_size
    self.backbone = nn.Module()
    self.backbone.body = tr.TorchResNet(stage_sizes, width)
    c = 16 * width
    self.input_proj = nn.Conv2d(c, proj_dim, 1)
    self.EPF_extractor = nn.Module()  # pylint: disable=invalid-name
    self.EPF_extractor.patch2query = nn.Linear(c, proj_dim)
    w0, w1, w2, w3 = head_widths
    up = nn.UpsamplingBilinear2d
    self.counter = nn.Module()
    self.counter.regressor = nn.Sequential(
        nn.Conv2d(proj_dim + 1, w0, 7, padding=3), nn.ReLU(), up(scale_factor=2),
        nn.Conv2d(w0, w1, 5, padding=2), nn.ReLU(), up(scale_factor=2),
        nn.Conv2d(w1, w2, 3, padding=1), nn.ReLU(), up(scale_factor=2),
        nn.Conv2d(w2, w3, 1), nn.ReLU(), up(scale_factor=2),
        nn.Conv2d(w3, 1, 1), nn.ReLU())

  def forward(self, image, boxes, mask):
    b, e = boxes.shape[:2]
    feats = self.input_proj(self.backbone.body(image)[-1])
    patches = _torch_crops(image, boxes, self.size).flatten(0, 1)
    pooled = self.backbone.body(patches)[-1].mean((2, 3))
    vec = self.EPF_extractor.patch2query(pooled).view(b, e, -1)
    sim = torch.einsum("bchw,bec->behw", feats, vec)
    m = mask.float()[..., None, None]
    sim = (sim * m).sum(1) / m.sum(1).clamp(min=1.0)
    x = torch.cat([feats, sim[:, None]], 1)
    return self.counter.regressor(x)[:, 0], sim


@pytest.fixture(scope="module")
def module():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  m = tr.randomize(TorchBaseCounter(**TINY))
  with torch.no_grad():  # keep the density O(1) with He-normal weights
    for conv in m.counter.regressor:
      if isinstance(conv, nn.Conv2d):
        conv.weight.mul_(0.5)
  yield m
  torch.set_num_threads(threads)


def _frozen_bn_state_dict(module):
  """The module's state_dict as FrozenBatchNorm2d saves it (no
  ``num_batches_tracked``), without the unused classifier."""
  return {k: v.detach().numpy() for k, v in module.state_dict().items()
          if not k.endswith("num_batches_tracked")
          and not k.startswith("backbone.body.fc.")}


def test_upsample2_is_torch_upsampling_bilinear2d():
  x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(1))
  expected = nn.UpsamplingBilinear2d(scale_factor=2)(x)
  actual = stc.upsample2(jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
  np.testing.assert_allclose(np.asarray(actual), parity.nhwc(expected),
                             atol=1e-6)
  # align_corners=True differs from jax.image.resize's half-pixel rule.
  half = jax.image.resize(jnp.asarray(x.permute(0, 2, 3, 1).numpy()),
                          (2, 10, 14, 3), "bilinear")
  assert np.abs(np.asarray(half) - parity.nhwc(expected)).max() > 1e-2


def test_crops_match_grid_sample_and_pixels():
  g = torch.Generator().manual_seed(2)
  image = torch.randn(1, 3, 20, 24, generator=g)
  boxes = torch.tensor([[[2.0, 3.0, 10.0, 11.0], [5.5, 0.0, 23.0, 19.5],
                         [-3.0, 12.0, 6.0, 25.0]]])
  expected = _torch_crops(image, boxes, 8).permute(0, 1, 3, 4, 2).numpy()
  actual = stc.crop_boxes(jnp.asarray(image.permute(0, 2, 3, 1).numpy()),
                          jnp.asarray(boxes.numpy()), 8)
  np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-5)
  # An 8 x 8 box on the pixel grid is exactly its pixels.
  np.testing.assert_allclose(
      np.asarray(actual[0, 0]),
      image[0, :, 3:11, 2:10].permute(1, 2, 0).numpy(), atol=1e-5)


def test_converted_base_counter_matches_pytorch(module):
  image = parity.random_image(shape=(2, 3, 64, 48))
  boxes = torch.tensor([[[3.0, 4.0, 20.0, 30.0], [10.0, 30.0, 30.0, 50.0],
                         [0.0, 0.0, 1.0, 1.0]],
                        [[20.0, 5.0, 40.0, 25.0], [1.0, 40.0, 9.0, 60.0],
                         [12.0, 12.0, 28.0, 28.0]]])
  mask = torch.tensor([[True, True, False], [True, True, True]])
  with torch.no_grad():
    density, sim = module(image, boxes, mask)
  variables = keys.convert_base_counter(_frozen_bn_state_dict(module),
                                        **TINY)
  model = stc.SegThenCount(**TINY)
  out = jax.jit(model.apply)(
      variables, jnp.asarray(image.permute(0, 2, 3, 1).numpy()),
      jnp.asarray(boxes.numpy()), jnp.asarray(mask.numpy()))
  assert out["density"].shape == (2, 64, 48)
  np.testing.assert_allclose(out["similarity"], sim.numpy(), rtol=1e-4,
                             atol=1e-4 * float(sim.abs().max()))
  parity.assert_close(out["density"], density.numpy())


def test_extra_bmnet_parts_are_refused_unless_dropped(module):
  state = _frozen_bn_state_dict(module)
  state["EPF_extractor.scale_embedding.weight"] = np.zeros((20, 16),
                                                           np.float32)
  with pytest.raises(ValueError, match="scale_embedding"):
    keys.convert_base_counter(state, **TINY)
  assert keys.convert_base_counter(state, ignore_extra=True, **TINY)


def test_counting_jax_convert_reaches_the_base_counter(module, tmp_path,
                                                        capsys):
  from counting_jax import convert  # pylint: disable=g-import-not-at-top
  from counting_jax.convert import cli  # pylint: disable=g-import-not-at-top
  state = _frozen_bn_state_dict(module)
  path = tmp_path / "model_best.pth"
  torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}},
             path)
  assert {"seg_then_count", "seg_then_count_tiny"} <= set(
      convert.MODEL_NAMES)
  # The tiny size is the smoke config's; this module's head is wider.
  rc = cli.main(["--checkpoint", str(path), "--model", "seg_then_count_tiny",
                 "--out", str(tmp_path / "bad")])
  assert rc == 2 and "counter/conv0/kernel" in capsys.readouterr().err
  out = tmp_path / "converted"
  rc = cli.main(["--checkpoint", str(path), "--model", "seg_then_count_tiny",
                 "--out", str(out), "--set", "head_widths=(12, 10, 8, 6)"])
  assert rc == 0, capsys.readouterr().err
  restored = convert.load_variables(out)
  expected = keys.convert_base_counter(state, **TINY)
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # BMNet+'s extra parts: refused, or dropped with --set ignore_extra=True.
  state["EPF_extractor.scale_embedding.weight"] = np.zeros((20, 16),
                                                           np.float32)
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  args = ["--checkpoint", str(path), "--model", "seg_then_count_tiny",
          "--set", "head_widths=(12, 10, 8, 6)"]
  assert cli.main(args + ["--out", str(tmp_path / "x")]) == 2
  assert "scale_embedding" in capsys.readouterr().err
  assert cli.main(args + ["--out", str(tmp_path / "y"), "--set",
                          "ignore_extra=True"]) == 0
  assert cli.main(args + ["--out", str(tmp_path / "z"), "--set",
                          "colour=1"]) == 2
  assert "colour" in capsys.readouterr().err
