"""A small Open-QA setup on the demo corpus, shared by the finetune, eval and
answer tests.

`make_pretrain_workdir` writes what `finetune.init_from` reads from a REALM
pretraining run: blocks/, exports/0 (model.json), index/0 (embedded by the
real embedding job code) and a checkpoint whose params are {"retriever",
"reader" (MLM encoder)}. The weights are random draws (tests/random_params.py)
because training them would take minutes; everything downstream is real.
"""
import json
import os

import flax.traverse_util as traverse_util
import jax
import numpy as np

from realm_jax import checkpoint as ckpt_lib
from realm_jax import config as config_lib
from realm_jax.batching import qa_inputs
from realm_jax.data import catalog
from realm_jax.data import demo_corpus
from realm_jax.index import build
from realm_jax.index import export as export_lib
from realm_jax.models import convert
from realm_jax.models.reader import MLMEncoder, SpanReader
from realm_jax.models.retriever import Retriever, doc_embedder_params
from realm_jax.retrieval import openqa_record
from realm_jax.train import finetune_step
from realm_jax.train import state as state_lib
from realm_jax.weights import model_init
from random_params import random_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_LIMIT = 20
PRETRAIN_STEP = 5


def tiny_config(workdir: str, **overrides):
  """configs/tiny_cpu.py shrunk further; overrides are "section.field"=value."""
  c = config_lib.from_file(os.path.join(ROOT, "configs", "tiny_cpu.py"))
  c.workdir = workdir
  c.data.corpus_limit = CORPUS_LIMIT
  c.finetune.question_len = 24
  c.finetune.reader_len = 64
  c.finetune.retriever_beam = 16
  c.finetune.reader_beam = 2
  c.finetune.batch_size = 4
  c.finetune.num_steps = 10
  c.finetune.learning_rate = 1e-3
  c.finetune.warmup_steps = 1
  c.train.log_every = 1
  c.train.checkpoint_every = 100
  c.eval.batch_size = 4
  c.eval.recall_k = 4
  for key, value in overrides.items():
    section, field = key.split(".")
    setattr(c[section], field, value)
  return c


def content_sensitive(params, scale: float = 5.0):
  """A stand-in for a pretrained retriever: weights x scale, biases 0.

  With BERT's N(0, 0.02) weights the [CLS] output hardly depends on the
  input, so every block embeds alike (cosine 0.99999) and nothing can be
  learned against the frozen index (the reason REALM warm-starts from ICT).
  Larger weights make the embeddings differ (mean cosine ~0.995 here).
  """
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      k: np.zeros_like(v) if k[-1] == "bias" else
      v * scale if k[-1] in ("kernel", "embedding") else v
      for k, v in flat.items()})


def make_pretrain_workdir(path: str):
  """blocks/, exports/0, index/0 and checkpoints/<PRETRAIN_STEP>/ under path."""
  c = tiny_config(path)
  store = catalog.block_store(c, progress=False)
  cfg = model_init.realm_config(c, store.tokenizer().vocab_size)
  retriever, reader = Retriever(cfg), MLMEncoder(cfg)
  params = {"retriever": content_sensitive(random_params(
                retriever, *convert.example_inputs(retriever), seed=1)),
            "reader": random_params(reader, *convert.example_inputs(reader),
                                    seed=2)}
  export = export_lib.write_export(
      path, 0, doc_embedder_params(params["retriever"], cfg), cfg)
  build.embed_export(export, store, os.path.join(path, "index"),
                     batch_size=64, progress=False)
  state = state_lib.create(params, state_lib.bert_adamw(c.train),
                           jax.random.PRNGKey(0))
  checkpointer = ckpt_lib.Checkpointer(path)
  checkpointer.save(PRETRAIN_STEP, state)
  checkpointer.close()
  return store, params


def make_finetuned_workdir(work: str, pre: str, store, pre_params):
  """A fine-tuning workdir on `pre`'s index: record, and a checkpoint of
  {pretrained retriever, span reader} (random reader weights: for tests of
  the plumbing, not of the answers)."""
  config = tiny_config(work, **{"finetune.init_from": pre})
  cfg = openqa_record.model_config(config, store.tokenizer().vocab_size)
  reader = SpanReader(cfg)
  params = {"retriever": pre_params["retriever"],
            "reader": random_params(reader, *convert.example_inputs(reader),
                                    seed=3)}
  state = state_lib.create(params, finetune_step.optimizer(config),
                           jax.random.PRNGKey(0))
  checkpointer = ckpt_lib.Checkpointer(work)
  checkpointer.save(1, state)
  checkpointer.close()
  openqa_record.write_record(work, os.path.join(pre, "index", "0"), store, cfg)
  return work


def answerable_questions(store, n: int) -> list[dict]:
  """n demo questions (any split) whose answer occurs in some block's text."""
  texts = [store.text(i) for i in range(store.num_blocks)]
  out = []
  for split in ("train", "dev", "test"):
    for ex in demo_corpus.demo_qa(split, limit=CORPUS_LIMIT):
      if qa_inputs.blocks_with_answer(texts, ex["answer"]).any():
        out.append(ex)
  if len(out) < n:
    raise AssertionError(f"only {len(out)} answerable demo questions")
  return out[:n]


def write_jsonl(path: str, examples) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for ex in examples:
      f.write(json.dumps(ex, ensure_ascii=False) + "\n")
  return path


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def first_logged(rows, key):
  return np.asarray([r[key] for r in rows if key in r])
