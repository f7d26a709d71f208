"""Two processes on localhost train together like one process.

Each process has 2 fake CPU devices (4 in all, gloo collectives), loads its
own half of each global batch of 8 and runs the jitted step; both must end
with the same parameters, which must equal a 1-process run on the global
batches.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from counting_jax.train import sharding

import _train_worker as worker  # pylint: disable=g-import-not-at-top

WORKER = pathlib.Path(__file__).with_name("_train_worker.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  out = tmp_path_factory.mktemp("mp")
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    env.pop(k, None)
  procs = [subprocess.Popen(
      [sys.executable, str(WORKER), "multiprocess", str(out / f"p{i}.npz"),
       address, "2", str(i)], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=400)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return [dict(np.load(out / f"p{i}.npz")) for i in range(2)]


def test_processes_see_the_global_mesh_and_load_their_own_rows(two_processes):
  a, b = two_processes
  np.testing.assert_array_equal(a["devices"], [4, 2, 2])  # global, local, P
  assert a["image_ids"].shape == (worker.STEPS * 4,)
  assert not np.array_equal(a["image_ids"], b["image_ids"])


def test_processes_end_with_identical_parameters(two_processes):
  a, b = two_processes
  assert set(a) == set(b)
  for key in a:
    if key not in ("image_ids", "devices"):
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_two_processes_equal_one_process_on_the_global_batch(two_processes):
  a = two_processes[0]
  ds = worker.dataset(worker.BATCH)
  batches = [ds[s] for s in range(worker.STEPS)]
  state, rows = worker.run_steps(sharding.make_mesh(jax.devices()[:1]),
                                 batches)
  # Rows of the global batch, as the two processes loaded them.
  np.testing.assert_array_equal(
      np.concatenate([b["image_id"] for b in batches]),
      np.concatenate([np.concatenate([two_processes[p]["image_ids"][
          s * 4:(s + 1) * 4] for p in range(2)]) for s in range(worker.STEPS)]))
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(
              {"params": state.params, "batch_stats": state.batch_stats})}
  for key, value in flat.items():
    np.testing.assert_allclose(a[key], value, atol=1e-5, err_msg=key)
  np.testing.assert_allclose(a["loss"], [r["loss"] for r in rows], rtol=1e-5)
  initial = worker.run_steps(sharding.make_mesh(jax.devices()[:1]), [])[0]
  assert worker.max_diff(initial.params, state.params) > 1e-3
