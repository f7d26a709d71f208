"""Training throughput (images/s) of the data-parallel step, 1 vs 8 devices.

Runs the real jitted step (``counting_jax.train.step`` on a ``("data",)``
mesh, batch sharded, state replicated, Gaussian-L2 loss, Adam) on synthetic
batches, each configuration in a fresh subprocess (the fake-device flag
``--xla_force_host_platform_device_count`` must be set before JAX starts):

* CPU with 1 and with 8 fake devices: a smoke figure of the sharded program
  (8 fake devices share the same cores, so no speed-up is expected);
* every GPU of the machine, float32 and bfloat16 compute, when
  ``jax.devices("gpu")`` finds one.

  .venv/bin/python benchmarks/train_throughput.py            # U-Net, 128 px
  .venv/bin/python benchmarks/train_throughput.py --quick    # tiny, 3 steps

Compile time is reported separately; throughput is global batch x timed
steps / wall time of the timed steps (after 2 warm-up steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _child(args):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from counting_jax import losses, methods, models  # pylint: disable=g-import-not-at-top
  from counting_jax.train import optim, sharding, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  devices = jax.devices(args.platform)
  mesh = sharding.make_mesh(devices)
  sharding.check_batch_size(args.batch, mesh, accum_steps=args.accum)
  kw = {} if args.dtype == "float32" else {"dtype": jnp.dtype(args.dtype)}
  model = models.get_model(args.model, **kw)
  loss_fn = losses.get_loss("gaussian_l2", sigma=2.0)
  tx = optim.make_optimizer("adam", lr=1e-4, total_steps=1000)
  g = np.random.default_rng(0)
  n, size = args.batch, args.crop
  batch = {"image": g.normal(size=(n, size, size, 3)).astype(np.float32),
           "points": g.uniform(0, size, (n, 64, 2)).astype(np.float32),
           "point_mask": g.random((n, 64)) < 0.5}
  with jax.default_device(devices[0]):
    state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0),
                                         (1, size, size, 3))
  repl, dsh = sharding.replicated(mesh), sharding.data_sharded(mesh)
  state = jax.device_put(state, repl)
  batch = {k: jax.device_put(v, dsh) for k, v in batch.items()}
  step = jax.jit(step_lib.make_train_step(
      methods.density.from_model(model, loss_fn), tx,
      accum_steps=args.accum),
                 in_shardings=(repl, dsh), out_shardings=(repl, repl),
                 donate_argnums=0)
  t = time.perf_counter()
  step = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  for _ in range(2):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(args.steps):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  wall = time.perf_counter() - t
  print(json.dumps(dict(platform=args.platform, devices=len(devices),
                        model=args.model, dtype=args.dtype, batch=n,
                        crop=size, accum=args.accum, compile_s=compile_s,
                        images_per_s=n * args.steps / wall,
                        loss=float(m["loss"]))))


def _run(args, platform, n_devices, dtype):
  env = dict(os.environ)
  if platform == "cpu":
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_"
                        f"platform_device_count={n_devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, __file__, "--child", "--platform", platform,
         "--model", args.model, "--batch", str(args.batch), "--crop",
         str(args.crop), "--steps", str(args.steps), "--dtype", dtype,
         "--accum", str(args.accum)]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                       check=False)
  if out.returncode:
    return {"platform": platform, "devices": n_devices,
            "error": out.stderr.strip().splitlines()[-1:]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def _has_gpu():
  code = ("import jax\ntry:\n  print(len(jax.devices('gpu')))\n"
          "except RuntimeError:\n  print(0)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=False)
  lines = out.stdout.strip().splitlines()
  return int(lines[-1]) if lines and lines[-1].isdigit() else 0


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--platform", default="cpu")
  p.add_argument("--model", default="unet")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--crop", type=int, default=128)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--accum", type=int, default=1)
  p.add_argument("--gpu_batch", type=int, default=64)
  p.add_argument("--quick", action="store_true",
                 help="unet_tiny, 64 px crops, 3 timed steps")
  args = p.parse_args()
  if args.child:
    return _child(args)
  if args.quick:
    args.model, args.crop, args.steps = "unet_tiny", 64, 3
  rows = [_run(args, "cpu", 1, "float32"), _run(args, "cpu", 8, "float32")]
  n_gpu = _has_gpu()
  if n_gpu:
    args.batch = args.gpu_batch
    rows += [_run(args, "gpu", n_gpu, "float32"),
             _run(args, "gpu", n_gpu, "bfloat16")]
  else:
    print("no GPU found (jax.devices('gpu')): CPU figures only")
  print(f"{'platform':<9}{'devices':>8}{'model':>11}{'dtype':>10}{'batch':>7}"
        f"{'crop':>6}{'compile s':>11}{'images/s':>10}")
  for r in rows:
    if "error" in r:
      print(f"{r['platform']:<9}{r['devices']:>8}  failed: {r['error']}")
      continue
    print(f"{r['platform']:<9}{r['devices']:>8}{r['model']:>11}"
          f"{r['dtype']:>10}{r['batch']:>7}{r['crop']:>6}"
          f"{r['compile_s']:>11.1f}{r['images_per_s']:>10.1f}")


if __name__ == "__main__":
  main()
