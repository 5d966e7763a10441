"""REALM losses against brute-force numpy, and the gradient that trains retrieval."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.models import losses
from realm_jax.models import model_config as config_lib
from realm_jax.models.retriever import Retriever, relevance_scores
from random_params import random_params

B, K, M, V = 3, 4, 5, 11
# Jitted once here: an eager call compiles every small op separately.
marginal_mlm_loss = jax.jit(losses.marginal_mlm_loss,
                            static_argnames="per_token")


def _log_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


@pytest.fixture(name="batch")
def _batch():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(B, K)).astype(np.float32)
  logits = (2 * rng.normal(size=(B, K, M, V))).astype(np.float32)
  labels = rng.integers(0, V, (B, M))
  weights = np.ones((B, M), np.float32)
  weights[1, 3:] = 0    # example 1 has 3 masks
  weights[2, 1:] = 0    # example 2 has 1 mask
  labels[1, 3:] = -1    # junk labels under padding must be harmless
  return scores, logits, labels, weights


def test_per_token_loss_matches_brute_force(batch):
  scores, logits, labels, weights = batch
  log_pz = _log_softmax(scores.astype(np.float64))
  log_py = _log_softmax(logits.astype(np.float64))
  total = 0.0
  for b in range(B):
    for j in range(M):
      if weights[b, j]:
        p = sum(np.exp(log_pz[b, z] + log_py[b, z, j, labels[b, j]])
                for z in range(K))
        total += np.log(p)
  expected = -total / weights.sum()
  loss, aux = marginal_mlm_loss(losses.candidate_log_probs(scores),
                                       logits, labels, weights)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(aux["marginal_log_likelihood"], -expected,
                             rtol=1e-5)
  assert aux["num_masks"] == 9


def test_per_sequence_loss_matches_the_paper(batch):
  scores, logits, labels, weights = batch
  log_pz = _log_softmax(scores.astype(np.float64))
  log_py = _log_softmax(logits.astype(np.float64))
  total = 0.0
  for b in range(B):
    p = 0.0
    for z in range(K):
      p_y = np.prod([np.exp(log_py[b, z, j, labels[b, j]])
                     for j in range(M) if weights[b, j]])
      p += np.exp(log_pz[b, z]) * p_y
    total += np.log(p)
  loss, _ = marginal_mlm_loss(losses.candidate_log_probs(scores),
                                     logits, labels, weights, per_token=False)
  np.testing.assert_allclose(loss, -total / weights.sum(), rtol=1e-5)


def test_one_mask_makes_both_forms_equal(batch):
  scores, logits, labels, _ = batch
  weights = np.zeros((B, M), np.float32)
  weights[:, 0] = 1
  log_pz = losses.candidate_log_probs(scores)
  per_token, _ = marginal_mlm_loss(log_pz, logits, labels, weights)
  per_seq, _ = marginal_mlm_loss(log_pz, logits, labels, weights,
                                        per_token=False)
  np.testing.assert_allclose(per_token, per_seq, rtol=1e-6)


def test_no_masks_gives_zero_loss_and_finite_grads(batch):
  scores, logits, labels, _ = batch
  weights = np.zeros((B, M), np.float32)
  for per_token in (True, False):
    fn = lambda s, pt=per_token: marginal_mlm_loss(
        losses.candidate_log_probs(s), logits, labels, weights, pt)[0]
    loss, grad = jax.value_and_grad(fn)(scores)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_aux_metrics(batch):
  scores, logits, labels, weights = batch
  log_pz = np.asarray(losses.candidate_log_probs(scores))
  # Candidate 2 of every example predicts the labels with near certainty.
  good = logits.copy()
  good[:, 2] = -10.0
  for b in range(B):
    for j in range(M):
      good[b, 2, j, max(labels[b, j], 0)] = 10.0
  _, aux = marginal_mlm_loss(log_pz, good, labels, weights)
  np.testing.assert_allclose(aux["p_null"], np.exp(log_pz[:, 0]).mean(),
                             rtol=1e-6)
  assert aux["mlm_accuracy"] == 1.0
  # log p(y|x) - log p(y|null,x): the helpful candidate makes it positive,
  # by roughly -log p(y|null) + log p(z=2|x) per token.
  log_py = _log_softmax(good.astype(np.float64))
  expected = np.mean([
      np.log(np.exp(log_pz[b] + log_py[b, :, j, labels[b, j]]).sum())
      - log_py[b, 0, j, labels[b, j]]
      for b in range(B) for j in range(M) if weights[b, j]])
  np.testing.assert_allclose(aux["retrieval_utility"], expected, rtol=1e-5)
  assert aux["retrieval_utility"] > 1.0


def test_raising_the_explaining_candidate_lowers_the_loss(batch):
  scores, logits, labels, weights = batch
  good = logits.copy()
  for b in range(B):
    for j in range(M):
      good[b, 2, j, max(labels[b, j], 0)] += 8.0
  fn = lambda s: marginal_mlm_loss(losses.candidate_log_probs(s), good,
                                          labels, weights)[0]
  loss, grad = jax.value_and_grad(fn)(jnp.asarray(scores))
  grad = np.asarray(grad)
  # Descent raises candidate 2's score (negative gradient) and lowers others.
  assert (grad[:, 2] < -1e-3).all(), grad
  assert (np.delete(grad, 2, axis=1) > 0).all(), grad
  raised = scores.copy()
  raised[:, 2] += 0.5
  assert fn(raised) < loss
  lowered = scores.copy()
  lowered[:, 2] -= 0.5
  assert fn(lowered) > loss


def test_mlm_loss_trains_the_retriever_end_to_end():
  """Gradients flow from the marginal MLM loss into the embedder's BERT."""
  cfg = config_lib.RealmConfig(
      bert=config_lib.tiny(num_layers=1, vocab_size=61), proj_size=8)
  rng = np.random.default_rng(1)
  # Query (padded to the candidates' length) and its 3 candidates, stacked
  # so one embedder call embeds both: [2, 1 + 3, 7].
  ids = rng.integers(1, 61, (2, 4, 7))
  mask = np.ones((2, 4, 7), int)
  mask[:, 0, 6:] = 0
  ids, seg = ids * mask, np.zeros_like(ids)
  labels, weights = rng.integers(1, 61, (2, 2)), np.array([[1.0, 1.0],
                                                           [1.0, 0.0]])
  # The reader's logits are an input of the loss; candidate 1 explains the
  # masks. (The reader's own gradient is ordinary MLM training.)
  logits = rng.normal(size=(2, 3, 2, 61)).astype(np.float32)
  for b in range(2):
    for j in range(2):
      logits[b, 1, j, labels[b, j]] += 6.0
  retriever = Retriever(cfg)
  retriever_params = random_params(retriever, ids[:, 0], seg[:, 0],
                                   mask[:, 0], ids[:, 1:], seg[:, 1:],
                                   mask[:, 1:], seed=3)

  @jax.jit
  @jax.value_and_grad
  def loss_fn(params):
    # The shared embedder: embed_query and embed_doc are the same function.
    emb = retriever.apply({"params": params}, ids, seg, mask,
                          method=Retriever.embed_doc)
    scores = relevance_scores(emb[:, 0], emb[:, 1:])
    return losses.marginal_mlm_loss(losses.candidate_log_probs(scores),
                                    logits, labels, weights)[0]

  loss, grads = loss_fn(retriever_params)
  # numpy, not jnp: eager jnp ops compile once per leaf shape.
  grads = jax.tree_util.tree_map(np.asarray, grads)
  norms = jax.tree_util.tree_map(lambda g: float(np.linalg.norm(g)), grads)
  assert norms["embedder"]["projection"]["kernel"] > 0
  assert norms["embedder"]["bert"]["layers_0"]["attention"]["query"][
      "kernel"] > 0
  assert norms["embedder"]["bert"]["embeddings"]["word_embeddings"][
      "embedding"] > 0
  # A small descent step (norm 0.01) on the retriever alone lowers the loss.
  global_norm = np.sqrt(sum(n**2 for n in jax.tree_util.tree_leaves(norms)))
  stepped = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g / global_norm,
                                   retriever_params, grads)
  assert loss_fn(stepped)[0] < loss


def test_marginal_log_loss():
  logits = np.array([[1.0, 2.0, 0.5, -1.0], [0.3, 0.1, 0.2, 0.0]], np.float32)
  correct = np.array([[False, True, True, False], [False] * 4])
  loss, grad = jax.jit(jax.value_and_grad(
      lambda l: losses.marginal_log_loss(l, correct).sum()))(logits)
  p = np.exp(logits[0]) / np.exp(logits[0]).sum()
  np.testing.assert_allclose(loss, -np.log(p[1] + p[2]), rtol=1e-6)
  # No correct candidate: the term is zero and so is its gradient.
  np.testing.assert_array_equal(losses.marginal_log_loss(logits, correct)[1], 0)
  np.testing.assert_array_equal(grad[1], 0.0)
  assert np.isfinite(grad).all()


def test_openqa_loss_is_a_joint_softmax_over_blocks_and_spans():
  rng = np.random.default_rng(2)
  ret_logits = rng.normal(size=(2, 6)).astype(np.float32)
  ret_correct = np.zeros((2, 6), bool)
  ret_correct[0, [1, 4]] = True          # example 1: no correct block
  read_logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
  read_correct = np.zeros((2, 3, 5), bool)
  read_correct[0, 0, 2] = read_correct[0, 2, 4] = True
  read_correct[1, 1, 0] = True
  loss, aux = losses.openqa_loss(ret_logits, ret_correct, read_logits,
                                 read_correct)

  def nll(l, c):
    return 0.0 if not c.any() else -np.log(np.exp(l)[c].sum() / np.exp(l).sum())

  ret = [nll(ret_logits[b], ret_correct[b]) for b in range(2)]
  # Joint: one softmax over all 3 x 5 (block, span) pairs of an example.
  read = [nll(read_logits[b].ravel(), read_correct[b].ravel()) for b in range(2)]
  np.testing.assert_allclose(aux["retriever_loss"], np.mean(ret), rtol=1e-5)
  np.testing.assert_allclose(aux["reader_loss"], np.mean(read), rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(np.add(ret, read)), rtol=1e-5)
  assert ret[1] == 0.0
  assert aux["retriever_has_answer"] == 0.5 and aux["reader_oracle"] == 1.0


def test_correct_spans():
  starts, ends = np.array([0, 1, 2, 0, 1]), np.array([0, 1, 2, 1, 2])
  gold_starts = np.array([[1, -1], [0, 2]])
  gold_ends = np.array([[2, -1], [1, 2]])
  np.testing.assert_array_equal(
      losses.correct_spans(starts, ends, gold_starts, gold_ends),
      [[False, False, False, False, True], [False, False, True, True, False]])
