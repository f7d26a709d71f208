"""Tests of ``counting-jax convert`` and the orbax save / load round trip."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from counting_jax import convert
from counting_jax.convert import cli

torch = pytest.importorskip("torch")
import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A DM-Count-layout tiny VGG19 saved as DM-Count does (plain state_dict)."""
  module = tr.randomize(tr.TorchVGG19Density("dm_count", (4, 4, 8, 8, 8),
                                             (8, 4)))
  path = tmp_path_factory.mktemp("ckpt") / "model_qnrf.pth"
  torch.save(module.state_dict(), path)
  return path


def test_cli_round_trip(checkpoint, tmp_path, capsys):
  out = tmp_path / "converted"
  rc = cli.main(["--checkpoint", str(checkpoint), "--model",
                 "dm_count_vgg19_tiny", "--out", str(out)])
  assert rc == 0
  assert "params" in capsys.readouterr().out
  model = convert.build_model("dm_count_vgg19_tiny")
  abstract = convert.abstract_variables(model)
  restored = convert.load_variables(out, abstract)
  expected = convert.convert_checkpoint(checkpoint, "dm_count_vgg19_tiny")
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(a), b)


def test_load_without_target(checkpoint, tmp_path):
  variables = convert.convert_checkpoint(checkpoint, "dm_count_vgg19_tiny")
  out = convert.save_variables(variables, tmp_path / "v")
  restored = convert.load_variables(out)
  np.testing.assert_array_equal(
      np.asarray(restored["params"]["head_out"]["kernel"]),
      variables["params"]["head_out"]["kernel"])


def test_cli_reports_errors(checkpoint, tmp_path, capsys):
  rc = cli.main(["--checkpoint", str(checkpoint), "--model", "bl_vgg19_tiny",
                 "--out", str(tmp_path / "x")])
  assert rc == 2
  err = capsys.readouterr().err
  assert "missing keys (2):\n    reg_layer.4.weight" in err
  assert "unexpected keys (2):\n    density_layer.0.bias" in err
  assert not (tmp_path / "x").exists()


def test_refuses_existing_out_dir(checkpoint, tmp_path, capsys):
  rc = cli.main(["--checkpoint", str(checkpoint), "--model",
                 "dm_count_vgg19_tiny", "--out", str(tmp_path)])
  assert rc == 2
  assert "exists" in capsys.readouterr().err


def test_set_model_attributes(tmp_path, capsys):
  module = tr.randomize(tr.TorchVGG((2, 2, 3, 3, 3), (4, 4, 8, 8, 8), True))
  path = tmp_path / "vgg16_bn.pth"
  torch.save(module.state_dict(), path)
  rc = cli.main(["--checkpoint", str(path), "--model", "vgg16_bn", "--out",
                 str(tmp_path / "o"), "--set", "widths=(4, 4, 8, 8, 8)"])
  assert rc == 0, capsys.readouterr().err
