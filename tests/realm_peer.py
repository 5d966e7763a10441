"""Shared set-up for parity tests against Hugging Face's PyTorch REALM port.

Import only after `pytest.importorskip("transformers")`: this module imports
torch and transformers (the [parity] extra). Everything is random-init and
offline; nothing is downloaded.
"""
import dataclasses

import numpy as np
import torch
from transformers.models.deprecated.realm import configuration_realm
from transformers.models.deprecated.realm import modeling_realm

from realm_jax.models import model_config as config_lib

# Several small shapes, so a transposed or mis-split weight cannot hide behind
# a square matrix or a single head. Each: (hidden, layers, heads, intermediate,
# hidden_act).
SIZES = [
    (32, 2, 4, 48, "gelu_new"),
    (24, 1, 2, 40, "gelu"),
    (48, 3, 6, 64, "gelu_new"),
]
VOCAB = 61
MAX_POSITION = 40


@dataclasses.dataclass
class Peer:
  hf: configuration_realm.RealmConfig
  ours: config_lib.RealmConfig


def make_configs(size, *, num_candidates=3, proj_size=8, span_hidden_size=6,
                 max_span_width=4) -> Peer:
  """The same small REALM in HF's RealmConfig and in ours."""
  hidden, layers, heads, inter, act = size
  hf = configuration_realm.RealmConfig(
      vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
      num_attention_heads=heads, intermediate_size=inter, hidden_act=act,
      max_position_embeddings=MAX_POSITION, retriever_proj_size=proj_size,
      num_candidates=num_candidates, span_hidden_size=span_hidden_size,
      max_span_width=max_span_width, reader_beam_size=num_candidates,
      searcher_beam_size=num_candidates, num_block_records=5)
  bert = config_lib.BertConfig(
      vocab_size=VOCAB, hidden_size=hidden, num_layers=layers, num_heads=heads,
      intermediate_size=inter, hidden_act=act, max_position=MAX_POSITION)
  # HF's RealmScorerProjection normalises with layer_norm_eps (1e-12), the
  # original REALM with 1e-3; match HF here to compare like with like.
  ours = config_lib.RealmConfig(
      bert=bert, proj_size=proj_size, proj_layer_norm_eps=1e-12,
      span_hidden_size=span_hidden_size, max_span_width=max_span_width)
  return Peer(hf, ours)


def randomize(model, seed):
  """HF inits LayerNorms to (1, 0) and biases to 0; randomize everything so
  that a dropped bias or swapped scale shows up in the comparison."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
        p.add_(0.1 * torch.randn(p.shape, generator=gen))
  return model.eval()


def padded_inputs(rng, lead, seq, lengths):
  """Random ids, segments and a right-padding mask.

  lead: leading shape, e.g. (batch, k); lengths: real lengths, shape `lead`.
  Padded positions hold id 0 and segment 0, like real padded batches.
  """
  ids = rng.integers(1, VOCAB, (*lead, seq))
  mask = (np.arange(seq) < np.asarray(lengths)[..., None]).astype(np.int64)
  segments = (np.arange(seq) >= seq // 3).astype(np.int64) * mask
  return ids * mask, np.broadcast_to(segments, ids.shape).copy(), mask


def torch_long(*arrays):
  return [torch.tensor(np.asarray(a), dtype=torch.long) for a in arrays]
