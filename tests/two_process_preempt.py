"""One of two CPU processes (jax.distributed over gloo) training together
with the shared loop; process 1 stops itself (SIGSTOP) after step 3 so the
test can send it SIGTERM there. Prints, as JSON, the step the loop stopped
after and the checkpoints saved.

Usage: python two_process_preempt.py PROCESS_ID PORT WORKDIR
(run by tests/test_loop_preemption.py).
"""
import json
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)

from realm_jax import checkpoint as ckpt_lib  # noqa: E402
from realm_jax.train import loop  # noqa: E402
from realm_jax.train import partition  # noqa: E402
from realm_jax.train import state as state_lib  # noqa: E402

NUM_STEPS = 100_000   # never reached: the run is stopped long before
mesh = partition.make_mesh()
tx = optax.sgd(1e-3)
state = jax.device_put(state_lib.create({"w": jnp.zeros(4)}, tx,
                                        jax.random.PRNGKey(0)),
                       partition.replicated(mesh))


def step_fn(state, batch):
  def loss_fn(params):    # the batch is split over both processes
    return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
  loss, grads = jax.value_and_grad(loss_fn)(state["params"])
  new_state = state_lib.apply_gradients(state, grads, tx)
  return new_state, {"loss": loss,
                     "param_norm": optax.global_norm(new_state["params"])}


def next_batch(state, step):
  rng = np.random.default_rng(step * 2 + pid)
  x = rng.normal(size=(2, 4)).astype(np.float32)   # this process's half
  return loop.Batch({"x": x, "y": x.sum(axis=1)}, data_state={"step": step})


def stop_once(state, done=[0]):   # pylint: disable=dangerous-default-value
  done[0] += 1
  if pid == 1 and done[0] == 3:
    os.kill(os.getpid(), signal.SIGSTOP)


checkpointer = ckpt_lib.Checkpointer(workdir, keep=2)
try:
  loop.train(state, step_fn, next_batch,
             schedule=loop.Schedule(NUM_STEPS, 4, 1_000_000, 1_000_000),
             mesh=mesh, checkpointer=checkpointer, workdir=workdir,
             name="preempt", describe=lambda step, v: f"step {step}",
             on_step=[stop_once])
  stopped = None
except loop.Stopped as e:
  stopped = e.step
checkpointer.close()
print(json.dumps({"stopped": stopped,
                  "checkpoints": sorted(int(n) for n in os.listdir(
                      os.path.join(workdir, "checkpoints")) if n.isdigit())}))
