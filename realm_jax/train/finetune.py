"""Open-QA fine-tuning, ORQA/REALM style (config.task == "finetune").

The document embeddings stay frozen: one committed index version (see
retrieval/openqa.py) serves the whole run, and only the query embedder and the span
reader train. One step, for a batch of questions:
  1. embed the questions with the current params (a jitted device call) and
     search the fixed index for the top S = finetune.retriever_beam blocks;
  2. on the host, gather those blocks' frozen embeddings, mark the blocks
     that contain an answer, and build the reader inputs of the top
     K = finetune.reader_beam blocks with their gold spans (retrieval/qa_inputs.py);
  3. `train_step` (pure, jitted over the data mesh, state donated) recomputes
     f(x, z) = q . d for the S blocks with the current query params, so the
     gradient reaches the query embedder; the reader scores every span of the
     K blocks (of whole words, unless finetune.whole_word_spans=False) with
     f(x, z) added; the loss is losses.openqa_loss: the
     retriever's marginal log loss over the S blocks (correct = contains an
     answer) plus the reader's over one joint softmax of (block, span).

Checkpoints (params, optimizer, step, rng, question iterator) and auto-resume
work as in pretraining. Metrics go to <workdir>/finetune_metrics.jsonl and
TensorBoard (<workdir>/tensorboard/finetune).
"""
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from realm_jax import checkpoint as ckpt_lib
from realm_jax.data import catalog
from realm_jax.data import corpus
from realm_jax.data import pipeline
from realm_jax.index import store as index_store
from realm_jax.models import losses
from realm_jax.models import openqa as openqa_model
from realm_jax.models.reader import SpanReader
from realm_jax.models.retriever import Retriever, embed_queries
from realm_jax.retrieval import model_init
from realm_jax.retrieval import openqa
from realm_jax.retrieval import qa_inputs
from realm_jax.train import loop
from realm_jax.train import partition
from realm_jax.train import state as state_lib

DEVICE_KEYS = ("question_ids", "question_mask", "cand_emb", "retriever_correct",
               "reader_ids", "reader_segments", "reader_mask", "block_mask",
               "span_start_mask", "span_end_mask", "gold_starts", "gold_ends")


# ----------------------------------------------------------------- the step

def finetune_loss(params, batch, rng, cfg, deterministic=False):
  """losses.openqa_loss of one batch; (loss, aux metrics)."""
  scores, logits, starts, ends = openqa_model.read(params, batch, cfg,
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
  return loss, jax.tree.map(jax.lax.stop_gradient, aux)


def train_step(state: state_lib.TrainState, batch, cfg):
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, aux), grads = jax.value_and_grad(finetune_loss, has_aux=True)(
      state.params, batch, rng, cfg)
  new_state = state.apply_gradients(grads)
  # param_norm of the params returned (and saved): see check_finite.
  metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                 param_norm=optax.global_norm(new_state.params),
                 query_grad_norm=optax.global_norm(grads["retriever"]))
  return new_state, metrics


@functools.lru_cache(maxsize=4)
def jit_train_step(cfg, mesh):
  """The jitted step, one per (model config, mesh): a second run in the same
  process (tests, notebooks) reuses the compiled program."""
  repl, data = partition.replicated(mesh), partition.data_sharded(mesh)
  return jax.jit(functools.partial(train_step, cfg=cfg),
                 in_shardings=(repl, data), out_shardings=(repl, repl),
                 donate_argnums=0)


def optimizer(config) -> optax.GradientTransformation:
  """BERT's AdamW with train.* settings and finetune's lr, steps, warmup.

  The same settings give the same object: the optimizer is a static part of
  the train state, so a new object would recompile the step in a process
  that fine-tunes twice (the demo's comparisons, the tests).
  """
  t, f = config.train, config.finetune
  return _optimizer((
      ("learning_rate", f.learning_rate), ("num_steps", f.num_steps),
      ("warmup_steps", f.warmup_steps), ("weight_decay", t.weight_decay),
      ("adam_b1", t.adam_b1), ("adam_b2", t.adam_b2),
      ("adam_eps", t.adam_eps),
      ("adam_bias_correction", t.adam_bias_correction),
      ("clip_norm", t.clip_norm),
      ("retriever_lr_scale", f.retriever_lr_scale)))


@functools.lru_cache(maxsize=8)
def _optimizer(settings: tuple) -> optax.GradientTransformation:
  return state_lib.bert_adamw(ml_collections.ConfigDict(dict(settings)))


# ------------------------------------------------------ host-side batches

@functools.lru_cache(maxsize=4)
def _jit_embed(cfg, mesh):
  return jax.jit(functools.partial(embed_queries, config=cfg),
                 out_shardings=partition.data_sharded(mesh))


class QuestionEmbedder:
  """Embeds a question batch on the mesh; returns this process's rows."""

  def __init__(self, cfg, mesh):
    self.mesh = mesh
    self._fn = _jit_embed(cfg, mesh)

  def __call__(self, retriever_params, qa_batch):
    """Dispatches the embedding; call `.host(result)` for numpy rows."""
    inputs = partition.shard_batch(
        {k: qa_batch[k] for k in ("question_ids", "question_mask")}, self.mesh)
    return self._fn(retriever_params, inputs["question_ids"],
                    inputs["question_mask"])

  @staticmethod
  def host(emb) -> np.ndarray:
    if jax.process_count() == 1:
      return np.asarray(emb)
    shards = sorted(emb.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def _resolve(config):
  """(store, tokenizer, cfg, index path or None, record) for this workdir."""
  record = openqa.read_record(config.workdir)
  if record is not None:
    # A resumed run (or a rerun in this workdir) keeps what it started with.
    logging.info("using the index %s and block store %s recorded in %s",
                 record["index_path"], record["block_store"],
                 openqa.record_path(config.workdir))
    store = corpus.BlockStore(record["block_store"])
    return store, store.tokenizer(), record["model"], record["index_path"], True
  store = openqa.block_store(config)
  tok = store.tokenizer()
  cfg = openqa.model_config(config, tok.vocab_size)
  return store, tok, cfg, openqa.find_index(config, store), False


def _random_params(cfg, rng):
  """Params of the right structure (their values never used: a resume)."""
  from realm_jax.models import convert  # pylint: disable=g-import-not-at-top
  r_rng, s_rng = jax.random.split(rng)
  init = lambda m, key: m.init(key, *convert.example_inputs(m))["params"]
  return {"retriever": init(Retriever(cfg), r_rng),
          "reader": init(SpanReader(cfg), s_rng)}


# ----------------------------------------------------------------- the run

def run(config):
  partition.maybe_initialize_distributed()
  c = config
  f = c.finetune
  if f.search_lag not in (0, 1):
    raise ValueError(f"finetune.search_lag must be 0 or 1, got {f.search_lag}")
  os.makedirs(c.workdir, exist_ok=True)
  store, tok, cfg, index_path, recorded = _resolve(c)
  mesh = partition.make_mesh()
  partition.check_batch_size(f.batch_size, mesh)
  checkpointer = ckpt_lib.Checkpointer(c.workdir, keep=c.train.keep_checkpoints)
  resuming = checkpointer.latest_step() is not None
  init = (functools.partial(_random_params, cfg) if resuming else
          lambda rng: model_init.openqa_params(c, cfg, rng))
  state, data_state, _ = loop.create_or_restore(checkpointer, init,
                                                optimizer(c), c.seed, mesh)
  if index_path is None:
    index_path = openqa.bootstrap_index(c, cfg, state.params["retriever"],
                                          store)
  if not recorded and jax.process_index() == 0:
    openqa.write_record(c.workdir, index_path, store, cfg)
  emb, searcher = openqa.open_index(index_path, store, c.index,
                                      openqa.searcher_cache(c))
  beam = min(f.retriever_beam, store.num_blocks)
  logging.info("Open-QA fine-tuning: %d blocks, index %s (version %s), "
               "retriever beam %d, reader beam %d, start step %d of %d",
               store.num_blocks, index_path,
               index_store.read_manifest(index_path)["step"], beam,
               min(f.reader_beam, beam), int(state.step), f.num_steps)

  examples = catalog.qa_examples(c, f.split)
  if not examples:
    raise ValueError(f"finetune.dataset={f.dataset!r} split {f.split!r} has "
                     "no questions")
  dataset = pipeline.qa_dataset(
      examples, tok, c.seed, f.batch_size // jax.process_count(),
      question_len=f.question_len, max_answer_len=min(f.max_answer_len,
                                                      cfg.max_span_width))
  data_iter = iter(dataset)
  if data_state is not None:
    data_iter.set_state(data_state)

  def make_batch(qa_batch, q_emb):
    rows, cand_emb = qa_inputs.search(searcher, emb,
                                         QuestionEmbedder.host(q_emb), beam)
    return qa_inputs.training_batch(
        qa_batch, rows, cand_emb, store, tok, reader_beam=f.reader_beam,
        reader_len=f.reader_len, max_span_width=cfg.max_span_width,
        max_gold_spans=f.max_gold_spans, answer_match=f.answer_match,
        regex_answers=f.regex_answers, whole_word_spans=cfg.whole_word_spans)

  try:
    state = _train_loop(c, cfg, mesh, state, data_iter, make_batch,
                        checkpointer, {"index_path": index_path})
  finally:
    checkpointer.close()
  return state


def _train_loop(c, cfg, mesh, state, data_iter, make_batch, checkpointer,
                meta):
  """Steps from state.step to finetune.num_steps; logs and checkpoints.

  make_batch(qa_batch, question embeddings) -> the step's host arrays.
  """
  f = c.finetune
  start = int(state.step)
  if start >= f.num_steps:
    return state
  embedder = QuestionEmbedder(cfg, mesh)
  step_fn = jit_train_step(cfg, mesh)
  # Imported here: tensorboardX pulls in torch (~4 s), which `eval` and
  # `answer` (importers of this module) do not need.
  from realm_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  writer = metrics_lib.MetricsWriter(c.workdir, "finetune",
                                     enabled=jax.process_index() == 0)
  clock = loop.StepClock()

  def next_questions():
    batch = next(data_iter)
    return batch, data_iter.get_state()   # the state a checkpoint resumes at

  current, current_state = next_questions()
  q_emb = embedder(state.params["retriever"], current)
  for step in range(start, f.num_steps):
    host_start = time.perf_counter()
    arrays = make_batch(current, q_emb)
    host_s = time.perf_counter() - host_start
    done = step + 1
    last = done == f.num_steps
    if f.search_lag == 1 and not last:
      # Dispatched before the step donates the params it reads.
      following, following_state = next_questions()
      q_emb = embedder(state.params["retriever"], following)
    state, metrics = step_fn(state, partition.shard_batch(
        {k: arrays[k] for k in DEVICE_KEYS}, mesh))
    clock.add(host_s, f.batch_size)
    if done % c.train.log_every == 0 or last:
      values = loop.fetch(metrics)
      ckpt_lib.check_finite(done, values)
      values.update(clock.summary())
      writer.write(done, values)
      logging.info("finetune step %d loss %.4f (retriever %.4f reader %.4f) "
                   "span_acc %.3f has_answer %.3f", done, values["loss"],
                   values["retriever_loss"], values["reader_loss"],
                   values["span_accuracy"], values["retriever_has_answer"])
    if done % c.train.checkpoint_every == 0 or last:
      ckpt_lib.check_finite(done, loop.fetch(
          {k: metrics[k] for k in ckpt_lib.FINITE_KEYS}))
      checkpointer.save(done, loop.state_tree(state), data_state=current_state,
                        meta=meta)
    if last:
      break
    if f.search_lag == 1:
      current, current_state = following, following_state
    else:
      current, current_state = next_questions()
      q_emb = embedder(state.params["retriever"], current)
  writer.close()
  return state
