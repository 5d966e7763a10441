"""The open-QA model's forward pass: the retriever scores the candidates and
the span reader reads the top K of them (REALM's fine-tuning, after ORQA).
One function shared by fine-tuning's loss and by inference."""
import jax

from realm_jax.models.reader import SpanReader
from realm_jax.models.retriever import embed_queries, relevance_scores


def read(params, batch, cfg, deterministic=True, rng=None):
  """Retriever scores and span logits of one batch.

  batch: question_ids/question_mask [B, Lq], cand_emb [B, S, D] (frozen),
  reader_ids/reader_segments/reader_mask/block_mask [B, K, Lr], and
  span_start_mask/span_end_mask [B, K, Lr], used if cfg.whole_word_spans.
  Returns (scores float32 [B, S], span logits float32 [B, K, num_spans]
  with scores[:, :K] added, span starts [num_spans], span ends [num_spans]).
  """
  q_rng, r_rng = (None, None) if rng is None else jax.random.split(rng)
  q_emb = embed_queries(params["retriever"], batch["question_ids"],
                        batch["question_mask"], cfg, deterministic, q_rng)
  scores = relevance_scores(q_emb, batch["cand_emb"])
  k = batch["reader_ids"].shape[1]
  logits, starts, ends = read_spans(params["reader"], batch, cfg,
                                    scores[:, :k], deterministic, r_rng)
  return scores, logits, starts, ends


def read_spans(reader_params, batch, cfg, scores=None, deterministic=True,
               rng=None):
  """The span reader alone: (logits [B, K, num_spans], starts, ends) of the
  batch's reader inputs, with scores [B, K] added to each block's spans when
  given (inference adds f(x, z) on the host instead)."""
  whole_words = ({"span_start_mask": batch["span_start_mask"],
                  "span_end_mask": batch["span_end_mask"]}
                 if cfg.whole_word_spans else {})
  return SpanReader(cfg).apply(
      {"params": reader_params}, batch["reader_ids"],
      batch["reader_segments"], batch["reader_mask"], batch["block_mask"],
      scores, deterministic, **whole_words,
      rngs=None if rng is None else {"dropout": rng})
