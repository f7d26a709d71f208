"""Data parallelism: 8 devices give the 1-device step; batch-size checks."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from counting_jax.train import sharding

WORKER = pathlib.Path(__file__).with_name("_train_worker.py")


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  """Runs the equivalence worker on 8 fake CPU devices (the flag must be set
  before JAX initialises, hence a subprocess)."""
  out = tmp_path_factory.mktemp("eq") / "eq.json"
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  proc = subprocess.run([sys.executable, str(WORKER), "equivalence", str(out)],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text())


def test_gaussian_l2_step_same_on_8_devices_as_on_1(eight_devices):
  r = eight_devices["gaussian_l2"]
  assert r["moved"] > 1e-3          # the steps really changed the parameters
  assert r["params"] < 1e-5 and r["batch_stats"] < 1e-5
  np.testing.assert_allclose(r["loss8"], r["loss1"], rtol=1e-5)
  np.testing.assert_allclose(r["mae8"], r["mae1"], rtol=1e-5)


def test_ot_loss_step_same_on_8_devices_as_on_1(eight_devices):
  name = eight_devices["ot_loss"]
  if name is None:
    pytest.skip("no OT loss (dm_count / gl) registered in losses.LOSSES yet")
  r = eight_devices[name]
  assert np.all(np.isfinite(r["loss1"])), r
  assert r["moved"] > 1e-3
  assert r["params"] < 1e-5 and r["batch_stats"] < 1e-5
  np.testing.assert_allclose(r["loss8"], r["loss1"], rtol=1e-5)


def test_accumulation_and_ema_same_on_8_devices_as_on_1(eight_devices):
  r = eight_devices["accum"]
  assert r["params"] < 1e-5 and r["ema"] < 1e-5


def test_check_batch_size_names_the_fix():
  mesh = sharding.make_mesh()
  n = mesh.devices.size
  sharding.check_batch_size(4 * n, mesh, accum_steps=2)
  if n == 1:
    with pytest.raises(ValueError, match="batch_size=3 must be a multiple"):
      sharding.check_batch_size(3, mesh, accum_steps=2)
  with pytest.raises(ValueError, match="accum_steps"):
    sharding.check_batch_size(4, mesh, accum_steps=0)
  with pytest.raises(ValueError, match="not a multiple of the 2 processes"):
    sharding.local_batch_size(5, 2)


def test_process_batch_index_reassembles_the_global_batch():
  import _train_worker as w  # pylint: disable=g-import-not-at-top
  glob = w.dataset(8)
  for p_count in (2, 4):
    local = w.dataset(8 // p_count, 8)
    for step in (0, 3):
      parts = [local[sharding.process_batch_index(step, p, p_count)]
               for p in range(p_count)]
      for key in ("image", "points", "point_mask", "image_id"):
        np.testing.assert_array_equal(
            np.concatenate([b[key] for b in parts]), glob[step][key])


def test_repeat_to_batch_keeps_the_single_process_stream():
  import _train_worker as w  # pylint: disable=g-import-not-at-top
  from counting_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  plain = pipeline.train_dataset(
      w.synthetic_source(), batch_size=8, max_points=12, seed=3,
      crop_size=(16, 16), flip=True, vflip=True, pad_multiple=2,
      mean=(0.5,) * 3, std=(0.25,) * 3)
  np.testing.assert_array_equal(plain[2]["image"], w.dataset(8)[2]["image"])
  assert sharding.repeat_to_batch([1, 2, 3], 8) == [1, 2, 3] * 3
  assert sharding.repeat_to_batch([1, 2, 3], 2) == [1, 2, 3]


def test_shard_batch_drops_strings_and_checks_divisibility():
  mesh = sharding.make_mesh(jax.devices()[:1])
  out = sharding.shard_batch({"image": np.ones((2, 4, 4, 3), np.float32),
                              "image_id": np.asarray(["a", "b"])}, mesh)
  assert set(out) == {"image"} and out["image"].shape == (2, 4, 4, 3)


def test_initialize_distributed_single_process_is_a_no_op(monkeypatch):
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
            "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(k, raising=False)
  assert not sharding.initialize_distributed()
  assert not sharding.initialize_distributed("127.0.0.1:1", 1, 0)
  with pytest.raises(ValueError, match="give all of"):
    sharding.initialize_distributed("127.0.0.1:1", None, None)
