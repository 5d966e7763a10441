"""What Open-QA fine-tuning, evaluation and answering stand on: the corpus,
the frozen index and the model config. The starting params are
model_init.openqa_params; loading a fine-tuned model is qa/model.py.

Fine-tuning keeps the document embeddings frozen, so one committed index
version serves the whole run. Where things come from:

  block store  data.block_store, else <finetune.init_from>/blocks (the corpus
               the pretraining index was built over), else <workdir>/blocks.
               data.block_store and <workdir>/blocks are built from
               data.corpus if missing, as pretraining builds them, so
               fine-tuning needs no pretraining run.
  index        the newest committed version (or finetune.index_version) in
               finetune.index_dir, else in <init_from>/index, else in
               <workdir>/index. If there is none,
               the initial document embedder builds <workdir>/index/0.
  model shape  <init_from>'s newest export model.json (so a fine-tuning config
               need not repeat the pretraining model settings), else
               config.model via model_init.realm_config.
  params       (model_init.openqa_params) {"retriever": Retriever params,
               "reader": SpanReader params}.
               The reader's BERT starts from the MLM encoder's BERT (REALM:
               the knowledge-augmented encoder); its span head is fresh.

The fine-tuning run records what it used in <workdir>/openqa.json (index
version path, block store, model config), so a resumed run, `eval` and
`answer` use exactly the same index even if the pretraining run later commits
a newer one.
"""
import dataclasses
import hashlib
import json
import os

import jax
from absl import logging

from realm_jax import integrity
from realm_jax import workdir as workdir_lib
from realm_jax.data import catalog
from realm_jax.data import corpus
from realm_jax.index import build
from realm_jax.index import export as export_lib
from realm_jax.index import scann_searcher
from realm_jax.index import searchers
from realm_jax.index import store as index_store
from realm_jax.models.model_config import RealmConfig
from realm_jax.models.retriever import doc_embedder_params
from realm_jax.weights import model_init

# ------------------------------------------------------------- corpus, index

def block_store(config) -> corpus.BlockStore:
  """The block store the index rows refer to (see the module docstring)."""
  path = config.data.block_store
  init_from = config.finetune.init_from
  if not path and init_from:
    candidate = workdir_lib.blocks_dir(init_from)
    if corpus.is_block_store(candidate):
      path = candidate
  if path and corpus.is_block_store(path):
    return corpus.BlockStore(path)
  # Missing: built (or a killed build resumed) from data.corpus at
  # data.block_store or <workdir>/blocks, exactly as pretraining does.
  return catalog.block_store(config)


def index_dir(config) -> str:
  if config.finetune.index_dir:
    return config.finetune.index_dir
  if config.finetune.init_from:
    return workdir_lib.index_dir(config.finetune.init_from)
  return workdir_lib.index_dir(config.workdir)


def bootstrap_index(config, cfg: RealmConfig, retriever_params,
                    store: corpus.BlockStore) -> str:
  """Embeds the corpus with the initial document embedder: <workdir>/index/0."""
  logging.info("no committed index in %s: embedding %d blocks with the "
               "initial retriever into %s/index/0", index_dir(config),
               store.num_blocks, config.workdir)
  return embed_corpus(config, cfg, retriever_params, store, 0)


def embed_corpus(config, cfg: RealmConfig, retriever_params,
                 store: corpus.BlockStore, step: int) -> str:
  """Embeds the corpus with the document embedder of `retriever_params`:
  exports/<step>, then <workdir>/index/<step> (resumable; returns its path)."""
  export = export_lib.write_export(
      config.workdir, step, jax.device_get(doc_embedder_params(retriever_params,
                                                               cfg)), cfg)
  return build.embed_export(
      export, store, workdir_lib.index_dir(config.workdir),
      batch_size=config.index.embed_batch_size, dtype=config.index.embed_dtype,
      keep=config.index.keep, progress=jax.process_index() == 0)


def check_index(path: str, store: corpus.BlockStore, cache_root: str | None):
  """Raises CorruptIndexError unless `path` is an intact version built over
  `store`. Reads every byte, once per unchanged set of files: the result is
  remembered under <cache_root>/verified/ (integrity.verify_once), so a
  second fine-tuning start, eval or `answer` does not hash the index again,
  and none of them ever serves a corrupted version."""
  if not os.path.isdir(path):
    raise index_store.CorruptIndexError(f"{path}: no such index version")
  verified_once(path, lambda: index_store.verify(path, store.fingerprint),
                cache_root)


def verified_once(path: str, check, cache_root: str | None):
  """Runs check() (which raises on corruption) once per unchanged set of
  files under `path`, remembered under <cache_root>/verified/
  (integrity.verify_once); every time when cache_root is empty."""
  if not cache_root:
    check()
    return
  memo = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
  integrity.verify_once(path, integrity.tree_files(path), check,
                        os.path.join(cache_root, "verified", memo + ".json"))


def find_index(config, store: corpus.BlockStore) -> str | None:
  """Path of the committed version finetune.index_version in
  `index_dir(config)`, checked (check_index); None when there is none.

  -1 (the default) takes the newest intact version: a corrupt newer one is
  skipped with a warning, as the trainer's IndexWatcher skips it. A version
  asked for by number must be intact."""
  directory = index_dir(config)
  cache = searcher_cache(config)
  wanted = config.finetune.index_version
  committed = index_store.list_versions(directory)
  if wanted >= 0:
    if wanted not in committed:
      raise FileNotFoundError(
          f"finetune.index_version={wanted}: no committed version {wanted} "
          f"in {directory} (committed: {committed})")
    path = index_store.version_path(directory, wanted)
    check_index(path, store, cache)
    return path
  return newest_intact(directory, lambda path: check_index(path, store, cache))


def newest_intact(directory: str, check) -> str | None:
  """Path of the newest committed version in `directory` that check(path)
  accepts; a bad newer one is skipped with a warning, as the trainer's
  IndexWatcher skips it. None when nothing is committed; CorruptIndexError
  naming each when every version is bad."""
  refused = []
  for version in reversed(index_store.list_versions(directory)):
    path = index_store.version_path(directory, version)
    try:
      check(path)
      return path
    except (index_store.CorruptIndexError, OSError, ValueError) as e:
      logging.warning("skipping version %s: %s", path, e)
      refused.append(str(e))
  if refused:
    raise index_store.CorruptIndexError(
        f"no intact version in {directory}: " + "; ".join(refused))
  return None


def open_index(path: str, store: corpus.BlockStore, index_config,
               cache_root: str | None):
  """(emb [N, D] memory-mapped, searcher) of one committed index version,
  checked first (check_index). A ScaNN searcher that the embedding job saved
  in the version is loaded; otherwise one is serialized under
  <cache_root>/<content key>/ the first time and loaded afterwards.
  """
  check_index(path, store, cache_root)
  manifest = index_store.read_manifest(path)
  emb = index_store.load(path)
  options = searchers.searcher_options(index_config)
  scann_overrides = {k: v for k, v in options.items() if k != "kind"}
  cache_dir = None
  if options["kind"] == "scann" and os.path.isdir(
      scann_searcher.saved_path(emb.shape, path, **scann_overrides)):
    cache_dir = path   # the embedding job saved one with the version
  elif cache_root and options["kind"] == "scann":
    # Keyed by content (the shard checksums), not by path: two runs can have
    # an index/<step> of the same name with different embeddings.
    key = hashlib.sha256(json.dumps([s["sha256"] for s in manifest["shards"]])
                         .encode()).hexdigest()[:16]
    cache_dir = os.path.join(cache_root, key)
    os.makedirs(cache_dir, exist_ok=True)
  return emb, searchers.make_searcher(emb, cache_dir=cache_dir, **options)


def searcher_cache(config) -> str:
  return workdir_lib.searcher_cache(config.workdir)


# ------------------------------------------------------------ model, params

def model_config(config, vocab_size: int) -> RealmConfig:
  """The RealmConfig: <init_from>'s export model.json, else config.model;
  whole_word_spans from finetune.whole_word_spans."""
  latest = (export_lib.latest_export(config.finetune.init_from)
            if config.finetune.init_from else None)
  whole_words = config.finetune.whole_word_spans
  if latest is None:
    return dataclasses.replace(model_init.realm_config(config, vocab_size),
                               whole_word_spans=whole_words)
  _, _, cfg = export_lib.load_export(latest)
  m = config.model
  bert = dataclasses.replace(
      cfg.bert, dropout_rate=m.dropout_rate,
      attention_dropout_rate=m.dropout_rate,
      dtype=model_init.compute_dtype(m.dtype))
  if bert.vocab_size != vocab_size:
    raise ValueError(f"{latest}/model.json has a {bert.vocab_size}-token "
                     f"vocabulary but the block store's tokenizer has "
                     f"{vocab_size}")
  return dataclasses.replace(cfg, bert=bert, whole_word_spans=whole_words)


# ------------------------------------------------------------------ record

def record_path(workdir: str) -> str:
  return os.path.join(workdir, workdir_lib.OPENQA_RECORD)


def write_record(workdir: str, index_path: str, store: corpus.BlockStore,
                 cfg: RealmConfig, start_index_path: str | None = None):
  """openqa.json: the index answering uses; start_index_path, where it
  differs, the fixed index fine-tuning trained against (dense_zero_shot's)."""
  record = {"index_path": os.path.abspath(index_path),
            "block_store": os.path.abspath(store.path),
            "model": export_lib.config_to_dict(cfg)}
  if start_index_path:
    record["start_index_path"] = os.path.abspath(start_index_path)
  integrity.write_json_atomic(record_path(workdir), record)


def read_record(workdir: str) -> dict | None:
  path = record_path(workdir)
  if not os.path.isfile(path):
    return None
  record = integrity.read_json(path)
  record["model"] = export_lib.config_from_dict(record["model"])
  return record
