"""REALM pretraining's step and batch source (the task: tasks/pretrain.py).

`train_step` (pure, jitted over the data-parallel mesh) re-embeds the query
and the k candidates with the current params, so the MLM signal reaches
the retriever through log p(z|x), and minimises the marginal MLM loss (per
token by default, per sequence as the paper's equation). `BatchMaker` is
the prefetch thread's work: masked queries embedded with stale params,
searched in the index in service, the null document first.
"""

import jax
import jax.numpy as jnp
import optax

from realm_jax.batching import candidates
from realm_jax.index.query_embedder import QueryEmbedder
from realm_jax.models import losses
from realm_jax.models.reader import MLMEncoder
from realm_jax.models.retriever import Retriever, embed_queries, relevance_scores
from realm_jax.train import state as state_lib

# ----------------------------------------------------------------- the step

def pretrain_loss(params, batch, rng, cfg, per_token=True, deterministic=False):
  """The marginal MLM loss of one batch; (loss, aux metrics).

  batch: query_ids/query_mask [B, Lq]; cand_* [B, K, Ld] (retriever inputs,
  null document first); reader_* [B, K, Lr]; mlm_* [B, M].
  """
  retriever, reader = Retriever(cfg), MLMEncoder(cfg)
  q_rng, d_rng, r_rng = jax.random.split(rng, 3)
  q_emb = embed_queries(params["retriever"], batch["query_ids"],
                        batch["query_mask"], cfg, deterministic, q_rng)
  d_emb = retriever.apply(
      {"params": params["retriever"]}, batch["cand_ids"], batch["cand_segments"], batch["cand_mask"],
      deterministic, method=Retriever.embed_doc, rngs={"dropout": d_rng})
  log_pz = losses.candidate_log_probs(relevance_scores(q_emb, d_emb))
  logits = reader.apply(
      {"params": params["reader"]}, batch["reader_ids"],
      batch["reader_segments"], batch["reader_mask"], batch["mlm_positions"],
      deterministic, rngs={"dropout": r_rng})
  return losses.marginal_mlm_loss(log_pz, logits, batch["mlm_labels"],
                                  batch["mlm_weights"], per_token=per_token)


def train_step(state: dict, batch, cfg, tx, per_token=True,
               retriever_frozen_steps=0):
  """One optimizer step. For the first `retriever_frozen_steps` steps the
  retriever is held fixed (no gradient, no update) while the reader learns."""
  (loss, aux), grads = jax.value_and_grad(pretrain_loss, has_aux=True)(
      state["params"], batch, state_lib.step_rng(state), cfg, per_token)
  if retriever_frozen_steps:
    frozen = state["step"] < retriever_frozen_steps
    grads = dict(grads, retriever=jax.tree.map(
        lambda g: jnp.where(frozen, jnp.zeros_like(g), g), grads["retriever"]))
  new_state = state_lib.apply_gradients(state, grads, tx)
  if retriever_frozen_steps:  # weight decay would still move it: restore it
    new_state = dict(new_state, params=dict(
        new_state["params"], retriever=jax.tree.map(
            lambda old, new: jnp.where(frozen, old, new),
            state["params"]["retriever"], new_state["params"]["retriever"])))
  metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                 param_norm=optax.global_norm(new_state["params"]),
                 retriever_grad_norm=optax.global_norm(grads["retriever"]))
  return new_state, metrics


def version_for_step(step: int, every: int, delay: int) -> int:
  """Deterministic mode: the index version step `step` trains against."""
  return max(0, (step - delay) // every * every)


def step_inputs(queries: dict, rows, store, tok, reader_len: int) -> dict:
  """A train step's batch: the masked queries' arrays (query_*, mlm_*) and
  the retriever and reader inputs of their candidate rows [B, K]."""
  cand = candidates.candidate_doc_inputs(store, rows, tok)
  reader = candidates.reader_inputs(queries["query_ids"], queries["query_mask"],
                                    store, rows, reader_len, tok.sep_id,
                                    tok.pad_id)
  out = {k: queries[k] for k in ("query_ids", "query_mask", "mlm_positions",
                                 "mlm_labels", "mlm_weights")}
  out.update(cand_ids=cand[0], cand_segments=cand[1], cand_mask=cand[2],
             reader_ids=reader[0], reader_segments=reader[1],
             reader_mask=reader[2])
  return out


def wait_for_version(watcher, version: int, job=None):
  """Deterministic mode waits for exactly `version`; meanwhile the job is
  checked (and restarted if it died), or the wait would never end."""
  while True:
    try:
      return watcher.wait_for(version, timeout=5.0)
    except TimeoutError:
      if job is not None:
        job.check()


class BatchMaker:
  """The prefetch thread's work: one query batch -> one full train batch."""

  def __init__(self, config, cfg, store, tokenizer, data_iter, watcher,
               start_step, job=None):
    self.config, self.store, self.tok = config, store, tokenizer
    self.data_iter, self.watcher, self.job = data_iter, watcher, job
    self.step = start_step
    self.embedder = QueryEmbedder(cfg, config.workdir)

  def _wait_for(self, version: int):
    return wait_for_version(self.watcher, version, self.job)

  def __call__(self) -> dict:
    config = self.config
    if self.step >= config.train.num_steps:
      raise StopIteration   # nothing past the last step: don't wait on an index
    batch = next(self.data_iter)
    data_state = self.data_iter.get_state()
    if config.index.deterministic:
      current = self._wait_for(version_for_step(
          self.step, config.index.refresh_every, config.index.refresh_delay))
    else:
      current = self.watcher.current
    if config.index.query_params == "latest" and self.embedder.latest is not None:
      q_params = self.embedder.latest
    else:
      q_params = self.embedder.params_of_export(current.version)
    q_emb = self.embedder(q_params, batch["query_ids"], batch["query_mask"])
    source_rows = self.store.rows_for_uids(list(batch["source_uid"]))
    rows, _ = candidates.retrieve_candidates(
        current.served, q_emb, source_rows, config.train.num_candidates - 1)
    out = step_inputs(batch, rows, self.store, self.tok,
                      config.data.reader_len)
    info = {"step": self.step, "data_state": data_state,
            "index_version": current.version, "rows": rows}
    self.step += 1
    return {"arrays": out, "info": info}
