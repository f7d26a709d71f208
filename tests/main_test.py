"""The counting-jax command end to end on a tiny config (subprocesses):
train saves its config, eval and predict reuse it, predict's inputs and
unreadable images, a conflicting config, a failed train leaves no folder."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from counting_jax.train import run_folder

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "cells.py") + ":smoke=True"
CELLS = REPO / "counting_jax" / "data" / "assets" / "vgg_cells"


def _run(*args, env_extra=None):
  env = dict(os.environ, COUNTING_JAX_DATA_DIR=env_extra)
  proc = subprocess.run(
      [sys.executable, "-m", "counting_jax.main", *map(str, args)], cwd=REPO,
      env=env, capture_output=True, text=True, timeout=600)
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
  assert "published" not in proc.stdout  # a smoke run is not the protocol
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
  # The resolved config, overrides included, is saved in the run folder.
  saved = run_folder.load(workdir)
  assert saved.quiet is True and saved.model.name == "unet_tiny"
  # tfds' notices for local files are not printed.
  assert "Unknown size" not in proc.stdout + proc.stderr
  assert "OpenCV" not in proc.stderr


def test_eval_without_config_uses_the_saved_one(trained):
  _, workdir, data_dir, _ = trained
  before = json.loads((workdir / "metrics.json").read_text())
  proc = _run("eval", f"--workdir={workdir}", env_extra=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  after = json.loads((workdir / "metrics.json").read_text())
  assert after["mae"] == pytest.approx(before["mae"], rel=1e-5)


def test_train_resumes_with_the_saved_config(trained):
  _, workdir, data_dir, _ = trained
  proc = _run("train", f"--workdir={workdir}", env_extra=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from step 6" in proc.stdout


def test_a_conflicting_config_is_one_line_naming_the_fields(trained):
  _, workdir, data_dir, _ = trained
  proc = _run("eval", "--config", "cells:smoke=True,model=fcrn_a",
              f"--workdir={workdir}", env_extra=data_dir)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "model.name" in lines[0]
  assert "quiet" not in lines[0]  # run-time fields may differ


def test_predict_counts_files_folders_and_globs(trained):
  tmp, workdir, data_dir, _ = trained
  images = tmp / "images"
  (images / "more").mkdir(parents=True)
  for k, name in ((10, "101cell.png"), (2, "102cell.png")):
    shutil.copy(CELLS / name, images / f"IMG_{k}.png")
  shutil.copy(CELLS / "103cell.png", images / "more" / "IMG_1.png")
  shutil.copy(CELLS / "104cell.png", tmp / "single.png")
  (images / "IMG_3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
  out = tmp / "pred"
  proc = _run("predict", f"--workdir={workdir}", f"--images={images}",
              f"--images={images}/more/*.png", f"--images={tmp}/single.png",
              f"--out={out}", env_extra=data_dir)
  # Every readable image counted; the corrupt one named; non-zero exit.
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "counted 4 images" in proc.stdout and str(out) in proc.stdout
  assert "IMG_3.jpg" in proc.stderr and "Traceback" not in proc.stderr
  lines = (out / "counts.csv").read_text().splitlines()
  assert lines[0] == "image,count"
  assert [l.split(",")[0] for l in lines[1:]] == [
      "IMG_1.png", "IMG_2.png", "IMG_10.png", "single.png"]
  assert (out / "IMG_10_density.png").is_file()


@pytest.mark.parametrize("override,message", [
    ("dataset.train_split=validation", "no split 'validation'"),  # checked
    ("model.name=no_such_model", "no_such_model"),  # fails in the loop
])
def test_failed_train_leaves_no_run_folder(trained, tmp_path, override,
                                           message):
  _, _, data_dir, _ = trained
  workdir = tmp_path / "run"
  proc = _run("train", "--config", CONFIG, f"--workdir={workdir}",
              f"--config.{override}", env_extra=data_dir)
  assert proc.returncode == 1
  assert message in proc.stderr.strip().splitlines()[-1]
  assert not workdir.exists()


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
  assert proc.returncode == 2 and "counting-jax train" in proc.stderr
