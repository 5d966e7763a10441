"""One of two CPU processes (jax.distributed over gloo) that save a checkpoint
together and restore it; prints what this process got back as JSON.

Usage: python two_process_checkpoint.py PROCESS_ID PORT WORKDIR
(run by tests/test_checkpoint.py).
"""
import json
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)

from realm_jax import checkpoint as ckpt_lib  # noqa: E402

replicated = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), P())
tree = jax.device_put({"w": np.arange(4.0, dtype=np.float32),
                       "step": np.int32(3)}, replicated)
cp = ckpt_lib.Checkpointer(workdir)
# Each process's data iterator is at its own position.
cp.save(3, tree, data_state={"next_index": 10 + pid, "name": "é" * (pid + 1)},
        meta={"index_version": 2})
cp.wait()
state, data, meta = cp.restore(tree)
cp.close()
print(json.dumps({"data": data, "meta": meta,
                  "w": np.asarray(state["w"].addressable_data(0)).tolist()}))
