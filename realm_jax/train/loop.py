"""The training loop every task runs: ICT, REALM pretraining and fine-tuning.

A trainer brings its step function (loss, gradients, optimizer update; the
optimizer closed over), a batch source and its hooks; `train` does the rest:

  for each step: get the batch, place it on the mesh, run the jitted step,
  run the `on_step` callbacks; at the log cadence fetch the metrics, check
  the loss finite, write and log them; at the checkpoint cadence, and
  whenever a hook writes the params out (the retriever exports), check the
  loss and the new params finite first, then run the hooks and save.

The host syncs on the device only at those cadences, so steps in between
are dispatched back to back.
"""
import contextlib
import functools
import signal
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from realm_jax import checkpoint as ckpt_lib
from realm_jax.train import partition
from realm_jax.train import state as state_lib
from realm_jax.weights import model_init


def create_or_restore(checkpointer: ckpt_lib.Checkpointer, init_params,
                      tx: optax.GradientTransformation, seed: int, mesh):
  """Returns (state, data_state, meta): resumed from the latest checkpoint if
  any (a restarted job simply continues), else freshly initialised.

  `init_params(key)` builds the params; on a resume it is only traced (for
  the shapes) and the values come from the checkpoint.
  """
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), 2)
  latest = checkpointer.latest_step()
  if latest is None:
    state = state_lib.create(init_params(model_init.params_key(seed)), tx, rng)
    data_state, meta = None, {}
  else:
    abstract_params = jax.eval_shape(init_params, model_init.params_key(seed))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_params)
    template = state_lib.create(zeros, tx, rng)
    state, data_state, meta = checkpointer.restore(template, latest)
    logging.info("resuming from step %d", int(state["step"]))
  return jax.device_put(state, partition.replicated(mesh)), data_state, meta


class Stopped(Exception):
  """SIGTERM (a preemptible VM's or Kubernetes' stop): the step in flight
  finished and a checkpoint of it was saved; rerunning resumes there."""

  def __init__(self, step: int):
    super().__init__(f"stopped by SIGTERM after step {step}; its checkpoint "
                     "is saved: run the same command again to resume")
    self.step = step


def _preemption_service() -> bool:
  """Several processes under jax.distributed with JAX's preemption service:
  SIGTERM on any host reaches all of them, and they agree on one step."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return (jax.process_count() > 1
          and distributed.global_state.preemption_sync_manager is not None)


@contextlib.contextmanager
def _preempted():
  """Yields `preempted(step) -> bool`: stop and save after this step.

  One process: SIGTERM sets a flag (the default action would kill the
  process mid-step, or mid-save, and lose every step since the last
  checkpoint). Several: JAX's preemption service, which installs its own
  SIGTERM handler (a Python one would replace it) and makes every host stop
  at the same step; a host stopping alone would leave the others waiting
  in the step's collectives. Signal handlers belong to the main thread:
  elsewhere (a test running the loop in a thread) nothing is installed.
  """
  if _preemption_service():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    yield multihost_utils.reached_preemption_sync_point
    return
  flag = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield lambda step: flag.is_set()
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
  try:
    yield lambda step: flag.is_set()
  finally:
    signal.signal(signal.SIGTERM, previous)


def jit_step(step_fn: Callable, mesh):
  """`step_fn(state, batch) -> (state, metrics)` jitted over the data mesh:
  state and metrics replicated, the batch split along its leading axis, and
  the state's buffers donated (the old state is dead once the new exists).

  Not cached across runs: the optimizer is closed over, not a hashable
  argument, so a second run in one process (the demo, tests) compiles its
  step again (seconds for the models a process trains twice).
  """
  repl, data = partition.replicated(mesh), partition.data_sharded(mesh)
  return jax.jit(step_fn, in_shardings=(repl, data),
                 out_shardings=(repl, repl), donate_argnums=0)


class Batch(NamedTuple):
  """What a batch source hands the loop for one step."""
  arrays: dict              # host arrays, exactly the step function's batch
  data_state: Any = None    # the data iterator state a checkpoint of this
                            # step resumes at (None: nothing to save)
  meta: Optional[dict] = None   # JSON saved with a checkpoint of this step
  logged: Optional[dict] = None  # host values written with its metrics


class Hook(NamedTuple):
  """`fn(step, state, batch)` after every `every`-th step and, if `at_end`,
  after the last one. A hook writes the params out (a retriever export), so
  the loop checks the loss and the new params finite before it runs."""
  every: int
  fn: Callable[[int, dict, Batch], None]
  at_end: bool = True

  def due(self, done: int, last: bool) -> bool:
    return done % self.every == 0 or (last and self.at_end)


class Schedule(NamedTuple):
  """The step counts a loop runs by (from the task's config section)."""
  num_steps: int
  batch_size: int          # global; examples per step for the throughput
  log_every: int
  checkpoint_every: int
  max_param_norm: float = 0.0   # 0: no bound (checkpoint.check_finite)

  @classmethod
  def of(cls, train_config, num_steps: int | None = None,
         batch_size: int | None = None) -> "Schedule":
    """config.train's schedule; fine-tuning gives its own step count and
    batch size (finetune.*) and shares the cadences and the norm bound."""
    t = train_config
    return cls(t.num_steps if num_steps is None else num_steps,
               t.batch_size if batch_size is None else batch_size,
               t.log_every, t.checkpoint_every, t.max_param_norm)


def train(state: dict, step_fn: Callable, next_batch: Callable, *,
          schedule: Schedule, mesh, checkpointer: ckpt_lib.Checkpointer,
          workdir: str, name: str, describe: Callable[[int, dict], str],
          hooks: Sequence[Hook] = (),
          on_step: Sequence[Callable[[dict], None]] = (),
          write_every_step: bool = False) -> dict:
  """Runs steps state["step"] .. schedule.num_steps; returns the final state.

  step_fn: (state, batch) -> (state, metrics), not yet jitted; its metrics
    hold "loss" and "param_norm" (checkpoint.FINITE_KEYS).
  next_batch: (state, step) -> Batch for 0-based `step`, called before the
    step runs, so a source may read the params the step is about to donate.
  describe: (step, metrics) -> the console log line.
  on_step: callbacks given the new state after every step; they must not
    wait on the device (e.g. they dispatch a copy of some params).
  write_every_step: write every step's metrics row, not only the logged
    steps' (pretraining, whose rows carry each step's index version).
  Checkpoints are saved every schedule.checkpoint_every steps and after the
  last, with the batch's data_state and meta.
  """
  start = int(state["step"])
  if start >= schedule.num_steps:
    return state      # a finished run, restarted: nothing to do
  step_fn = jit_step(step_fn, mesh)
  # Imported here: tensorboardX pulls in torch (~4 s), which `eval` and
  # `answer` (importers of the trainers) do not need.
  from realm_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  writer = metrics_lib.MetricsWriter(workdir, name,
                                     enabled=jax.process_index() == 0)
  save = Hook(schedule.checkpoint_every, functools.partial(_save, checkpointer))
  log = _Log(writer, describe, write_every_step)
  with contextlib.ExitStack() as stack:
    stack.callback(writer.close)
    preempted = stack.enter_context(_preempted())
    for step in range(start, schedule.num_steps):
      wait_start = time.perf_counter()
      batch = next_batch(state, step)
      log.clock.add(time.perf_counter() - wait_start, schedule.batch_size)
      state, metrics = step_fn(state, partition.shard_batch(batch.arrays, mesh))
      for callback in on_step:
        callback(state)
      done = step + 1
      last = done == schedule.num_steps
      log.add(done, metrics, batch.logged)
      # Called at every step: the preemption service counts on it.
      stop = preempted(done) and not last
      if done % schedule.log_every == 0 or last or stop:
        log.flush()
      due = [h for h in (*hooks, save) if h.due(done, last)]
      if stop and save not in due:
        due.append(save)   # other hooks wait for their step, as on a resume
      if due:   # never export or save non-finite params
        ckpt_lib.check_finite(done, fetch(
            {k: metrics[k] for k in ckpt_lib.FINITE_KEYS}),
            schedule.max_param_norm)
      for hook in due:
        hook.fn(done, state, batch)
      if stop:
        checkpointer.wait()
        logging.warning("SIGTERM: saved the checkpoint of step %d; stopping",
                        done)
        raise Stopped(done)
  checkpointer.wait()
  return state


def _save(checkpointer, step: int, state: dict, batch: Batch):
  checkpointer.save(step, state, data_state=batch.data_state, meta=batch.meta)


class _Log:
  """Metrics of the steps since the last log, written at the next one."""

  def __init__(self, writer, describe, write_every_step: bool):
    self.writer, self.describe = writer, describe
    self.write_every_step = write_every_step
    self.clock = StepClock()
    self.pending = []   # (step, device metrics, host values)

  def add(self, step: int, metrics: dict, logged: Optional[dict]):
    # Without write_every_step only the logged step's row is written: keep
    # just the newest (older metrics are freed instead of fetched).
    if not self.write_every_step:
      self.pending = []
    self.pending.append((step, metrics, logged or {}))

  def flush(self):
    """Fetches, checks finite, writes; the newest row also gets the timing."""
    for i, (step, metrics, logged) in enumerate(self.pending):
      values = fetch(metrics)
      ckpt_lib.check_finite(step, values)
      values.update(logged)
      if i == len(self.pending) - 1:
        values.update(self.clock.summary())
      self.writer.write(step, values)
    logging.info("%s", self.describe(step, values))
    self.pending = []


class StepClock:
  """Splits wall time per step into host wait (in the batch source) and the
  rest (the device, and the host work that overlaps it)."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.start = time.perf_counter()
    self.wait = 0.0
    self.steps = 0
    self.examples = 0

  def add(self, wait: float, examples: int):
    self.wait += wait
    self.steps += 1
    self.examples += examples

  def summary(self) -> dict:
    wall = time.perf_counter() - self.start
    steps = max(self.steps, 1)
    out = {"time/step_s": wall / steps, "time/host_wait_s": self.wait / steps,
           "time/device_s": (wall - self.wait) / steps,
           "time/wait_fraction": self.wait / max(wall, 1e-9),
           "examples_per_s": self.examples / max(wall, 1e-9)}
    self.reset()
    return out


def fetch(metrics: dict) -> dict:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
