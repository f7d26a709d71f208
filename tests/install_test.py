"""The package installed from its wheel, outside a checkout: the wheel holds
the VGG cells data and the built-in configs, and the main job's smoke variant
runs from another directory by config name (offline: the wheel is built
without build isolation and installed without dependencies into a fresh
venv that sees this environment's packages)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install


def _check(cmd, **kwargs):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                        **kwargs)
  assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
  return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """A wheel built from a copy of the sources (no build/ left in the repo)."""
  tmp = tmp_path_factory.mktemp("wheel")
  src = tmp / "src"
  shutil.copytree(REPO / "counting_jax", src / "counting_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
          "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(src)])
  (path,) = (tmp / "dist").glob("counting_jax-*.whl")
  return path


def test_wheel_holds_the_cells_data_and_configs(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  cells = REPO / "counting_jax" / "data" / "assets" / "vgg_cells"
  want = sorted(p.name for p in cells.glob("*.png"))
  got = sorted(n.rsplit("/", 1)[1] for n in names
               if n.startswith("counting_jax/data/assets/vgg_cells/")
               and n.endswith(".png"))
  assert len(want) == 400 and got == want
  assert "counting_jax/configs/cells.py" in names
  assert "counting_jax/configs/crowd_shb.py" in names
  for config in ("mprompt", "fsc147_seg_then_count", "fsc147_t2icount"):
    assert f"counting_jax/configs/{config}.py" in names
  # The CLIP tokenizer's merges and their licence (T2ICount runs offline).
  assert "counting_jax/text/assets/bpe_simple_vocab_16e6.txt.gz" in names
  assert "counting_jax/text/assets/LICENSE_CLIP_BPE" in names


def test_installed_package_runs_the_main_job_smoke(wheel, tmp_path):
  venv = tmp_path / "venv"
  _check([sys.executable, "-m", "venv", "--without-pip", str(venv)])
  python = venv / "bin" / "python"
  purelib = _check([str(python), "-c", "import sysconfig; print(sysconfig."
                    "get_paths()['purelib'])"]).stdout.strip()
  # This environment's packages (jax, tfds, ...) behind the venv's own.
  shared = sysconfig.get_paths()["purelib"]
  pathlib.Path(purelib, "_shared_env.pth").write_text(
      f"import site; site.addsitedir({shared!r})\n")
  _check([sys.executable, "-m", "pip", "--python", str(python), "install",
          "--no-deps", "--no-index", "-q", str(wheel)])
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["COUNTING_JAX_DATA_DIR"] = str(tmp_path / "tfds")
  where = _check([str(python), "-c", "import counting_jax; print("
                  "counting_jax.__file__)"], cwd=elsewhere, env=env)
  assert where.stdout.strip().startswith(purelib)  # not the checkout
  proc = _check([str(venv / "bin" / "counting-jax"), "train", "--config",
                 "cells:smoke=True", "--workdir", "run", "--config.quiet=True",
                 "--config.total_steps=2", "--config.dataset.test_split="
                 "test[:2]"], cwd=elsewhere, env=env)
  assert "MAE" in proc.stdout
  metrics = json.loads((elsewhere / "run" / "metrics.json").read_text())
  assert metrics["n"] == 2 and metrics["step"] == 2
  record = next((tmp_path / "tfds").rglob("counting_jax_source.json"))
  assert json.loads(record.read_text())["manual_dir"].startswith(purelib)
