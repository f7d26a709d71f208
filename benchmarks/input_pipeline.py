"""Does the input keep up? The training pipeline alone, and the train step
with and without it.

  .venv/bin/python benchmarks/input_pipeline.py [--shared ../shared]

Source: the 10 real ShanghaiTech Part B test images (1024x768 JPEG) with
their points, repeated to 200 images and decoded on every read (no cache),
as a large data set is. Pipeline: random 512x512 crop, horizontal flip,
padding of the points, batches of 4, normalisation
(``counting_jax.data.pipeline``). Prints

1. images/s of the pipeline alone with 0, 1 and 2 worker processes
   (``pipeline.iterate(num_workers=...)``);
2. the train step time of the tiny BL VGG19 counter (DM-Count loss) on a
   fixed batch (pipeline off) and reading every batch from the pipeline
   (pipeline on, 0 and 2 workers).

On 2 CPU cores the workers compete with XLA for the same cores; on a GPU/TPU
host the step runs on the accelerator and the workers have the CPUs.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np

from counting_jax import methods
from counting_jax.data import pipeline, shanghaitech
from counting_jax.train import optim, state as state_lib, step as step_lib
from counting_jax.train import compile_options


class _Repeated:
  """``n`` reads cycling over the real images, decoded on every read."""

  def __init__(self, root, n):
    self._root = pathlib.Path(root)
    self._ids = sorted(p.stem for p in (self._root / "images").glob("*.jpg"))
    self._n = n

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    sample, _ = shanghaitech.read_sample(self._root,
                                         self._ids[i % len(self._ids)])
    return sample


def _dataset(source):
  return pipeline.train_dataset(source, batch_size=4, max_points=1024,
                                seed=0, crop_size=(512, 512), flip=True,
                                pad_multiple=32, cache=False)


def pipeline_alone(source, workers, batches=12):
  it = pipeline.iterate(_dataset(source), 0, num_workers=workers)
  next(it)  # worker start-up
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * 4 / (time.perf_counter() - t)


def step_times(source, steps=6):
  from counting_jax import losses, models  # pylint: disable=g-import-not-at-top
  method = methods.density.from_model(models.get_model("bl_vgg19_tiny"),
                                      losses.get_loss("dm_count"))
  tx = optim.make_optimizer("adam", lr=1e-5, total_steps=100)
  fixed = _dataset(source)[0]
  state = state_lib.create_train_state(method.model, tx,
                                       jax.random.PRNGKey(0),
                                       (1, 512, 512, 3))
  step = jax.jit(step_lib.make_train_step(method, tx),
                 compiler_options=compile_options.compiler_options())
  fields = ("image", "points", "point_mask")

  def run(next_batch):
    nonlocal state
    state, m = step(state, {k: next_batch()[k] for k in fields})
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, {k: next_batch()[k] for k in fields})
    jax.block_until_ready(m)
    return (time.perf_counter() - t) / steps

  out = {"pipeline off (fixed batch)": run(lambda: fixed)}
  for workers in (0, 2):
    it = pipeline.iterate(_dataset(source), 0, num_workers=workers)
    out[f"pipeline on, {workers} workers"] = run(lambda: next(it))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shared", default=str(
      pathlib.Path(__file__).resolve().parents[2] / "shared"))
  args = parser.parse_args()
  root = pathlib.Path(args.shared) / "data" / "shanghaitech" / "part_B" / \
      "test_data"
  source = _Repeated(root, 200)
  print("pipeline alone (ShanghaiTech B 1024x768 JPEG, 512 crops, batch 4):")
  for workers in (0, 1, 2):
    print(f"  {workers} workers: {pipeline_alone(source, workers):7.1f} "
          "images/s")
  print("train step, bl_vgg19_tiny + DM-Count, 512x512, batch 4:")
  for name, seconds in step_times(source).items():
    print(f"  {name:<28} {seconds * 1e3:8.1f} ms/step")


if __name__ == "__main__":
  main()
