"""Host-side retrieval for pretraining: from masked queries to reader inputs.

For each query batch (see `realm_jax.data.pipeline.pretraining_dataset`):
  1. embed the queries with the (stale) retriever params it is given;
  2. search the index in service for the top k-1 blocks, excluding the
     query's own source block (trivial retrieval);
  3. put the null document first: candidate rows are [-1, r1, ..., r_{k-1}];
  4. gather the candidates' retriever inputs `[CLS] title [SEP] body [SEP]`
     (the null document is `[CLS][SEP][SEP]`) and the reader inputs
     `[CLS] q [SEP] body [SEP]` (the null document's is `[CLS] q [SEP][SEP]`).

The train step re-embeds the query and all k candidates with the current
params; the index only selects them.
"""
import numpy as np

NULL_ROW = -1


def null_doc_inputs(block_len: int, cls_id: int, sep_id: int, pad_id: int):
  """`[CLS][SEP][SEP]`: an empty title and body, so its score is learned."""
  ids = np.full(block_len, pad_id, np.int32)
  ids[:3] = (cls_id, sep_id, sep_id)
  mask = np.zeros(block_len, np.int32)
  mask[:3] = 1
  segment = np.zeros(block_len, np.int32)
  segment[2] = 1
  return ids, segment, mask


def candidate_doc_inputs(store, rows: np.ndarray, tokenizer):
  """Retriever inputs of candidates; rows [B, K] int with NULL_ROW for null.

  Returns (ids, segment_ids, mask), int32 [B, K, block_len].
  """
  rows = np.asarray(rows, np.int64)
  ids, segment, mask = store.doc_inputs(np.maximum(rows, 0))
  null = rows == NULL_ROW
  if null.any():
    n_ids, n_seg, n_mask = null_doc_inputs(
        store.block_len, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id)
    ids[null], segment[null], mask[null] = n_ids, n_seg, n_mask
  return ids, segment, mask


def reader_inputs(query_ids: np.ndarray, query_mask: np.ndarray, store,
                  rows: np.ndarray, reader_len: int, sep_id: int, pad_id: int):
  """`[CLS] q [SEP] body [SEP]` for every (query, candidate) pair.

  The query keeps its own [CLS]/[SEP] and positions, so the MLM positions of
  the query are also positions in the reader input. The body is truncated to
  fit; the null document contributes an empty body.

  Args:
    query_ids, query_mask: int32 [B, query_len], `[CLS] q [SEP]` + padding.
    rows: int [B, K] candidate rows, NULL_ROW for the null document.
  Returns:
    (ids, segment_ids, mask), int32 [B, K, reader_len].
  """
  b, k = rows.shape
  ids = np.full((b, k, reader_len), pad_id, np.int32)
  segment = np.zeros((b, k, reader_len), np.int32)
  mask = np.zeros((b, k, reader_len), np.int32)
  q_lens = query_mask.sum(axis=1).astype(np.int64)
  for i in range(b):
    q = q_lens[i]
    ids[i, :, :q] = query_ids[i, :q]
    for j in range(k):
      body = (store.body_ids(int(rows[i, j])) if rows[i, j] != NULL_ROW
              else np.zeros(0, np.int32))
      body = body[:max(reader_len - q - 1, 0)]
      end = q + len(body)
      ids[i, j, q:end] = body
      ids[i, j, end] = sep_id
      segment[i, j, q:end + 1] = 1
      mask[i, j, :end + 1] = 1
  return ids, segment, mask


def retrieve_candidates(searcher, query_emb: np.ndarray, exclude_rows: np.ndarray,
                        num_retrieved: int) -> tuple[np.ndarray, np.ndarray]:
  """Top `num_retrieved` rows per query, never its source row; null first.

  Returns (rows int64 [B, 1 + num_retrieved], search scores float32 [B, ...]).
  """
  exclude = np.asarray(exclude_rows, np.int64).reshape(-1, 1)
  ids, scores = searcher.search(np.asarray(query_emb, np.float32),
                                num_retrieved, exclude=exclude)
  null = np.full((len(ids), 1), NULL_ROW, np.int64)
  return (np.concatenate([null, ids], axis=1),
          np.concatenate([np.full((len(ids), 1), np.nan, np.float32), scores], 1))
