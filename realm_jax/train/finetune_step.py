"""Open-QA fine-tuning's loss and step (the task: tasks/finetune.py).

`train_step` (pure, jitted over the data mesh, state donated) recomputes
f(x, z) = q . d for the S retrieved blocks with the current query params,
so the gradient reaches the query embedder; the reader scores every span
of the K read blocks with f(x, z) added; the loss is losses.openqa_loss
(+ finetune.doc_loss_weight x doc_contrastive_loss, ours). A batch with
one candidate is a reading step: the query embedder's gradient is stopped.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from realm_jax.models import losses
from realm_jax.models import retrieve_and_read
from realm_jax.models.retriever import Retriever, embed_queries
from realm_jax.train import state as state_lib

DEVICE_KEYS = ("question_ids", "question_mask", "cand_emb", "retriever_correct",
               "reader_ids", "reader_segments", "reader_mask", "block_mask",
               "span_start_mask", "span_end_mask", "gold_starts", "gold_ends")
DOC_KEYS = ("doc_ids", "doc_segments", "doc_mask", "doc_valid")
# Marks the reading steps where their shape cannot (finetune.reading_beam > 1).
READING_KEYS = ("reading",)


# ----------------------------------------------------------------- the step

def finetune_loss(params, batch, rng, cfg, deterministic=False,
                  doc_loss_weight=0.0):
  """losses.openqa_loss of one batch (+ doc_loss_weight x doc_loss);
  (loss, aux metrics)."""
  if batch["cand_emb"].shape[1] == 1:
    # A reading step (finetune.reading_steps): with one candidate the
    # retriever's loss is 0 and its score shifts every span alike, so its
    # true gradient is 0; stopped here rather than left as round-off that
    # Adam would scale up.
    params = dict(params, retriever=jax.lax.stop_gradient(params["retriever"]))
  elif "reading" in batch:
    # Reading steps with distractors (finetune.reading_beam > 1) have as
    # many candidates as open-QA steps: a flag, the same for the whole
    # batch, says which this is; only the reader learns in a reading step.
    frozen = jax.lax.stop_gradient(params["retriever"])
    params = dict(params, retriever=jax.tree.map(
        lambda a, b: jnp.where(batch["reading"][0], a, b), frozen,
        params["retriever"]))
  doc_rng = None
  if doc_loss_weight and rng is not None:   # the default keeps its stream
    rng, doc_rng = jax.random.split(rng)
  scores, logits, starts, ends = retrieve_and_read.read(params, batch, cfg,
                                                   deterministic, rng)
  span_correct = losses.correct_spans(starts, ends, batch["gold_starts"],
                                      batch["gold_ends"])   # [B, K, spans]
  loss, aux = losses.openqa_loss(scores, batch["retriever_correct"], logits,
                                 span_correct)
  b = logits.shape[0]
  best = jnp.argmax(logits.reshape(b, -1), axis=-1)
  aux["span_accuracy"] = jnp.mean(jnp.take_along_axis(
      span_correct.reshape(b, -1), best[:, None], axis=-1))
  top = jnp.argmax(scores, axis=-1)
  aux["retriever_top1_correct"] = jnp.mean(jnp.take_along_axis(
      batch["retriever_correct"], top[:, None], axis=-1))
  if doc_loss_weight:
    doc_loss = doc_contrastive_loss(params["retriever"], batch, cfg,
                                    deterministic, doc_rng)
    aux["doc_loss"] = doc_loss
    loss = loss + doc_loss_weight * doc_loss
  return loss, jax.tree.map(jax.lax.stop_gradient, aux)


def doc_contrastive_loss(retriever_params, batch, cfg, deterministic, rng):
  """Trains the document side of the embedder (finetune.doc_loss_weight).

  Each question scores the 2B blocks of the batch (every question's positive
  and hard negative, embedded live, with gradient); its own positive is the
  target. Questions without both kinds of block are left out.
  """
  q_rng, d_rng = (None, None) if rng is None else jax.random.split(rng)
  q = embed_queries(retriever_params, batch["question_ids"],
                    batch["question_mask"], cfg, deterministic, q_rng)
  b = q.shape[0]
  docs = Retriever(cfg).apply(
      {"params": retriever_params}, batch["doc_ids"], batch["doc_segments"],
      batch["doc_mask"], deterministic, method=Retriever.embed_doc,
      rngs=None if d_rng is None else {"dropout": d_rng})    # [B, 2, D]
  scores = jnp.einsum("bd,nd->bn", q.astype(jnp.float32),
                      docs.reshape(2 * b, -1).astype(jnp.float32))
  target = jnp.arange(b) * 2
  valid = batch["doc_valid"]
  is_target = (jnp.arange(2 * b)[None, :] == target[:, None]) & valid[:, None]
  per_question = losses.marginal_log_loss(scores, is_target)
  return jnp.sum(per_question) / jnp.maximum(jnp.sum(valid), 1)


def train_step(state: dict, batch, cfg, tx, doc_loss_weight=0.0):
  (loss, aux), grads = jax.value_and_grad(finetune_loss, has_aux=True)(
      state["params"], batch, state_lib.step_rng(state), cfg,
      doc_loss_weight=doc_loss_weight)
  new_state = state_lib.apply_gradients(state, grads, tx)
  # param_norm of the params returned (and saved): see check_finite.
  metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                 param_norm=optax.global_norm(new_state["params"]),
                 query_grad_norm=optax.global_norm(grads["retriever"]))
  return new_state, metrics


def optimizer(config) -> optax.GradientTransformation:
  """BERT's AdamW with train.* settings and finetune's schedule."""
  t, f = config.train, config.finetune
  return state_lib.bert_adamw(ml_collections.ConfigDict(dict(
      weight_decay=t.weight_decay,
      adam_b1=t.adam_b1, adam_b2=t.adam_b2, adam_eps=t.adam_eps,
      adam_bias_correction=t.adam_bias_correction, clip_norm=t.clip_norm,
      retriever_lr_scale=f.retriever_lr_scale)), schedule=schedule(f))


def schedule(f) -> optax.Schedule:
  """One warmup and linear decay over the run; with f.phase_schedules, one
  for the reading steps and another for the open-QA steps, so the reader
  leaves its reading at a rate near 0 (README, "Reading")."""
  if not (f.phase_schedules and 0 < f.reading_steps < f.num_steps):
    return state_lib.learning_rate_schedule(f.learning_rate, f.num_steps,
                                            f.warmup_steps)
  return optax.join_schedules(
      [state_lib.learning_rate_schedule(f.learning_rate, f.reading_steps,
                                        f.warmup_steps),
       state_lib.learning_rate_schedule(
           f.learning_rate, f.num_steps - f.reading_steps, f.warmup_steps)],
      [f.reading_steps])
