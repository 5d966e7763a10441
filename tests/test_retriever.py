"""Retriever: parity with HF's RealmScorer, shared vs separate embedders, dropout."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.models import model_config as config_lib
from realm_jax.models.retriever import (Retriever, RetrieverEmbedder,
                                        doc_embedder_params,
                                        query_embedder_params, relevance_scores)
from random_params import random_params


def _inputs(rng, lead, seq, lengths, vocab=61):
  ids = rng.integers(1, vocab, (*lead, seq))
  mask = (np.arange(seq) < np.asarray(lengths)[..., None]).astype(np.int32)
  return (ids * mask).astype(np.int32), np.zeros_like(mask), mask


def _scorer_inputs(seed):
  rng = np.random.default_rng(seed)
  query = _inputs(rng, (2,), 9, [9, 4])
  cands = _inputs(rng, (2, 3), 12, [[12, 3, 7], [5, 12, 1]])
  return query, cands


@pytest.mark.parity
@pytest.mark.parametrize("size_index,share", [(0, True), (2, False)])
def test_scores_match_hf_scorer_with_padding(size_index, share):
  pytest.importorskip("transformers")
  import torch  # pylint: disable=g-import-not-at-top
  import realm_peer  # pylint: disable=g-import-not-at-top
  from realm_jax.models import convert  # pylint: disable=g-import-not-at-top

  peer = realm_peer.make_configs(realm_peer.SIZES[size_index])
  ours = dataclasses.replace(peer.ours, share_embedder=share)
  torch.manual_seed(size_index)
  mr = realm_peer.modeling_realm
  query_embedder = None if share else realm_peer.randomize(
      mr.RealmEmbedder(peer.hf), 100 + size_index)
  hf = realm_peer.randomize(mr.RealmScorer(peer.hf, query_embedder),
                            size_index)
  params = convert.retriever_from_hf(hf.state_dict(), ours)
  assert set(params) == ({"embedder"} if share else
                         {"query_embedder", "doc_embedder"})

  (q_ids, q_seg, q_mask), (c_ids, c_seg, c_mask) = _scorer_inputs(size_index)
  with torch.no_grad():
    out = hf(*realm_peer.torch_long(q_ids), attention_mask=torch.tensor(q_mask),
             token_type_ids=realm_peer.torch_long(q_seg)[0],
             candidate_input_ids=realm_peer.torch_long(c_ids)[0],
             candidate_attention_mask=torch.tensor(c_mask),
             candidate_token_type_ids=realm_peer.torch_long(c_seg)[0])

  def run(params):
    module = Retriever(ours)
    scores = module.apply({"params": params}, q_ids, q_seg, q_mask, c_ids,
                          c_seg, c_mask)
    q_emb = module.apply({"params": params}, q_ids, q_seg, q_mask,
                         method=Retriever.embed_query)
    c_emb = module.apply({"params": params}, c_ids, c_seg, c_mask,
                         method=Retriever.embed_doc)
    return scores, q_emb, c_emb

  scores, q_emb, c_emb = jax.jit(run)(params)
  # Embeddings are LayerNorm outputs (unit scale); scores sum 8 products of
  # them. 1e-5 relative plus a few float32 ulps absolute.
  np.testing.assert_allclose(q_emb, out.query_score.numpy(), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(c_emb, out.candidate_score.numpy(), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(scores, out.relevance_score.numpy(), rtol=1e-5,
                             atol=1e-5)


def test_relevance_scores_is_a_plain_dot_product():
  rng = np.random.default_rng(0)
  q, c = rng.normal(size=(2, 5)), rng.normal(size=(2, 3, 5))
  expected = np.array([[q[b] @ c[b, k] for k in range(3)] for b in range(2)])
  np.testing.assert_allclose(relevance_scores(q, c), expected, rtol=1e-5)


def test_shared_embedder_embeds_queries_and_docs_alike():
  cfg = config_lib.RealmConfig(bert=config_lib.tiny(num_layers=1), proj_size=8)
  (q_ids, q_seg, q_mask), (c_ids, c_seg, c_mask) = _scorer_inputs(0)
  params = random_params(Retriever(cfg), q_ids, q_seg, q_mask, c_ids, c_seg,
                         c_mask)
  assert set(params) == {"embedder"}
  assert query_embedder_params(params, cfg) is doc_embedder_params(params, cfg)
  embed = jax.jit(lambda p: (
      Retriever(cfg).apply({"params": p}, c_ids, c_seg, c_mask,
                           method=Retriever.embed_query),
      Retriever(cfg).apply({"params": p}, c_ids, c_seg, c_mask,
                           method=Retriever.embed_doc)))
  query_side, doc_side = embed(params)
  np.testing.assert_array_equal(query_side, doc_side)
  with pytest.raises(ValueError, match="query_embedder"):
    query_embedder_params(params, dataclasses.replace(cfg,
                                                      share_embedder=False))


def test_embedding_dropout_only_when_not_deterministic():
  cfg = config_lib.RealmConfig(
      bert=config_lib.tiny(num_layers=1, dropout_rate=0.1,
                           attention_dropout_rate=0.0), proj_size=16)
  ids, seg, mask = _inputs(np.random.default_rng(1), (4,), 8, [8, 6, 3, 8])
  module = RetrieverEmbedder(cfg)
  params = random_params(module, ids, seg, mask)
  apply = jax.jit(module.apply, static_argnames="deterministic")
  eval_emb = apply({"params": params}, ids, seg, mask)
  assert eval_emb.shape == (4, 16) and eval_emb.dtype == jnp.float32
  # rbg keys: same semantics, compile faster than threefry on CPU.
  train = [apply({"params": params}, ids, seg, mask, deterministic=False,
                 rngs={"dropout": jax.random.key(s, impl="rbg")})
           for s in (0, 1)]
  assert np.abs(train[0] - train[1]).max() > 1e-2
  # The last op is dropout on the 16-d embedding: some coordinates are
  # exactly zero in training, none in evaluation.
  assert (np.asarray(train[0]) == 0).any()
  assert not (np.asarray(eval_emb) == 0).any()


def test_bf16_scores_track_float32():
  cfg32 = config_lib.RealmConfig(bert=config_lib.tiny(num_layers=1),
                                 proj_size=16)
  cfg16 = dataclasses.replace(
      cfg32, bert=dataclasses.replace(cfg32.bert, dtype=jnp.bfloat16))
  (q_ids, q_seg, q_mask), (c_ids, c_seg, c_mask) = _scorer_inputs(3)
  # Queries and candidates through one embedder call (same padded length).
  q = [np.pad(a, ((0, 0), (0, 3)))[:, None] for a in (q_ids, q_seg, q_mask)]
  ids, seg, mask = [np.concatenate([a, b], axis=1)
                    for a, b in zip(q, (c_ids, c_seg, c_mask))]
  params = random_params(RetrieverEmbedder(cfg32), ids, seg, mask, seed=1)

  def scores(cfg):
    emb = jax.jit(RetrieverEmbedder(cfg).apply)({"params": params}, ids, seg,
                                                mask)
    assert emb.dtype == jnp.float32  # the embedding leaves in float32
    return np.asarray(relevance_scores(emb[:, 0], emb[:, 1:]))

  s32, s16 = scores(cfg32), scores(cfg16)
  # Scores are dot products of two 16-d LayerNorm-ed embeddings, |s| ~12
  # here; bf16 perturbs each embedding coordinate by ~2^-9 relative: measured
  # max error 0.0045 (4e-4 of the score scale, 1.4% of the spread between
  # candidates, which is small for random weights). Bounds ~4x that.
  err = np.abs(np.asarray(s16) - np.asarray(s32))
  assert err.max() < 0.02, err.max()
  assert err.max() < 0.05 * np.ptp(np.asarray(s32)), (err.max(), np.ptp(s32))
