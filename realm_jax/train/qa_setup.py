"""What Open-QA fine-tuning, evaluation and answering stand on: the corpus, the
frozen index, the model config and the starting params.

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
  params       {"retriever": Retriever params, "reader": SpanReader params}.
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
import jax.numpy as jnp
from absl import logging

from realm_jax.data import catalog
from realm_jax.data import corpus
from realm_jax.index import build
from realm_jax.index import export as export_lib
from realm_jax.index import scann_searcher
from realm_jax.index import search
from realm_jax.index import store as index_store
from realm_jax.models import convert
from realm_jax.models.config import RealmConfig
from realm_jax.models.reader import SpanReader
from realm_jax.models.retriever import Retriever, doc_embedder_params
from realm_jax.train import checkpoint as ckpt_lib
from realm_jax.train import model_init

RECORD = "openqa.json"


# ------------------------------------------------------------- corpus, index

def block_store(config) -> corpus.BlockStore:
  """The block store the index rows refer to (see the module docstring)."""
  path = config.data.block_store
  init_from = config.finetune.init_from
  if not path and init_from:
    candidate = os.path.join(init_from, "blocks")
    if os.path.isfile(os.path.join(candidate, "manifest.json")):
      path = candidate
  if path and os.path.isfile(os.path.join(path, "manifest.json")):
    return corpus.BlockStore(path)
  # Missing: built (or a killed build resumed) from data.corpus at
  # data.block_store or <workdir>/blocks, exactly as pretraining does.
  return catalog.block_store(config)


def index_dir(config) -> str:
  if config.finetune.index_dir:
    return config.finetune.index_dir
  if config.finetune.init_from:
    return os.path.join(config.finetune.init_from, "index")
  return os.path.join(config.workdir, "index")


def bootstrap_index(config, cfg: RealmConfig, retriever_params,
                    store: corpus.BlockStore) -> str:
  """Embeds the corpus with the initial document embedder: <workdir>/index/0."""
  export = export_lib.write_export(
      config.workdir, 0, jax.device_get(doc_embedder_params(retriever_params,
                                                            cfg)), cfg)
  logging.info("no committed index in %s: embedding %d blocks with the "
               "initial retriever into %s/index/0", index_dir(config),
               store.num_blocks, config.workdir)
  return build.embed_export(
      export, store, os.path.join(config.workdir, "index"),
      batch_size=config.index.embed_batch_size, dtype=config.index.embed_dtype,
      keep=config.index.keep, progress=jax.process_index() == 0)


def find_index(config) -> str | None:
  """Path of the committed version finetune.index_version (-1: the newest)
  in `index_dir(config)`, or None when there is none."""
  directory = index_dir(config)
  wanted = config.finetune.index_version
  if wanted < 0:
    version = index_store.latest_version(directory)
  elif wanted in index_store.list_versions(directory):
    version = wanted
  else:
    raise FileNotFoundError(
        f"finetune.index_version={wanted}: no committed version {wanted} in "
        f"{directory} (committed: {index_store.list_versions(directory)})")
  return None if version is None else index_store.version_path(directory,
                                                               version)


def open_index(path: str, store: corpus.BlockStore, index_config,
               cache_root: str | None, verify: bool = True):
  """(emb [N, D] memory-mapped, searcher) of one committed index version.

  verify=True reads every byte to check the checksums (fine-tuning and eval
  do it once); False checks only the manifest and the corpus fingerprint, so
  `answer` starts fast. A ScaNN searcher that the embedding job saved in the
  version is loaded; otherwise one is serialized under
  <cache_root>/<content key>/ the first time and loaded afterwards.
  """
  if verify:
    manifest = index_store.verify(path, store.fingerprint)
  else:
    manifest = index_store.read_manifest(path)
    store.check_fingerprint(manifest["corpus_fingerprint"],
                            f"the index at {path}")
  emb = index_store.load(path)
  options = search.searcher_options(index_config)
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
  return emb, search.make_searcher(emb, cache_dir=cache_dir, **options)


def searcher_cache(config) -> str:
  return os.path.join(config.workdir, "searcher_cache")


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
      dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[m.dtype])
  if bert.vocab_size != vocab_size:
    raise ValueError(f"{latest}/model.json has a {bert.vocab_size}-token "
                     f"vocabulary but the block store's tokenizer has "
                     f"{vocab_size}")
  return dataclasses.replace(cfg, bert=bert, whole_word_spans=whole_words)


def check_shapes(params, module, what: str):
  """Raises ValueError naming the first parameter whose shape differs."""
  expected = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            *convert.example_inputs(module))["params"]
  flat_e = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  flat_p = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path in sorted(flat_e.keys() | flat_p.keys(), key=str):
    name = jax.tree_util.keystr(path)
    if path not in flat_p:
      raise ValueError(f"{what}: parameter {name} is missing")
    if path not in flat_e:
      raise ValueError(f"{what}: unexpected parameter {name}")
    if tuple(flat_p[path].shape) != tuple(flat_e[path].shape):
      raise ValueError(f"{what}: parameter {name} has shape "
                       f"{tuple(flat_p[path].shape)}, the model expects "
                       f"{tuple(flat_e[path].shape)}")


def initial_params(config, cfg: RealmConfig, rng) -> dict:
  """{"retriever", "reader" (SpanReader)} where fine-tuning starts."""
  r_rng, s_rng = jax.random.split(rng)
  reader = SpanReader(cfg)
  if config.finetune.init_from:
    step, params = ckpt_lib.restore_params(config.finetune.init_from)
    if "reader" not in params:
      raise ValueError(
          f"the checkpoint in {config.finetune.init_from} has no MLM encoder "
          "(an ICT run?); start from model.init and set model.retriever_init "
          "to the ICT workdir instead")
    logging.info("fine-tuning starts from %s step %d", config.finetune.init_from,
                 step)
    check_shapes(params["retriever"], Retriever(cfg),
                  f"{config.finetune.init_from} retriever")
    bert = params["reader"]["bert"]
    retriever = params["retriever"]
  elif config.model.init == "random":
    # No pretrained encoder to graft: initialise the span reader directly
    # (cheaper than building a random MLM encoder for its BERT).
    retriever = jax.jit(Retriever(cfg).init)(
        r_rng, *convert.example_inputs(Retriever(cfg)))["params"]
    bert = None
  else:
    # The unsplit rng, as pretraining's init uses: a random projection is then
    # the same as in a pretraining run of this config, whose index 0 (built
    # by that projection) the demo's baseline fine-tunes against.
    params = model_init.init_params(config, cfg, rng, with_reader=True)
    retriever, bert = params["retriever"], params["reader"]["bert"]
  if bert is None:
    reader_params = jax.jit(reader.init)(
        s_rng, *convert.example_inputs(reader))["params"]
  else:
    reader_params = convert.init_from_bert(reader, bert, s_rng)
  params = {"retriever": retriever, "reader": reader_params}
  # Fresh float32 copies: the train step donates its state, which must not
  # hold one buffer twice.
  return jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), params)


# ------------------------------------------------------------------ record

def record_path(workdir: str) -> str:
  return os.path.join(workdir, RECORD)


def write_record(workdir: str, index_path: str, store: corpus.BlockStore,
                 cfg: RealmConfig):
  record = {"index_path": os.path.abspath(index_path),
            "block_store": os.path.abspath(store.path),
            "model": export_lib.config_to_dict(cfg)}
  os.makedirs(workdir, exist_ok=True)
  tmp = record_path(workdir) + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, record_path(workdir))


def read_record(workdir: str) -> dict | None:
  path = record_path(workdir)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    record = json.load(f)
  record["model"] = export_lib.config_from_dict(record["model"])
  return record


@dataclasses.dataclass
class FineTuned:
  """A fine-tuned model with its frozen index, ready to answer questions."""
  cfg: RealmConfig
  params: dict
  store: corpus.BlockStore
  emb: object          # index_store.ShardedEmbeddings [N, D]
  searcher: object
  index_path: str
  step: int


def load_finetuned(config, verify: bool = True) -> FineTuned:
  """The latest fine-tuning checkpoint of config.workdir and its index."""
  record = read_record(config.workdir)
  if record is None:
    raise FileNotFoundError(
        f"{record_path(config.workdir)} not found: {config.workdir} is not a "
        "fine-tuning workdir; run task=finetune with this workdir first")
  store = corpus.BlockStore(record["block_store"])
  emb, searcher = open_index(record["index_path"], store, config.index,
                             searcher_cache(config), verify=verify)
  step, params = ckpt_lib.restore_params(config.workdir)
  cfg = record["model"]
  check_shapes(params["reader"], SpanReader(cfg), f"{config.workdir} reader")
  return FineTuned(cfg=cfg, params=params, store=store, emb=emb,
                   searcher=searcher, index_path=record["index_path"], step=step)
