"""``counting-jax pseudo-masks`` on a real FSC-147 image at tiny scale.

A random tiny base counter (saved as a converted whole counter, used
through ``config.init_checkpoint``) and a random tiny "ImageNet" ResNet
write the pseudo masks of the first FSC-147 test image; the segmenter
stage's reader finds them under the split's base name. Mistakes end in one
line naming the flag.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax import data
from counting_jax import main
from counting_jax.configs import fsc147_seg_then_count as config_lib
from counting_jax.convert import orbax_io
from counting_jax.methods import seg_then_count_masks as masks_lib
from counting_jax.models import seg_then_count as stc
from counting_jax.models.backbones import resnet

CONFIG = f"{config_lib.__file__}:stage=counter,smoke=True"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """(counter folder, ImageNet folder): random tiny variables as orbax
  checkpoints (``counting-jax convert``'s format)."""
  root = tmp_path_factory.mktemp("pm_weights")
  kw = config_lib.get_config("smoke=True").model.kwargs
  model = stc.SegThenCount(stage_sizes=tuple(kw.stage_sizes), width=kw.width,
                           proj_dim=kw.proj_dim,
                           exemplar_size=kw.exemplar_size,
                           head_widths=tuple(kw.head_widths))
  counter = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                       jnp.array([[[4.0, 4.0, 20.0, 20.0]]]),
                       jnp.ones((1, 1), bool))
  net = resnet.ResNet(stage_sizes=tuple(kw.stage_sizes), width=kw.width,
                      num_layers=3)
  imagenet = net.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  return (orbax_io.save_variables(counter, root / "counter"),
          orbax_io.save_variables(imagenet, root / "imagenet"))


def _argv(tmp_path, manual, init, *extra):
  return ["pseudo-masks", "--config", CONFIG,
          f"--workdir={tmp_path / 'run'}",
          f"--config.init_checkpoint={init}",
          f"--config.dataset.manual_dir={manual}",
          f"--config.dataset.data_dir={tmp_path / 'tfds'}",
          "--config.quiet=True", *extra]


def test_writes_the_pseudo_masks_of_a_real_image(weights, fsc147_release,
                                                 tmp_path, capsys):
  manual, _ = fsc147_release
  counter, imagenet = weights
  masks = tmp_path / "masks"
  rc = main.main(_argv(tmp_path, manual, counter, f"--imagenet={imagenet}",
                       f"--masks_dir={masks}", "--split=test[:1]"))
  out = capsys.readouterr()
  assert rc == 0, out.err[-3000:]
  assert "pseudo masks of 1 image (split test)" in out.out
  assert f"--config.pseudo_masks.data_dir={masks}" in out.out
  sample = data.load("fsc147", "test[:1]", data_dir=tmp_path / "tfds",
                     manual_dir=manual)[0]
  written = masks_lib.read_pseudo_masks(masks, "test")
  assert list(written) == [str(sample["image_id"])]
  row = written[str(sample["image_id"])]
  h, w = np.asarray(sample["image"]).shape[:2]
  assert row["mask"].shape == (-(-h // 16), -(-w // 16))
  assert row["mask"].any()  # K-means puts the exemplar in a cluster
  assert 2 <= row["k"] <= 6
  assert row["errors"].shape == (5,) and np.isfinite(row["errors"]).all()
  assert row["errors"][row["k"] - 2] == row["errors"].min()  # eq. 5


@pytest.mark.parametrize("extra,needles", [
    # init_checkpoint is a whole counter: not an ImageNet backbone.
    (("--masks_dir={tmp}/m",), ("--imagenet", "whole model")),
    (("--imagenet={imagenet}",), ("--masks_dir",)),
    (("--imagenet={tmp}/none", "--masks_dir={tmp}/m"),
     ("--imagenet", "not found")),
])
def test_mistakes_are_one_line(weights, fsc147_release, tmp_path, capsys,
                               extra, needles):
  manual, _ = fsc147_release
  counter, imagenet = weights
  extra = [e.format(tmp=tmp_path, imagenet=imagenet) for e in extra]
  rc = main.main(_argv(tmp_path, manual, counter, *extra))
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1 and len(err) == 1, err
  assert err[0].startswith("counting-jax pseudo-masks: error:")
  for n in needles:
    assert n in err[0], (n, err[0])


def test_refuses_the_segmenter_stage(weights, fsc147_release, tmp_path,
                                     capsys):
  manual, _ = fsc147_release
  counter, imagenet = weights
  argv = _argv(tmp_path, manual, counter, f"--imagenet={imagenet}",
               f"--masks_dir={tmp_path / 'm'}")
  argv[2] = CONFIG.replace("stage=counter", "stage=segmenter")
  rc = main.main(argv)
  assert rc == 1
  assert "method.stage=counter" in capsys.readouterr().err
