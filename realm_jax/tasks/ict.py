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
from absl import logging

from realm_jax.data import pipeline
from realm_jax.train import retriever_exports
from realm_jax.train import ict_step
from realm_jax.train import loop
from realm_jax.train import prepare


def run(config):
  r = prepare.prepare(config, with_reader=False)
  dataset = pipeline.ict_dataset(
      r.store, r.tokenizer, config.seed,
      config.train.batch_size // jax.process_count(),
      query_len=config.ict.query_len, remove_prob=config.ict.remove_prob)
  data_iter = iter(dataset)
  if r.data_state is not None:
    data_iter.set_state(r.data_state)

  def next_batch(state, step):
    del state, step
    batch = next(data_iter)
    return loop.Batch({k: batch[k] for k in ict_step.DEVICE_KEYS},
                      data_state=data_iter.get_state())

  def describe(step, values):
    return (f"ICT step {step} loss {values['loss']:.4f} "
            f"accuracy {values['accuracy']:.3f}")

  export = loop.Hook(config.index.refresh_every, lambda step, state, _:
                     retriever_exports.export_retriever(config, r.cfg, state, step))
  logging.info("ICT: %d blocks, start step %d of %d", r.store.num_blocks,
               int(r.state["step"]), config.train.num_steps)
  try:
    return loop.train(
        r.state, functools.partial(ict_step.train_step, cfg=r.cfg, tx=r.tx), next_batch,
        schedule=loop.Schedule.of(config.train),
        mesh=r.mesh, checkpointer=r.checkpointer, workdir=config.workdir,
        name="ict", describe=describe, hooks=[export])
  finally:
    r.checkpointer.close()
