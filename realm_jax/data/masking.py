"""Masked pretraining queries from query records (REALM salient span masking).

A query record is {"text": sentence, "spans": [(char_start, char_limit)...],
"source_uid": uid}. Masking tokenizes the sentence, picks what to hide and
builds the retriever query `[CLS] masked sentence [SEP]` (query_len tokens):

- salient (REALM): one span chosen uniformly; every wordpiece lying inside it
  becomes [MASK] (no 80/10/10 replacement). As in the original code, a token
  is masked only if its char range lies within the span, and the example is
  skipped (None) when the record has no span, the span covers no token, or a
  masked token would fall past the query_len - 2 sentence tokens that fit.
  Spans longer than max_masks tokens stay fully masked in the input, but only
  the first max_masks are predicted (the original's truncate-or-pad).
- random_token (ablation): 15% of the tokens, uniformly, capped at max_masks.
- random_span (ablation): one contiguous run of tokens whose length is
  geometric (p=0.2, SpanBERT), clipped to [1, max_masks].

Output: a dict of numpy arrays, query_ids/query_mask int32 [query_len],
mlm_positions/mlm_labels int32 [max_masks], mlm_weights float32 [max_masks]
(0 for padding), and source_uid (str). mlm_positions index query_ids, so they
count the leading [CLS].
"""
from typing import Sequence

import numpy as np

from realm_jax.data.tokenizer import Encoding, Tokenizer

STRATEGIES = ("salient", "random_token", "random_span")


def _build(tokenizer: Tokenizer, ids: np.ndarray, masked: np.ndarray,
           query_len: int, max_masks: int, source_uid: str) -> dict:
  """Assembles one example; `masked` are sorted sentence-token indices."""
  ids = ids[:query_len - 2]
  query_ids = np.full([query_len], tokenizer.pad_id, np.int32)
  query_ids[0] = tokenizer.cls_id
  query_ids[1:1 + len(ids)] = ids
  query_ids[1 + len(ids)] = tokenizer.sep_id
  query_ids[1 + masked] = tokenizer.mask_id
  query_mask = np.zeros([query_len], np.int32)
  query_mask[:2 + len(ids)] = 1
  predicted = masked[:max_masks]
  mlm_positions = np.zeros([max_masks], np.int32)
  mlm_labels = np.zeros([max_masks], np.int32)
  mlm_weights = np.zeros([max_masks], np.float32)
  mlm_positions[:len(predicted)] = predicted + 1
  mlm_labels[:len(predicted)] = ids[predicted]
  mlm_weights[:len(predicted)] = 1.0
  return {"query_ids": query_ids, "query_mask": query_mask,
          "mlm_positions": mlm_positions, "mlm_labels": mlm_labels,
          "mlm_weights": mlm_weights, "source_uid": source_uid}


def span_token_indices(enc: Encoding, span: tuple[int, int]) -> np.ndarray:
  """Indices of the tokens whose char range lies inside `span`."""
  start, limit = span
  inside = (enc.offsets[:, 0] >= start) & (enc.offsets[:, 1] <= limit)
  return np.flatnonzero(inside)


def mask_salient_span(tokenizer: Tokenizer, record: dict,
                      rng: np.random.Generator, query_len: int = 96,
                      max_masks: int = 10,
                      encoding: Encoding | None = None) -> dict | None:
  """REALM salient span masking of one record; None when it must be skipped."""
  spans = record["spans"]
  if not spans:
    return None
  enc = encoding if encoding is not None else tokenizer.encode(record["text"])
  masked = span_token_indices(enc, spans[int(rng.integers(len(spans)))])
  if masked.size == 0 or masked[-1] >= query_len - 2:
    return None
  return _build(tokenizer, enc.ids, masked, query_len, max_masks,
                record["source_uid"])


def mask_random_tokens(tokenizer: Tokenizer, record: dict,
                       rng: np.random.Generator, query_len: int = 96,
                       max_masks: int = 10, encoding: Encoding | None = None,
                       mask_rate: float = 0.15) -> dict | None:
  """Ablation: mask_rate of the fitting tokens, uniformly; <= max_masks."""
  enc = encoding if encoding is not None else tokenizer.encode(record["text"])
  n = min(len(enc.ids), query_len - 2)
  if n == 0:
    return None
  count = min(max_masks, max(1, int(round(n * mask_rate))))
  masked = np.sort(rng.choice(n, size=count, replace=False))
  return _build(tokenizer, enc.ids, masked, query_len, max_masks,
                record["source_uid"])


def mask_random_span(tokenizer: Tokenizer, record: dict,
                     rng: np.random.Generator, query_len: int = 96,
                     max_masks: int = 10, encoding: Encoding | None = None,
                     geometric_p: float = 0.2) -> dict | None:
  """Ablation: one random contiguous run of tokens (SpanBERT-style length)."""
  enc = encoding if encoding is not None else tokenizer.encode(record["text"])
  n = min(len(enc.ids), query_len - 2)
  if n == 0:
    return None
  length = min(int(rng.geometric(geometric_p)), max_masks, n)
  start = int(rng.integers(n - length + 1))
  return _build(tokenizer, enc.ids, np.arange(start, start + length),
                query_len, max_masks, record["source_uid"])


MASKERS = {"salient": mask_salient_span, "random_token": mask_random_tokens,
           "random_span": mask_random_span}


def mask_record(tokenizer: Tokenizer, record: dict, rng: np.random.Generator,
                strategy: str = "salient", query_len: int = 96,
                max_masks: int = 10) -> dict | None:
  """Masks one record with the named strategy (see STRATEGIES)."""
  if strategy not in MASKERS:
    raise ValueError(f"unknown masking strategy {strategy!r}; expected one of "
                     f"{STRATEGIES}")
  return MASKERS[strategy](tokenizer, record, rng, query_len, max_masks)


def mask_records(tokenizer: Tokenizer, records: Sequence[dict],
                 rng: np.random.Generator, strategy: str = "salient",
                 query_len: int = 96, max_masks: int = 10) -> list[dict]:
  """Masks many records with one batched tokenization; skipped ones dropped."""
  if strategy not in MASKERS:
    raise ValueError(f"unknown masking strategy {strategy!r}; expected one of "
                     f"{STRATEGIES}")
  masker = MASKERS[strategy]
  if strategy == "salient":  # spanless records are skipped: don't tokenize them
    records = [r for r in records if r["spans"]]
  encs = tokenizer.encode_batch([r["text"] for r in records])
  out = (masker(tokenizer, r, rng, query_len, max_masks, encoding=e)
         for r, e in zip(records, encs))
  return [ex for ex in out if ex is not None]


def stack_examples(examples: Sequence[dict]) -> dict:
  """Batches examples: arrays gain a leading [batch] dim, uids become a list."""
  return {k: ([ex[k] for ex in examples] if k == "source_uid"
              else np.stack([ex[k] for ex in examples]))
          for k in examples[0]}
