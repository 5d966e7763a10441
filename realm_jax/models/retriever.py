"""REALM's retriever: a BERT embedder for queries and documents, dot-product scores.

Parameter layout:
  RetrieverEmbedder: bert/..., projection/{kernel,bias}, projection_norm/{scale,bias}
  Retriever: embedder/... when config.share_embedder (the original REALM setup),
    otherwise query_embedder/... and doc_embedder/...
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from realm_jax.models.bert import BertEncoder, dense, layer_norm
from realm_jax.models.model_config import RealmConfig


class RetrieverEmbedder(nn.Module):
  """pooled [CLS] -> Dense(proj_size) -> LayerNorm(eps 1e-3) -> dropout.

  config.retriever_pooling="mean" replaces the pooled [CLS] by the masked
  mean of the last hidden states (an option for mean-pooling encoders; REALM
  uses [CLS]).

  __call__(input_ids, segment_ids, input_mask, deterministic=True):
    int [..., seq] inputs (any leading dims) -> float32 [..., proj_size].
  Dropout (rate config.bert.dropout_rate, 0.1 in REALM) only when
  deterministic=False, i.e. while training.
  """
  config: RealmConfig

  @nn.compact
  def __call__(self, input_ids, segment_ids, input_mask,
               deterministic: bool = True):
    cfg = self.config
    seq, pooled = BertEncoder(cfg.bert, name="bert")(
        input_ids, segment_ids, input_mask, deterministic)
    if cfg.retriever_pooling == "mean":
      # Encoders trained for mean pooling (sentence-transformers' MiniLM)
      # carry an untrained pooler: their [CLS] embeds every text alike.
      m = input_mask[..., None].astype(jnp.float32)
      pooled = (jnp.sum(seq.astype(jnp.float32) * m, axis=-2)
                / jnp.maximum(jnp.sum(m, axis=-2), 1.0)).astype(seq.dtype)
    elif cfg.retriever_pooling != "cls":
      raise ValueError(f"retriever_pooling={cfg.retriever_pooling!r}: "
                       "expected cls or mean")
    x = dense(cfg.bert, cfg.proj_size, "projection")(pooled)
    x = layer_norm(cfg.proj_layer_norm_eps, cfg.bert, "projection_norm")(
        x.astype(jnp.float32))
    # The embedding feeds a dot product and the index: keep it float32.
    return nn.Dropout(cfg.bert.dropout_rate)(x, deterministic=deterministic)


def relevance_scores(query_emb, cand_emb):
  """f(x, z): plain unscaled dot product.

  query_emb [batch, proj], cand_emb [batch, k, proj] -> float32 [batch, k].
  """
  return jnp.einsum("bp,bkp->bk", query_emb.astype(jnp.float32),
                    cand_emb.astype(jnp.float32))


class Retriever(nn.Module):
  """Query and document embedders; ONE shared embedder when share_embedder.

  __call__(query_ids, query_segments, query_mask, cand_ids, cand_segments,
           cand_mask, deterministic=True):
    query inputs int [batch, q_seq], candidate inputs int [batch, k, d_seq]
    -> relevance scores float32 [batch, k].
  embed_query / embed_doc take (input_ids, segment_ids, input_mask,
  deterministic) with any leading dims and return [..., proj_size].
  """
  config: RealmConfig

  def setup(self):
    if self.config.share_embedder:
      self.embedder = RetrieverEmbedder(self.config)
    else:
      self.query_embedder = RetrieverEmbedder(self.config)
      self.doc_embedder = RetrieverEmbedder(self.config)

  def embed_query(self, input_ids, segment_ids, input_mask,
                  deterministic: bool = True):
    module = self.embedder if self.config.share_embedder else self.query_embedder
    return module(input_ids, segment_ids, input_mask, deterministic)

  def embed_doc(self, input_ids, segment_ids, input_mask,
                deterministic: bool = True):
    module = self.embedder if self.config.share_embedder else self.doc_embedder
    return module(input_ids, segment_ids, input_mask, deterministic)

  def __call__(self, query_ids, query_segments, query_mask, cand_ids,
               cand_segments, cand_mask, deterministic: bool = True):
    query_emb = self.embed_query(query_ids, query_segments, query_mask,
                                 deterministic)
    cand_emb = self.embed_doc(cand_ids, cand_segments, cand_mask, deterministic)
    return relevance_scores(query_emb, cand_emb)


def embed_queries(retriever_params, query_ids, query_mask, config: RealmConfig,
                  deterministic: bool = True, rng=None):
  """Query embeddings [..., proj_size] of `[CLS] text [SEP]` inputs (one
  segment) with the Retriever's query embedder; rng feeds dropout."""
  return Retriever(config).apply(
      {"params": retriever_params}, query_ids, jnp.zeros_like(query_ids),
      query_mask, deterministic, method=Retriever.embed_query,
      rngs=None if rng is None else {"dropout": rng})


def _embedder_params(retriever_params, config: RealmConfig, side: str):
  key = "embedder" if config.share_embedder else f"{side}_embedder"
  if key not in retriever_params:
    raise ValueError(f"retriever params have no {key!r} subtree (share_embedder="
                     f"{config.share_embedder}); keys: {list(retriever_params)}")
  return retriever_params[key]


def doc_embedder_params(retriever_params, config: RealmConfig):
  """The RetrieverEmbedder params used for DOCUMENTS (what the index needs)."""
  return _embedder_params(retriever_params, config, "doc")


def query_embedder_params(retriever_params, config: RealmConfig):
  """The RetrieverEmbedder params used for QUERIES."""
  return _embedder_params(retriever_params, config, "query")


@functools.lru_cache(maxsize=8)
def jitted_embed_queries(config: RealmConfig, out_sharding=None):
  """embed_queries(params, ids, mask) jitted once per model config (and
  output sharding), shared by the trainers, evaluation and answering, so a
  process that runs several of them (the demo, tests) compiles it once."""
  kwargs = {} if out_sharding is None else {"out_shardings": out_sharding}
  return jax.jit(functools.partial(embed_queries, config=config), **kwargs)
