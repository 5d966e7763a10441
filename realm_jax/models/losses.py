"""REALM's losses: the marginal MLM loss (pretraining) and the Open-QA loss.

Everything is batched, pure and computed in float32. Each loss returns
(loss scalar, aux dict of float32 scalars for logging).
"""
import jax
import jax.numpy as jnp

from realm_jax.models.bert import MASK_VALUE


def _safe_div(num, den):
  """num / den, 0 where den == 0 (no NaN in the value or the gradient)."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def candidate_log_probs(relevance_scores):
  """log p(z|x): log_softmax over the k candidates. [batch, k] -> [batch, k]."""
  return jax.nn.log_softmax(relevance_scores.astype(jnp.float32), axis=-1)


def gold_log_probs(mlm_logits, labels, weights):
  """log p(y_j | z, x) for every candidate z.

  mlm_logits [batch, k, num_masks, vocab], labels int [batch, num_masks],
  weights [batch, num_masks] -> float32 [batch, k, num_masks]. Padded mask
  slots (weight 0) read label 0, so any placeholder label is safe there.
  """
  logits = mlm_logits.astype(jnp.float32)
  labels = jnp.where(weights > 0, labels, 0)
  gold = jnp.take_along_axis(logits, labels[:, None, :, None], axis=-1)[..., 0]
  return gold - jax.nn.logsumexp(logits, axis=-1)


def marginal_mlm_loss(log_pz, mlm_logits, labels, weights, per_token=True):
  """Negative marginal log-likelihood of the masked tokens, over k documents.

  Args:
    log_pz: [batch, k] log p(z|x) (candidate_log_probs of the relevance scores;
      candidate 0 is the null document).
    mlm_logits: [batch, k, num_masks, vocab] MLM logits at the masked positions.
    labels: int [batch, num_masks] the original tokens.
    weights: [batch, num_masks] m_bj, 1 for real masks and 0 for padding.
    per_token: True (default, the original REALM code): marginalize each masked
      token separately,
        loss = -sum_{b,j} m_bj logsumexp_z[log p(z|x) + log p(y_j|z,x)] / sum m.
      False (the paper's equation): marginalize the whole masked sequence,
        loss = -sum_b log sum_z p(z|x) prod_j p(y_j|z,x)^m_bj / sum m,
      normalised by the number of masks too so the two are on one scale.

  Returns:
    (loss, aux) with aux:
      mlm_accuracy: accuracy of argmax_v p(v|x) = sum_z p(z|x) p(v|z,x), the
        marginal prediction, over real masks;
      p_null: mean p(null|x) = exp(log_pz[:, 0]);
      retrieval_utility: mean over masks of log p(y_j|x) - log p(y_j|null, x)
        (per-token marginals in both modes, as in the original code);
      marginal_log_likelihood: mean over masks of log p(y_j|x);
      num_masks: sum of the weights.
  """
  log_pz = log_pz.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  gold = gold_log_probs(mlm_logits, labels, weights)       # [batch, k, masks]
  total = jnp.sum(weights)
  # [batch, masks]: log p(y_j | x) marginalized per token.
  token_marginal = jax.nn.logsumexp(log_pz[:, :, None] + gold, axis=1)
  if per_token:
    loss = -_safe_div(jnp.sum(weights * token_marginal), total)
  else:
    seq_gold = jnp.sum(weights[:, None, :] * gold, axis=-1)  # [batch, k]
    seq_marginal = jax.nn.logsumexp(log_pz + seq_gold, axis=1)  # [batch]
    loss = -_safe_div(jnp.sum(seq_marginal), total)

  token_marginal = jax.lax.stop_gradient(token_marginal)
  utility = token_marginal - jax.lax.stop_gradient(gold[:, 0])
  # [batch, masks, vocab] marginal log p(v|x), for the accuracy only.
  vocab_marginal = jax.nn.logsumexp(
      log_pz[:, :, None, None]
      + jax.nn.log_softmax(mlm_logits.astype(jnp.float32), axis=-1), axis=1)
  correct = jnp.argmax(vocab_marginal, axis=-1) == labels
  aux = {
      "mlm_accuracy": _safe_div(jnp.sum(weights * correct), total),
      "p_null": jnp.mean(jnp.exp(log_pz[:, 0])),
      "retrieval_utility": _safe_div(jnp.sum(weights * utility), total),
      "marginal_log_likelihood": _safe_div(
          jnp.sum(weights * token_marginal), total),
      "num_masks": total,
  }
  aux = jax.tree_util.tree_map(jax.lax.stop_gradient, aux)
  return loss, aux


def marginal_log_loss(logits, is_correct):
  """-log sum_{correct} softmax(logits), over the last axis.

  logits [..., n], is_correct bool [..., n] -> float32 [...]:
  logsumexp(l) - logsumexp(l where correct); exactly 0 (with zero gradient)
  where no candidate is correct.
  """
  logits = logits.astype(jnp.float32)
  is_correct = is_correct.astype(bool)
  log_den = jax.nn.logsumexp(logits, axis=-1)
  log_num = jax.nn.logsumexp(jnp.where(is_correct, logits, MASK_VALUE), axis=-1)
  return jnp.where(jnp.any(is_correct, axis=-1), log_den - log_num, 0.0)


def correct_spans(candidate_starts, candidate_ends, gold_starts, gold_ends):
  """Which candidate spans are a gold answer.

  candidate_starts, candidate_ends: int [num_spans] (from SpanReader);
  gold_starts, gold_ends: int [..., num_answers], -1 padded (never matches)
  -> bool [..., num_spans].
  """
  hit = ((candidate_starts == gold_starts[..., :, None])
         & (candidate_ends == gold_ends[..., :, None]))
  return jnp.any(hit, axis=-2)


def openqa_loss(retriever_logits, retriever_correct, reader_logits,
                reader_correct):
  """ORQA/REALM fine-tuning loss: retriever term + reader term, batch mean.

  Args:
    retriever_logits: [batch, s] f(x, z) of the top-s searched blocks.
    retriever_correct: bool [batch, s], block contains an answer string.
    reader_logits: [batch, k, num_spans] span logits (retriever score already
      added) of the top-k blocks the reader read.
    reader_correct: bool [batch, k, num_spans], span is a gold answer. The
      reader term is one softmax over all (block, span) pairs of an example.

  Each term is zeroed for an example with no correct candidate.
  Returns (loss, aux) with aux retriever_loss, reader_loss (batch means),
  retriever_has_answer and reader_oracle (fraction of examples with any
  correct block / span).
  """
  batch = reader_logits.shape[0]
  retriever_loss = marginal_log_loss(retriever_logits, retriever_correct)
  reader_loss = marginal_log_loss(reader_logits.reshape(batch, -1),
                                  reader_correct.reshape(batch, -1))
  loss = jnp.mean(retriever_loss + reader_loss)
  aux = {
      "retriever_loss": jnp.mean(retriever_loss),
      "reader_loss": jnp.mean(reader_loss),
      "retriever_has_answer": jnp.mean(
          jnp.any(retriever_correct, axis=-1).astype(jnp.float32)),
      "reader_oracle": jnp.mean(jnp.any(
          reader_correct.reshape(batch, -1), axis=-1).astype(jnp.float32)),
  }
  aux = jax.tree_util.tree_map(jax.lax.stop_gradient, aux)
  return loss, aux
