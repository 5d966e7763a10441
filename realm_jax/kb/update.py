"""Index a corpus into a knowledge base, or bring one up to date (task=index).

One code path does both: a first build is an update from an empty knowledge
base. For the corpus as it is now (data/documents.py gives each document its
identity):

  1. plan: a document whose id and digest the newest version holds keeps its
     blocks and embeddings; every other one is new (added or changed); ids
     the corpus no longer has are dropped;
  2. the new documents are packed into a block store of their own and
     embedded (kb/.work-<n>/; both steps resume after a kill, as every block
     store build and index build does);
  3. version n is assembled in kb/<n>.tmp/: blocks and embedding rows of
     every document in corpus order, gathered from the previous version and
     the new store (data/block_gather.py), the document table, and the ScaNN
     searcher when index.searcher=scann;
  4. one rename commits it (index/store.commit). Until then the previous
     version serves; a kill anywhere before leaves it serving, and a rerun
     resumes at step 2.

So an updated version holds the very blocks, in the same order, that a build
from scratch of the same corpus holds (same store fingerprint), and the same
embeddings up to float rounding (the new documents are embedded in other
batches). A block's uid includes its document id, so blocks never depend on
another document. A change of model params (a newer pretraining export)
re-embeds everything; another tokenizer or embedding size is refused.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from typing import NamedTuple

import numpy as np
from absl import logging

from realm_jax import config as config_lib
from realm_jax import errors
from realm_jax import integrity
from realm_jax import workdir as workdir_lib
from realm_jax.data import block_builder
from realm_jax.data import block_gather
from realm_jax.data import catalog
from realm_jax.data import corpus
from realm_jax.data import documents as documents_lib
from realm_jax.data import sources
from realm_jax.index import build
from realm_jax.index import export as export_lib
from realm_jax.index import searchers
from realm_jax.index import store as index_store
from realm_jax.kb import versions as kb

FORMAT = 1


class Previous(NamedTuple):
  """The version an update starts from."""
  path: str
  store: corpus.BlockStore
  emb: object               # ShardedEmbeddings [N, D]
  documents: dict           # id -> {"digest", "start", "rows"}


class Fresh(NamedTuple):
  """The new and changed documents' blocks, embedded."""
  store: corpus.BlockStore
  emb: object
  spans: dict               # id -> (first row, rows)


def corpus_documents(config):
  """(documents, where) of data.corpus; where(i) names document i."""
  name = config.data.corpus
  if name.startswith("jsonl:"):
    docs = sources.JsonlDocuments(name.split(":", 1)[1])
    limit = config.data.corpus_limit
    return (docs if not limit else docs[:limit]), docs.where
  return catalog.documents(config), None


@contextlib.contextmanager
def _one_writer(directory: str):
  """An exclusive flock on <directory>/.index.lock (released by the kernel
  however the process ends): a second task=index on the same knowledge base
  waits for the first instead of writing the same version."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, ".index.lock"), "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.warning("another task=index is updating %s; waiting for it",
                      directory)
      fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def _check_record(config, model: dict):
  """Writes kb.json on first use; refuses a model that does not fit."""
  want = {"format": FORMAT, "model": model["model"],
          "tokenizer": model["tokenizer"].identity,
          "block_len": int(model["block_len"]), "dim": int(model["dim"])}
  if not kb.is_kb(config.workdir):
    os.makedirs(config.workdir, exist_ok=True)
    kb.write_record(config.workdir, want)
    return
  have = kb.read_record(config.workdir)
  for key, what in (("tokenizer", "tokenizer"), ("block_len", "block_len"),
                    ("dim", "embedding size"), ("model", "model")):
    if have.get(key) != want[key]:
      raise ValueError(
          f"kb.model={model['model'] or '(config.model)'} does not match the "
          f"knowledge base in {config.workdir}: its {what} is {want[key]!r}, "
          f"the store's is {have.get(key)!r}; refused (index into a new "
          "workdir to use another model)")


def _previous(workdir: str, export_info: dict, cache: str) -> Previous | None:
  """The newest intact version, or None: none yet, or embedded by other
  params (then everything is embedded again)."""
  try:
    path = kb.newest_version(workdir, cache)
  except index_store.CorruptIndexError as e:
    logging.warning("%s; building a new version from scratch", e)
    return None
  if path is None:
    return None
  manifest = index_store.read_manifest(path)
  if manifest["export"].get("params_sha256") != export_info["params_sha256"]:
    logging.warning("%s was embedded with other model params; re-embedding "
                    "every block", path)
    return None
  return Previous(path, corpus.BlockStore(workdir_lib.blocks_dir(path)),
                  index_store.load(path),
                  {d["id"]: d for d in kb.read_documents(path)})


def _work_dir(directory: str, version: int, key: str) -> str:
  """kb/.work-<version>/ for this plan (kept when a killed run made it for
  the same plan); stale work dirs of committed versions are removed."""
  for name in os.listdir(directory):
    if name.startswith(".work-") and name != f".work-{version}":
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
  work = os.path.join(directory, f".work-{version}")
  plan = os.path.join(work, "plan.json")
  if os.path.isdir(work):
    try:
      with open(plan) as f:
        same = json.load(f) == key
    except (OSError, ValueError):
      same = False
    if not same:
      shutil.rmtree(work)
  if not os.path.isdir(work):
    os.makedirs(work)
    integrity.write_json_atomic(plan, key)
  return work


def _embed_new(work: str, new_docs: list, model: dict, config,
               progress: bool) -> Fresh | None:
  """The new documents' blocks, packed and embedded; None when there are
  none (or none of them yields a block)."""
  if not new_docs:
    return None
  path = workdir_lib.blocks_dir(work)
  try:
    store = (corpus.BlockStore(path)
             if corpus.is_block_store(path) else
             block_builder.build_block_store(
                 [d.as_dict() for d in new_docs], model["tokenizer"], path,
                 block_len=model["block_len"], progress=progress,
                 document_ids=True))
  except block_builder.NoBlocksError:
    return None
  index = build.embed_export(
      model["export"], store, workdir_lib.index_dir(work),
      batch_size=config.index.embed_batch_size, dtype=config.index.embed_dtype,
      shard_rows=config.index.embed_shard_rows, keep=1, progress=progress)
  spans = {}
  for row, record in store.iter_records():
    start, rows = spans.get(record["doc"], (row, 0))
    spans[record["doc"]] = (start, rows + 1)
  return Fresh(store, index_store.load(index), spans)


def update(config, progress: bool = True) -> str:
  """Commits a version for data.corpus as it is now, embedded by kb.model;
  returns its path (the newest version's, when nothing changed)."""
  directory = kb.versions_dir(config.workdir)
  cache = workdir_lib.searcher_cache(config.workdir)
  index_store.check_keep(config.index.keep)
  with _one_writer(directory):
    model = kb.document_embedder(config)
    _check_record(config, model)
    if model["export"] is None:
      model["export"] = kb.initial_export(config)
    export_info = {"path": os.path.abspath(model["export"]),
                   "step": int(os.path.basename(model["export"])),
                   "model": model["model"],
                   "params_sha256": integrity.sha256_file(
                       os.path.join(model["export"], export_lib.PARAMS))}
    config_lib.save_config(config, workdir_lib.config_path(config.workdir))
    raw, where = corpus_documents(config)
    docs, skipped = documents_lib.identify(raw, where)
    previous = _previous(config.workdir, export_info, cache)
    if not docs:
      kept = (f"version {previous.path} keeps serving" if previous else
              "nothing was committed")
      raise ValueError(f"data.corpus={config.data.corpus} holds no usable "
                       f"document (skipped: {skipped}); refused, {kept}")
    old = previous.documents if previous else {}
    new_docs = [d for d in docs if old.get(d.id, {}).get("digest") != d.digest]
    ids = {d.id for d in docs}
    changes = {"added": sum(d.id not in old for d in new_docs),
               "changed": sum(d.id in old for d in new_docs),
               "removed": sum(i not in ids for i in old),
               "unchanged": len(docs) - len(new_docs)}
    if previous and not new_docs and list(old) == [d.id for d in docs]:
      logging.info("the corpus is unchanged: %s stays in service",
                   previous.path)
      return previous.path
    committed = index_store.list_versions(directory)
    version = committed[-1] + 1 if committed else 0
    key = hashlib.sha256(json.dumps(
        [export_info, model["tokenizer"].identity, model["block_len"],
         [(d.id, d.digest) for d in new_docs]]).encode()).hexdigest()
    work = os.path.join(directory, f".work-{version}")
    # A full disk: what this attempt wrote is removed (it would keep the
    # disk full), the previous version keeps serving, main says so in one
    # line. A kill keeps it for the rerun to resume from.
    with errors.removed_on_disk_full(
        work, index_store.tmp_path(directory, version)):
      _work_dir(directory, version, key)
      logging.info("knowledge base version %d: %s; embedding the blocks of "
                   "%d document(s)", version, changes, len(new_docs))
      fresh = _embed_new(work, new_docs, model, config, progress)
      path = _assemble(config, directory, version, docs, previous, fresh,
                       skipped, changes, export_info, model["dim"])
    shutil.rmtree(work, ignore_errors=True)
    pruned = index_store.prune(directory, config.index.keep)
    logging.info("knowledge base version %d committed: %s (pruned %s)",
                 version, path, pruned)
    return path


def _assemble(config, directory, version, docs, previous, fresh, skipped,
              changes, export_info, dim) -> str:
  """Writes kb/<version>.tmp/ and commits it; returns the version's path."""
  parts = [p for p in (previous, fresh) if p is not None]
  new_src = len(parts) - 1    # fresh is the last part when there is one
  src, rows, table, start = [], [], [], 0
  for d in docs:
    prior = previous.documents.get(d.id) if previous else None
    if prior is not None and prior["digest"] == d.digest:
      part, first, count = 0, prior["start"], prior["rows"]
    else:
      part = new_src
      first, count = fresh.spans.get(d.id, (0, 0)) if fresh else (0, 0)
    src.append(np.full(count, part, np.int64))
    rows.append(np.arange(first, first + count, dtype=np.int64))
    table.append({"id": d.id, "digest": d.digest, "start": start,
                  "rows": count})
    start += count
  if start == 0:
    raise ValueError("no document of the corpus yields a block (titles too "
                     "long for data.block_len?); refused, nothing committed")
  src, rows = np.concatenate(src), np.concatenate(rows)
  tmp = index_store.tmp_path(directory, version)
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  no_blocks = sum(t["rows"] == 0 for t in table)
  store = block_gather.gather_store(
      workdir_lib.blocks_dir(tmp), [p.store for p in parts], src, rows,
      skipped=dict(skipped, no_blocks=no_blocks),
      stats={"documents_read": len(docs) + sum(skipped.values()),
             "documents": len(docs) - no_blocks})
  emb = np.empty((len(rows), dim), np.float32)
  for s, part in enumerate(parts):
    sel = np.flatnonzero(src == s)
    if sel.size:
      emb[sel] = part.emb[rows[sel]]
  shard_rows = config.index.embed_shard_rows
  shards = [index_store.write_shard(tmp, i, emb[lo:lo + shard_rows])
            for i, lo in enumerate(range(0, len(emb), shard_rows))]
  kb.write_documents(tmp, table)
  options = searchers.searcher_options(config.index)
  if options["kind"] == "scann":   # saved with the version, loaded by readers
    searchers.make_searcher(emb, cache_dir=tmp, **options)
  # Every other file's sum (the shards' are in the manifest already).
  skip = {index_store.MANIFEST} | {s["file"] for s in shards}
  files = {rel: integrity.sha256_file(os.path.join(tmp, rel))
           for rel in integrity.tree_files(tmp) if rel not in skip}
  return index_store.commit(
      directory, version, dim=dim, shards=shards,
      corpus_fingerprint=store.fingerprint,
      # documents: those with at least one block; no_blocks: the others,
      # counted, never silently gone.
      export=dict(export_info, files=files, documents=len(docs) - no_blocks,
                  skipped=dict(skipped, no_blocks=no_blocks),
                  # Kept, with their titles cut to fit a block (this
                  # update's new documents; the others were counted before).
                  title_truncated=(fresh.store.manifest["stats"].get(
                      "title_truncated", 0) if fresh else 0),
                  changes=changes))

