"""Host-side retrieval for Open-QA: from question batches to reader inputs.

For a batch of questions (see `realm_jax.data.pipeline.qa_dataset`) whose
embeddings were computed on the device:
  1. search the fixed index for the top S blocks (S = retriever_beam);
  2. gather their FROZEN embeddings from the memory-mapped index, so the train
     step can recompute f(x, z) = q . d with the current query params (the
     gradient reaches the query embedder, never the documents);
  3. mark which of the S blocks contain an answer (`qa.has_answer`): the
     "correct" blocks of the retriever loss and of recall@k;
  4. build the reader inputs `[CLS] question [SEP] block body [SEP]` of the
     top K blocks (K = reader_beam) and their gold answer spans, found by
     token matching (`qa.answer_token_spans`) or, for CuratedTREC's regex
     answers, by regex matches mapped to tokens through char offsets; with
     whole-word spans (the default) only gold spans the reader can score.

Blocks are referred to by their row in the block store (= row in the index).
"""
import itertools
import string
import unicodedata
from typing import Sequence

import numpy as np

from realm_jax.batching import candidates
from realm_jax.data import qa_data

_PUNCT_BYTES = string.punctuation.encode("ascii")


def _stripped(text: str) -> bytes:
  """NFD, lowercase, ASCII punctuation deleted, as UTF-8 bytes.

  Deleting the punctuation bytes from the UTF-8 encoding is exactly deleting
  the characters (ASCII bytes never occur inside a multi-byte sequence), and
  bytes.translate runs in C, about 10x faster than normalize_answer.
  """
  return (unicodedata.normalize("NFD", text).lower().encode("utf-8")
          .translate(None, _PUNCT_BYTES))


def blocks_with_answer(texts: Sequence[str], answers: Sequence[str],
                       match: str = "normalized") -> np.ndarray:
  """bool [len(texts)]: `qa.has_answer(text, answers, match)` for each text.

  Same result as calling has_answer on every text. For match="normalized"
  (the slow one: it normalizes the whole block) a cheap necessary condition
  runs first: every token of the normalized answer must occur in the
  punctuation-stripped lowercase text (normalization only deletes characters
  and changes whitespace, so a token of the normalized text is a substring of
  it). Only blocks that pass get the exact check. For the top 5000 blocks of
  a question this is what keeps the retriever loss off the critical path.
  """
  out = np.zeros(len(texts), dtype=bool)
  if match != "normalized":
    for i, text in enumerate(texts):
      out[i] = qa_data.has_answer(text, answers, match)
    return out
  needles = [[w.encode("utf-8") for w in qa_data.normalize_answer(a).split()]
             for a in answers]
  needles = [n for n in needles if n]
  if not needles:
    return out
  for i, text in enumerate(texts):
    stripped = _stripped(text)
    if any(all(w in stripped for w in words) for words in needles):
      out[i] = qa_data.has_answer(text, answers, "normalized")
  return out


def reader_block_mask(segment_ids: np.ndarray, input_mask: np.ndarray
                      ) -> np.ndarray:
  """bool [..., seq]: the block's tokens of `[CLS] q [SEP] block [SEP]`.

  Segment 1 covers the block and the final [SEP]; the [SEP] is excluded by
  position (not by id: a block could contain the literal text "[SEP]").
  """
  last = np.sum(input_mask, axis=-1, keepdims=True) - 1
  positions = np.arange(segment_ids.shape[-1])
  return (segment_ids == 1) & (positions < last)


def span_masks(tokenizer, reader_ids: np.ndarray, block_mask: np.ndarray):
  """(span_start_mask, span_end_mask) bool [..., seq]: whole-word spans.

  A span may start on a block token that begins a word, and end on a block
  token followed by a word start or by the end of the block: "Ser" of
  "Serfdom" (ser ##f ##dom) is no span, "Serfdom" is.
  """
  word_start = tokenizer.word_start_mask(reader_ids)
  ends_word = np.ones_like(block_mask, dtype=bool)
  ends_word[..., :-1] = word_start[..., 1:] | ~block_mask[..., 1:]
  return word_start & block_mask, ends_word & block_mask


def body_char_offsets(tokenizer, text: str, body_ids: np.ndarray):
  """int [len(body_ids), 2] char offsets of the block's body tokens in `text`.

  The store keeps token ids only; re-tokenizing the block text gives offsets.
  None if the re-tokenization disagrees with the stored ids (possible where
  the block builder cut a sentence mid-word), in which case callers fall
  back to decoding the ids.
  """
  enc = tokenizer.encode(text)
  n = len(body_ids)
  if len(enc.ids) < n or not np.array_equal(enc.ids[:n], body_ids):
    return None
  return np.asarray(enc.offsets[:n])


def regex_gold_spans(patterns: Sequence[str], text: str,
                     offsets: np.ndarray | None, first: int,
                     max_width: int) -> list[tuple[int, int]]:
  """Reader-input token spans whose text is a regex match in the block.

  Args:
    patterns: the answer regexes (CuratedTREC); invalid ones are skipped.
    text: the block text; offsets: its body tokens' char offsets (None: no
      spans, the text cannot be mapped to tokens).
    first: position of the first body token in the reader input.
    max_width: widest span the reader scores.

  A match counts when it starts at a token start and ends at a token end.
  """
  if offsets is None or len(offsets) == 0:
    return []
  starts = {int(s): i for i, s in enumerate(offsets[:, 0])}
  ends = {int(e): i for i, e in enumerate(offsets[:, 1])}
  spans = set()
  for compiled in qa_data.compiled_answers(patterns):
    for m in compiled.finditer(text):
      s, e = starts.get(m.start()), ends.get(m.end())
      if m.end() > m.start() and s is not None and e is not None and (
          0 <= e - s < max_width):
        spans.add((first + s, first + e))
  return sorted(spans)


def search(searcher, emb, query_emb: np.ndarray, beam: int):
  """Top `beam` rows per query and their frozen embeddings.

  Returns (rows int64 [B, beam], cand_emb float32 [B, beam, D]).
  """
  rows, _ = searcher.search(np.asarray(query_emb, np.float32), beam)
  if (rows < 0).any():
    raise ValueError(f"the index returned fewer than {beam} blocks; "
                     f"retriever_beam must be <= the corpus size {len(emb)}")
  return rows, np.asarray(emb[rows], np.float32)


def source_rows(examples, store) -> np.ndarray:
  """int64 [len(examples)]: the block each generated question was made from
  (its "source_uid"), -1 for the others and for blocks the store lacks."""
  uids = [e.get("source_uid") for e in examples]
  found = [i for i, u in enumerate(uids) if u]
  rows = np.full(len(examples), -1, np.int64)
  if found:
    rows[found] = store.rows_for_uids([uids[i] for i in found])
  return rows


def reading_rows(rows: np.ndarray, source: np.ndarray, store, answers,
                 match: str, beam: int = 1) -> np.ndarray:
  """[B, beam]: the blocks each question is read in on a reading step.

  First the block that holds its answer: its source block (source[i] >=
  0), else the highest-ranked of its retrieved `rows` [B, S] that holds an
  answer, else its top block (which then gives the reader no loss). Then,
  with beam > 1, its highest-ranked other retrieved blocks, as distractors
  (finetune.reading_beam): read with them, the reader learns to score a
  block without the answer below one with it, which it must do at test
  time, where it reads several.
  """
  out = np.empty((rows.shape[0], beam), np.int64)
  for i, retrieved in enumerate(rows):
    if source[i] >= 0:
      first = source[i]
    else:
      correct = blocks_with_answer([store.text(int(r)) for r in retrieved],
                                   answers[i], match)
      first = retrieved[int(np.argmax(correct))]   # argmax: the first True
    # Only as far as needed: `retrieved` is the whole retriever beam.
    others = itertools.islice((r for r in retrieved if r != first), beam - 1)
    out[i] = [first, *others]
  return out


def reader_batch(question_ids: np.ndarray, question_mask: np.ndarray, store,
                 rows: np.ndarray, reader_len: int, tokenizer) -> dict:
  """Reader inputs of rows [B, K]: reader_ids/segments/mask, block_mask and
  the whole-word span_start_mask/span_end_mask (`span_masks`; the reader
  uses them when its config has whole_word_spans)."""
  ids, segments, mask = candidates.reader_inputs(
      question_ids, question_mask, store, rows, reader_len, tokenizer.sep_id,
      tokenizer.pad_id)
  block_mask = reader_block_mask(segments, mask)
  span_start_mask, span_end_mask = span_masks(tokenizer, ids, block_mask)
  return {"reader_ids": ids, "reader_segments": segments, "reader_mask": mask,
          "block_mask": block_mask, "span_start_mask": span_start_mask,
          "span_end_mask": span_end_mask}


def answer_token_lists(answer_ids: np.ndarray, answer_len: np.ndarray):
  """qa_dataset's padded answer arrays [A, L], [A] -> list of id arrays."""
  return [answer_ids[j, :n] for j, n in enumerate(answer_len) if n > 0]


def training_batch(qa_batch: dict, rows: np.ndarray, cand_emb: np.ndarray,
                   store, tokenizer, *, reader_beam: int, reader_len: int,
                   max_span_width: int, max_gold_spans: int,
                   answer_match: str = "normalized",
                   regex_answers: bool = False,
                   whole_word_spans: bool = True,
                   doc_pairs: bool = False) -> dict:
  """The arrays of one fine-tuning step.

  Args:
    qa_batch: a qa_dataset batch (question_ids/mask [B, Lq], answer_ids
      [B, A, L], answer_len [B, A], answers [B] tuples of str).
    rows, cand_emb: `search` output for these questions, [B, S], [B, S, D].
    answer_match: has_answer mode for the retriever's correct blocks.
    regex_answers: answers are regexes (CuratedTREC).
    whole_word_spans: keep only gold spans of whole words (the reader then
      scores no other span: a gold span it masks would be a correct answer
      it can never give, and its loss term would be -log(0)).

  Returns:
    question_ids, question_mask [B, Lq]; cand_emb [B, S, D];
    retriever_correct bool [B, S]; reader_ids, reader_segments, reader_mask
    int32 and block_mask, span_start_mask, span_end_mask bool [B, K, Lr];
    gold_starts, gold_ends int32 [B, K, max_gold_spans] (-1 padded, the
    earliest spans kept).
    With doc_pairs: doc_ids, doc_segments, doc_mask int32 [B, 2, block_len],
    the retriever inputs of each question's highest-ranked block with an
    answer and highest-ranked block without one; doc_valid bool [B], both
    exist.
  """
  b, s = rows.shape
  k = min(reader_beam, s)
  match = "regex" if regex_answers else answer_match
  correct = np.zeros((b, s), dtype=bool)
  texts = []
  for i in range(b):
    texts.append([store.text(int(r)) for r in rows[i]])
    correct[i] = blocks_with_answer(texts[i], qa_batch["answers"][i], match)
  out = {"question_ids": qa_batch["question_ids"],
         "question_mask": qa_batch["question_mask"],
         "cand_emb": cand_emb, "retriever_correct": correct}
  out.update(reader_batch(qa_batch["question_ids"], qa_batch["question_mask"],
                          store, rows[:, :k], reader_len, tokenizer))
  starts = np.full((b, k, max_gold_spans), -1, np.int32)
  ends = np.full((b, k, max_gold_spans), -1, np.int32)
  for i in range(b):
    first = int(qa_batch["question_mask"][i].sum())
    answer_ids = answer_token_lists(qa_batch["answer_ids"][i],
                                    qa_batch["answer_len"][i])
    for j in range(k):
      if regex_answers:
        n = int(out["block_mask"][i, j].sum())
        body = out["reader_ids"][i, j, first:first + n]
        spans = regex_gold_spans(
            qa_batch["answers"][i], texts[i][j],
            body_char_offsets(tokenizer, texts[i][j], body), first,
            max_span_width)
      else:
        spans = qa_data.answer_token_spans(out["reader_ids"][i, j],
                                      out["block_mask"][i, j], answer_ids,
                                      max_width=max_span_width)
      if whole_word_spans:
        spans = [(st, en) for st, en in spans
                 if out["span_start_mask"][i, j, st]
                 and out["span_end_mask"][i, j, en]]
      for g, (st, en) in enumerate(spans[:max_gold_spans]):
        starts[i, j, g], ends[i, j, g] = st, en
  out.update(gold_starts=starts, gold_ends=ends)
  if doc_pairs:
    out.update(_doc_pairs(rows, correct, store))
  return out


def _doc_pairs(rows: np.ndarray, correct: np.ndarray, store) -> dict:
  """A positive and a hard negative block per question (see training_batch)."""
  first = np.arange(len(rows))
  pair_rows = np.stack([rows[first, np.argmax(correct, axis=1)],
                        rows[first, np.argmax(~correct, axis=1)]], axis=1)
  valid = correct.any(axis=1) & (~correct).any(axis=1)
  ids, segments, mask = store.doc_inputs(pair_rows)
  return {"doc_ids": ids.astype(np.int32),
          "doc_segments": segments.astype(np.int32),
          "doc_mask": mask.astype(np.int32), "doc_valid": valid}
