"""The training job end to end: SIGKILL mid-run, restart, same result.

Runs ``counting-jax train`` on the smoke cells config (tiny U-Net, 32x32
crops, test on 2 images) three times: uninterrupted; killed with SIGKILL
right after a randomly chosen checkpoint appears; restarted with the same
command. The restarted run must end with the uninterrupted run's
parameters, EMA, optimiser state, ``metrics.jsonl`` rows (timings aside) and
``metrics.json``.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import sys

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TOTAL = 10
ARGS = [f"--config.total_steps={TOTAL}", "--config.checkpoint_every=1",
        "--config.log_every=3", "--config.dataset.test_split=test[:2]",
        "--config.num_panels=0", "--config.quiet=True",
        "--config.ema_decay=0.5", "--config.input.batch_size=4"]


pytestmark = pytest.mark.usefixtures("fast_compiles")


def _command(workdir):
  return [sys.executable, "-c", "from counting_jax.main import run; run()",
          "train", "--config", str(REPO / "configs" / "cells.py") +
          ":smoke=True", "--workdir", str(workdir), *ARGS]


def _rows(workdir):
  rows = [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if not k.endswith("steps_per_s")}
          for r in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, kill_and_resume):
  root = tmp_path_factory.mktemp("resume")
  plain, killed = root / "plain", root / "killed"
  out = kill_and_resume(_command, plain, killed,
                        random.Random(os.getpid()).randint(2, 5))
  return dict(plain=plain, killed=killed, **out)


def test_killed_run_resumes_from_its_last_checkpoint(runs):
  steps = [int(s) for s in runs["killed_at"] if s.isdigit()]
  assert 0 < max(steps) < TOTAL, runs["killed_at"]
  resumed = re.search(r"resumed from step (\d+)", runs["stdout"])
  assert resumed, runs["stdout"][-2000:]
  assert int(resumed.group(1)) == max(steps), (resumed.group(0), steps)


def test_resumed_run_ends_with_the_uninterrupted_parameters(runs,
                                                          final_state):
  step_a, a = final_state(runs["plain"])
  step_b, b = final_state(runs["killed"])
  assert step_a == step_b == TOTAL
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  assert any("ema_params" in jax.tree_util.keystr(p) for p, _ in flat_a)
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


def test_resumed_run_logs_and_evaluates_the_same(runs):
  assert _rows(runs["plain"]) == _rows(runs["killed"])
  assert [r["step"] for r in _rows(runs["plain"])] == [3, 6, 9, 10, 10]
  a = json.loads((runs["plain"] / "metrics.json").read_text())
  b = json.loads((runs["killed"] / "metrics.json").read_text())
  assert a == b and a["n"] == 2 and a["step"] == TOTAL


def _smoke_config(**overrides):
  sys.path.insert(0, str(REPO))
  from configs import cells  # pylint: disable=g-import-not-at-top
  config = cells.get_config("smoke=True")
  config.ema_decay = 0.5
  config.input.batch_size = 4
  for key, value in overrides.items():
    config.eval_tiling[key] = value
  return config


def test_predict_counts_a_folder_tiled_as_untiled(runs, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from counting_jax.train import predict  # pylint: disable=g-import-not-at-top
  images = tmp_path / "images"
  images.mkdir()
  g = np.random.default_rng(0)
  Image.fromarray(g.integers(0, 256, (100, 132, 3), dtype=np.uint8)).save(
      images / "big.png")
  Image.fromarray(g.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
      images / "small.jpg")
  (images / "notes.txt").write_text("not an image")
  whole = predict.predict_folder(_smoke_config(), runs["plain"], images,
                                 tmp_path / "whole")
  # 104 x 136 padded: tiles of 64 overlapping by >= 32 px, split at the
  # middle of each overlap: farther from any tile edge than the tiny U-Net's
  # receptive radius, so the counts are the untiled ones.
  tiled = predict.predict_folder(
      _smoke_config(max_size=64, tile_size=64, overlap=32, blend="core"),
      runs["plain"], images, tmp_path / "tiled")
  assert sorted(whole) == ["big.png", "small.jpg"]
  for name in whole:
    np.testing.assert_allclose(tiled[name], whole[name], rtol=1e-4,
                               atol=1e-3)
  lines = (tmp_path / "tiled" / "counts.csv").read_text().splitlines()
  assert lines[0] == "image,count" and len(lines) == 3
  assert (tmp_path / "tiled" / "big_density.png").is_file()
