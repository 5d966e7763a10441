"""A knowledge base: any corpus indexed with a trained model, kept current.

`task=index` (realm_jax/tasks/index.py) builds one in its workdir and
kb/update.py updates it; eval, answer and qa.Answerer search it. Layout:

  <workdir>/kb.json        which model indexes this corpus (kb.model, as an
                           absolute path; "" for config.model's initial
                           retriever), its tokenizer, block_len and dim
  <workdir>/config.json    the config task=index ran with (question_len,
                           reader_len, searcher ...), for answering
  <workdir>/kb/<n>/        committed version n: one index version
                           (manifest.json, emb-*.npy; index/store.py) whose
                           rows are the blocks of its own block store
                           blocks/, and documents.json ({"id", "digest",
                           "start", "rows"}: a list each, one entry per
                           document in corpus order; document j's blocks
                           are rows start[j] .. start[j]+rows[j]-1)
  <workdir>/kb/<n>.tmp/    version n being assembled
  <workdir>/kb/.work-<n>/  the new and changed documents' blocks and
                           embeddings (resumable; removed after the commit)

Block store and index are one directory, so one rename commits both: a
reader never pairs an index with another version's blocks. The index
manifest's `export` records the embedding model and the sha256 of every
other file of the version, which `check_version` verifies.
"""
import json
import os

import jax

from realm_jax import integrity
from realm_jax import workdir as workdir_lib
from realm_jax.data import catalog
from realm_jax.data import corpus
from realm_jax.index import export as export_lib
from realm_jax.index import store as index_store
from realm_jax.models.retriever import doc_embedder_params
from realm_jax.retrieval import openqa_record
from realm_jax.weights import model_init

DOCUMENTS = "documents.json"


def is_kb(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, workdir_lib.KB_RECORD))


def versions_dir(workdir: str) -> str:
  return workdir_lib.kb_dir(workdir)


def read_record(workdir: str) -> dict:
  return integrity.read_json(
      os.path.join(workdir, workdir_lib.KB_RECORD), "remove it and run task=index again "
      "(its committed versions are kept)")


def write_record(workdir: str, record: dict):
  integrity.write_json_atomic(os.path.join(workdir, workdir_lib.KB_RECORD), record)


# ------------------------------------------------------------------ the model

def document_embedder(config) -> dict:
  """Which export embeds the documents, and the store settings it needs.

  kb.model is a fine-tuning workdir (openqa.json): the export that built the
  index it fine-tuned against (its documents were embedded by exactly that,
  and its query embedder learned to match them); a pretraining workdir: its
  newest export; "": config.model's initial retriever (e.g.
  model.init=hf_realm for google/realm-* weights), exported by
  `initial_export` into <workdir>/exports/0 on the first run and used from
  there on.

  Returns {"model", "export" (path; None until initial_export), "tokenizer"
  (Tokenizer), "block_len", "dim"}; reads no params.
  """
  model = config.kb.model
  if not model:
    tok = catalog.tokenizer(config)
    export = export_lib.export_path(config.workdir, 0)
    if not os.path.isdir(export):
      export = None
    cfg = (export_lib.load_config(export) if export else
           model_init.realm_config(config, tok.vocab_size))
    return {"model": "", "export": export, "tokenizer": tok,
            "block_len": config.data.block_len, "dim": cfg.proj_size}
  model = os.path.abspath(model)
  record = openqa_record.read_record(model)
  if record is not None:
    manifest = index_store.read_manifest(record["index_path"])
    export = manifest["export"].get("path", "")
    if not os.path.isdir(export):
      raise FileNotFoundError(
          f"kb.model={model}: the export that embedded its index "
          f"({export or 'not recorded'}) is gone; documents must be embedded "
          "by the model its query embedder was trained against")
    store = corpus.BlockStore(record["block_store"])
  else:
    export = export_lib.latest_export(model)
    if export is None:
      raise FileNotFoundError(
          f"kb.model={model} is neither a fine-tuning workdir ({openqa_record.RECORD})"
          " nor a pretraining workdir (exports/)")
    blocks = workdir_lib.blocks_dir(model)
    store = corpus.BlockStore(blocks) if corpus.is_block_store(blocks) else None
  return {"model": model, "export": export,
          "tokenizer": store.tokenizer() if store else catalog.tokenizer(config),
          "block_len": store.block_len if store else config.data.block_len,
          "dim": export_lib.load_config(export).proj_size}


def initial_export(config) -> str:
  """<workdir>/exports/0: config.model's initial document embedder."""
  existing = export_lib.export_path(config.workdir, 0)
  if os.path.isdir(existing):
    return existing
  cfg = model_init.realm_config(config, catalog.tokenizer(config).vocab_size)
  params = model_init.init_params(config, cfg, model_init.params_key(
      config.seed), with_reader=False)["retriever"]
  return export_lib.write_export(
      config.workdir, 0, jax.device_get(doc_embedder_params(params, cfg)), cfg)


# ------------------------------------------------------------------ versions

def read_documents(path: str) -> list[dict]:
  """documents.json of a committed version: [{"id", "digest", "start",
  "rows"}] in corpus order."""
  with open(os.path.join(path, DOCUMENTS), encoding="utf-8") as f:
    table = json.load(f)
  return [dict(zip(table, values)) for values in zip(*table.values())]


def write_documents(path: str, table: list[dict]):
  """documents.json from [{"id", "digest", "start", "rows"}] (fsynced)."""
  keys = ("id", "digest", "start", "rows")
  with open(os.path.join(path, DOCUMENTS), "w", encoding="utf-8") as f:
    json.dump({k: [t[k] for t in table] for k in keys}, f, ensure_ascii=False)
    f.flush()
    os.fsync(f.fileno())


def check_version(path: str, cache_root: str | None = None) -> corpus.BlockStore:
  """The version's BlockStore, once every file is checked: the index (shard
  sums, and built over this very store) and the block store and document
  table (the sums in the manifest). Raises CorruptIndexError naming the
  first bad file. Remembered under <cache_root>/verified/ (verify_once)."""
  def check():
    manifest = index_store.read_manifest(path)
    sums = manifest["export"].get("files")
    if not sums:
      raise index_store.CorruptIndexError(f"{path}: not a knowledge base "
                                          "version (no file sums)")
    for rel, digest in sums.items():
      full = os.path.join(path, rel)
      if not os.path.isfile(full):
        raise index_store.CorruptIndexError(f"{full}: missing")
      if integrity.sha256_file(full) != digest:
        raise index_store.CorruptIndexError(
            f"{full}: sha256 does not match the version's manifest")
    store = corpus.BlockStore(workdir_lib.blocks_dir(path))
    index_store.verify(path, store.fingerprint)
  if not os.path.isdir(path):
    raise index_store.CorruptIndexError(f"{path}: no such version")
  openqa_record.verified_once(path, check, cache_root)
  return corpus.BlockStore(workdir_lib.blocks_dir(path))


def newest_version(workdir: str, cache_root: str | None = None) -> str | None:
  """Path of the newest intact committed version (a corrupt newer one is
  skipped with a warning); None when nothing is committed."""
  return openqa_record.newest_intact(versions_dir(workdir),
                              lambda path: check_version(path, cache_root))


def open_version(path: str, index_config, cache_root: str | None):
  """(store, emb, searcher) of one version, checked first."""
  store = check_version(path, cache_root)
  store.record(0)   # opens blocks.jsonl now: a version pruned while it is
                    # in service stays readable (its files are all open)
  emb, searcher = openqa_record.open_index(path, store, index_config, cache_root)
  return store, emb, searcher
