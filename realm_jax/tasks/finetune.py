"""Open-QA fine-tuning, ORQA/REALM style (config.task == "finetune").

The document embeddings stay frozen: one committed index version (see
retrieval/openqa_record.py) serves the whole run, and only the query embedder and the span
reader train. One step, for a batch of questions:
  1. embed the questions with the current params (a jitted device call) and
     search the fixed index for the top S = finetune.retriever_beam blocks;
  2. on the host, gather those blocks' frozen embeddings, mark the blocks
     that contain an answer, and build the reader inputs of the top
     K = finetune.reader_beam blocks with their gold spans (batching/qa_inputs.py);
  3. `train_step` (pure, jitted over the data mesh, state donated) recomputes
     f(x, z) = q . d for the S blocks with the current query params, so the
     gradient reaches the query embedder; the reader scores every span of the
     K blocks (of whole words, unless finetune.whole_word_spans=False) with
     f(x, z) added; the loss is losses.openqa_loss: the
     retriever's marginal log loss over the S blocks (correct = contains an
     answer) plus the reader's over one joint softmax of (block, span).

With finetune.reading_steps = n (ours, not ORQA/REALM's) the first n steps
are reading steps: each question is read in one block that holds its answer
(a generated question's own block, else the highest-ranked retrieved block
with one), S = K = 1, so only the reader learns, at a third of the cost of
an open-QA step; the question stream is the same, so resume is exact across
the switch.

With finetune.doc_loss_weight > 0 (ours, not ORQA/REALM's) the document side
learns too: `doc_contrastive_loss` embeds each question's best block with and
without an answer, with gradient, and `reembed` embeds the corpus again with
the final embedder when the run ends (the index still stays fixed during it).

Checkpoints (params, optimizer, step, rng, question iterator) and auto-resume
work as in pretraining. Metrics go to <workdir>/finetune_metrics.jsonl and
TensorBoard (<workdir>/tensorboard/finetune).
"""
import functools
import os

import jax
import numpy as np
from absl import logging

from realm_jax import checkpoint as ckpt_lib
from realm_jax import config as config_lib
from realm_jax import workdir as workdir_lib
from realm_jax.batching import qa_inputs
from realm_jax.data import catalog
from realm_jax.data import corpus
from realm_jax.data import pipeline
from realm_jax.index import store as index_store
from realm_jax.models.reader import SpanReader
from realm_jax.models.retriever import Retriever
from realm_jax.retrieval import openqa_record
from realm_jax.train import finetune_step
from realm_jax.train import loop
from realm_jax.train import partition
from realm_jax.train import question_batches
from realm_jax.weights import model_init


def _resolve(config):
  """(store, tokenizer, cfg, index path or None, record) for this workdir."""
  record = openqa_record.read_record(config.workdir)
  trained = workdir_lib.has_checkpoint(config.workdir)
  if record is not None and not trained:
    # Recorded, but nothing trained against it yet: if that version is no
    # longer intact (corrupt, or moved away) choose again rather than stay
    # pinned to it. With checkpoints the run must keep its index; open_index
    # then refuses it with a message naming the version.
    try:
      openqa_record.check_index(record["index_path"],
                         corpus.BlockStore(record["block_store"]),
                         openqa_record.searcher_cache(config))
    except (index_store.CorruptIndexError, FileNotFoundError) as e:
      logging.warning("the recorded index is not usable (%s); choosing the "
                      "newest intact version again", e)
      record = None
  if record is not None:
    # A resumed run (or a rerun in this workdir) keeps what it started with.
    logging.info("using the index %s and block store %s recorded in %s",
                 record["index_path"], record["block_store"],
                 openqa_record.record_path(config.workdir))
    store = corpus.BlockStore(record["block_store"])
    return store, store.tokenizer(), record["model"], record["index_path"], True
  store = openqa_record.block_store(config)
  tok = store.tokenizer()
  cfg = openqa_record.model_config(config, tok.vocab_size)
  return store, tok, cfg, openqa_record.find_index(config, store), False


def _random_params(cfg, rng):
  """Params of the right structure (their values never used: a resume)."""
  r_rng, s_rng = jax.random.split(rng)
  return {"retriever": model_init.random_params(Retriever(cfg), r_rng),
          "reader": model_init.random_params(SpanReader(cfg), s_rng)}


def run(config):
  partition.maybe_initialize_distributed()
  f = config.finetune
  if f.search_lag not in (0, 1):
    raise ValueError(f"finetune.search_lag must be 0 or 1, got {f.search_lag}")
  if not 0 <= f.reading_steps <= f.num_steps:
    raise ValueError(f"finetune.reading_steps={f.reading_steps} must be in "
                     f"[0, finetune.num_steps={f.num_steps}]")
  os.makedirs(config.workdir, exist_ok=True)
  store, tok, cfg, index_path, recorded = _resolve(config)
  beam = min(f.retriever_beam, store.num_blocks)
  if not 1 <= f.reading_beam <= beam:
    raise ValueError(f"finetune.reading_beam={f.reading_beam} must be in "
                     f"[1, the retriever beam {beam}]")
  mesh = partition.make_mesh()
  partition.check_batch_size(f.batch_size, mesh)
  checkpointer = ckpt_lib.Checkpointer(config.workdir,
                                      keep=config.train.keep_checkpoints)
  resuming = checkpointer.latest_step() is not None
  init = (functools.partial(_random_params, cfg) if resuming else
          lambda rng: model_init.openqa_params(config, cfg, rng))
  tx = finetune_step.optimizer(config)
  state, data_state, _ = loop.create_or_restore(checkpointer, init, tx,
                                                config.seed, mesh)
  if f.reading_from and not resuming:
    state, data_state = _after_reading(f.reading_from, state, f.reading_steps,
                                       mesh)
  if index_path is None:
    index_path = openqa_record.bootstrap_index(config, cfg,
                                        state["params"]["retriever"], store)
  if not recorded and jax.process_index() == 0:
    openqa_record.write_record(config.workdir, index_path, store, cfg)
  if jax.process_index() == 0:   # how to ask it (qa.Answerer reads this)
    config_lib.save_config(config, workdir_lib.config_path(config.workdir))
  emb, searcher = openqa_record.open_index(index_path, store, config.index,
                                      openqa_record.searcher_cache(config))
  logging.info("Open-QA fine-tuning: %d blocks, index %s (version %s), "
               "retriever beam %d, reader beam %d, start step %d of %d",
               store.num_blocks, index_path,
               index_store.read_manifest(index_path)["step"], beam,
               min(f.reader_beam, beam), int(state["step"]), f.num_steps)

  examples = catalog.training_questions(config, store)
  if not examples:
    raise ValueError(f"finetune.dataset={f.dataset!r} split {f.split!r} has "
                     "no questions (and finetune.generated_fraction="
                     f"{f.generated_fraction} added none)")
  dataset = pipeline.qa_dataset(
      examples, tok, config.seed, f.batch_size // jax.process_count(),
      question_len=f.question_len, max_answer_len=min(f.max_answer_len,
                                                      cfg.max_span_width))
  data_iter = iter(dataset)
  if data_state is not None:
    data_iter.set_state(data_state)

  # Reading steps read each question in one block that holds its answer:
  # a generated question's own block, or else the highest-ranked retrieved
  # block with an answer.
  source_rows = qa_inputs.source_rows(examples, store)

  def make_batch(qa_batch, q_emb, reading):
    q_host = question_batches.QuestionEmbedder.host(q_emb)
    rows, cand_emb = qa_inputs.search(searcher, emb, q_host, beam)
    k = f.reader_beam
    if reading:
      rows = qa_inputs.reading_rows(
          rows, source_rows[np.asarray(qa_batch["example_index"])], store,
          qa_batch["answers"], "regex" if f.regex_answers else f.answer_match,
          f.reading_beam)
      cand_emb, k = np.asarray(emb[rows], np.float32), f.reading_beam
    batch = qa_inputs.training_batch(
        qa_batch, rows, cand_emb, store, tok, reader_beam=k,
        reader_len=f.reader_len, max_span_width=cfg.max_span_width,
        max_gold_spans=f.max_gold_spans, answer_match=f.answer_match,
        regex_answers=f.regex_answers, whole_word_spans=cfg.whole_word_spans,
        doc_pairs=bool(f.doc_loss_weight))
    if f.reading_beam > 1:
      batch["reading"] = np.full(len(rows), reading)
    return batch

  hooks, reading = [], None
  if 0 < f.reading_steps < f.num_steps:   # kept for finetune.reading_from
    reading = ckpt_lib.Checkpointer(workdir_lib.reading_dir(config.workdir),
                                    keep=1)
    def save_reading(step, state, batch):
      if step == f.reading_steps:
        reading.save(step, state, data_state=batch.data_state, meta=batch.meta)
    hooks = [loop.Hook(f.reading_steps, save_reading, at_end=False)]
  keys = (finetune_step.DEVICE_KEYS
          + (finetune_step.DOC_KEYS if f.doc_loss_weight else ())
          + (finetune_step.READING_KEYS if f.reading_beam > 1 else ()))
  batches = question_batches.QuestionBatches(
      data_iter, question_batches.QuestionEmbedder(cfg, mesh), make_batch,
      f.num_steps, f.search_lag, keys, meta={"index_path": index_path},
      reading_steps=f.reading_steps)
  try:
    state = loop.train(
        state, functools.partial(finetune_step.train_step, cfg=cfg, tx=tx,
                                 doc_loss_weight=f.doc_loss_weight), batches,
        schedule=loop.Schedule.of(config.train, f.num_steps, f.batch_size),
        mesh=mesh, checkpointer=checkpointer, workdir=config.workdir,
        name="finetune", describe=_describe, hooks=hooks)
  finally:
    if reading is not None:
      reading.close()
    checkpointer.close()
  if f.doc_loss_weight:
    reembed(config, cfg, store)
  return state


def _after_reading(workdir: str, state: dict, reading_steps: int, mesh):
  """(state, data_state): `workdir`'s state at the end of its reading steps,
  with this run's own query embedder (finetune.reading_from)."""
  where = workdir_lib.reading_dir(workdir)
  missing = FileNotFoundError(
      f"finetune.reading_from={workdir}: no state saved after "
      f"finetune.reading_steps={reading_steps} in {where} (run it first, "
      "with the same recipe)")
  if not workdir_lib.has_checkpoint(where):
    raise missing
  saved = ckpt_lib.Checkpointer(where)
  try:
    if saved.latest_step() != reading_steps:
      raise missing
    restored, data_state, _ = saved.restore(state, reading_steps)
  finally:
    saved.close()
  logging.info("starting after the reading steps of %s (step %d), with this "
               "run's query embedder", workdir, reading_steps)
  # The reading steps stop the query embedder's gradient, so its optimizer
  # moments there are zero: only the params need replacing.
  params = dict(restored["params"], retriever=state["params"]["retriever"])
  return (jax.device_put(dict(restored, params=params),
                         partition.replicated(mesh)), data_state)


def reembed(config, cfg, store):
  """After fine-tuning that trained the document side (doc_loss_weight > 0):
  the corpus is embedded again with the final embedder into
  <workdir>/index/<step>, and openqa.json points eval and answering there.
  The record is written last, so a run killed before it repeats this (the
  build resumes) and one killed after it finds it done."""
  step, params = ckpt_lib.restore_params(config.workdir)
  record = openqa_record.read_record(config.workdir)
  if record["index_path"] == os.path.abspath(
      index_store.version_path(workdir_lib.index_dir(config.workdir), step)):
    return
  logging.info("doc_loss_weight=%s: embedding %d blocks with the fine-tuned "
               "document embedder (step %d)", config.finetune.doc_loss_weight,
               store.num_blocks, step)
  path = openqa_record.embed_corpus(config, cfg, params["retriever"], store, step)
  if jax.process_index() == 0:
    openqa_record.write_record(config.workdir, path, store, cfg,
                        start_index_path=record.get("start_index_path",
                                                    record["index_path"]))


def _describe(step, values):
  doc = f" doc {values['doc_loss']:.4f}" if "doc_loss" in values else ""
  return (f"finetune step {step} loss {values['loss']:.4f} (retriever "
          f"{values['retriever_loss']:.4f} reader {values['reader_loss']:.4f}"
          f"{doc}) "
          f"span_acc {values['span_accuracy']:.3f} has_answer "
          f"{values['retriever_has_answer']:.3f}")
