"""A new block store made of rows of existing ones, without tokenizing again.

A knowledge base update (kb/update.py) keeps the blocks of its
unchanged documents and adds those of new and changed documents, which a
small store holds. `gather_store` copies the chosen rows of each source store
(tokens, lengths, uids, sentence starts and the blocks.jsonl lines, as bytes)
into one store in the order asked for. Whole arrays are gathered at once, so
a 100k-block store is copied in about a second. The result is the store
`block_builder.build_block_store` would write for the same blocks in the
same order, fingerprint included.
"""
import os
import shutil

import numpy as np

from realm_jax import integrity
from realm_jax.data import block_builder
from realm_jax.data.corpus import MANIFEST, BlockStore


def gather_store(out_dir: str, stores: list[BlockStore], src: np.ndarray,
                 rows: np.ndarray, *, skipped: dict, stats: dict,
                 shard_rows: int = 65536) -> BlockStore:
  """Writes block i = row rows[i] of stores[src[i]] into a store at out_dir.

  The sources must share tokenizer and block_len. out_dir is replaced if it
  exists (callers write into a private directory and commit it themselves).
  skipped, stats: the manifest's counts (see corpus.py).
  """
  if not stores:
    raise ValueError("gather_store needs at least one source store")
  first = stores[0]
  for s in stores[1:]:
    if (s.block_len, s.manifest["tokenizer"]) != (
        first.block_len, first.manifest["tokenizer"]):
      raise ValueError(f"{s.path} and {first.path} differ in block_len or "
                       "tokenizer; their rows cannot share a store")
  src, rows = np.asarray(src, np.int64), np.asarray(rows, np.int64)
  n = len(rows)
  if n == 0:
    raise ValueError("a block store needs at least one block")
  shutil.rmtree(out_dir, ignore_errors=True)
  os.makedirs(out_dir)

  def gather(field, dtype, width=()):
    """Row rows[i] of stores[src[i]].<field>, for every i."""
    out = np.empty((n,) + width, dtype)
    for s, store in enumerate(stores):
      sel = np.flatnonzero(src == s)
      if sel.size:
        out[sel] = getattr(store, field)[rows[sel]]
    return out

  tokens = gather("tokens", np.int32, (first.block_len,))
  for k, lo in enumerate(range(0, n, shard_rows)):
    _save(out_dir, f"tokens-{k:05d}.npy", tokens[lo:lo + shard_rows])
  num_shards = -(-n // shard_rows)
  uids = gather("uids", "S40")
  for field in ("title_len", "body_len"):
    _save(out_dir, f"{field}.npy", gather(field, np.int32))
  _save_sentences(out_dir, stores, src, rows)
  _save_lines(out_dir, stores, src, rows)
  _save(out_dir, "uids.npy", uids)
  tokenizer = first.tokenizer()
  manifest = dict(first.manifest, num_blocks=n, shard_rows=shard_rows,
                  num_shards=num_shards, skipped=skipped, stats=stats,
                  fingerprint=block_builder.corpus_fingerprint(
                      uids, tokenizer.identity, first.block_len))
  integrity.write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
  return BlockStore(out_dir)


def _save(directory: str, name: str, array: np.ndarray):
  # fsynced: the caller's commit (one rename) must not outrun the data.
  with open(os.path.join(directory, name), "wb") as f:
    np.save(f, array)
    f.flush()
    os.fsync(f.fileno())


def _save_sentences(out_dir, stores, src, rows):
  """sentence_ptr / sentence_starts of the gathered rows."""
  ptrs = [np.asarray(s.sentence_ptr) for s in stores]
  begin = np.empty(len(rows), np.int64)
  count = np.empty(len(rows), np.int64)
  for s, ptr in enumerate(ptrs):
    sel = np.flatnonzero(src == s)
    begin[sel] = ptr[rows[sel]]
    count[sel] = ptr[rows[sel] + 1] - ptr[rows[sel]]
  new_ptr = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
  total = int(new_ptr[-1])
  # Entry j of the new array is entry begin + (j - new_ptr[block]) of its
  # block's source array.
  offset = np.arange(total, dtype=np.int64) - np.repeat(new_ptr[:-1], count)
  where = np.repeat(begin, count) + offset
  which = np.repeat(src, count)
  starts = np.empty(total, np.int32)
  for s, store in enumerate(stores):
    sel = np.flatnonzero(which == s)
    if sel.size:
      starts[sel] = np.asarray(store.sentence_starts)[where[sel]]
  _save(out_dir, "sentence_ptr.npy", new_ptr)
  _save(out_dir, "sentence_starts.npy", starts)


def _save_lines(out_dir, stores, src, rows):
  """blocks.jsonl (each line copied as bytes) and blocks_offsets.npy."""
  datas, offs = [], []
  for store in stores:
    with open(os.path.join(store.path, "blocks.jsonl"), "rb") as f:
      datas.append(f.read())
    offs.append(np.asarray(store.line_offsets))
  lengths = np.empty(len(rows), np.int64)
  with open(os.path.join(out_dir, "blocks.jsonl"), "wb") as out:
    for i, (s, r) in enumerate(zip(src.tolist(), rows.tolist())):
      lo, hi = int(offs[s][r]), int(offs[s][r + 1])
      out.write(datas[s][lo:hi])
      lengths[i] = hi - lo
    out.flush()
    os.fsync(out.fileno())
  _save(out_dir, "blocks_offsets.npy",
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
