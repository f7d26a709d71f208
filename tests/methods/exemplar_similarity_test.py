"""An exemplar-conditioned method through the one trainer, on real FSC-147.

The smoke config of ``configs/fsc147_exemplar.py`` trains the small
exemplar-similarity counter on the 9 real FSC-147 test images with their
official points and exemplar boxes (``fsc147_release`` fixture): run
uninterrupted, killed with SIGKILL after a checkpoint and resumed, it must
end with the same parameters and test metrics; ``predict`` then needs
``--exemplars``.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from counting_jax.methods import exemplar_similarity

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_exemplar_vectors_are_box_means_with_a_centre_fallback():
  g = np.random.default_rng(0)
  feats = g.normal(size=(1, 6, 8, 3)).astype(np.float32)
  stride = 4  # cell (r, c) centred at (4c + 2, 4r + 2)
  boxes = np.array([[[0, 0, 12, 8],        # centres x 2, 6, 10; y 2, 6
                     [17, 9, 18.5, 10.5],  # no centre inside: cell (2, 4)
                     [0, 0, 1, 1]]], np.float32)
  mask = np.array([[True, True, False]])
  out = np.asarray(exemplar_similarity.exemplar_vectors(
      feats, boxes, mask, stride))
  np.testing.assert_allclose(out[0, 0], feats[0, :2, :3].mean((0, 1)),
                             rtol=1e-5)
  np.testing.assert_allclose(out[0, 1], feats[0, 2, 4], rtol=1e-6)
  np.testing.assert_array_equal(out[0, 2], 0.0)


def _config_args(manual, data_dir):
  return ["--config", str(REPO / "configs" / "fsc147_exemplar.py") +
          ":smoke=True", f"--config.dataset.manual_dir={manual}",
          f"--config.dataset.data_dir={data_dir}", "--config.quiet=True",
          "--config.checkpoint_every=1", "--config.num_panels=0"]


def _cli(*args):
  return [sys.executable, "-c", "from counting_jax.main import run; run()",
          *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fsc147_release, kill_and_resume):
  manual, _ = fsc147_release
  root = tmp_path_factory.mktemp("fsc")
  data_dir = root / "tfds"
  # Prepare the data set once, before two processes would race to.
  from counting_jax import data  # pylint: disable=g-import-not-at-top
  data.load("fsc147", "test", data_dir=data_dir, manual_dir=manual)
  args = _config_args(manual, data_dir)
  out = kill_and_resume(
      lambda w: _cli("train", "--workdir", str(w), *args),
      root / "plain", root / "killed", kill_after=3)
  return dict(plain=root / "plain", killed=root / "killed", args=args,
              **out)


def test_killed_exemplar_run_resumes_to_the_same_parameters(runs,
                                                             final_state):
  resumed = re.search(r"resumed from step (\d+)", runs["stdout"])
  steps = [int(s) for s in runs["killed_at"] if s.isdigit()]
  assert resumed and int(resumed.group(1)) == max(steps) >= 3
  step_a, a = final_state(runs["plain"])
  step_b, b = final_state(runs["killed"])
  assert step_a == step_b == 6
  for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a),
                               jax.tree_util.tree_leaves_with_path(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))
  m_a = json.loads((runs["plain"] / "metrics.json").read_text())
  m_b = json.loads((runs["killed"] / "metrics.json").read_text())
  assert m_a == m_b and m_a["n"] == 2 and np.isfinite(m_a["mae"])


def test_predict_needs_exemplars_and_counts_with_them(runs, tmp_path,
                                                      shared_data):
  images = shared_data("fsc147") / "images_384_VarV2"
  folder = tmp_path / "images"
  folder.mkdir()
  for name in ("2.jpg", "336.jpg"):
    (folder / name).symlink_to(images / name)
  base = ["predict", "--workdir", str(runs["plain"]), "--images",
          str(folder), "--out", str(tmp_path / "out"), *runs["args"]]
  missing = subprocess.run(_cli(*base), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
  assert missing.returncode != 0
  assert "--exemplars" in missing.stdout + missing.stderr
  boxes = tmp_path / "boxes.json"
  boxes.write_text(json.dumps({"2.jpg": [[10, 10, 50, 40]],
                               "336": [[100, 100, 140, 150]]}))
  done = subprocess.run(_cli(*base, "--exemplars", str(boxes)), cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = (tmp_path / "out" / "counts.csv").read_text().splitlines()
  assert rows[0] == "image,count" and len(rows) == 3
  assert all(np.isfinite(float(r.split(",")[1])) for r in rows[1:])
