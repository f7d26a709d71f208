"""The counting-jax command end to end on a tiny config (subprocesses)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "cells.py") + ":smoke=True"


def _run(*args, env_extra=None):
  env = dict(os.environ, COUNTING_JAX_DATA_DIR=env_extra)
  proc = subprocess.run(
      [sys.executable, "-m", "counting_jax.main", *args], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=600)
  return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cli")
  data_dir = str(tmp / "tfds")
  workdir = tmp / "run"
  proc = _run("train", "--config", CONFIG, f"--workdir={workdir}",
              "--config.quiet=True", env_extra=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return tmp, workdir, data_dir, proc


def test_train_writes_the_run_folder(trained):
  _, workdir, _, proc = trained
  assert "MAE" in proc.stdout and "RMSE" in proc.stdout
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["n"] == 10 and metrics["mae"] >= 0 and metrics["rmse"] >= 0
  assert len(json.loads((workdir / "train_ids.json").read_text())) == 4
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps[-1] == 6
  rows = [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows[0]["step"] == 2 and "train/loss" in rows[0]
  assert any(p.suffix == ".png" for p in (workdir / "panels").iterdir())
  assert list((workdir / "tb").iterdir())


def test_eval_reproduces_the_metrics(trained):
  _, workdir, data_dir, _ = trained
  before = json.loads((workdir / "metrics.json").read_text())
  proc = _run("eval", "--config", CONFIG, f"--workdir={workdir}",
              env_extra=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  after = json.loads((workdir / "metrics.json").read_text())
  assert after["mae"] == pytest.approx(before["mae"], rel=1e-5)


def test_predict_counts_a_folder(trained):
  tmp, workdir, data_dir, _ = trained
  images = tmp / "images"
  images.mkdir()
  from counting_jax.data import vgg_cells  # pylint: disable=g-import-not-at-top
  for name in ("101cell.png", "102cell.png"):
    shutil.copy(vgg_cells.DEFAULT_ROOT / name, images / name)
  out = tmp / "pred"
  proc = _run("predict", "--config", CONFIG, f"--workdir={workdir}",
              f"--images={images}", f"--out={out}", env_extra=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (out / "counts.csv").read_text().splitlines()
  assert lines[0] == "image,count" and len(lines) == 3
  assert (out / "101cell_density.png").is_file()


def test_eval_reports_localization_at_a_fixed_radius(trained):
  _, workdir, _, proc = trained
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["loc_radius"] == 8.0
  assert 0.0 <= metrics["loc_f1"] <= 1.0
  assert "localization (local_maxima, radius 8 px)" in proc.stdout


def test_localize_writes_points_and_panels(trained):
  tmp, workdir, data_dir, _ = trained
  images = tmp / "loc_images"
  images.mkdir()
  from counting_jax.data import vgg_cells  # pylint: disable=g-import-not-at-top
  shutil.copy(vgg_cells.DEFAULT_ROOT / "101cell.png", images / "101cell.png")
  out = tmp / "loc"
  proc = _run("localize", "--config", CONFIG, f"--workdir={workdir}",
              f"--images={images}", f"--out={out}", "--method=local_maxima",
              env_extra=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((out / "101cell.json").read_text())
  assert record["method"] == "local_maxima"
  assert len(record["points"]) == record["count"]
  assert (out / "101cell_points.png").is_file()
  assert not (out / "nwpu_pred.txt").exists()  # file names are not ids


def test_localization_metrics_command(tmp_path):
  (tmp_path / "gt.txt").write_text("1 2 10 10 4 6 2 40 40 4 6 3\n2 0\n")
  (tmp_path / "pred.txt").write_text("1 2 12 10 90 90\n2 1 5 5\n")
  proc = _run("localization-metrics", "--gt", str(tmp_path / "gt.txt"),
              "--pred", str(tmp_path / "pred.txt"), "--json",
              str(tmp_path / "out.json"), env_extra="")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "out.json").read_text())
  assert result["sigma_l"]["precision"] == pytest.approx(1 / 3)
  assert result["sigma_l"]["recall"] == pytest.approx(1 / 2)
  assert result["sigma_l"]["level_recall"][2:4] == [1.0, 0.0]
  assert result["counting"]["mae"] == pytest.approx(0.5)
  proc = _run("localization-metrics", "--gt", str(tmp_path / "gt.txt"),
              "--pred", str(tmp_path / "missing.txt"), env_extra="")
  assert proc.returncode == 2 and "missing.txt" in proc.stderr


def test_bad_command_prints_usage():
  proc = _run("fly", env_extra="")
  assert proc.returncode == 2 and "counting-jax train" in proc.stdout
