"""The pipeline's initial retriever keeps what MiniLM knows: on a real
sample of the demo corpus its answer recall@5 is within 1 point of
zero-shot all-MiniLM-L6-v2 (all 6 layers, mean pooling, cosine), with the
demo's settings (model.proj_init=identity, proj_size=384)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import config as config_lib
from realm_jax.batching.qa_inputs import blocks_with_answer
from realm_jax.data import catalog
from realm_jax.data import demo_corpus
from realm_jax.data import pipeline
from realm_jax.index import build
from realm_jax.models.bert import BertEncoder
from realm_jax.weights import model_init
import openqa_workdir as ow

LIMIT = 250   # documents: ~410 blocks, ~20 test questions


def _demo_config(tmp_path, **overrides):
  config = config_lib.from_file(os.path.join(ow.ROOT, "configs", "demo.py"))
  config.data.corpus_limit = LIMIT
  config.data.block_store = str(tmp_path / "blocks")
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def _embed(fn, inputs, batch=64):
  return np.concatenate([np.asarray(fn(*[x[i:i + batch] for x in inputs]))
                         for i in range(0, len(inputs[0]), batch)])


def _recall_at_5(store, questions, q_emb, d_emb):
  top = np.argsort(-(q_emb @ d_emb.T), axis=1, kind="stable")[:, :5]
  return np.mean([blocks_with_answer([store.text(int(r)) for r in top[i]],
                                     q["answer"]).any()
                  for i, q in enumerate(questions)])


def test_identity_start_matches_zero_shot_minilm(tmp_path):
  config = _demo_config(tmp_path)
  assert (config.model.proj_init, config.model.proj_size) == ("identity", 384)
  store = catalog.block_store(config, progress=False)
  tok = store.tokenizer()
  cfg = model_init.realm_config(config, tok.vocab_size)
  assert cfg.bert.num_layers == 6
  params = model_init.init_params(config, cfg, jax.random.PRNGKey(0),
                                  with_reader=False)["retriever"]["embedder"]
  questions = demo_corpus.demo_qa("test", limit=LIMIT)
  assert len(questions) >= 15
  q_ids, q_mask = map(np.stack, zip(*[pipeline.pad_or_truncate(
      tok.encode(q["question"]).ids, 24, tok.cls_id, tok.sep_id, tok.pad_id)
      for q in questions]))
  docs = store.doc_inputs(np.arange(store.num_blocks))

  # The pipeline's retriever, as the embedding job and the trainer run it.
  ours = jax.jit(lambda *x: build.make_embed_fn(cfg)(params, *x))
  d_ours = _embed(ours, docs)
  q_ours = _embed(ours, (q_ids, np.zeros_like(q_ids), q_mask))

  # Zero-shot MiniLM as sentence-transformers runs it: the mean of the last
  # layer over the tokens, L2-normalized, cosine.
  @jax.jit
  def minilm(ids, segments, mask):
    seq, _ = BertEncoder(cfg.bert).apply({"params": params["bert"]}, ids,
                                         segments, mask, True)
    m = mask[..., None].astype(jnp.float32)
    mean = (seq * m).sum(-2) / m.sum(-2)
    return mean / jnp.linalg.norm(mean, axis=-1, keepdims=True)
  d_ref = _embed(minilm, docs)
  q_ref = _embed(minilm, (q_ids, np.zeros_like(q_ids), q_mask))

  ours_recall = _recall_at_5(store, questions, q_ours, d_ours)
  ref_recall = _recall_at_5(store, questions, q_ref, d_ref)
  assert ref_recall >= 0.6, ref_recall        # the sample is a real task
  assert abs(ours_recall - ref_recall) <= 0.01, (ours_recall, ref_recall)
  # Scores are 20 x the correlation of the pooled vectors: close to 20 x
  # cosine, and so the same neighbours for nearly every question.
  scores = q_ours @ d_ours.T
  assert np.abs(scores).max() <= 20.0 + 1e-3
  same = np.mean([set(np.argsort(-scores[i])[:5])
                  == set(np.argsort(-(q_ref @ d_ref.T)[i])[:5])
                  for i in range(len(questions))])
  assert same >= 0.8, same


def test_random_projection_stays_the_default_for_bert_checkpoints(tmp_path):
  config = _demo_config(tmp_path, **{"model.proj_init": "random",
                                     "model.proj_size": 128})
  cfg = model_init.realm_config(config, 30522)
  params = model_init.init_params(config, cfg, jax.random.PRNGKey(0),
                                  with_reader=False)["retriever"]["embedder"]
  kernel = np.asarray(params["projection"]["kernel"])
  assert kernel.shape == (384, 128) and kernel.std() > 0.005
  # Fine-tuning from model.init draws the same projection as pretraining
  # does, so a baseline fine-tuned against a pretraining run's index 0 (the
  # demo's) searches documents embedded by its own initial retriever.
  tuned = model_init.openqa_params(config, cfg, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(
      tuned["retriever"]["embedder"]["projection"]["kernel"], kernel)


def test_identity_needs_proj_size_equal_to_hidden(tmp_path):
  config = _demo_config(tmp_path, **{"model.proj_size": 128})
  cfg = model_init.realm_config(config, 30522)
  with pytest.raises(ValueError, match="proj_size == the encoder's hidden"):
    model_init.init_params(config, cfg, jax.random.PRNGKey(0),
                           with_reader=False)


def test_identity_start_traces_for_a_resume(tmp_path):
  """A resume builds the params under jax.eval_shape (loop.create_or_restore)
  and restores the values into that tree; the identity projection used
  np.asarray on tracers, so a killed demo pretraining could never resume."""
  config = _demo_config(tmp_path, **{"model.num_layers": 1})
  cfg = model_init.realm_config(config, 30522)
  init = lambda key: model_init.init_params(config, cfg, key)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
  values = init(jax.random.PRNGKey(0))
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), shapes)
          == jax.tree.map(lambda x: (x.shape, jnp.asarray(x).dtype), values))
  np.testing.assert_array_equal(
      values["retriever"]["embedder"]["projection"]["kernel"], np.eye(384))
