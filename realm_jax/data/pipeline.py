"""grain input pipelines: pretraining (masked queries), ICT and open-QA.

Each pipeline is a `grain.IterDataset` built the same way from a random-access
source:

  source -> this process's shard -> global shuffle (reshuffled every epoch)
  -> repeat -> per-example random map (its RNG seeded by (seed, shard, index))
  -> examples the map rejects (None) are skipped -> fixed-size numpy batches.

Properties this buys:
* Deterministic: the same seed, shard and source give the same batches, on any
  machine, with any number of reader threads (grain keeps order).
* Sharded by host: process p of n reads source rows p, p+n, p+2n, ... (disjoint;
  `shard_options` defaults to `grain.sharding.ShardByJaxProcess`).
* Resumable: `it = iter(ds)`; `state = it.get_state()` is a small JSON-able
  dict (the next element index); a fresh `iter(ds)` with `set_state(state)`
  yields exactly the batches the first iterator would have yielded next.
  Each process saves its own state (grain.checkpoint.CheckpointHandler names
  the files process_<i>-of-<n>.json for that reason).

Batches are dicts of numpy arrays with a leading [batch] axis.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import grain
from grain.sharding import ShardOptions
import numpy as np

from realm_jax.data import masking
from realm_jax.data.tokenizer import Tokenizer

# Reader threads per process; grain's default (16) assumes remote storage.
DEFAULT_READ_THREADS = 4


def pad_or_truncate(ids: np.ndarray, length: int, cls_id: int, sep_id: int,
                    pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """`[CLS] ids [SEP]` cut/padded to `length` -> (ids, mask), int32 [length]."""
  ids = np.asarray(ids, np.int32)[:length - 2]
  out = np.full(length, pad_id, np.int32)
  out[0], out[1:1 + len(ids)], out[1 + len(ids)] = cls_id, ids, sep_id
  mask = np.zeros(length, np.int32)
  mask[:len(ids) + 2] = 1
  return out, mask


def pad_or_truncate_pair(ids_a: np.ndarray, ids_b: np.ndarray, length: int,
                         cls_id: int, sep_id: int, pad_id: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`[CLS] a [SEP] b [SEP]`, keeping a and truncating b (ORQA's rule).

  Returns:
    (ids, mask, segment_ids), int32 [length]; segment 0 covers [CLS] a [SEP],
    segment 1 covers b [SEP].
  """
  ids_a = np.asarray(ids_a, np.int32)[:length - 3]
  ids_b = np.asarray(ids_b, np.int32)[:max(length - 3 - len(ids_a), 0)]
  na, nb = len(ids_a), len(ids_b)
  ids = np.full(length, pad_id, np.int32)
  ids[0], ids[1:1 + na], ids[1 + na] = cls_id, ids_a, sep_id
  ids[2 + na:2 + na + nb], ids[2 + na + nb] = ids_b, sep_id
  mask = np.zeros(length, np.int32)
  mask[:na + nb + 3] = 1
  segment_ids = np.zeros(length, np.int32)
  segment_ids[na + 2:na + nb + 3] = 1
  return ids, mask, segment_ids


def _shard(options: ShardOptions | None) -> ShardOptions:
  return grain.sharding.ShardByJaxProcess() if options is None else options


def _seed(seed: int, shard_index: int, stream: int) -> int:
  """A 32-bit seed per (seed, shard, stream), so hosts draw independently."""
  return int(np.random.SeedSequence([seed, shard_index, stream])
             .generate_state(1)[0])


def build_dataset(source: Sequence,
                  example_fn: Callable[[Any, np.random.Generator], Any],
                  *, seed: int, batch_size: int,
                  shard_options: ShardOptions | None = None,
                  shuffle: bool = True, num_epochs: int | None = None,
                  drop_remainder: bool = True,
                  read_threads: int = DEFAULT_READ_THREADS,
                  batch_fn: Callable[[Sequence[Any]], Any] | None = None
                  ) -> grain.IterDataset:
  """The shared pipeline (see the module docstring).

  Args:
    source: random-access records (`len`, `[i]`).
    example_fn: (record, rng) -> example, or None to skip the record. Its rng
      depends only on (seed, shard, position in the stream), so skips are
      deterministic.
    seed: the run's data seed.
    batch_size: examples per batch (per process).
    shard_options: which slice of `source` this process reads; default
      `ShardByJaxProcess()` (all of it on a single process).
    shuffle: shuffle globally, a new order every epoch.
    num_epochs: passes over the shard; None repeats forever.
    drop_remainder: drop a last, smaller batch (keep it for evaluation).
    read_threads: grain reader threads (0 reads in the calling thread).
    batch_fn: combines a list of examples; default stacks every leaf.

  Returns:
    A grain.IterDataset of batches.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  shard = _shard(shard_options)
  ds = grain.MapDataset.source(source)
  n = len(ds)
  if shard.drop_remainder:
    ds = ds[:n - n % shard.shard_count]
  ds = ds[shard.shard_index::shard.shard_count]
  if len(ds) == 0:
    raise ValueError(f"shard {shard.shard_index} of {shard.shard_count} of a "
                     f"source with {n} records is empty")
  if shuffle:
    ds = ds.shuffle(seed=_seed(seed, shard.shard_index, 0))
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.random_map(example_fn, seed=_seed(seed, shard.shard_index, 1))
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=max(4 * batch_size, 16)))
  return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)


def _collate(examples: Sequence[dict]) -> dict:
  """Stacks array/number fields; other fields (lists, str) become [B] object
  arrays, so a batch can carry e.g. the answer strings for evaluation."""
  out = {}
  for key in examples[0]:
    values = [e[key] for e in examples]
    if all(isinstance(v, (np.ndarray, np.generic, int, float, bool))
           for v in values):
      out[key] = np.stack([np.asarray(v) for v in values])
    else:
      column = np.empty(len(values), dtype=object)
      column[:] = [tuple(v) if isinstance(v, list) else v for v in values]
      out[key] = column
  return out


# ---------------------------------------------------------------- pretraining

PRETRAIN_KEYS = ("query_ids", "query_mask", "mlm_positions", "mlm_labels",
                 "mlm_weights")


def pretraining_dataset(query_records: Sequence[dict], tokenizer: Tokenizer,
                        seed: int, batch_size: int,
                        mask_fn: Callable[..., dict | None] | str = "salient",
                        *, query_len: int = 96, max_masks: int = 10,
                        shard_options: ShardOptions | None = None,
                        num_epochs: int | None = None,
                        read_threads: int = DEFAULT_READ_THREADS
                        ) -> grain.IterDataset:
  """Batches of masked query sentences for REALM pretraining.

  Args:
    query_records: random access to {"text", "spans", "source_uid"} records.
    tokenizer: tokenizes the sentences (inside `mask_fn`).
    seed, batch_size, shard_options, num_epochs, read_threads: see
      `build_dataset`.
    mask_fn: a `masking.STRATEGIES` name ("salient", "random_token",
      "random_span") or a function with the signature of
      `masking.mask_salient_span`: (tokenizer, record, rng, query_len=...,
      max_masks=...) -> dict of query_ids/query_mask [query_len],
      mlm_positions/mlm_labels/mlm_weights [max_masks], or None to skip the
      record (no usable span, a mask past the query length).
    query_len: `[CLS] masked sentence [SEP]` length (96 in REALM).
    max_masks: predicted positions per query (10 in REALM).

  Returns:
    IterDataset of {query_ids, query_mask: int32 [B, query_len];
    mlm_positions, mlm_labels: int32 [B, max_masks]; mlm_weights: float32
    [B, max_masks]; source_uid: str [B]}.
  """
  if isinstance(mask_fn, str):
    if mask_fn not in masking.MASKERS:
      raise ValueError(f"unknown masking strategy {mask_fn!r}; expected one "
                       f"of {masking.STRATEGIES}")
    mask_fn = masking.MASKERS[mask_fn]

  def example(record: dict, rng: np.random.Generator) -> dict | None:
    masked = mask_fn(tokenizer, record, rng, query_len=query_len,
                     max_masks=max_masks)
    if masked is None:
      return None
    missing = [k for k in PRETRAIN_KEYS if k not in masked]
    if missing:
      raise ValueError(f"mask_fn output lacks {missing}")
    out = {k: np.asarray(masked[k]) for k in PRETRAIN_KEYS}
    out["mlm_weights"] = out["mlm_weights"].astype(np.float32)
    out["source_uid"] = np.str_(record["source_uid"])
    return out

  return build_dataset(query_records, example, seed=seed,
                       batch_size=batch_size, shard_options=shard_options,
                       num_epochs=num_epochs, read_threads=read_threads)


# ------------------------------------------------------------------------ ICT

class _BlockRows(Sequence):
  """Row numbers 0..N-1 of a block store, as a grain source."""

  def __init__(self, num_blocks: int):
    self._n = num_blocks

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, i: int) -> int:
    return int(i)


def ict_example(block_store, row: int, rng: np.random.Generator, *,
                cls_id: int, sep_id: int, pad_id: int, query_len: int = 64,
                block_len: int | None = None, remove_prob: float = 0.9
                ) -> dict | None:
  """One Inverse Cloze Task pair from block `row`, as in ORQA.

  A uniformly chosen sentence of the block is the query `[CLS] s [SEP]`; with
  probability `remove_prob` it is cut out of the block, which becomes
  `[CLS] title [SEP] body [SEP]`. A single-sentence block whose sentence was
  cut would be empty, so that draw is skipped (None), as ORQA does.
  """
  block_len = block_len or block_store.block_len
  bounds = block_store.sentence_bounds(row)
  if len(bounds) == 0:
    return None
  pick = int(rng.integers(len(bounds)))
  removed = bool(rng.random() < remove_prob)
  if removed and len(bounds) == 1:
    return None
  body = block_store.body_ids(row)
  start, limit = int(bounds[pick, 0]), int(bounds[pick, 1])
  query_ids, query_mask = pad_or_truncate(
      body[start:limit], query_len, cls_id, sep_id, pad_id)
  if removed:
    body = np.concatenate([body[:start], body[limit:]])
  title = block_store.tokens[row][1:1 + int(block_store.title_len[row])]
  block_ids, block_mask, block_segment_ids = pad_or_truncate_pair(
      title, body, block_len, cls_id, sep_id, pad_id)
  return {"query_ids": query_ids, "query_mask": query_mask,
          "block_ids": block_ids, "block_mask": block_mask,
          "block_segment_ids": block_segment_ids,
          "block_row": np.int64(row), "query_removed": np.bool_(removed)}


def ict_dataset(block_store, tokenizer: Tokenizer, seed: int, batch_size: int,
                query_len: int = 64, remove_prob: float = 0.9, *,
                block_len: int | None = None,
                shard_options: ShardOptions | None = None,
                num_epochs: int | None = None,
                read_threads: int = DEFAULT_READ_THREADS) -> grain.IterDataset:
  """Batches of ICT (query sentence, its block) pairs over a `BlockStore`.

  Returns:
    IterDataset of {query_ids, query_mask: int32 [B, query_len];
    block_ids, block_mask, block_segment_ids: int32 [B, block_len];
    block_row: int64 [B]; query_removed: bool [B]}.
  """
  if not 0.0 <= remove_prob <= 1.0:
    raise ValueError(f"remove_prob must be in [0, 1], got {remove_prob}")
  store_sha = block_store.manifest["tokenizer"]["sha256"]
  if tokenizer.spec()["sha256"] != store_sha:
    raise ValueError(f"the block store at {block_store.path} was built with "
                     f"another tokenizer (vocab sha256 {store_sha}); its ids "
                     "would not match this tokenizer's special tokens")

  def example(row: int, rng: np.random.Generator) -> dict | None:
    return ict_example(block_store, row, rng, cls_id=tokenizer.cls_id,
                       sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id,
                       query_len=query_len, block_len=block_len,
                       remove_prob=remove_prob)

  return build_dataset(_BlockRows(block_store.num_blocks), example, seed=seed,
                       batch_size=batch_size, shard_options=shard_options,
                       num_epochs=num_epochs, read_threads=read_threads)


# --------------------------------------------------------------------- Open-QA

class _Indexed(Sequence):
  """Pairs each record with its index, so QA batches can name their source."""

  def __init__(self, source: Sequence):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> tuple[int, Any]:
    return int(i), self._source[int(i)]


def qa_dataset(examples: Sequence[dict], tokenizer: Tokenizer, seed: int,
               batch_size: int, question_len: int = 64, *,
               max_answers: int = 16, max_answer_len: int = 10,
               train: bool = True,
               shard_options: ShardOptions | None = None,
               num_epochs: int | None = None,
               read_threads: int = DEFAULT_READ_THREADS) -> grain.IterDataset:
  """Batches of open-QA questions for fine-tuning or evaluation.

  Args:
    examples: random access to {"question", "answer": [...]} examples.
    tokenizer: tokenizes questions and answers.
    question_len: `[CLS] question [SEP]` length (the retriever's query input;
      the reader re-uses the same tokens).
    max_answers: answers kept per question (tokenized); the rest are dropped
      from the token arrays, but all strings stay in "answers".
    max_answer_len: answers with more tokens than this (the reader's widest
      span) cannot be a gold span and get answer_len 0.
    train: shuffle, repeat forever, drop the last partial batch. With
      train=False: file order, one pass (unless num_epochs) and the last
      batch kept, so with the default sharding every example is seen exactly
      once across hosts.
    seed, batch_size, shard_options, num_epochs, read_threads: see
      `build_dataset`.

  Returns:
    IterDataset of {question_ids, question_mask: int32 [B, question_len];
    answer_ids: int32 [B, max_answers, max_answer_len] (pad_id padded);
    answer_len: int32 [B, max_answers] (0 = no usable answer);
    example_index: int64 [B]; question: object [B] str; answers: object [B]
    tuples of str}.
  """
  cls_id, sep_id, pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id

  def example(indexed: tuple[int, dict], rng: np.random.Generator) -> dict:
    del rng
    index, ex = indexed
    question_ids, question_mask = pad_or_truncate(
        tokenizer.encode(ex["question"]).ids, question_len, cls_id, sep_id,
        pad_id)
    answer_ids = np.full((max_answers, max_answer_len), pad_id, np.int32)
    answer_len = np.zeros(max_answers, np.int32)
    for j, answer in enumerate(list(ex["answer"])[:max_answers]):
      ids = tokenizer.encode(answer).ids
      if 0 < len(ids) <= max_answer_len:
        answer_ids[j, :len(ids)] = ids
        answer_len[j] = len(ids)
    return {"question_ids": question_ids, "question_mask": question_mask,
            "answer_ids": answer_ids, "answer_len": answer_len,
            "example_index": np.int64(index), "question": ex["question"],
            "answers": list(ex["answer"])}

  if not train and num_epochs is None:
    num_epochs = 1
  return build_dataset(
      _Indexed(examples), example, seed=seed, batch_size=batch_size,
      shard_options=shard_options, shuffle=train, num_epochs=num_epochs,
      drop_remainder=train, read_threads=read_threads, batch_fn=_collate)
