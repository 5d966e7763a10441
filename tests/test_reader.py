"""MLMEncoder and SpanReader: parity with HF's REALM port, span rules
(block, start/end masks), bf16."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.models import losses
from realm_jax.models import model_config as config_lib
from realm_jax.models.bert import MASK_VALUE
from realm_jax.models.reader import MLMEncoder, SpanReader, span_candidates
from random_params import random_params

# [batch=2, k=3, seq=16] with ragged lengths; example 1 has 2 real masks and
# one padded slot (position 0, weight 0).
MLM_LENGTHS = [[16, 9, 6], [12, 16, 5]]
MLM_POSITIONS = np.array([[1, 3, 4], [2, 5, 0]])
MLM_WEIGHTS = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def _mlm_batch(rng, vocab):
  ids = rng.integers(1, vocab, (2, 3, 16))
  mask = (np.arange(16) < np.asarray(MLM_LENGTHS)[..., None]).astype(np.int64)
  segments = (np.arange(16) >= 7).astype(np.int64) * mask
  labels = rng.integers(1, vocab, (2, 3))
  return ids * mask, segments, mask, labels


@pytest.mark.parity
@pytest.mark.parametrize("size_index", [0, 1])
def test_mlm_logits_and_marginal_loss_match_hf(size_index):
  pytest.importorskip("transformers")
  import torch  # pylint: disable=g-import-not-at-top
  import realm_peer  # pylint: disable=g-import-not-at-top
  from realm_jax.models import convert  # pylint: disable=g-import-not-at-top

  peer = realm_peer.make_configs(realm_peer.SIZES[size_index])
  torch.manual_seed(size_index)
  hf = realm_peer.randomize(
      realm_peer.modeling_realm.RealmKnowledgeAugEncoder(peer.hf), size_index)
  params = convert.mlm_encoder_from_hf(hf.state_dict(), peer.ours)
  rng = np.random.default_rng(size_index)
  ids, seg, mask, labels = _mlm_batch(rng, realm_peer.VOCAB)
  scores = rng.normal(size=(2, 3)).astype(np.float32)

  # HF wants labels over the whole sequence (-100 = ignore) and an mlm_mask.
  hf_labels = np.full((2, 16), -100)
  hf_mlm_mask = np.zeros((2, 16))
  for b in range(2):
    for j in range(3):
      if MLM_WEIGHTS[b, j]:
        hf_labels[b, MLM_POSITIONS[b, j]] = labels[b, j]
        hf_mlm_mask[b, MLM_POSITIONS[b, j]] = 1
  with torch.no_grad():
    out = hf(*realm_peer.torch_long(ids), attention_mask=torch.tensor(mask),
             token_type_ids=realm_peer.torch_long(seg)[0],
             relevance_score=torch.tensor(scores),
             labels=realm_peer.torch_long(hf_labels)[0],
             mlm_mask=torch.tensor(hf_mlm_mask))

  @jax.jit
  def run(params):
    logits = MLMEncoder(peer.ours).apply({"params": params}, ids, seg, mask,
                                         MLM_POSITIONS)
    loss, _ = losses.marginal_mlm_loss(
        losses.candidate_log_probs(scores), logits, labels, MLM_WEIGHTS)
    return logits, loss

  logits, loss = run(params)
  assert logits.shape == (2, 3, 3, realm_peer.VOCAB)
  # HF computes logits at every position; ours only at the masks.
  hf_logits = out.logits.numpy().reshape(2, 3, 16, -1)
  expected = np.take_along_axis(
      hf_logits, np.broadcast_to(MLM_POSITIONS[:, None, :, None],
                                 (2, 3, 3, 1)), axis=2)
  # Logits are ~N(0, few) after the tied decoder; 1e-5 relative and an
  # absolute floor of 1e-5 for entries that happen to be near zero.
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  # HF's loss averages over every real mask of the batch, like ours.
  np.testing.assert_allclose(loss, out.loss.numpy(), rtol=1e-5)


def _reader_batch(rng, vocab, seq=20):
  """[k=3, seq] `[CLS] q [SEP] block [SEP] pad` with ragged blocks."""
  q_len, lengths = 5, [20, 14, 11]
  ids = rng.integers(1, vocab, (3, seq))
  mask = (np.arange(seq) < np.asarray(lengths)[:, None]).astype(np.int64)
  segments = (np.arange(seq) > q_len + 1).astype(np.int64) * mask
  # The block: after `[CLS] q(5) [SEP]`, before the final [SEP].
  block = ((np.arange(seq) > q_len + 1)
           & (np.arange(seq) < np.asarray(lengths)[:, None] - 1))
  return ids * mask, segments, mask, block


@pytest.mark.parity
@pytest.mark.parametrize("size_index", [0, 2])
def test_span_logits_and_openqa_loss_match_hf_reader(size_index):
  pytest.importorskip("transformers")
  import torch  # pylint: disable=g-import-not-at-top
  import realm_peer  # pylint: disable=g-import-not-at-top
  from realm_jax.models import convert  # pylint: disable=g-import-not-at-top

  peer = realm_peer.make_configs(realm_peer.SIZES[size_index])
  torch.manual_seed(size_index)
  hf = realm_peer.randomize(realm_peer.modeling_realm.RealmReader(peer.hf),
                            size_index)
  params = convert.reader_from_hf(hf.state_dict(), peer.ours)
  rng = np.random.default_rng(size_index)
  ids, seg, mask, block = _reader_batch(rng, realm_peer.VOCAB)
  scores = rng.normal(size=(3,)).astype(np.float32)
  # Block 0 has two gold spans, block 1 none (-1 padding), block 2 one.
  gold_starts = np.array([[8, 10], [-1, -1], [7, -1]])
  gold_ends = np.array([[9, 10], [-1, -1], [9, -1]])
  has_answers = np.array([True, False, True])
  with torch.no_grad():
    out = hf(*realm_peer.torch_long(ids), attention_mask=torch.tensor(mask),
             token_type_ids=realm_peer.torch_long(seg)[0],
             relevance_score=torch.tensor(scores),
             block_mask=torch.tensor(block),
             start_positions=realm_peer.torch_long(gold_starts)[0],
             end_positions=realm_peer.torch_long(gold_ends)[0],
             has_answers=torch.tensor(has_answers))
    hf_logits, hf_starts, hf_ends = hf.qa_outputs(
        hf.realm(*realm_peer.torch_long(ids), attention_mask=torch.tensor(mask),
                 token_type_ids=realm_peer.torch_long(seg)[0])[0],
        torch.tensor(block))
    hf_logits = (hf_logits + torch.tensor(scores)[:, None]).numpy()

  @jax.jit
  def run(params):
    logits, starts, ends = SpanReader(peer.ours).apply(
        {"params": params}, ids, seg, mask, block, scores)
    correct = losses.correct_spans(starts, ends, gold_starts, gold_ends)
    loss, aux = losses.openqa_loss(scores[None], has_answers[None],
                                   logits[None], correct[None])
    return logits, starts, ends, correct, loss, aux

  logits, starts, ends, correct, loss, aux = run(params)
  np.testing.assert_array_equal(starts, hf_starts.numpy())
  np.testing.assert_array_equal(ends, hf_ends.numpy())
  valid = hf_logits > -1e30  # HF marks invalid spans with float32's min
  np.testing.assert_array_equal(np.asarray(logits) > MASK_VALUE / 2, valid)
  # Span logits: Dense(1) of a LayerNorm output plus f(x,z), O(1) values.
  np.testing.assert_allclose(np.asarray(logits)[valid], hf_logits[valid],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(correct, out.reader_correct.numpy())
  np.testing.assert_allclose(aux["retriever_loss"], out.retriever_loss.numpy(),
                             rtol=1e-5)
  np.testing.assert_allclose(aux["reader_loss"], out.reader_loss.numpy(),
                             rtol=1e-5)
  np.testing.assert_allclose(loss, out.loss.numpy(), rtol=1e-5)
  # HF's prediction: the best (block, span) of the joint logits.
  best_block, best_span = np.unravel_index(np.argmax(logits), logits.shape)
  assert best_block == out.block_idx.item()
  assert best_span == out.candidate.item()


def test_span_candidates_are_all_widths_in_order():
  starts, ends = span_candidates(5, 3)
  assert list(zip(starts, ends)) == [
      (0, 0), (1, 1), (2, 2), (3, 3), (4, 4),
      (0, 1), (1, 2), (2, 3), (3, 4),
      (0, 2), (1, 3), (2, 4)]
  # A width cap beyond the sequence just stops at the sequence length.
  assert len(span_candidates(2, 10)[0]) == 3


SCORES = np.array([0.5, -1.0, 2.0], np.float32)


@pytest.fixture(scope="module")
def tiny_reader():
  """A 1-layer SpanReader, its inputs, and its float32 logits with SCORES."""
  cfg = config_lib.RealmConfig(bert=config_lib.tiny(num_layers=1, vocab_size=61),
                               span_hidden_size=8, max_span_width=4)
  inputs = _reader_batch(np.random.default_rng(7), 61)
  params = random_params(SpanReader(cfg), *inputs, np.zeros(3))
  apply = jax.jit(SpanReader(cfg).apply)
  return cfg, params, inputs, apply, apply({"params": params}, *inputs, SCORES)


def test_spans_must_lie_inside_the_block(tiny_reader):
  cfg, params, (ids, seg, mask, block), apply, outputs = tiny_reader
  logits, starts, ends = outputs
  assert logits.shape == (3, len(starts))
  assert ((ends - starts) < cfg.max_span_width).all()
  inside = block[:, starts] & block[:, ends]
  np.testing.assert_array_equal(np.asarray(logits) > MASK_VALUE / 2, inside)
  np.testing.assert_array_equal(np.asarray(logits)[~inside], MASK_VALUE)
  # f(x, z) shifts every valid span of block z by the same amount.
  plain, _, _ = apply({"params": params}, ids, seg, mask, block, np.zeros(3))
  shift = np.asarray(logits - plain)
  for z in range(3):
    np.testing.assert_allclose(shift[z][inside[z]], SCORES[z], atol=1e-5)


def test_span_masks_forbid_starts_and_ends(tiny_reader):
  _, params, inputs, apply, (logits, starts, ends) = tiny_reader
  ids, seg, mask, block = inputs
  rng = np.random.default_rng(3)
  start_ok, end_ok = rng.random((2,) + block.shape) < 0.5
  masked, s2, e2 = apply({"params": params}, ids, seg, mask, block, SCORES,
                         span_start_mask=start_ok, span_end_mask=end_ok)
  assert masked.shape == logits.shape and masked.dtype == jnp.float32
  np.testing.assert_array_equal(s2, starts)
  np.testing.assert_array_equal(e2, ends)
  allowed = (block[:, starts] & block[:, ends]
             & start_ok[:, starts] & end_ok[:, ends])
  np.testing.assert_array_equal(np.asarray(masked) > MASK_VALUE / 2, allowed)
  # The masks only remove spans: the others keep their logits.
  np.testing.assert_allclose(np.asarray(masked)[allowed],
                             np.asarray(logits)[allowed], atol=1e-6)


def test_bf16_reader_and_mlm_track_float32(tiny_reader):
  cfg32, params, inputs, _, (l32, _, _) = tiny_reader
  cfg16 = dataclasses.replace(
      cfg32, bert=dataclasses.replace(cfg32.bert, dtype=jnp.bfloat16))
  l16 = np.asarray(jax.jit(SpanReader(cfg16).apply)(
      {"params": params}, *inputs, SCORES)[0])
  l32 = np.asarray(l32)
  assert l16.dtype == np.float32
  valid = l32 > MASK_VALUE / 2
  # The span head runs in float32 after a LayerNorm over bf16 projections;
  # logits are O(1): measured max error 0.0011. Bound ~5x that.
  err = np.abs(l16 - l32)[valid]
  assert err.max() < 0.005, err.max()
  np.testing.assert_array_equal(l16 > MASK_VALUE / 2, valid)

  # The MLM encoder shares the BERT; its log-probs at the masks in bf16.
  mlm32 = MLMEncoder(cfg32)
  mlm_ids, mlm_seg, mlm_mask, _ = _mlm_batch(np.random.default_rng(8), 61)
  mlm_params = random_params(mlm32, mlm_ids, mlm_seg, mlm_mask, MLM_POSITIONS,
                             seed=2)
  logp = lambda cfg: jax.jit(lambda p: jax.nn.log_softmax(MLMEncoder(
      cfg).apply({"params": p}, mlm_ids, mlm_seg, mlm_mask, MLM_POSITIONS)))(
          mlm_params)
  lp32, lp16 = np.asarray(logp(cfg32)), np.asarray(logp(cfg16))
  # Log-probs over 61 tokens of a random model lie in [-4.6, -3.7]; the bf16
  # transform and decoder (32-d dot products, float32 accumulation) perturb
  # them by 2^-9 relative at most per rounding: measured max 0.0021. Bound
  # ~5x that.
  assert np.abs(lp16 - lp32).max() < 0.01, np.abs(lp16 - lp32).max()
