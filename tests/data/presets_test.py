"""Resize rules and preset table of counting_jax.data.presets."""

from __future__ import annotations

import dataclasses

import pytest

from counting_jax import data
from counting_jax.data import presets


def _rule(resize, lo=None, hi=None, multiple=1):
  return presets.Preset("m", "d", resize, lo, hi, multiple)


@pytest.mark.parametrize("hw, expected", [
    ((300, 400), (512, 683)),      # short 300 -> 512, 400 * 512/300 = 682.67
    ((400, 300), (683, 512)),
    ((3000, 4000), (2048, 2731)),  # short 3000 -> 2048, 4000 * 0.6827
    ((1000, 800), (1000, 800)),    # short side already in [512, 2048]
    ((512, 9000), (512, 9000)),
])
def test_short_side_range_bl_dm_count(hw, expected):
  preset = presets.get_preset("dm_count", "ucf_qnrf")
  assert presets.resize_shape(preset, *hw) == expected
  assert presets.resize_shape(presets.get_preset("bl", "ucf_qnrf"),
                              *hw) == expected


@pytest.mark.parametrize("hw, expected", [
    # rate 1920/1080 makes W 3413 > 1920 -> rate 1; H floor(1080/16)*16.
    ((1080, 1920), (1072, 1920)),
    # rate 1920/4000 = 0.48 gives W 144 < 384 -> rate 384/300 = 1.28;
    # H = 5120 clamped to 1920.
    ((4000, 300), (1920, 384)),
    # Small images are upscaled: rate 1920/200 = 9.6, W 2880 > 1920 ->
    # rate 1920/300 = 6.4, H floor(1280/16)*16 = 1280.
    ((200, 300), (1280, 1920)),
])
def test_fit_multiple_dm_count_nwpu(hw, expected):
  preset = presets.get_preset("dm_count", "nwpu_crowd")
  h, w = presets.resize_shape(preset, *hw)
  assert (h, w) == expected
  assert h % 16 == 0 and w % 16 == 0 and 384 <= min(h, w) <= max(h, w) <= 1920


def test_train_only_upscale_and_long_side_max():
  sha = presets.get_preset("dm_count", "shanghaitech_a")
  assert presets.resize_shape(sha, 200, 300) == (200, 300)
  assert presets.resize_shape(sha, 200, 300, train=True) == (256, 384)
  assert presets.resize_shape(sha, 400, 300, train=True) == (400, 300)
  rule = _rule("long_side_max", hi=1536)
  assert presets.resize_shape(rule, 3000, 2000) == (1536, 1024)
  assert presets.resize_shape(rule, 1000, 1536) == (1000, 1536)
  assert presets.resize_shape(_rule("none"), 7, 9) == (7, 9)


def test_table_is_sourced_and_names_are_registered():
  assert presets.get_preset("dm_count", "shanghaitech_b").crop_size == 512
  assert presets.get_preset("dm_count", "shanghaitech_a").crop_size == 256
  assert presets.get_preset("pml", "ucf_qnrf").stride == 2
  for (method, dataset), p in presets.PRESETS.items():
    assert p.source and dataset in data.DATASETS, (method, dataset)
    assert p.stride in (2, 8)
  with pytest.raises(dataclasses.FrozenInstanceError):
    presets.PRESETS[("bl", "ucf_qnrf")].crop_size = 1


def test_errors():
  with pytest.raises(ValueError, match="no preset for.*valid"):
    presets.get_preset("bl", "mall")
  with pytest.raises(ValueError, match="resize must be one of"):
    _rule("bicubic")
  with pytest.raises(ValueError, match="positive"):
    presets.resize_shape(_rule("none"), 0, 5)
