"""The MLM head's warm-up before REALM pretraining (pretrain.head_warmup_*).

REALM starts its reader from BERT, whose MLM head is trained, so p(y|z,x)
differs between documents from the first step and the retriever's gradient
carries signal. MiniLM ships no MLM head: the decoder is tied to the word
embeddings, but the transform starts random, every document then predicts
the masked tokens equally badly, and the retriever's gradient is noise
(REALM section 3.4's cold start; issue: MLM accuracy 0.0 at 28 of 30 steps).

So before the first REALM step the head alone (transform, LayerNorm, output
bias) learns plain MLM with the null document, `[CLS] masked sentence [SEP]
[SEP]` as the reader sees it with the null document, the encoder frozen:
only the head's gradient is computed, a few times cheaper than a reader
step. Measured on the demo corpus (7,375 training sentences, held-out
salient spans): training the whole reader this way memorises the training
sentences (their accuracy 26% after 300 steps of 64) while held-out
accuracy falls to 0.2%; the head alone reaches about 6% held out.

Before it starts and every `head_warmup_eval_every` steps the held-out sentences are measured as
a REALM step reads them (heldout.HeldoutMonitor: the null document and the
retrieved blocks, marginalised): the warm-up stops once held-out MLM
accuracy reaches `head_warmup_min_accuracy` with held-out utility above 0,
or after `head_warmup_steps`. It is deterministic (fixed data order, no
dropout), so a run killed before its first checkpoint warms up the same
way again; every process runs it whole on the same data.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from realm_jax.batching import candidates
from realm_jax.data import pipeline
from realm_jax.models.reader import MLMEncoder

HEAD = ("mlm_transform", "mlm_norm", "mlm_bias")
PATH = "head_warmup_metrics.jsonl"


def _split(reader_params):
  head = {k: v for k, v in reader_params.items() if k in HEAD}
  return head, {k: v for k, v in reader_params.items() if k not in HEAD}


def _null_reader_inputs(batch, store, tok, reader_len):
  rows = np.full((len(batch["query_ids"]), 1), candidates.NULL_ROW, np.int64)
  return candidates.reader_inputs(batch["query_ids"], batch["query_mask"],
                                  store, rows, reader_len, tok.sep_id,
                                  tok.pad_id)


def warm_up(config, cfg, params, records, store, tok, monitor, current):
  """Returns `params` with a warmed-up MLM head, and the held-out rows
  measured on the way (also in <workdir>/head_warmup_metrics.jsonl)."""
  p = config.pretrain
  reader = MLMEncoder(cfg)
  head, frozen = _split(params["reader"])
  schedule = optax.linear_schedule(0.0, p.head_warmup_learning_rate,
                                   max(1, min(10, p.head_warmup_steps // 10)))
  tx = optax.chain(optax.clip_by_global_norm(config.train.clip_norm),
                   optax.adamw(schedule, weight_decay=config.train.weight_decay,
                               mask=lambda h: jax.tree.map(
                                   lambda x: x.ndim > 1, h)))
  opt_state = tx.init(head)

  def loss_fn(head, frozen, batch):
    logits = reader.apply(
        {"params": {**frozen, **head}}, batch["reader_ids"],
        batch["reader_segments"], batch["reader_mask"],
        batch["mlm_positions"], True)[:, 0]
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
    gold = jnp.take_along_axis(log_p, batch["mlm_labels"][..., None], -1)[..., 0]
    w = batch["mlm_weights"]
    return -jnp.sum(w * gold) / jnp.maximum(jnp.sum(w), 1.0)

  @jax.jit
  def step(head, opt_state, frozen, batch):
    loss, grads = jax.value_and_grad(loss_fn)(head, frozen, batch)
    updates, opt_state = tx.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss

  data = iter(pipeline.pretraining_dataset(
      records, tok, config.seed + 1, p.head_warmup_batch_size,
      mask_fn=config.data.masking, query_len=config.data.query_len,
      max_masks=config.data.max_masks))
  reader_len = config.data.query_len + 1
  rows = []

  def measured(done):
    with_head = dict(params, reader={**frozen, **head})
    row = dict(step=done, **monitor.measure(with_head, current))
    rows.append(row)
    logging.info("MLM head warm-up step %d: held-out accuracy %.3f, "
                 "utility %.3f, recall@%d %.3f", done,
                 row["heldout_mlm_accuracy"], row["heldout_utility"],
                 monitor.k, row[f"heldout_recall@{monitor.k}"])
    return (row["heldout_mlm_accuracy"] >= p.head_warmup_min_accuracy
            and row["heldout_utility"] > 0)

  measured(0)   # where it starts
  for done in range(1, p.head_warmup_steps + 1):
    batch = next(data)
    ids, segments, mask = _null_reader_inputs(batch, store, tok, reader_len)
    arrays = {"reader_ids": ids, "reader_segments": segments,
              "reader_mask": mask,
              **{k: batch[k] for k in ("mlm_positions", "mlm_labels",
                                       "mlm_weights")}}
    head, opt_state, loss = step(head, opt_state, frozen, arrays)
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"MLM head warm-up: loss {float(loss)} at "
                               f"step {done}")
    if (done % p.head_warmup_eval_every == 0 or done == p.head_warmup_steps):
      if measured(done):
        break
  if jax.process_index() == 0:
    with open(os.path.join(config.workdir, PATH), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return dict(params, reader={**frozen, **head}), rows
