"""Data parallelism with ``jax.jit`` over a device mesh, on one or many hosts.

This is JAX's recommended form of data parallelism (``jax.jit`` with a
``Mesh`` and ``NamedSharding``; ``jax.pmap`` is in maintenance mode): the
global batch is sharded over the ``"data"`` axis of a 1-D mesh of every
device of every process, the train state is replicated, and the step is
written for the *global* batch. Reductions in the loss (batch means) are
global under jit, so XLA inserts the cross-device all-reduce of gradients,
BatchNorm batch statistics and metrics itself; there is no per-device code,
and one code path serves 1 CPU, 8 GPUs and many hosts.

Multi-host: every process runs the same program after
:func:`initialize_distributed`; process ``p`` of ``P`` feeds rows
``[p * B / P, (p + 1) * B / P)`` of each global batch of ``B`` images
(:func:`process_batch_index` says which batch of a dataset built with the
local batch size holds them) and :func:`shard_batch` assembles the global
array with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

__all__ = ["make_mesh", "replicated", "data_sharded", "shard_batch",
           "check_batch_size", "local_batch_size", "process_batch_index",
           "repeat_to_batch",
           "initialize_distributed", "local_copy", "replicate"]



def _managed_launch(env) -> bool:
  """True under a multi-process Slurm / Open MPI / multi-host TPU launch,
  which ``jax.distributed.initialize()`` configures on its own."""
  sizes = (env.get("SLURM_NTASKS"), env.get("OMPI_COMM_WORLD_SIZE"))
  if any(s and s.isdigit() and int(s) > 1 for s in sizes):
    return True
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ``("data",)`` mesh over ``devices`` (default: all devices of all
  processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ("data",))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh, *, accum_steps: int = 1) -> None:
  """Checks that a global batch splits evenly over devices and micro-batches.

  Args:
    batch_size: global batch (images per optimiser step, all hosts).
    mesh: the data mesh.
    accum_steps: micro-batches per step (each must still cover every device).

  Raises:
    ValueError: naming ``batch_size`` when it is not a multiple of
      ``accum_steps`` x the number of devices.
  """
  n_dev = mesh.devices.size
  n_proc = jax.process_count()
  if accum_steps < 1:
    raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
  if batch_size % (n_dev * accum_steps):
    raise ValueError(
        f"batch_size={batch_size} must be a multiple of accum_steps "
        f"({accum_steps}) x devices ({n_dev} = {n_proc} process(es) x "
        f"{len(mesh.local_devices)} local device(s)); e.g. use "
        f"{-(-batch_size // (n_dev * accum_steps)) * n_dev * accum_steps}")


def local_batch_size(batch_size: int, process_count: int) -> int:
  """Images each process loads per step (``batch_size / process_count``).

  Raises:
    ValueError: when ``batch_size`` is not a multiple of ``process_count``.
  """
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} is not a multiple of the "
                     f"{process_count} processes")
  return batch_size // process_count


def process_batch_index(step: int, process_index: int,
                        process_count: int) -> int:
  """Index, in a dataset batched with the *local* batch size, of the rows
  this process contributes to global batch ``step``.

  With one unbatched element stream, global batch ``step`` is elements
  ``[step * B, (step + 1) * B)``; process ``p`` of ``P`` takes the ``p``-th
  consecutive block of ``B / P`` of them, which is local batch
  ``step * P + p``. Every process reads disjoint images, and together they
  see exactly what one process with the global batch would.
  """
  return step * process_count + process_index


def repeat_to_batch(indices, batch_size: int) -> list:
  """``indices`` repeated until they fill one global batch.

  ``pipeline.train_dataset`` repeats a training set smaller than its batch
  size before shuffling, so its element stream would depend on the batch
  size; repeating the indices up to the *global* batch first makes the
  stream the same for every per-process batch size (and unchanged for one
  process).
  """
  indices = list(indices)
  if not indices:
    raise ValueError("indices is empty")
  return indices * -(-batch_size // len(indices))


def shard_batch(batch: dict, mesh) -> dict:
  """Numeric arrays of this process's batch -> global arrays sharded on
  their leading axis (``jax.make_array_from_process_local_data``); string
  fields are dropped (they stay on the host).

  Raises:
    ValueError: if the local batch size is not divisible by the number of
      local devices.
  """
  sharding = data_sharded(mesh)
  n_local = len(mesh.local_devices)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "OUS":
      continue
    if value.shape[0] % n_local:
      raise ValueError(f"batch field {key!r}: local batch {value.shape[0]} is "
                       f"not divisible by {n_local} local devices")
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def replicate(tree, mesh):
  """Host values identical on every process -> arrays replicated on
  ``mesh`` (multi-process safe, unlike ``jax.device_put`` to devices of
  other hosts)."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          sharding, np.asarray(jax.device_get(x))), tree)


def local_copy(tree, device=None):
  """This process's copy of a replicated pytree, on one local device (for
  host-side evaluation; ``np.asarray`` of a multi-process array would need
  the other hosts)."""
  device = device or jax.local_devices()[0]

  def one(x):
    if isinstance(x, jax.Array):
      return jax.device_put(x.addressable_data(0), device)
    return x

  return jax.tree.map(one, tree)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           cpu_collectives: str = "gloo") -> bool:
  """Joins a multi-process JAX run; must come before any JAX computation.

  Resolution order: the arguments; else the environment variables
  ``JAX_COORDINATOR_ADDRESS`` ("host:port"), ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``; else, under a managed launcher (Slurm, Open MPI,
  Cloud TPU), JAX's own auto-detection; else nothing happens (one process).

  Args:
    coordinator_address: "host:port" of process 0.
    num_processes: number of processes.
    process_id: this process's index in ``[0, num_processes)``.
    cpu_collectives: CPU cross-process collectives ("gloo"; used only by
      CPU devices, harmless on accelerators). This sets the process-wide
      ``jax_cpu_collectives_implementation`` option.

  Returns:
    True when a multi-process run was initialised.

  Raises:
    ValueError: when only some of the three settings are given.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get(
      "JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  given = [v is not None for v in (coordinator_address, num_processes,
                                   process_id)]
  managed = _managed_launch(env)
  if not any(given) and not managed:
    return False
  if any(given) and not all(given) and not managed:
    raise ValueError(
        "multi-process run: give all of coordinator_address, num_processes "
        f"and process_id (got {coordinator_address!r}, {num_processes!r}, "
        f"{process_id!r})")
  if num_processes == 1:
    return False
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
  return True
