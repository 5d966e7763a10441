"""The knowledge-augmented MLM encoder (pretraining) and the span reader (Open-QA).

Parameter layout:
  MLMEncoder: bert/..., mlm_transform/{kernel,bias}, mlm_norm/{scale,bias},
    mlm_bias [vocab]; the decoder is bert's word embedding table (tied).
  SpanReader: bert/..., span_projection/{kernel,bias} (H -> 2*span_hidden),
    span_norm/{scale,bias}, span_output/{kernel,bias} (span_hidden -> 1).
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from realm_jax.models.bert import (MASK_VALUE, BertEncoder, activation, dense,
                                   layer_norm)
from realm_jax.models.model_config import RealmConfig


class MLMEncoder(nn.Module):
  """BERT + MLM head over `[CLS] masked query [SEP] doc body [SEP]` inputs.

  __call__(input_ids, segment_ids, input_mask, mlm_positions,
           deterministic=True):
    input_ids, segment_ids, input_mask: int [batch, k, seq] (k candidates);
    mlm_positions: int [batch, num_masks], positions into seq of the masked
      tokens (padded slots may point anywhere, e.g. 0; the loss weights them 0).
    Returns float32 logits [batch, k, num_masks, vocab].

  The head runs only at the masked positions: the hidden states are gathered
  before the transform and the vocab-sized decoder, as in the original TF
  code (running it on every token costs seq/num_masks, ~40x, more in the
  largest matmul of the model). Going one step further, BERT's last layer is
  computed only at the masked positions too (its keys/values still cover
  every token), which is exact and saves ~7% of the encoder's FLOPs.
  """
  config: RealmConfig

  @nn.compact
  def __call__(self, input_ids, segment_ids, input_mask, mlm_positions,
               deterministic: bool = True):
    cfg = self.config.bert
    if input_ids.ndim != 3 or mlm_positions.ndim != 2:
      raise ValueError("MLMEncoder wants input_ids [batch, k, seq] and "
                       f"mlm_positions [batch, num_masks]; got {input_ids.shape}"
                       f" and {mlm_positions.shape}")
    bert = BertEncoder(cfg, name="bert")
    # [batch, k, num_masks, hidden]: the last layer runs only at the masks.
    h, _ = bert(input_ids, segment_ids, input_mask, deterministic,
                output_positions=mlm_positions[:, None, :])
    h = dense(cfg, cfg.hidden_size, "mlm_transform")(h)
    h = activation(cfg.hidden_act)(h)
    h = layer_norm(cfg.layer_norm_eps, cfg, "mlm_norm")(h.astype(jnp.float32))
    bias = self.param("mlm_bias", nn.initializers.zeros, (cfg.vocab_size,),
                      cfg.param_dtype)
    return bert.attend(h) + bias.astype(jnp.float32)


def span_candidates(seq_len: int, max_span_width: int):
  """All spans of width 1..max_span_width inside [0, seq_len).

  Returns (starts, ends) int32 numpy [num_spans], inclusive ends, ordered by
  width then start (the order of the original ORQA code and of HF's port).
  """
  starts, ends = [], []
  for width in range(1, min(max_span_width, seq_len) + 1):
    starts.append(np.arange(seq_len - width + 1))
    ends.append(np.arange(width - 1, seq_len))
  return (np.concatenate(starts).astype(np.int32),
          np.concatenate(ends).astype(np.int32))


class SpanReader(nn.Module):
  """Scores answer spans in `[CLS] question [SEP] block [SEP]` inputs.

  score(s, e) = Dense(1)(LayerNorm(ReLU(W_s h_s + W_e h_e))) + f(x, z), where
  [W_s; W_e] is one Dense(H -> 2*span_hidden_size).

  __call__(input_ids, segment_ids, input_mask, block_mask,
           retriever_scores=None, deterministic=True, span_start_mask=None,
           span_end_mask=None):
    input_ids, segment_ids, input_mask: int [..., seq] (e.g. [batch, k, seq]);
    block_mask: bool [..., seq], True on the evidence block's tokens;
    retriever_scores: float [...] f(x, z), added to every span of that block
      (None: nothing added);
    span_start_mask, span_end_mask: bool [..., seq], where a span may start
      and end (e.g. whole words only, retrieval.qa_inputs.span_masks); None:
      anywhere, i.e. any wordpiece span, as in ORQA/REALM and HF's port.
    Returns (logits float32 [..., num_spans], starts int32 [num_spans],
    ends int32 [num_spans]). Spans with an end outside the block, or a start
    or end the masks forbid, get MASK_VALUE (-1e9) so they vanish from any
    softmax.
  """
  config: RealmConfig

  @nn.compact
  def __call__(self, input_ids, segment_ids, input_mask, block_mask,
               retriever_scores=None, deterministic: bool = True,
               span_start_mask=None, span_end_mask=None):
    cfg = self.config
    seq_out, _ = BertEncoder(cfg.bert, name="bert")(
        input_ids, segment_ids, input_mask, deterministic)
    starts, ends = span_candidates(input_ids.shape[-1], cfg.max_span_width)
    proj = dense(cfg.bert, 2 * cfg.span_hidden_size, "span_projection")(seq_out)
    start_proj, end_proj = jnp.split(proj, 2, axis=-1)
    # [..., num_spans, span_hidden]
    hidden = (jnp.take(start_proj, starts, axis=-2).astype(jnp.float32)
              + jnp.take(end_proj, ends, axis=-2).astype(jnp.float32))
    hidden = layer_norm(cfg.span_layer_norm_eps, cfg.bert, "span_norm")(
        nn.relu(hidden))
    logits = nn.Dense(
        1, dtype=jnp.float32, param_dtype=cfg.bert.param_dtype,
        kernel_init=nn.initializers.truncated_normal(cfg.bert.initializer_range),
        name="span_output")(hidden)[..., 0]
    if retriever_scores is not None:
      logits = logits + retriever_scores[..., None].astype(jnp.float32)
    block_mask = block_mask.astype(bool)
    valid = (jnp.take(block_mask, starts, axis=-1)
             & jnp.take(block_mask, ends, axis=-1))
    if span_start_mask is not None:
      valid &= jnp.take(span_start_mask.astype(bool), starts, axis=-1)
    if span_end_mask is not None:
      valid &= jnp.take(span_end_mask.astype(bool), ends, axis=-1)
    logits = jnp.where(valid, logits, MASK_VALUE)
    return logits, jnp.asarray(starts), jnp.asarray(ends)
