"""Inverse Cloze Task warm start of the retriever (config.task == "ict").

ORQA's recipe: the query is a random sentence of a block, the block (title
kept) has that sentence removed with probability 0.9, and the loss is a
softmax over every block of the global batch. Under jit over the data mesh the
[B, B] score matrix needs all blocks of all devices; XLA inserts the gather.

The run exports its retriever to <workdir>/exports/<step>/ at the end (and
every index.refresh_every steps); that export bootstraps REALM's first index
(`model.retriever_init=<this workdir>` in the pretraining config).
"""
import functools

import jax
import jax.numpy as jnp
import optax
from absl import logging

from realm_jax import checkpoint as ckpt_lib
from realm_jax.data import pipeline
from realm_jax.models.retriever import Retriever, embed_queries
from realm_jax.train import loop
from realm_jax.train import metrics as metrics_lib
from realm_jax.train import partition

DEVICE_KEYS = ("query_ids", "query_mask", "block_ids", "block_mask",
               "block_segment_ids")


def ict_loss(params, batch, rng, cfg, deterministic=False):
  """In-batch softmax: query i's positive is block i. Returns (loss, aux)."""
  retriever = Retriever(cfg)
  q_rng, d_rng = jax.random.split(rng)
  q = embed_queries(params["retriever"], batch["query_ids"],
                    batch["query_mask"], cfg, deterministic, q_rng)
  d = retriever.apply({"params": params["retriever"]}, batch["block_ids"],
                      batch["block_segment_ids"], batch["block_mask"],
                      deterministic, method=Retriever.embed_doc,
                      rngs={"dropout": d_rng})
  logits = jnp.einsum("qp,dp->qd", q, d)
  labels = jnp.arange(logits.shape[0])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  return loss, {"accuracy": accuracy}


def train_step(state, batch, cfg):
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, aux), grads = jax.value_and_grad(ict_loss, has_aux=True)(
      state.params, batch, rng, cfg)
  new_state = state.apply_gradients(grads)
  # The norm of the params the step returns (and a checkpoint saves): a NaN
  # in them stops the run before the save (checkpoint.check_finite).
  metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                 param_norm=optax.global_norm(new_state.params))
  return new_state, metrics


def run(config):
  c = config
  r = loop.setup(c, with_reader=False)
  tok, store, cfg, mesh, checkpointer, state = r[:6]
  start = int(state.step)
  dataset = pipeline.ict_dataset(
      store, tok, c.seed, c.train.batch_size // jax.process_count(),
      query_len=c.ict.query_len, remove_prob=c.ict.remove_prob)
  data_iter = iter(dataset)
  if r.data_state is not None:
    data_iter.set_state(r.data_state)
  repl, data = partition.replicated(mesh), partition.data_sharded(mesh)
  step_fn = jax.jit(functools.partial(train_step, cfg=cfg),
                    in_shardings=(repl, data), out_shardings=(repl, repl),
                    donate_argnums=0)
  writer = metrics_lib.MetricsWriter(c.workdir, "ict",
                                     enabled=jax.process_index() == 0)
  clock = loop.StepClock()
  logging.info("ICT: %d blocks, start step %d of %d", store.num_blocks, start,
               c.train.num_steps)
  for step in range(start, c.train.num_steps):
    batch = next(data_iter)
    batch = partition.shard_batch({k: batch[k] for k in DEVICE_KEYS}, mesh)
    state, metrics = step_fn(state, batch)
    clock.add(0.0, c.train.batch_size)
    done = step + 1
    if done % c.train.log_every == 0 or done == c.train.num_steps:
      values = loop.fetch(metrics)
      ckpt_lib.check_finite(done, values)
      values.update(clock.summary())
      writer.write(done, values)
      logging.info("ICT step %d loss %.4f accuracy %.3f", done, values["loss"],
                   values["accuracy"])
    export = done % c.index.refresh_every == 0 or done == c.train.num_steps
    save = done % c.train.checkpoint_every == 0 or done == c.train.num_steps
    if export or save:   # never export or save non-finite params
      ckpt_lib.check_finite(done, loop.fetch(
          {k: metrics[k] for k in ckpt_lib.FINITE_KEYS}))
    if export:
      loop.export_retriever(c, cfg, state, done)
    if save:
      checkpointer.save(done, loop.state_tree(state),
                        data_state=data_iter.get_state())
  writer.close()
  checkpointer.close()
  return state
