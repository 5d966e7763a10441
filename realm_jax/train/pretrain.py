"""REALM pretraining (config.task == "pretrain").

One step, as in the paper and the original code:
  - a prefetch thread embeds the masked queries with stale retriever params,
    searches the index in service for k-1 blocks (never the query's own
    block), puts the null document first and builds the reader inputs;
  - `train_step` (pure, jitted over the data-parallel mesh) re-embeds the
    query and the k candidates with the current params, so the MLM signal
    reaches the retriever through log p(z|x), and minimises the marginal MLM
    loss (per token by default, per sequence as the paper's equation);
  - every `index.refresh_every` steps the trainer exports the retriever; a
    separate embedding job (spawned here locally, or started by launch/ on
    TPU) re-embeds the corpus and commits a new index, which the IndexWatcher
    hot-swaps without the trainer ever waiting.

Deterministic refresh (`index.deterministic=True`) removes the wall clock:
step t uses exactly index version v(t) = R * floor((t - D) / R) (R =
refresh_every, D = refresh_delay, at least 0), waiting for it if needed, and
embeds queries with that version's export. Runs are then bitwise repeatable
on CPU, including across kill -9 and resume.
"""
import functools
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax
from absl import logging

from realm_jax import config as config_lib
from realm_jax.data import catalog
from realm_jax.data import pipeline
from realm_jax.index import export as export_lib
from realm_jax.index import refresh
from realm_jax.index import searchers
from realm_jax.index import store as index_store
from realm_jax.models import losses
from realm_jax.models.reader import MLMEncoder
from realm_jax.models.retriever import Retriever, embed_queries, relevance_scores
from realm_jax.retrieval import candidates
from realm_jax.retrieval import model_init
from realm_jax.retrieval.query_embedder import QueryEmbedder
from realm_jax.train import loop
from realm_jax.train import prefetch
from realm_jax.train import setup
from realm_jax.train import state as state_lib

DEVICE_KEYS = ("query_ids", "query_mask", "mlm_positions", "mlm_labels",
               "mlm_weights", "cand_ids", "cand_segments", "cand_mask",
               "reader_ids", "reader_segments", "reader_mask")


# ----------------------------------------------------------------- the step

def pretrain_loss(params, batch, rng, cfg, per_token=True, deterministic=False):
  """The marginal MLM loss of one batch; (loss, aux metrics).

  batch: query_ids/query_mask [B, Lq]; cand_* [B, K, Ld] (retriever inputs,
  null document first); reader_* [B, K, Lr]; mlm_* [B, M].
  """
  retriever, reader = Retriever(cfg), MLMEncoder(cfg)
  q_rng, d_rng, r_rng = jax.random.split(rng, 3)
  q_emb = embed_queries(params["retriever"], batch["query_ids"],
                        batch["query_mask"], cfg, deterministic, q_rng)
  d_emb = retriever.apply(
      {"params": params["retriever"]}, batch["cand_ids"], batch["cand_segments"], batch["cand_mask"],
      deterministic, method=Retriever.embed_doc, rngs={"dropout": d_rng})
  log_pz = losses.candidate_log_probs(relevance_scores(q_emb, d_emb))
  logits = reader.apply(
      {"params": params["reader"]}, batch["reader_ids"],
      batch["reader_segments"], batch["reader_mask"], batch["mlm_positions"],
      deterministic, rngs={"dropout": r_rng})
  return losses.marginal_mlm_loss(log_pz, logits, batch["mlm_labels"],
                                  batch["mlm_weights"], per_token=per_token)


def train_step(state: dict, batch, cfg, tx, per_token=True,
               retriever_frozen_steps=0):
  """One optimizer step. For the first `retriever_frozen_steps` steps the
  retriever is held fixed (no gradient, no update) while the reader learns."""
  (loss, aux), grads = jax.value_and_grad(pretrain_loss, has_aux=True)(
      state["params"], batch, state_lib.step_rng(state), cfg, per_token)
  if retriever_frozen_steps:
    frozen = state["step"] < retriever_frozen_steps
    grads = dict(grads, retriever=jax.tree.map(
        lambda g: jnp.where(frozen, jnp.zeros_like(g), g), grads["retriever"]))
  new_state = state_lib.apply_gradients(state, grads, tx)
  if retriever_frozen_steps:  # weight decay would still move it: restore it
    new_state = dict(new_state, params=dict(
        new_state["params"], retriever=jax.tree.map(
            lambda old, new: jnp.where(frozen, old, new),
            state["params"]["retriever"], new_state["params"]["retriever"])))
  metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                 param_norm=optax.global_norm(new_state["params"]),
                 retriever_grad_norm=optax.global_norm(grads["retriever"]))
  return new_state, metrics


# ------------------------------------------------------- the embedding job

def spawn_embed_job(config, store_path: str, deterministic: bool):
  """Starts the embedding job (task=embed) as a child process.

  The child runs with exactly this trainer's config: saved as JSON in the
  workdir (realm_jax/config.py: save_config) and loaded back by the child's
  --config, whatever built it (a file and overrides, or code). Only what is
  the job's alone is set on its command line: the task, and this process as
  the parent to watch. `deterministic` is config.index.deterministic, which
  the job reads itself; `store_path` is the block store this trainer opened,
  passed on so that both surely read the same one.
  """
  del deterministic
  config_arg = config_lib.save_config(
      config, os.path.join(config.workdir, "embed_job_config.json"))
  cmd = [sys.executable, "-m", "realm_jax.main", f"--config={config_arg}",
         "--config.task=embed", f"--config.data.block_store={store_path}",
         f"--config.index.embed_parent_pid={os.getpid()}"]
  log = open(os.path.join(config.workdir, "embed_job.log"), "ab")
  logging.info("starting the embedding job: %s", " ".join(cmd))
  return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def version_for_step(step: int, every: int, delay: int) -> int:
  """Deterministic mode: the index version step `step` trains against."""
  return max(0, (step - delay) // every * every)


class BatchMaker:
  """The prefetch thread's work: one query batch -> one full train batch."""

  def __init__(self, config, cfg, store, tokenizer, data_iter, watcher,
               start_step):
    self.config, self.store, self.tok = config, store, tokenizer
    self.data_iter, self.watcher = data_iter, watcher
    self.step = start_step
    self.embedder = QueryEmbedder(cfg, config.workdir)

  def __call__(self) -> dict:
    c = self.config
    if self.step >= c.train.num_steps:
      raise StopIteration   # nothing past the last step: don't wait on an index
    batch = next(self.data_iter)
    data_state = self.data_iter.get_state()
    if c.index.deterministic:
      current = self.watcher.wait_for(version_for_step(
          self.step, c.index.refresh_every, c.index.refresh_delay))
    else:
      current = self.watcher.current
    if c.index.query_params == "latest" and self.embedder.latest is not None:
      q_params = self.embedder.latest
    else:
      q_params = self.embedder.params_of_export(current.version)
    q_emb = self.embedder(q_params, batch["query_ids"], batch["query_mask"])
    source_rows = self.store.rows_for_uids(list(batch["source_uid"]))
    rows, _ = candidates.retrieve_candidates(
        current.searcher, q_emb, source_rows, c.train.num_candidates - 1)
    cand = candidates.candidate_doc_inputs(self.store, rows, self.tok)
    reader = candidates.reader_inputs(
        batch["query_ids"], batch["query_mask"], self.store, rows,
        c.data.reader_len, self.tok.sep_id, self.tok.pad_id)
    out = {k: batch[k] for k in ("query_ids", "query_mask", "mlm_positions",
                                 "mlm_labels", "mlm_weights")}
    out.update(cand_ids=cand[0], cand_segments=cand[1], cand_mask=cand[2],
               reader_ids=reader[0], reader_segments=reader[1],
               reader_mask=reader[2])
    info = {"step": self.step, "data_state": data_state,
            "index_version": current.version, "rows": rows}
    self.step += 1
    return {"arrays": out, "info": info}


# ----------------------------------------------------------------- the run

def _make_searcher_fn(config):
  return functools.partial(searchers.make_searcher,
                           **searchers.searcher_options(config.index))


def run(config):
  c = config
  if c.index.deterministic and c.index.query_params != "index":
    raise ValueError("index.deterministic needs index.query_params=index")
  r = setup.prepare(c, with_reader=True)
  tok, store, cfg, state = r.tokenizer, r.store, r.cfg, r.state
  records = catalog.query_records(c, store, split="train")
  start = int(state["step"])
  logging.info("REALM pretraining: %d params, %d blocks, %d query records, "
               "start step %d", model_init.param_count(state["params"]),
               store.num_blocks, len(records), start)

  index_dir = os.path.join(c.workdir, "index")
  if not export_lib.list_exports(c.workdir) or start % c.index.refresh_every == 0:
    setup.export_retriever(c, cfg, state, start, keep=c.index.keep + 2)
  job = (spawn_embed_job(c, store.path, c.index.deterministic)
         if c.index.spawn_embed_job and jax.process_index() == 0 else None)
  watcher = refresh.IndexWatcher(
      index_dir, store.fingerprint, _make_searcher_fn(c),
      poll_interval=None if c.index.deterministic else 0.5)
  try:
    if not c.index.deterministic:
      first = r.meta.get("index_version")
      logging.info("waiting for the first index in %s", index_dir)
      watcher.wait_for(first if first is not None and first in
                       index_store.list_versions(index_dir) else
                       _first_version(index_dir, job))
    dataset = pipeline.pretraining_dataset(
        records, tok, c.seed, c.train.batch_size // jax.process_count(),
        mask_fn=c.data.masking, query_len=c.data.query_len,
        max_masks=c.data.max_masks)
    data_iter = iter(dataset)
    if r.data_state is not None:
      data_iter.set_state(r.data_state)
    maker = BatchMaker(c, cfg, store, tok, data_iter, watcher, start)
    if c.index.query_params == "latest":
      maker.embedder.latest = jax.tree.map(jnp.copy, state["params"]["retriever"])
    feeder = prefetch.Prefetcher(maker, depth=c.train.prefetch)
    exporter = setup.BackgroundExporter(c, cfg, keep=c.index.keep + 2)
    try:
      _train(c, r, maker, feeder, exporter)
    finally:
      feeder.close()
      exporter.close()
  finally:
    watcher.close()
    r.checkpointer.close()
    if job is not None:
      job.terminate()
      job.wait(timeout=60)


def _first_version(index_dir, job, poll=0.5):
  """The newest committed index, waiting until the embedding job makes one."""
  while True:
    versions = index_store.list_versions(index_dir)
    if versions:
      return versions[-1]
    if job is not None and job.poll() is not None:
      raise RuntimeError(f"the embedding job exited with code {job.returncode} "
                         "before building the first index; see embed_job.log")
    time.sleep(poll)


def _train(c, r, maker, feeder, exporter):
  """The shared loop, fed by the prefetch thread; exports the retriever every
  index.refresh_every steps for the embedding job."""
  def next_batch(state, step):
    del state   # the prefetch thread built the batch with stale params
    item, _ = feeder.get()
    info = item["info"]
    if info["step"] != step:
      raise RuntimeError(f"batch for step {info['step']} arrived at step {step}")
    version = info["index_version"]
    return loop.Batch(item["arrays"], data_state=info["data_state"],
                      meta={"index_version": version},
                      logged={"index_version": version,
                              "index_staleness": step - version})

  def describe(step, values):
    return (f"step {step} loss {values['loss']:.4f} mlm_acc "
            f"{values['mlm_accuracy']:.3f} p_null {values['p_null']:.3f} index "
            f"v{values['index_version']} (stale {values['index_staleness']}) "
            f"wait {100 * values.get('time/wait_fraction', 0):.0f}%")

  def publish_latest(state):
    # index.query_params=latest: the prefetch thread embeds queries with the
    # newest retriever (a copy: the next step donates the state's buffers).
    maker.embedder.latest = jax.tree.map(jnp.copy, state["params"]["retriever"])

  step_fn = functools.partial(
      train_step, cfg=r.cfg, tx=r.tx, per_token=c.train.loss == "per_token",
      retriever_frozen_steps=c.train.retriever_frozen_steps)
  export = loop.Hook(c.index.refresh_every, lambda step, state, _:
                     exporter.submit(state, step), at_end=False)
  return loop.train(
      r.state, step_fn, next_batch,
      schedule=loop.Schedule(c.train.num_steps, c.train.batch_size,
                             c.train.log_every, c.train.checkpoint_every),
      mesh=r.mesh, checkpointer=r.checkpointer, workdir=c.workdir,
      name="pretrain", describe=describe, hooks=[export],
      on_step=[publish_latest] if c.index.query_params == "latest" else [],
      write_every_step=True)
