"""mPrompt through the one trainer on the real ShanghaiTech Part A test
files in ../shared/data (tiny network, 64-px crops): the smoke config trains
across an epoch boundary into the online prompt (the loss reads the epoch
the trainer adds), evaluates whole resized images and localizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs import mprompt as mprompt_config
from counting_jax import methods
from counting_jax.train import loop


@pytest.fixture(scope="module")
def sha_root(tmp_path_factory, shared_data):
  root = shared_data("shanghaitech")
  if not (root / "part_A" / "test_data" / "images" / "IMG_1.jpg").is_file():
    pytest.skip("../shared/data/shanghaitech has no Part A test images")
  return root, tmp_path_factory.mktemp("tfds")


def test_smoke_run_trains_into_the_online_prompt(sha_root, tmp_path, capsys):
  root, data_dir = sha_root
  config = mprompt_config.get_config("dataset=sha,smoke=True")
  config.dataset.manual_dir = str(root)
  config.dataset.data_dir = str(data_dir)
  config.quiet = True
  # 10 images at batch 2: 5 steps per epoch; step 6 is in epoch 1.
  config.method.online_after = 1
  config.total_steps = 6
  config.checkpoint_every = 6
  config.dataset.test_split = "test[:1]"
  result = loop.train_and_evaluate(config, tmp_path / "run")
  assert result["n"] == 1 and result["step"] == 6
  rows = [json.loads(l) for l in
          (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if "train/loss" in r]
  assert len(train) == 6
  for r in train:
    assert np.isfinite(r["train/loss"])
    assert {"train/loss/density", "train/loss/count", "train/loss/seg",
            "train/loss/context"} <= set(r)
  counts = json.loads((tmp_path / "run" / "counts.json").read_text())
  # The whole image (resized by the SHA rule) is counted against all its
  # points (IMG_10, 1111 people).
  assert [v["true"] for v in counts.values()] == [1111]
  assert "published" not in capsys.readouterr().out


def test_method_fields_and_errors():
  config = mprompt_config.get_config("dataset=qnrf")
  assert config.method.resize_rule == "large"
  assert config.total_steps == 52_544  # 700 epochs of 1201 images, batch 16
  assert dict(config.input.color_jitter) == dict(
      brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2)
  method = methods.build(config)
  assert method.stride == 1 and method.inputs == ("image",)
  config.method.prompt = "segmenter"
  with pytest.raises(ValueError, match="prompt"):
    methods.build(config)
  with pytest.raises(ValueError, match="dataset must be one of"):
    mprompt_config.get_config("dataset=jhu")


@pytest.mark.parametrize("dataset,n_train", [("sha", 300), ("qnrf", 1201)])
def test_preset_learning_rate_is_the_official_steplr(dataset, n_train):
  # StepLR(step_size=300, gamma=0.4), stepped once per epoch: 1e-4 in
  # epochs 0-299, 4e-5 in 300-599, 1.6e-5 in 600-699, read at the
  # trainer's epoch of each step.
  from counting_jax.train import optim
  config = mprompt_config.get_config(f"dataset={dataset}")
  o = config.optim
  lr = optim.make_schedule(o.lr, schedule=o.schedule,
                           total_steps=config.total_steps,
                           warmup_steps=o.warmup_steps,
                           step_boundaries=o.step_boundaries,
                           step_factor=o.step_factor)
  batch = config.input.batch_size
  for step in (0, *[b + d for b in o.step_boundaries for d in (-1, 0)],
               config.total_steps - 1):
    epoch = loop.epochs_done(step, batch, n_train)
    assert float(lr(step)) == pytest.approx(1e-4 * 0.4 ** (epoch // 300),
                                            rel=1e-6), (step, epoch)
