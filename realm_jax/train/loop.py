"""Pieces every training task shares: state creation/resume and the logging cadence."""
import concurrent.futures
import os
import shutil
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from realm_jax import checkpoint as ckpt_lib
from realm_jax.data import catalog
from realm_jax.index import export as export_lib
from realm_jax.models.retriever import doc_embedder_params
from realm_jax.retrieval import model_init
from realm_jax.train import partition
from realm_jax.train import state as state_lib


def state_tree(state: state_lib.TrainState) -> dict:
  """What a checkpoint stores of the train state."""
  return {"params": state.params, "opt_state": state.opt_state,
          "step": state.step, "rng": state.rng}


def params_key(seed: int) -> jax.Array:
  """The key every run of `seed` initialises its params with (eval's
  dense_zero_shot redraws fine-tuning's initial retriever from it)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


def create_or_restore(checkpointer: ckpt_lib.Checkpointer, init_params: Callable,
                      tx, seed: int, mesh):
  """Returns (state, data_state, meta): resumed from the latest checkpoint if
  any (a restarted job simply continues), else freshly initialised."""
  rng = jax.random.PRNGKey(seed)
  latest = checkpointer.latest_step()
  if latest is None:
    params = init_params(params_key(seed))
    state = state_lib.TrainState.create(params, tx, jax.random.fold_in(rng, 2))
    data_state, meta = None, {}
  else:
    abstract_params = jax.eval_shape(init_params, params_key(seed))
    template = state_lib.TrainState.create(
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_params),
        tx, jax.random.fold_in(rng, 2))
    tree, data_state, meta = checkpointer.restore(state_tree(template), latest)
    state = template.replace(**tree)
    logging.info("resuming from step %d", int(state.step))
  return jax.device_put(state, partition.replicated(mesh)), data_state, meta


class StepClock:
  """Splits wall time per step into host wait (waiting on input) and the rest."""

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


class Run(NamedTuple):
  """What ICT and pretraining both set up before their first step."""
  tokenizer: object
  store: object
  cfg: object            # RealmConfig
  mesh: object
  checkpointer: ckpt_lib.Checkpointer
  state: state_lib.TrainState
  data_state: object     # the data iterator's saved state, or None
  meta: dict


def setup(c, with_reader: bool) -> Run:
  """Corpus, model config, mesh, optimizer and the (resumed) train state."""
  partition.maybe_initialize_distributed()
  os.makedirs(c.workdir, exist_ok=True)
  tok = catalog.tokenizer(c)
  store = catalog.block_store(c)
  cfg = model_init.realm_config(c, tok.vocab_size)
  mesh = partition.make_mesh()
  partition.check_batch_size(c.train.batch_size, mesh)
  checkpointer = ckpt_lib.Checkpointer(c.workdir, keep=c.train.keep_checkpoints)
  state, data_state, meta = create_or_restore(
      checkpointer,
      lambda rng: model_init.init_params(c, cfg, rng, with_reader=with_reader),
      state_lib.bert_adamw(c.train), c.seed, mesh)
  return Run(tok, store, cfg, mesh, checkpointer, state, data_state, meta)


def export_retriever(c, cfg, state, step: int, keep: int | None = None):
  """Writes the document embedder to <workdir>/exports/<step>/ (process 0),
  keeping the newest `keep` exports."""
  if jax.process_index() == 0:
    _write_export(c.workdir, cfg, doc_embedder_params(state.params["retriever"],
                                                      cfg), step, keep)


def _write_export(workdir, cfg, params, step, keep):
  export_lib.write_export(workdir, step, jax.device_get(params), cfg)
  if keep:
    for old in export_lib.list_exports(workdir)[:-keep]:
      shutil.rmtree(export_lib.export_path(workdir, old), ignore_errors=True)


class BackgroundExporter:
  """export_retriever off the training thread.

  The training thread only dispatches an on-device copy of the document
  embedder (the next step donates the state's buffers); a worker thread
  fetches it and writes the export (2.9 s for BERT-base on a CPU host). A
  failed write is raised at the next submit or at close.
  """

  def __init__(self, c, cfg, keep: int | None = None):
    self.c, self.cfg, self.keep = c, cfg, keep
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="export")
    self._pending = []

  def submit(self, state, step: int):
    self._raise_failures()
    # Every process copies (a collective on a multi-host mesh); process 0 writes.
    params = jax.tree.map(jnp.copy, doc_embedder_params(
        state.params["retriever"], self.cfg))
    if jax.process_index() == 0:
      self._pending.append(self._pool.submit(
          _write_export, self.c.workdir, self.cfg, params, step, self.keep))

  def _raise_failures(self):
    done = [f for f in self._pending if f.done()]
    self._pending = [f for f in self._pending if not f.done()]
    for f in done:
      f.result()

  def close(self):
    """Waits for the writes in flight; raises the first failure."""
    self._pool.shutdown(wait=True)
    self._raise_failures()
