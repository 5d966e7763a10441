"""Streaming, resumable build of a block store (format: see corpus.py).

Documents are read once, in order, tokenized in batches and packed into
blocks (packing.py). Blocks fill a fixed-size shard buffer; each full shard is
written into `<out>.tmp/` and then recorded in `<out>.tmp/progress.json`, so
memory holds one shard, not the corpus. A killed build rerun with the same
documents and settings continues after its last recorded shard. At the end the
per-shard metadata is merged, the fingerprint computed, and `<out>.tmp` is
renamed to `<out>`: a store directory either is complete or does not exist.

Duplicate blocks (same uid) are dropped. Seen uids are kept as 8-byte hash
prefixes in a sorted array, 8 bytes per block (~100 MB for all of Wikipedia).
"""
import collections
import hashlib
import itertools
import json
import logging
import os
import shutil
from typing import Iterable, Mapping

import numpy as np
import tqdm

from realm_jax import integrity
from realm_jax.data import packing
from realm_jax.data.corpus import FORMAT, MANIFEST, BlockStore, is_block_store
from realm_jax.data.tokenizer import Tokenizer

SKIP_REASONS = ("empty_text", "undecodable", "long_title", "list_page",
                "duplicate")
_STATS = ("documents_read", "documents", "split_sentences", "title_truncated")

log = logging.getLogger(__name__)


class NoBlocksError(ValueError):
  """Every document was skipped: there is no store to commit."""


def corpus_fingerprint(uids, tokenizer_identity: str, block_len: int) -> str:
  """sha256 over tokenizer identity, block_len and the uids in row order."""
  h = hashlib.sha256()
  h.update(f"{FORMAT}\n{tokenizer_identity}\n{block_len}\n".encode())
  for u in uids:
    h.update(u if isinstance(u, bytes) else u.encode())
    h.update(b"\n")
  return h.hexdigest()


class _SeenUids:
  """Set of uid prefixes: a sorted uint64 array (from the S40 hex uids
  already in the store) plus the current shard's set."""

  def __init__(self, uids: np.ndarray):
    head = b"".join(np.asarray(uids, "S40").astype("S16").tolist())
    self.sorted = np.unique(np.frombuffer(bytes.fromhex(head.decode()), ">u8")
                            .astype(np.uint64))
    self.recent = set()

  def __contains__(self, uid: str) -> bool:
    p = _prefix(uid)
    if p in self.recent:
      return True
    i = np.searchsorted(self.sorted, np.uint64(p))
    return bool(i < len(self.sorted) and self.sorted[i] == p)

  def add(self, uid: str):
    self.recent.add(_prefix(uid))

  def merge_recent(self):
    if self.recent:
      self.sorted = np.union1d(self.sorted, np.fromiter(self.recent, np.uint64))
      self.recent = set()


def _prefix(uid) -> int: return int(uid[:16], 16)  # noqa: E704


class _ShardBuffer:
  """Preallocated rows of one shard and its per-block metadata."""

  def __init__(self, shard_rows: int, block_len: int, tokenizer: Tokenizer):
    self.tokens = np.full((shard_rows, block_len), tokenizer.pad_id, np.int32)
    self.cls, self.sep, self.pad = (tokenizer.cls_id, tokenizer.sep_id,
                                    tokenizer.pad_id)
    self.rows = 0
    self.title_len, self.body_len, self.uids = [], [], []
    self.sent_count, self.sent_starts, self.lines = [], [], []

  def add(self, b: packing.Block, doc_id: str | None = None):
    t, n = len(b.title_ids), len(b.body_ids)
    row = self.tokens[self.rows]
    row[:] = self.pad
    row[0] = self.cls
    row[1:1 + t] = b.title_ids
    row[1 + t] = self.sep
    row[2 + t:2 + t + n] = b.body_ids
    row[2 + t + n] = self.sep
    self.rows += 1
    self.title_len.append(t)
    self.body_len.append(n)
    self.uids.append(b.uid)
    self.sent_count.append(len(b.sentence_starts))
    self.sent_starts.append(b.sentence_starts)
    line = {"uid": b.uid, "title": b.title, "text": b.text,
            "sentences": [list(s) for s in b.sentence_spans]}
    if doc_id is not None:
      line["doc"] = doc_id
    self.lines.append(json.dumps(line, ensure_ascii=False).encode("utf-8")
                      + b"\n")

  def write(self, tmp: str, k: int):
    """Writes shard k's files into tmp (each via a .partial name)."""
    _save(os.path.join(tmp, f"tokens-{k:05d}.npy"),
          lambda f: np.save(f, self.tokens[:self.rows]))
    _save(os.path.join(tmp, f"meta-{k:05d}.npz"), lambda f: np.savez(
        f, title_len=np.array(self.title_len, np.int32),
        body_len=np.array(self.body_len, np.int32),
        uids=np.array(self.uids, "S40"),
        sent_count=np.array(self.sent_count, np.int32),
        sent_starts=np.concatenate(self.sent_starts).astype(np.int32)))
    _save(os.path.join(tmp, f"blocks-{k:05d}.jsonl"),
          lambda f: f.writelines(self.lines))


def _save(path: str, write):
  """write(f) into path + ".partial", then the rename."""
  with open(path + ".partial", "wb") as f:
    write(f)
  os.replace(path + ".partial", path)


def decode(doc, drop_list_pages: bool = True):
  """(title, text, id) as str (id None unless a dict gives one), or a skip
  reason."""
  doc_id = None
  if isinstance(doc, Mapping):
    if "text" not in doc:
      raise TypeError(f"document dicts need a 'text' key (and may have "
                      f"'title'), got {sorted(doc)}")
    doc_id = doc.get("id")
    doc = (doc.get("title") or "", doc["text"])
  if not isinstance(doc, (tuple, list)) or len(doc) != 2:
    raise TypeError("documents must be (title, text) pairs or "
                    f"{{'title', 'text'}} dicts, got {type(doc).__name__}")
  out = []
  for field in (*doc, *([doc_id] if isinstance(doc_id, str) else [])):
    if isinstance(field, bytes):
      try:
        field = field.decode("utf-8")
      except UnicodeDecodeError:
        return "undecodable"
    elif not isinstance(field, str):
      raise TypeError(f"title and text must be str or bytes, got "
                      f"{type(field).__name__}")
    try:  # lone surrogates (surrogateescape) in the title, text or id
      field.encode("utf-8")
    except UnicodeEncodeError:
      return "undecodable"
    out.append(field)
  title, text = out[:2]
  # The title is optional (a JSONL corpus of notes or tickets has none): such
  # a document's blocks are [CLS] [SEP] body [SEP], every token for the body.
  if not text.strip():
    return "empty_text"
  if drop_list_pages and packing.is_dropped_title(title):
    return "list_page"
  return title.strip(), text, doc_id


def build_block_store(documents: Iterable, tokenizer: Tokenizer, out_dir: str,
                      block_len: int = 288, shard_rows: int = 65536,
                      max_title_tokens: int | None = None,
                      batch_docs: int = 512,
                      progress: bool = True, overwrite: bool = False,
                      document_ids: bool = False):
  """Builds (or resumes building) a block store at `out_dir`.
  Args:
    documents: iterable of (title, text) pairs (str or UTF-8 bytes) or
      {"title", "text"} dicts, in a deterministic order (resume relies on it).
    tokenizer: the tokenizer whose ids the store holds.
    out_dir: the store directory to create.
    block_len: document input length, `[CLS] title [SEP] body [SEP]`.
    shard_rows: blocks per token shard (the unit of resume).
    max_title_tokens: documents with longer titles are skipped (long_title),
      or with document_ids their title is cut to this many tokens
      (title_truncated); default min(64, block_len // 4), so a body always
      has room.
    batch_docs: documents tokenized per `encode_batch` call (a text longer
      than packing.SEGMENT_CHARS is tokenized apart, a segment at a time).
    progress: show a tqdm progress bar.
    overwrite: replace an existing committed store at `out_dir`.
    document_ids: documents are dicts with an "id" (a knowledge base's,
      kb/versions.py): each block records it ("doc" in blocks.jsonl) and
      its uid includes it, so duplicates are dropped within a document only
      and the blocks of one document never depend on another's. No list-page
      filter: that is a Wikipedia rule, not a user's.
  Returns:
    The committed `corpus.BlockStore`.
  """
  if max_title_tokens is None:
    max_title_tokens = min(64, block_len // 4)
  if not 0 < max_title_tokens <= block_len - 4:
    raise ValueError(f"max_title_tokens={max_title_tokens} must be in "
                     f"[1, block_len - 4 = {block_len - 4}]")
  out_dir = out_dir.rstrip("/")
  if is_block_store(out_dir):
    if not overwrite:
      raise FileExistsError(f"a block store already exists at {out_dir}; pass "
                            "overwrite=True or remove it")
    shutil.rmtree(out_dir)
  tmp = out_dir + ".tmp"
  config = {"format": FORMAT, "block_len": block_len, "shard_rows": shard_rows,
            "max_title_tokens": max_title_tokens,
            "tokenizer": tokenizer.identity}
  state = _load_progress(tmp, config)
  os.makedirs(tmp, exist_ok=True)
  counts = collections.Counter(state["counts"])
  shard = state["shards"]
  resume_doc, resume_skip = state["next_doc"], state["skip_blocks"]
  if shard:
    log.info("resuming block store build at %s: %d shards done, continuing "
             "at document %d", tmp, shard, resume_doc)
  seen = _SeenUids(_committed_uids(tmp, shard, drop_last=resume_skip))
  buffer = _ShardBuffer(shard_rows, block_len, tokenizer)
  total = len(documents) if hasattr(documents, "__len__") else None
  bar = tqdm.tqdm(total=total, initial=resume_doc, unit="doc", desc="blocks",
                  disable=not progress, mininterval=1.0)
  docs = itertools.islice(enumerate(documents), resume_doc, None)
  doc_index = resume_doc
  while True:
    batch = list(itertools.islice(docs, batch_docs))
    if not batch:
      break
    decoded = [decode(d, drop_list_pages=not document_ids) for _, d in batch]
    ok = [d for d in decoded if isinstance(d, tuple)]
    title_encs = iter(tokenizer.encode_batch([d[0] for d in ok]))
    # None for a long text: packed a segment at a time (packing.py).
    short = lambda t: len(t) <= packing.SEGMENT_CHARS  # noqa: E731
    encs = iter(tokenizer.encode_batch([d[1] for d in ok if short(d[1])]))
    text_encs = iter([next(encs) if short(d[1]) else None for d in ok])
    for (doc_index, _), item in zip(batch, decoded):
      counts_before = dict(counts)
      counts["documents_read"] += 1
      if isinstance(item, str):
        counts[item] += 1
        continue
      title, text, doc_id = item
      doc_id = str(doc_id) if document_ids else None
      title_enc, text_enc = next(title_encs), next(text_encs)
      if len(title_enc.ids) > max_title_tokens:
        cut = title[:int(title_enc.offsets[max_title_tokens - 1, 1])].rstrip()
        cut_enc = tokenizer.encode(cut)
        if not document_ids or not 0 < len(cut_enc.ids) <= max_title_tokens:
          counts["long_title"] += 1
          continue
        # A knowledge base keeps a user's document whatever its title: the
        # title is cut to its first max_title_tokens tokens (counted).
        title, title_enc = cut, cut_enc
        counts["title_truncated"] += 1
      blocks, n_split = (
          packing.pack_document(title, text, title_enc, text_enc, block_len)
          if text_enc else packing.pack_long_document(
              title, text, title_enc, tokenizer.encode, block_len))
      counts["split_sentences"] += n_split
      if not blocks:  # e.g. only control characters
        counts["empty_text"] += 1
        continue
      counts["documents"] += 1
      if doc_id is not None:
        for b in blocks:
          b.uid = packing.block_uid(doc_id, b.uid)
      accepted = []
      for b in blocks:
        if b.uid in seen:
          counts["duplicate"] += 1
        else:
          seen.add(b.uid)
          accepted.append(b)
      already = resume_skip if doc_index == resume_doc else 0
      for k, b in enumerate(accepted[already:], start=already):
        buffer.add(b, doc_id)
        if buffer.rows == shard_rows:
          _commit_shard(buffer, tmp, shard, config, counts_before, doc_index,
                        k + 1)
          seen.merge_recent()
          shard += 1
          buffer = _ShardBuffer(shard_rows, block_len, tokenizer)
    bar.update(len(batch))
  bar.close()
  if buffer.rows:
    _commit_shard(buffer, tmp, shard, config, dict(counts), doc_index + 1, 0)
    shard += 1
  counts = dict(counts)
  _finalize(tmp, out_dir, shard, tokenizer, config, counts)
  return BlockStore(out_dir)


def _load_progress(tmp: str, config: dict) -> dict:
  fresh = {"shards": 0, "next_doc": 0, "skip_blocks": 0, "counts": {}}
  path = os.path.join(tmp, "progress.json")
  if not os.path.isdir(tmp):
    return fresh
  if os.path.isfile(path):
    with open(path) as f:
      state = json.load(f)
    if state["config"] == config:
      return state
    log.warning("discarding partial build at %s: it used other settings "
                "(%s, now %s)", tmp, state["config"], config)
  shutil.rmtree(tmp)
  return fresh


def _committed_uids(tmp: str, shards: int, drop_last: int) -> np.ndarray:
  """uids of the committed shards, minus the last `drop_last` rows.

  Those rows belong to the document a resumed build starts with; it re-packs
  that document and must see the same uid set the first run saw.
  """
  uids = [np.load(os.path.join(tmp, f"meta-{k:05d}.npz"))["uids"]
          for k in range(shards)]
  uids = np.concatenate(uids) if uids else np.zeros([0], "S40")
  return uids[:len(uids) - drop_last]


def _commit_shard(buffer, tmp, k, config, counts, next_doc, skip_blocks):
  buffer.write(tmp, k)
  integrity.write_json_atomic(os.path.join(tmp, "progress.json"), {
      "config": config, "shards": k + 1, "next_doc": next_doc,
      "skip_blocks": skip_blocks, "counts": counts})


def _finalize(tmp, out_dir, num_shards, tokenizer, config, counts):
  """Merges per-shard metadata, writes the manifest, renames tmp -> out_dir."""
  if num_shards == 0:
    raise NoBlocksError("no blocks were produced; skipped documents: " + ", ".join(
        f"{r}={counts.get(r, 0)}" for r in SKIP_REASONS))
  def meta(k):
    with np.load(os.path.join(tmp, f"meta-{k:05d}.npz")) as m:
      return {key: m[key] for key in m.files}
  sizes = [(len(m["uids"]), len(m["sent_starts"]))
           for m in map(meta, range(num_shards))]
  n = sum(r for r, _ in sizes)
  num_sent = sum(s for _, s in sizes)
  open_mm = lambda name, dtype, shape: np.lib.format.open_memmap(
      os.path.join(tmp, name), mode="w+", dtype=dtype, shape=shape)
  title_len = open_mm("title_len.npy", np.int32, (n,))
  body_len = open_mm("body_len.npy", np.int32, (n,))
  uids = open_mm("uids.npy", "S40", (n,))
  sent_ptr = open_mm("sentence_ptr.npy", np.int64, (n + 1,))
  sent_starts = open_mm("sentence_starts.npy", np.int32, (num_sent,))
  line_offsets = open_mm("blocks_offsets.npy", np.int64, (n + 1,))
  row = sent = byte = 0
  sent_ptr[0] = line_offsets[0] = 0
  with open(os.path.join(tmp, "blocks.jsonl"), "wb") as out:
    for k in range(num_shards):
      m = meta(k)
      r = len(m["uids"])
      title_len[row:row + r] = m["title_len"]
      body_len[row:row + r] = m["body_len"]
      uids[row:row + r] = m["uids"]
      sent_ptr[row + 1:row + r + 1] = sent + np.cumsum(m["sent_count"])
      s = len(m["sent_starts"])
      sent_starts[sent:sent + s] = m["sent_starts"]
      with open(os.path.join(tmp, f"blocks-{k:05d}.jsonl"), "rb") as f:
        for j, line in enumerate(f):
          out.write(line)
          byte += len(line)
          line_offsets[row + j + 1] = byte
      row += r
      sent += s
  for arr in (title_len, body_len, uids, sent_ptr, sent_starts, line_offsets):
    arr.flush()
  fingerprint = corpus_fingerprint(uids, tokenizer.identity,
                                   config["block_len"])
  skipped = {r: counts.get(r, 0) for r in SKIP_REASONS}
  manifest = {
      "format": FORMAT, "num_blocks": n, "block_len": config["block_len"],
      "fingerprint": fingerprint, "shard_rows": config["shard_rows"],
      "num_shards": num_shards, "tokenizer": tokenizer.spec(),
      "max_title_tokens": config["max_title_tokens"], "skipped": skipped,
      "stats": {**{k: counts.get(k, 0) for k in _STATS},
                "sentences": num_sent}}
  del title_len, body_len, uids, sent_ptr, sent_starts, line_offsets
  integrity.write_json_atomic(os.path.join(tmp, MANIFEST), manifest)
  # The rename is the commit. Killed before it, a rerun redoes this merge from
  # the intact per-shard files; the leftovers are only removed afterwards.
  os.rename(tmp, out_dir)
  for k in range(num_shards):
    os.remove(os.path.join(out_dir, f"meta-{k:05d}.npz"))
    os.remove(os.path.join(out_dir, f"blocks-{k:05d}.jsonl"))
  os.remove(os.path.join(out_dir, "progress.json"))
  stats = manifest["stats"]
  log.info("block store %s: %d blocks; documents read %d, kept %d; %d "
           "sentences split, %d titles cut; skipped %s", out_dir, n,
           *(stats[k] for k in _STATS),
           ", ".join(f"{r}={c}" for r, c in skipped.items()))
