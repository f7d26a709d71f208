"""Shared pytest fixtures: ``rng``, ``shared_data``, ``official_values``,
``fsc147_release`` and ``kill_and_resume``."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("COUNTING_JAX_SHARED", REPO.parent / "shared"))
if str(REPO) not in sys.path:  # config files: ``from configs import ...``
  sys.path.insert(0, str(REPO))


@pytest.fixture
def rng():
  return jax.random.key(0)


@pytest.fixture(scope="session")
def shared_dir():
  """``../shared`` (or $COUNTING_JAX_SHARED); skips when it is absent."""
  if not SHARED.is_dir():
    pytest.skip(f"{SHARED} not found")
  return SHARED


@pytest.fixture(scope="session")
def shared_data(shared_dir):
  """``shared_data(name)`` -> ``../shared/data/<name>``, skipping when absent."""

  def get(name: str) -> pathlib.Path:
    path = shared_dir / "data" / name
    if not path.exists():
      pytest.skip(f"../shared/data/{name} not found")
    return path

  return get



@pytest.fixture(scope="session")
def official_values(shared_dir):
  """``official_values(name)`` -> the ``np.load`` of
  ``../shared/reference/official_values/<name>.npz``, skipping when absent."""

  def get(name: str):
    path = shared_dir / "reference" / "official_values" / f"{name}.npz"
    if not path.is_file():
      pytest.skip(f"{path} not found")
    return np.load(path)

  return get

# FSC-147: ``annotation_FSC147_384.json`` itself is not available; the
# release is written in its official schema from SAFECount's converted test
# labels (the official points; boxes (y1, x1, y2, x2) turned into 4 (x, y)
# corners). The 3 train images have no public points, so they get fixture
# points.
TEST_COUNTS = {"2": 8, "2287": 195, "2934": 56, "3312": 136, "3338": 258,
               "336": 16, "4408": 14, "687": 548, "7707": 370}
TRAIN_IDS = ("7", "22", "458")
FIXTURE_TRAIN_POINTS = [[10.5, 20.25], [100.0, 200.0], [383.0, 1.0]]


def _corners(y1, x1, y2, x2):
  return [[x1, y1], [x1, y2], [x2, y2], [x2, y1]]


def _write_release(dst, fsc):
  """Official file layout under ``dst`` for the 12 real images."""
  from counting_jax.data import fsc147  # pylint: disable=g-import-not-at-top
  converted = {}
  with open(fsc / "safecount_converted" / "data" / "FSC147_384_V2" /
            "test.json") as f:
    for line in f:
      entry = json.loads(line)
      converted[entry["filename"]] = entry
  annotations = {}
  for image_id in list(TEST_COUNTS) + list(TRAIN_IDS):
    name = f"{image_id}.jpg"
    with Image.open(fsc / "images_384_VarV2" / name) as im:
      w, h = im.size
    if image_id in TEST_COUNTS:
      points = converted[name]["points"]
      boxes = [_corners(*b) for b in converted[name]["boxes"]]
    else:
      points = FIXTURE_TRAIN_POINTS
      boxes = [_corners(5, 6, 25, 36)] * 3
    annotations[name] = {
        "H": h, "W": w, "points": points, "box_examples_coordinates": boxes,
        "box_examples_path": [f"/nfs/bla/{name}"],
        "density_path": f"/nfs/bla/{image_id}.npy", "img_path": "/nfs/x",
        "r": [1, 1], "ratio_h": 1.0, "ratio_w": 1.0}
  dst.mkdir(parents=True)
  (dst / fsc147.ANNOTATION_FILE).write_text(json.dumps(annotations))
  splits = json.loads((fsc / "official" / "data" / fsc147.SPLIT_FILE)
                      .read_text())
  keep = {f"{i}.jpg" for i in list(TEST_COUNTS) + list(TRAIN_IDS)}
  (dst / fsc147.SPLIT_FILE).write_text(json.dumps(
      {k: [n for n in v if n in keep] for k, v in splits.items()}))
  (dst / fsc147.CLASS_FILE).symlink_to(
      fsc / "official" / "data" / fsc147.CLASS_FILE)
  (dst / fsc147.DESCRIPTION_FILE).symlink_to(
      fsc / "countx" / fsc147.DESCRIPTION_FILE)
  (dst / fsc147.IMAGE_DIR).symlink_to(fsc / "images_384_VarV2")
  return converted


@pytest.fixture(scope="session")
def fsc147_release(tmp_path_factory, shared_data):
  """(manual_dir, SAFECount's converted test labels by file name): the 12
  real FSC-147 images in the official release layout."""
  fsc = shared_data("fsc147")
  manual = tmp_path_factory.mktemp("fsc147_manual")
  converted = _write_release(manual / "FSC147_384_V2", fsc)
  return manual, converted


def _kill_and_resume(command, plain, killed, kill_after: int, *,
                     timeout: float = 400):
  """Runs ``command(workdir)`` uninterrupted into ``plain`` and, at the same
  time, into ``killed``, SIGKILLed as soon as its checkpoint ``kill_after``
  (or a later one) appears; then reruns it into ``killed``. Returns
  {"killed_at": names in killed/checkpoints at the kill, "stdout": the
  resumed run's output}."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  ref = subprocess.Popen(command(plain), env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
  victim = subprocess.Popen(command(killed), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  ckpt = pathlib.Path(killed) / "checkpoints"
  try:
    deadline = time.time() + timeout
    while time.time() < deadline and victim.poll() is None:
      steps = [int(p.name) for p in ckpt.glob("*") if p.name.isdigit()]
      if steps and max(steps) >= kill_after:
        victim.send_signal(signal.SIGKILL)
        break
      time.sleep(0.02)
    victim.wait(timeout=60)
    killed_at = sorted(p.name for p in ckpt.iterdir())
    log = ref.communicate(timeout=timeout)[0]
    assert ref.returncode == 0, log[-3000:]
  finally:
    for p in (ref, victim):
      if p.poll() is None:
        p.kill()
  assert victim.returncode == -signal.SIGKILL, "the run ended before the kill"
  assert not (pathlib.Path(killed) / "metrics.json").exists()
  resumed = subprocess.run(command(killed), env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=timeout)
  assert resumed.returncode == 0, (resumed.stdout[-3000:]
                                   + resumed.stderr[-3000:])
  return {"killed_at": killed_at, "stdout": resumed.stdout}


@pytest.fixture(scope="session")
def kill_and_resume():
  """``kill_and_resume(command, plain, killed, kill_after)``: see
  ``_kill_and_resume``."""
  return _kill_and_resume


def _final_state(workdir):
  """(step, state pytree) of the newest checkpoint in ``workdir``."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from counting_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  manager = checkpoint.make_manager(pathlib.Path(workdir) / "checkpoints")
  step = manager.latest_step()
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  manager.close()
  return step, state


@pytest.fixture(scope="session")
def final_state():
  """``final_state(workdir) -> (step, state)`` of the newest checkpoint."""
  return _final_state
