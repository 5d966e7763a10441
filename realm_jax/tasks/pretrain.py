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

import jax
import jax.numpy as jnp
from absl import logging

from realm_jax import workdir as workdir_lib
from realm_jax.data import catalog
from realm_jax.data import pipeline
from realm_jax.index import export as export_lib
from realm_jax.index import query_embedder
from realm_jax.index import refresh
from realm_jax.index import searchers
from realm_jax.index import store as index_store
from realm_jax.train import embed_job
from realm_jax.train import retriever_exports
from realm_jax.train import head_warmup
from realm_jax.train import heldout
from realm_jax.train import loop
from realm_jax.train import partition
from realm_jax.train import prefetch
from realm_jax.train import prepare
from realm_jax.train import pretrain_step
from realm_jax.weights import model_init


def _make_searcher_fn(config):
  return functools.partial(searchers.make_searcher,
                           **searchers.searcher_options(config.index))


def _check(config):
  """Settings that cannot work together, refused before any work."""
  p = config.pretrain
  if config.index.deterministic and config.index.query_params != "index":
    raise ValueError("index.deterministic needs index.query_params=index")
  if p.head_warmup_steps and not p.heldout_queries:
    raise ValueError("pretrain.head_warmup_steps needs held-out sentences to "
                     "stop on: set pretrain.heldout_queries and "
                     "data.heldout_fraction")
  if p.heldout_queries and not config.data.heldout_fraction:
    raise ValueError("pretrain.heldout_queries needs data.heldout_fraction > 0")
  if p.export not in ("latest", "best_heldout_utility"):
    raise ValueError(f"pretrain.export={p.export!r}: latest or "
                     "best_heldout_utility")
  if p.export == "best_heldout_utility" and not p.heldout_queries:
    raise ValueError("pretrain.export=best_heldout_utility needs held-out "
                     "sentences: set pretrain.heldout_queries")


def run(config):
  _check(config)
  index_store.check_keep(config.index.keep)
  r = prepare.prepare(config, with_reader=True)
  tok, store, cfg, state = r.tokenizer, r.store, r.cfg, r.state
  records = catalog.query_records(config, store, split="train")
  start = int(state["step"])
  logging.info("REALM pretraining: %d params, %d blocks, %d query records, "
               "start step %d", model_init.param_count(state["params"]),
               store.num_blocks, len(records), start)

  index_dir = workdir_lib.index_dir(config.workdir)
  retriever_exports.drop_after(config.workdir, index_dir, start)
  if (not export_lib.list_exports(config.workdir)
      or start % config.index.refresh_every == 0):
    retriever_exports.export_retriever(config, cfg, state, start, keep=config.index.keep + 2)
  job = (embed_job.EmbedJob(config, store.path)
         if config.index.spawn_embed_job and jax.process_index() == 0 else None)
  watcher = refresh.IndexWatcher(
      index_dir, store.fingerprint,
      refresh.searcher_opener(_make_searcher_fn(config)),
      poll_interval=None if config.index.deterministic else 0.5)
  try:
    if not config.index.deterministic:
      embed_job.serve_first_index(watcher, r.meta.get("index_version"),
                                  index_dir, job, config.workdir)
    monitor = _monitor(config, r, start, watcher, job)
    dataset = pipeline.pretraining_dataset(
        records, tok, config.seed, config.train.batch_size // jax.process_count(),
        mask_fn=config.data.masking, query_len=config.data.query_len,
        max_masks=config.data.max_masks)
    data_iter = iter(dataset)
    if r.data_state is not None:
      data_iter.set_state(r.data_state)
    maker = pretrain_step.BatchMaker(config, cfg, store, tok, data_iter, watcher, start, job)
    if config.index.query_params == "latest":
      maker.embedder.latest = jax.tree.map(jnp.copy, state["params"]["retriever"])
    feeder = prefetch.Prefetcher(maker, depth=config.train.prefetch)
    exporter = retriever_exports.BackgroundExporter(config, cfg, keep=config.index.keep + 2)
    try:
      _train(config, r, maker, feeder, exporter, job, monitor)
      top = heldout.best(heldout.read(config.workdir))
      if top is not None:
        logging.info("best held-out utility %.3f at step %d",
                     top["heldout_utility"], top["step"])
    finally:
      feeder.close()
      exporter.close()
  finally:
    watcher.close()
    r.checkpointer.close()
    if job is not None:
      job.close()


def _monitor(config, r, start, watcher, job):
  """The held-out monitor (None without pretrain.heldout_queries). A fresh
  run warms the MLM head up first (pretrain.head_warmup_steps) and measures
  its step 0."""
  p = config.pretrain
  if not p.heldout_queries:
    return None
  monitor = heldout.HeldoutMonitor(
      config, r.cfg, r.store, r.tokenizer,
      catalog.query_records(config, r.store, split="heldout"),
      query_embedder.QueryEmbedder(r.cfg, config.workdir))
  if start == 0:
    current = (watcher.current if watcher.current is not None
               else pretrain_step.wait_for_version(watcher, 0, job))
    if p.head_warmup_steps:
      params, _ = head_warmup.warm_up(
          config, r.cfg, r.state["params"],
          catalog.query_records(config, r.store, split="train"), r.store,
          r.tokenizer, monitor, current)
      r.state["params"] = jax.device_put(params, partition.replicated(r.mesh))
    monitor.record(0, r.state["params"], current)
  return monitor


def _improved(row, refresh_every, workdir) -> bool:
  """Whether `row`'s held-out utility beats every earlier refresh's (the
  steps with an export; rows are read back, so a resumed run decides the
  same). Every process must decide alike: on several hosts the workdir is
  shared storage, as on a TPU pod."""
  earlier = [r["heldout_utility"] for r in heldout.read(workdir)
             if r["step"] < row["step"] and r["step"] % refresh_every == 0]
  if not earlier or row["heldout_utility"] > max(earlier):
    logging.info("export at step %d: this step's retriever", row["step"])
    return True
  logging.info("export at step %d: the best so far again (held-out utility "
               "%.3f, now %.3f)", row["step"], max(earlier),
               row["heldout_utility"])
  return False


def _train(config, r, maker, feeder, exporter, job, monitor):
  """The shared loop, fed by the prefetch thread; exports the retriever every
  index.refresh_every steps for the embedding job, checking the job each
  time, and warns when the index in service falls too far behind."""
  alarm = embed_job.StalenessAlarm(config.index, config.workdir)
  def next_batch(state, step):
    del state   # the prefetch thread built the batch with stale params
    item, _ = feeder.get()
    info = item["info"]
    if info["step"] != step:
      raise RuntimeError(f"batch for step {info['step']} arrived at step {step}")
    version = info["index_version"]
    alarm.check(step, version)
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
      pretrain_step.train_step, cfg=r.cfg, tx=r.tx, per_token=config.train.loss == "per_token",
      retriever_frozen_steps=config.train.retriever_frozen_steps)
  refresh_every = config.index.refresh_every
  best_only = config.pretrain.export == "best_heldout_utility"
  def export_and_check(step, state, _):
    if best_only and not _improved(measure(step, state, _), refresh_every,
                                   config.workdir):
      exporter.repeat(step)   # the newest export holds the best so far
    else:
      exporter.submit(state, step)
    if job is not None:
      job.check()

  measured = {}   # step -> row: one measure a step, whichever hook asks
  def measure(step, state, _):
    if step not in measured:
      measured[step] = row = monitor.record(step, state["params"],
                                            maker.watcher.current)
      logging.info("held-out at step %d (index v%d): utility %.3f, MLM "
                   "accuracy %.3f, recall@%d %.3f", step, row["index_version"],
                   row["heldout_utility"], row["heldout_mlm_accuracy"],
                   monitor.k, row[f"heldout_recall@{monitor.k}"])
    return measured[step]

  hooks = [loop.Hook(refresh_every, export_and_check, at_end=False)]
  if monitor is not None:
    hooks.append(loop.Hook(config.pretrain.heldout_every or refresh_every,
                           measure))
  return loop.train(
      r.state, step_fn, next_batch,
      schedule=loop.Schedule.of(config.train),
      mesh=r.mesh, checkpointer=r.checkpointer, workdir=config.workdir,
      name="pretrain", describe=describe, hooks=hooks,
      on_step=[publish_latest] if config.index.query_params == "latest" else [],
      write_every_step=True)
