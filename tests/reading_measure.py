"""How well a reader reads held-out questions, as a continuous measure.

Each question is read in the block that holds its answer (a generated
question's own block, `source_uid`), as a reading step reads it, and the
reader's negative log-likelihood of its gold spans is averaged over the
questions that have one. Unlike EM over a few dozen questions, every
question counts by how much the reader prefers the gold span, so two
readers that differ in what they learnt differ by a margin that a change in
floating-point summation order does not flip.
"""
import numpy as np

from realm_jax.batching import qa_inputs
from realm_jax.data import corpus
from realm_jax.data import pipeline
from realm_jax.models import losses
from realm_jax.models import retrieve_and_read
from realm_jax.retrieval import openqa_record


def gold_span_nll(config, reader_params, examples, batch_size: int = 16):
  """(mean NLL of the gold spans, fraction whose best span is gold, number
  of questions with a gold span) of `examples` read in their source blocks."""
  f = config.finetune
  store = corpus.BlockStore(config.data.block_store)
  tok = store.tokenizer()
  cfg = openqa_record.model_config(config, tok.vocab_size)
  source = qa_inputs.source_rows(examples, store)
  if (source < 0).any():
    raise ValueError("every example needs its source block (source_uid)")
  dataset = pipeline.qa_dataset(
      examples, tok, config.seed, batch_size, question_len=f.question_len,
      max_answer_len=min(f.max_answer_len, cfg.max_span_width), train=False)
  nll, best, counted = 0.0, 0, 0
  for qa_batch in dataset:
    rows = source[np.asarray(qa_batch["example_index"])][:, None]
    batch = qa_inputs.training_batch(
        qa_batch, rows, np.zeros((len(rows), 1, cfg.proj_size),
                                 np.float32),
        store, tok, reader_beam=1, reader_len=f.reader_len,
        max_span_width=cfg.max_span_width, max_gold_spans=f.max_gold_spans,
        answer_match=f.answer_match, whole_word_spans=cfg.whole_word_spans)
    logits, starts, ends = retrieve_and_read.read_spans(reader_params, batch,
                                                         cfg)
    correct = np.asarray(losses.correct_spans(
        starts, ends, batch["gold_starts"], batch["gold_ends"]))[:, 0]
    logits = np.asarray(logits, np.float64)[:, 0]
    has_gold = correct.any(axis=-1)
    lse = np.logaddexp.reduce(logits, axis=-1)
    gold = np.logaddexp.reduce(np.where(correct, logits, -np.inf), axis=-1)
    nll += float(np.sum((lse - gold)[has_gold]))
    top = correct[np.arange(len(rows)), logits.argmax(-1)]
    best += int(np.sum(top[has_gold]))
    counted += int(has_gold.sum())
  return nll / counted, best / counted, counted
