"""Data parallelism with ``jax.jit`` over a device mesh.

One code path for one CPU and many accelerators: the batch is sharded over
the ``"data"`` axis of a mesh of every device (all hosts), the state is
replicated, and XLA averages gradients through the shardings (no ``pmap``,
which JAX keeps in maintenance mode).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

__all__ = ["make_mesh", "replicated", "data_sharded", "shard_batch"]


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ``("data",)`` mesh over ``devices`` (default: all devices)."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ("data",))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


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
