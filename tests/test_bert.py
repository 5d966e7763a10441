"""BertEncoder: parity with HF's REALM BERT, padding, leading dims, dropout, bf16."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.models import model_config as config_lib
from realm_jax.models.bert import BertEncoder, activation
from random_params import random_params


@functools.lru_cache(maxsize=None)
def _init(cfg, seq=12, seed=0):
  ids = jnp.ones((2, seq), jnp.int32)
  return random_params(BertEncoder(cfg), ids, ids, ids, seed=seed)


@functools.lru_cache(maxsize=None)
def _jitted_apply(cfg):
  # One XLA compile per shape beats op-by-op dispatch of an unjitted apply.
  return jax.jit(BertEncoder(cfg).apply, static_argnames="deterministic")


def _apply(cfg, params, *args, **kwargs):
  return _jitted_apply(cfg)({"params": params}, *args, **kwargs)


def _inputs(rng, lead, seq, lengths, vocab=128):
  ids = rng.integers(1, vocab, (*lead, seq))
  mask = (np.arange(seq) < np.asarray(lengths)[..., None]).astype(np.int32)
  segments = (np.arange(seq) >= seq // 2).astype(np.int32) * mask
  return (ids * mask).astype(np.int32), segments, mask


@pytest.mark.parity
@pytest.mark.parametrize("size_index", [0, 1, 2])
def test_matches_hf_realm_bert_with_padding(size_index):
  pytest.importorskip("transformers")
  import torch  # pylint: disable=g-import-not-at-top
  import realm_peer  # pylint: disable=g-import-not-at-top
  from realm_jax.models import convert  # pylint: disable=g-import-not-at-top

  peer = realm_peer.make_configs(realm_peer.SIZES[size_index])
  torch.manual_seed(size_index)
  hf = realm_peer.randomize(
      realm_peer.modeling_realm.RealmBertModel(peer.hf), size_index)
  params = convert.bert_from_hf(hf.state_dict(), peer.ours.bert)
  rng = np.random.default_rng(size_index)
  ids, seg, mask = realm_peer.padded_inputs(rng, (4,), 17, [17, 9, 3, 1])
  with torch.no_grad():
    out = hf(*realm_peer.torch_long(ids), attention_mask=torch.tensor(mask),
             token_type_ids=realm_peer.torch_long(seg)[0])
  seq, pooled = _apply(peer.ours.bert, params, ids, seg, mask)
  # Hidden states are LayerNorm outputs of unit scale; 1e-6 absolute is ~10
  # float32 ulps there, covering the different summation orders of the two
  # matmul libraries over <= 3 layers. Padded query rows are compared too.
  np.testing.assert_allclose(np.asarray(seq), out.last_hidden_state.numpy(),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(pooled), out.pooler_output.numpy(),
                             rtol=1e-5, atol=1e-6)


def test_leading_dims_are_flattened_and_restored():
  cfg = config_lib.tiny(num_layers=1)
  params = _init(cfg)
  ids, seg, mask = _inputs(np.random.default_rng(0), (2, 3), 10,
                           [[10, 4, 1], [7, 10, 2]])
  seq, pooled = _apply(cfg, params, ids, seg, mask)
  assert seq.shape == (2, 3, 10, cfg.hidden_size)
  assert pooled.shape == (2, 3, cfg.hidden_size)
  flat_seq, flat_pooled = _apply(
      cfg, params, ids.reshape(6, 10), seg.reshape(6, 10),
      mask.reshape(6, 10))
  np.testing.assert_array_equal(np.asarray(seq).reshape(6, 10, -1), flat_seq)
  np.testing.assert_array_equal(np.asarray(pooled).reshape(6, -1), flat_pooled)


def test_padding_does_not_change_real_tokens():
  cfg = config_lib.tiny(num_layers=1)
  params = _init(cfg)
  ids, seg, mask = _inputs(np.random.default_rng(1), (1,), 7, [7])
  pad = lambda a: np.pad(a, ((0, 0), (0, 9)))
  short, short_pooled = _apply(cfg, params, ids, seg, mask)
  # Junk ids under the padding must not leak in either.
  junk = pad(ids) + (1 - pad(mask)) * 5
  long, long_pooled = _apply(cfg, params, junk, pad(seg), pad(mask))
  np.testing.assert_allclose(long[:, :7], short, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(long_pooled, short_pooled, rtol=1e-5, atol=1e-6)


def test_output_positions_computes_the_last_layer_only_there():
  cfg = config_lib.tiny(num_layers=1)
  params = _init(cfg)
  ids, seg, mask = _inputs(np.random.default_rng(4), (2, 3), 10,
                           [[10, 4, 7], [7, 10, 2]])
  positions = np.array([[[1, 3]], [[5, 0]]])  # [batch, 1, n]: shared over k
  full, full_pooled = _apply(cfg, params, ids, seg, mask)
  part, part_pooled = _apply(cfg, params, ids, seg, mask,
                             output_positions=positions)
  assert part.shape == (2, 3, 2, cfg.hidden_size)
  expected = np.take_along_axis(
      np.asarray(full), np.broadcast_to(positions, (2, 3, 2))[..., None],
      axis=2)
  np.testing.assert_allclose(part, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(part_pooled, full_pooled, rtol=1e-5, atol=1e-6)


def test_dropout_only_when_not_deterministic():
  cfg = config_lib.tiny(num_layers=1)
  params = _init(cfg)
  ids, seg, mask = _inputs(np.random.default_rng(2), (2,), 9, [9, 5])
  # rbg keys: same semantics, but XLA compiles them ~2x faster than threefry.
  apply = lambda det, seed: _apply(
      cfg, params, ids, seg, mask, deterministic=det,
      rngs={"dropout": jax.random.key(seed, impl="rbg")})[0]
  np.testing.assert_array_equal(apply(True, 0), apply(True, 1))
  assert np.abs(apply(False, 0) - apply(False, 1)).max() > 1e-2
  assert np.abs(apply(False, 0) - apply(True, 0)).max() > 1e-2


def test_bf16_compute_tracks_float32():
  cfg32 = config_lib.tiny()
  cfg16 = dataclasses.replace(cfg32, dtype=jnp.bfloat16)
  params = _init(cfg32)
  ids, seg, mask = _inputs(np.random.default_rng(3), (3,), 16, [16, 11, 4])
  seq32, pooled32 = _apply(cfg32, params, ids, seg, mask)
  seq16, pooled16 = _apply(cfg16, params, ids, seg, mask)
  assert seq16.dtype == jnp.bfloat16 and pooled16.dtype == jnp.bfloat16
  assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32
  err = np.abs(np.asarray(seq16, np.float32) - np.asarray(seq32))
  # bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.002). Hidden
  # states are unit-scale LayerNorm outputs, rounded to bf16 on output, after
  # two layers of bf16 matmuls: measured max 0.018, mean 0.0027 (pooled max
  # 0.003). Bounds ~3x that; a LayerNorm or softmax run in bf16, or a lost
  # cast, gives errors of 0.1 to O(1).
  assert err.max() < 0.06, err.max()
  assert err.mean() < 0.008, err.mean()
  pooled_err = np.abs(np.asarray(pooled16, np.float32) - np.asarray(pooled32))
  assert pooled_err.max() < 0.01, pooled_err.max()


def test_activation_names():
  x = jnp.linspace(-3, 3, 7)
  np.testing.assert_allclose(activation("gelu")(x), jax.nn.gelu(x, False))
  np.testing.assert_allclose(activation("gelu_new")(x), jax.nn.gelu(x, True))
  with pytest.raises(ValueError, match="relu"):
    activation("relu")
