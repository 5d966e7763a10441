"""The knowledge corpus on disk: a streaming, resumable block-store builder and
the memory-mapped `BlockStore` reader. Row i always means block i.

Layout of a store directory:
  manifest.json        {format, num_blocks, block_len, fingerprint, shard_rows,
                        num_shards, tokenizer (spec), max_title_tokens, skipped,
                        stats}
  tokens-00000.npy ... int32 [shard_rows, block_len] (last shard may be
                       shorter): `[CLS] title [SEP] body [SEP]` right-padded
                       with pad_id. Memory-mappable; block i is row
                       i % shard_rows of shard i // shard_rows.
  title_len.npy        int32 [N] title tokens per block.
  body_len.npy         int32 [N] body tokens per block.
  uids.npy             S40 [N] sha1 hex uid per block.
  sentence_ptr.npy     int64 [N + 1]; block i's sentences are entries
                       sentence_ptr[i]:sentence_ptr[i+1] of sentence_starts.
  sentence_starts.npy  int32 [S] body-token index where each sentence starts.
  blocks.jsonl         one {"uid", "title", "text", "sentences": [[s, l], ...]}
                       per block (char spans of sentences inside text).
  blocks_offsets.npy   int64 [N + 1] byte offset of each line of blocks.jsonl.

fingerprint = sha256(tokenizer identity, block_len, every uid in order): an
index built for one store can check that rows still mean the same blocks.
"""
import json
import os

import numpy as np

from realm_jax.data.tokenizer import Tokenizer, tokenizer_from_spec

# The on-disk layout's version: block_builder writes it, BlockStore checks it.
FORMAT = "realm_jax.block_store/1"


class ShardedRows:
  """Read-only [N, block_len] int32 view over memory-mapped token shards.

  Supports `len`, `.shape`, integer / slice / integer-array indexing of rows
  (returning ndarrays) and `np.asarray` (which reads everything).
  """

  def __init__(self, shards: list[np.ndarray], shard_rows: int):
    self.shards = shards
    self.shard_rows = shard_rows
    n = sum(len(s) for s in shards)
    self.shape = (n, shards[0].shape[1] if shards else 0)
    self.dtype = np.dtype(np.int32)

  def __len__(self):
    return self.shape[0]

  def __getitem__(self, rows):
    if isinstance(rows, (int, np.integer)):
      r = int(rows) + (self.shape[0] if rows < 0 else 0)
      if not 0 <= r < self.shape[0]:
        raise IndexError(f"block row {rows} out of range [0, {self.shape[0]})")
      return np.asarray(self.shards[r // self.shard_rows][r % self.shard_rows])
    if isinstance(rows, slice):
      rows = np.arange(*rows.indices(self.shape[0]))
    rows = np.asarray(rows, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
      raise IndexError(f"block rows must lie in [0, {self.shape[0]}), got "
                       f"min {rows.min()} max {rows.max()}")
    flat = rows.reshape(-1)
    out = np.empty((flat.size, self.shape[1]), np.int32)
    shard_of = flat // self.shard_rows
    for s in np.unique(shard_of):
      sel = shard_of == s
      out[sel] = self.shards[s][flat[sel] % self.shard_rows]
    return out.reshape(rows.shape + (self.shape[1],))

  def __array__(self, dtype=None, copy=None):
    if not self.shards:
      return np.zeros(self.shape, dtype or np.int32)
    out = np.concatenate([np.asarray(s) for s in self.shards])
    return out.astype(dtype) if dtype is not None else out


MANIFEST = "manifest.json"


def is_block_store(path: str) -> bool:
  """Whether `path` holds a committed block store (its manifest, written
  last, exists: a killed build leaves only <path>.tmp)."""
  return os.path.isfile(os.path.join(path, MANIFEST))


class BlockStore:
  """Reads a committed block store directory (see the module docstring)."""

  def __init__(self, path: str):
    self.path = path
    manifest_path = os.path.join(path, MANIFEST)
    if not is_block_store(path):
      hint = " (a build is in progress or was killed: rerun it to resume)" if (
          os.path.isdir(path.rstrip("/") + ".tmp")) else ""
      raise FileNotFoundError(f"no block store at {path}: manifest.json "
                              f"missing{hint}")
    with open(manifest_path) as f:
      self.manifest = json.load(f)
    if self.manifest.get("format") != FORMAT:
      raise ValueError(f"{manifest_path}: format "
                       f"{self.manifest.get('format')!r} is not {FORMAT!r}")
    self.num_blocks = int(self.manifest["num_blocks"])
    self.block_len = int(self.manifest["block_len"])
    self.fingerprint = self.manifest["fingerprint"]
    self.shard_rows = int(self.manifest["shard_rows"])
    shards = [np.load(os.path.join(path, f"tokens-{k:05d}.npy"), mmap_mode="r")
              for k in range(self.manifest["num_shards"])]
    self.tokens = ShardedRows(shards, self.shard_rows)
    if len(self.tokens) != self.num_blocks:
      raise ValueError(f"{path}: token shards hold {len(self.tokens)} rows but "
                       f"the manifest says {self.num_blocks} blocks")
    load = lambda name: np.load(os.path.join(path, name), mmap_mode="r")
    self.title_len = load("title_len.npy")
    self.body_len = load("body_len.npy")
    self.uids = load("uids.npy")  # S40 bytes; uid(i) gives str
    self.sentence_ptr = load("sentence_ptr.npy")
    self.sentence_starts = load("sentence_starts.npy")
    self.line_offsets = load("blocks_offsets.npy")  # int64 [N + 1]
    self._jsonl_fd = None
    self._uid_order = None

  # Pickled (e.g. into data-loader worker processes) as just the path: the
  # memory maps are reopened on the other side instead of being copied.
  def __getstate__(self):
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])

  def __len__(self):
    return self.num_blocks

  def tokenizer(self) -> Tokenizer:
    """The tokenizer this store was built with (checked by sha256)."""
    return tokenizer_from_spec(self.manifest["tokenizer"])

  def check_fingerprint(self, expected: str, what: str = "index"):
    if expected != self.fingerprint:
      raise ValueError(f"{what} was built for corpus fingerprint {expected}, "
                       f"but the block store at {self.path} has "
                       f"{self.fingerprint}")

  def uid(self, i: int) -> str:
    return self.uids[i].decode()

  def record(self, i: int) -> dict:
    """The blocks.jsonl line of block i: uid, title, text, sentences."""
    if not 0 <= i < self.num_blocks:
      raise IndexError(f"block {i} out of range [0, {self.num_blocks})")
    if self._jsonl_fd is None:
      self._jsonl_fd = os.open(os.path.join(self.path, "blocks.jsonl"),
                               os.O_RDONLY)
    # pread: no shared file position, so concurrent reader threads are safe.
    start, end = int(self.line_offsets[i]), int(self.line_offsets[i + 1])
    return json.loads(os.pread(self._jsonl_fd, end - start, start))

  def title(self, i: int) -> str:
    return self.record(i)["title"]

  def text(self, i: int) -> str:
    return self.record(i)["text"]

  def iter_records(self):
    """Yields (row, record) for every block, reading blocks.jsonl once."""
    with open(os.path.join(self.path, "blocks.jsonl"), "rb") as f:
      for i, line in enumerate(f):
        yield i, json.loads(line)

  def body_ids(self, row: int) -> np.ndarray:
    """int32 [body_len] body tokens of a block (no title, no specials)."""
    t = int(self.title_len[row])
    return self.tokens[row][2 + t:2 + t + int(self.body_len[row])]

  def sentence_bounds(self, row: int) -> np.ndarray:
    """int32 [s, 2] (start, limit) of each sentence, in body-token indices."""
    starts = np.asarray(self.sentence_starts[
        self.sentence_ptr[row]:self.sentence_ptr[row + 1]], np.int32)
    limits = np.append(starts[1:], np.int32(self.body_len[row]))
    return np.stack([starts, limits], axis=1)

  def doc_inputs(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Retriever document inputs for `rows` (any shape [...]).

    Returns:
      (input_ids, segment_ids, input_mask), each int32 [..., block_len]:
      segment 0 covers [CLS] title [SEP], segment 1 body [SEP].
    """
    rows = np.asarray(rows, np.int64)
    ids = self.tokens[rows]
    t = np.asarray(self.title_len)[rows][..., None]
    length = t + np.asarray(self.body_len)[rows][..., None] + 3
    pos = np.arange(self.block_len, dtype=np.int32)
    mask = (pos < length).astype(np.int32)
    segment = ((pos >= t + 2) & (pos < length)).astype(np.int32)
    return ids, segment, mask

  def rows_for_uids(self, uids) -> np.ndarray:
    """int64 [len(uids)] row of each uid, -1 where the store lacks it."""
    if self._uid_order is None:
      all_uids = np.asarray(self.uids)
      self._uid_order = np.argsort(all_uids, kind="stable")
      self._sorted_uids = all_uids[self._uid_order]
    keys = np.asarray([u.encode() if isinstance(u, str) else u for u in uids],
                      dtype="S40")
    sorted_uids = self._sorted_uids
    pos = np.searchsorted(sorted_uids, keys)
    pos = np.minimum(pos, max(self.num_blocks - 1, 0))
    found = sorted_uids[pos] == keys
    return np.where(found, self._uid_order[pos], -1).astype(np.int64)

  def close(self):
    if getattr(self, "_jsonl_fd", None) is not None:
      os.close(self._jsonl_fd)
      self._jsonl_fd = None

  def __del__(self):
    self.close()

