"""Device mesh and shardings: data parallel over every device, params replicated.

`jax.jit` over a `Mesh` with `NamedSharding` is the SPMD form of pmap: the same
step runs on 1 CPU, 8 TPU cores or a pod. Multi-host runs call
`maybe_initialize_distributed()` first.
"""
import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def maybe_initialize_distributed():
  """Joins a multi-process job when the environment describes one.

  - JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID: an explicit job, e.g. launch/gpu.sh --num_nodes N;
  - SLURM_JOB_ID or TPU_WORKER_HOSTNAMES: JAX detects the rest itself.
  With none of them set this does nothing: one process, or a Cloud TPU slice,
  whose hosts the TPU runtime joins on its own. It must run before anything
  touches a JAX backend (even jax.process_count()): initialize() refuses after.
  """
  if not any(v in os.environ for v in ("JAX_COORDINATOR_ADDRESS",
                                       "TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID")):
    return
  if getattr(jax.distributed, "is_initialized", lambda: False)():
    return
  jax.distributed.initialize(num_processes=_env_int("JAX_NUM_PROCESSES"),
                             process_id=_env_int("JAX_PROCESS_ID"))
  logging.info("process %d of %d", jax.process_index(), jax.process_count())


def _env_int(name):
  return int(os.environ[name]) if os.environ.get(name) else None


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the `data` axis."""
  return NamedSharding(mesh, P(DATA))


def shard_batch(batch, mesh: Mesh):
  """Places a host-local numpy batch on the mesh, split along the batch axis.

  On multi-host runs each process passes its own slice of the global batch.
  """
  sharding = data_sharded(mesh)

  def put(x):
    x = np.asarray(x)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, batch)


def check_batch_size(batch_size: int, mesh: Mesh):
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(
        f"train.batch_size={batch_size} must be divisible by the {n} devices "
        "of the data-parallel mesh")
