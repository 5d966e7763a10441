"""The Inverse Cloze Task's loss and step (the task: tasks/ict.py).

ORQA's recipe: the query is a random sentence of a block, the block (title
kept) has that sentence removed with probability 0.9, and the loss is a
softmax over every block of the global batch. Under jit over the data mesh
the [B, B] score matrix needs all blocks of all devices; XLA inserts the
gather.
"""

import jax
import jax.numpy as jnp
import optax

from realm_jax.models.retriever import Retriever, embed_queries
from realm_jax.train import state as state_lib

DEVICE_KEYS = ("query_ids", "query_mask", "block_ids", "block_mask",
               "block_segment_ids")


def ict_loss(params, batch, rng, cfg, deterministic=False):
  """In-batch softmax: query i's positive is block i. Returns (loss, aux)."""
  retriever = Retriever(cfg)
  q_rng, d_rng = jax.random.split(rng)
  q = embed_queries(params["retriever"], batch["query_ids"],
                    batch["query_mask"], cfg, deterministic, q_rng)
  d = retriever.apply({"params": params["retriever"]}, batch["block_ids"],
                      batch["block_segment_ids"], batch["block_mask"],
                      deterministic, method=Retriever.embed_doc,
                      rngs={"dropout": d_rng})
  logits = jnp.einsum("qp,dp->qd", q, d)
  labels = jnp.arange(logits.shape[0])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  return loss, {"accuracy": accuracy}


def train_step(state, batch, cfg, tx):
  (loss, aux), grads = jax.value_and_grad(ict_loss, has_aux=True)(
      state["params"], batch, state_lib.step_rng(state), cfg)
  new_state = state_lib.apply_gradients(state, grads, tx)
  # The norm of the params the step returns (and a checkpoint saves): a NaN
  # in them stops the run before the save (checkpoint.check_finite).
  metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                 param_norm=optax.global_norm(new_state["params"]))
  return new_state, metrics
