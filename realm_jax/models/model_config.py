"""Model configuration shared by every REALM module.

Modules take these frozen dataclasses as fields, so a module's configuration is
visible in its repr and hashable for `jax.jit` static arguments.
"""
import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """A BERT-style post-LayerNorm transformer encoder.

  Defaults are BERT-base uncased. `hidden_act` is "gelu" (exact erf form, as in
  the original TF BERT/REALM code) or "gelu_new" (tanh approximation, as in
  Hugging Face's REALM port).
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position: int = 512
  type_vocab_size: int = 2
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02
  dtype: Any = jnp.float32         # compute dtype
  param_dtype: Any = jnp.float32   # storage dtype of parameters

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class RealmConfig:
  """The whole REALM model: retriever embedder(s), MLM encoder and span reader."""
  bert: BertConfig = BertConfig()
  proj_size: int = 128                 # retriever embedding size
  proj_layer_norm_eps: float = 1e-3    # LayerNorm after the 768->128 projection
  # The original code shares ONE embedder between queries and documents.
  share_embedder: bool = True
  # "cls": BERT's pooled [CLS] (REALM). "mean": masked mean of the last hidden
  # states, for encoders trained that way (all-MiniLM-L6-v2).
  retriever_pooling: str = "cls"
  span_hidden_size: int = 256          # reader span head: Dense(H -> 2*256)
  span_layer_norm_eps: float = 1e-3
  max_span_width: int = 10
  # Reader spans of whole words only (finetune.whole_word_spans): the
  # fine-tuning record keeps it, so eval and answer decode as training did.
  whole_word_spans: bool = True


def bert_base(**overrides) -> BertConfig:
  return dataclasses.replace(BertConfig(), **overrides)


def minilm_l6(**overrides) -> BertConfig:
  """sentence-transformers/all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads."""
  cfg = BertConfig(hidden_size=384, num_layers=6, num_heads=12,
                   intermediate_size=1536, hidden_act="gelu")
  return dataclasses.replace(cfg, **overrides)


def tiny(**overrides) -> BertConfig:
  """A small encoder for unit tests on CPU."""
  cfg = BertConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                   intermediate_size=64, max_position=512)
  return dataclasses.replace(cfg, **overrides)
