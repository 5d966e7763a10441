"""A post-LayerNorm BERT encoder in Flax, the backbone of every REALM part.

Parameter layout (names mirror the BERT checkpoints so conversion is a table,
see convert.py):

  embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
  embeddings/norm/{scale,bias}
  layers_<i>/attention/{query,key,value,output}/{kernel,bias}
  layers_<i>/attention_norm/{scale,bias}
  layers_<i>/intermediate/{kernel,bias}
  layers_<i>/output/{kernel,bias}
  layers_<i>/output_norm/{scale,bias}
  pooler/{kernel,bias}

Mixed precision: `config.dtype` is the compute dtype of matmuls, `config.param_dtype`
the storage dtype. Attention softmax and every LayerNorm run in float32 whatever
the compute dtype, because bf16 has too few mantissa bits for their reductions.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from realm_jax.models.model_config import BertConfig

# Added to attention scores of padded keys. Finite (not -inf) so that a row with
# every key masked (an all-padding sequence) gives a uniform softmax, not NaN.
MASK_VALUE = -1e9


def activation(name: str):
  """BERT's FFN activation: 'gelu' (exact erf) or 'gelu_new' (tanh approx)."""
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name == "gelu_new":
    return lambda x: jax.nn.gelu(x, approximate=True)
  raise ValueError(f"hidden_act must be 'gelu' or 'gelu_new', got {name!r}")


def dense(config: BertConfig, features: int, name: str = None) -> nn.Dense:
  return nn.Dense(
      features, dtype=config.dtype, param_dtype=config.param_dtype,
      kernel_init=nn.initializers.truncated_normal(config.initializer_range),
      name=name)


def layer_norm(eps: float, config: BertConfig, name: str = None):
  """A LayerNorm that computes (and returns) float32; callers cast back.

  Two-pass variance (not E[x^2]-E[x]^2) so it tracks PyTorch/TF BERT closely.
  """
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32,
                      param_dtype=config.param_dtype, use_fast_variance=False,
                      name=name)


class BertEmbeddings(nn.Module):
  """Word + position + segment embeddings, then LayerNorm and dropout."""
  config: BertConfig

  def setup(self):
    cfg = self.config
    init = nn.initializers.truncated_normal(cfg.initializer_range)
    embed = lambda n: nn.Embed(n, cfg.hidden_size, dtype=cfg.dtype,
                               param_dtype=cfg.param_dtype, embedding_init=init)
    self.word_embeddings = embed(cfg.vocab_size)
    self.position_embeddings = embed(cfg.max_position)
    self.token_type_embeddings = embed(cfg.type_vocab_size)
    self.norm = layer_norm(cfg.layer_norm_eps, cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, input_ids, segment_ids, deterministic: bool):
    """[batch, seq] int ids -> [batch, seq, hidden] in config.dtype."""
    seq_len = input_ids.shape[-1]
    if seq_len > self.config.max_position:
      raise ValueError(f"sequence length {seq_len} exceeds max_position "
                       f"{self.config.max_position}")
    x = (self.word_embeddings(input_ids).astype(jnp.float32)
         + self.position_embeddings(jnp.arange(seq_len)).astype(jnp.float32)
         + self.token_type_embeddings(segment_ids).astype(jnp.float32))
    x = self.norm(x).astype(self.config.dtype)
    return self.dropout(x, deterministic=deterministic)

  def attend(self, x):
    """[..., hidden] -> [..., vocab] logits against the word embeddings, f32."""
    table = self.word_embeddings.embedding.astype(self.config.dtype)
    return jnp.einsum("...h,vh->...v", x.astype(self.config.dtype), table,
                      preferred_element_type=jnp.float32)


class SelfAttention(nn.Module):
  """Multi-head self-attention with a key padding mask."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, input_mask, deterministic: bool, queries=None):
    """x [batch, seq, hidden], input_mask [batch, seq] (1 = real token).

    queries: [batch, q_seq, hidden] rows that attend (default: x itself);
    the output is [batch, q_seq, hidden].
    """
    cfg = self.config
    queries = x if queries is None else queries
    heads, head_dim = cfg.num_heads, cfg.head_dim
    split = lambda t: t.reshape(*t.shape[:2], heads, head_dim)
    # Scaling q before the matmul is cheaper than scaling [b, h, q, k] scores.
    q = split(dense(cfg, cfg.hidden_size, "query")(queries)) * (
        1.0 / math.sqrt(head_dim))
    k = split(dense(cfg, cfg.hidden_size, "key")(x))
    v = split(dense(cfg, cfg.hidden_size, "value")(x))
    q = q.astype(cfg.dtype)
    # [batch, heads, q_seq, k_seq], float32 for the softmax.
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32)
    key_ok = input_mask.astype(bool)[:, None, None, :]
    scores = jnp.where(key_ok, scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(cfg.attention_dropout_rate)(
        probs, deterministic=deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(cfg.dtype), v)
    context = context.reshape(*queries.shape[:2], cfg.hidden_size)
    return dense(cfg, cfg.hidden_size, "output")(context)


class BertLayer(nn.Module):
  """Attention -> add & norm -> FFN -> add & norm (post-LN, as in BERT)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, input_mask, deterministic: bool, positions=None):
    """x [batch, seq, hidden] -> [batch, seq, hidden].

    positions: optional int [batch, n]; then only those rows are computed
    (every row still serves as key/value) and the output is [batch, n, hidden].
    Each row's output depends only on its own query, so this is exact.
    """
    cfg = self.config
    drop = lambda t: nn.Dropout(cfg.dropout_rate)(t, deterministic=deterministic)
    norm = lambda name: layer_norm(cfg.layer_norm_eps, cfg, name)
    rows = x if positions is None else jnp.take_along_axis(
        x, positions[..., None], axis=1)
    attn = SelfAttention(cfg, name="attention")(x, input_mask, deterministic,
                                                queries=rows)
    x = norm("attention_norm")(
        drop(attn).astype(jnp.float32) + rows.astype(jnp.float32)
    ).astype(cfg.dtype)
    h = dense(cfg, cfg.intermediate_size, "intermediate")(x)
    h = activation(cfg.hidden_act)(h)
    h = dense(cfg, cfg.hidden_size, "output")(h)
    x = norm("output_norm")(
        drop(h).astype(jnp.float32) + x.astype(jnp.float32)).astype(cfg.dtype)
    return x


class BertEncoder(nn.Module):
  """BERT: embeddings, `num_layers` transformer layers, tanh pooler on [CLS].

  __call__(input_ids, segment_ids, input_mask, deterministic=True,
           output_positions=None):
    input_ids, segment_ids, input_mask: int [..., seq] (any leading dims, e.g.
      [batch, k, seq]); input_mask is 1 for real tokens, 0 for padding.
    output_positions: optional int [..., n]. When given, the last layer is
      computed only at [CLS] and these positions, and the first output is the
      hidden states there, [..., n, hidden]. The MLM encoder needs only its
      masked positions; this skips ~90% of the last layer's FLOPs.
    Returns (sequence_output [..., seq, hidden] (or [..., n, hidden]),
    pooled [..., hidden]), both in config.dtype.
  """
  config: BertConfig

  def setup(self):
    self.embeddings = BertEmbeddings(self.config)
    self.layers = [BertLayer(self.config) for _ in range(self.config.num_layers)]
    self.pooler = dense(self.config, self.config.hidden_size)

  def __call__(self, input_ids, segment_ids, input_mask,
               deterministic: bool = True, output_positions=None):
    lead = input_ids.shape[:-1]
    hidden = self.config.hidden_size
    flat = lambda t: jnp.reshape(t, (-1, t.shape[-1]))
    x = self.embeddings(flat(input_ids), flat(segment_ids), deterministic)
    mask = flat(input_mask)
    positions = None
    if output_positions is not None:
      # Row 0 of the last layer is [CLS], for the pooler.
      positions = flat(jnp.broadcast_to(
          output_positions, (*lead, output_positions.shape[-1])))
      positions = jnp.concatenate(
          [jnp.zeros_like(positions[:, :1]), positions], axis=1)
    for i, layer in enumerate(self.layers):
      last = i == len(self.layers) - 1
      x = layer(x, mask, deterministic, positions if last else None)
    pooled = jnp.tanh(self.pooler(x[:, 0]))
    if positions is not None:
      x = x[:, 1:]
    return (x.reshape(*lead, x.shape[1], hidden),
            pooled.reshape(*lead, hidden))

  def attend(self, x):
    """[..., hidden] -> [..., vocab] float32 logits (the tied MLM decoder)."""
    return self.embeddings.attend(x)
