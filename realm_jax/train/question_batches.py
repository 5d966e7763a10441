"""Fine-tuning's batch source: questions embedded with the query embedder
on the mesh, searched on the host, assembled into a step's arrays
(train/finetune_step.py gives the assembly, batching/qa_inputs.py)."""
import jax
import numpy as np

from realm_jax.models.retriever import jitted_embed_queries
from realm_jax.train import loop
from realm_jax.train import partition


class QuestionEmbedder:
  """Embeds a question batch on the mesh; returns this process's rows."""

  def __init__(self, cfg, mesh):
    self.mesh = mesh
    self._fn = jitted_embed_queries(cfg, partition.data_sharded(mesh))

  def __call__(self, retriever_params, qa_batch):
    """Dispatches the embedding; call `.host(result)` for numpy rows."""
    inputs = partition.shard_batch(
        {k: qa_batch[k] for k in ("question_ids", "question_mask")}, self.mesh)
    return self._fn(retriever_params, inputs["question_ids"],
                    inputs["question_mask"])

  @staticmethod
  def host(emb) -> np.ndarray:
    if jax.process_count() == 1:
      return np.asarray(emb)
    shards = sorted(emb.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


class QuestionBatches:
  """The loop's batch source: questions, searched with the query embedder of
  the current params (finetune.search_lag=0) or of the previous step's
  (search_lag=1: the next questions are embedded while this step runs).

  make_batch(questions, their embeddings, reading) -> the step's host
  arrays; reading is True for the first `reading_steps` steps.
  """

  def __init__(self, data_iter, embedder, make_batch, num_steps: int,
               search_lag: int, keys: tuple, meta: dict,
               reading_steps: int = 0):
    self.data_iter, self.embedder, self.make_batch = data_iter, embedder, make_batch
    self.keys, self.reading_steps = keys, reading_steps
    self.num_steps, self.search_lag, self.meta = num_steps, search_lag, meta
    self.ahead = None   # search_lag=1: the next step's questions, embedded

  def _questions(self, state):
    """(questions, the iterator state a checkpoint resumes at, their
    embeddings: dispatched, not waited for)."""
    questions = next(self.data_iter)
    return (questions, self.data_iter.get_state(),
            self.embedder(state["params"]["retriever"], questions))

  def __call__(self, state, step: int) -> loop.Batch:
    if self.ahead is None:
      self.ahead = self._questions(state)
    questions, data_state, q_emb = self.ahead
    arrays = self.make_batch(questions, q_emb, step < self.reading_steps)
    self.ahead = None
    if self.search_lag == 1 and step + 1 < self.num_steps:
      # Dispatched now, before the step donates the params it reads.
      self.ahead = self._questions(state)
    return loop.Batch({k: arrays[k] for k in self.keys},
                      data_state=data_state, meta=self.meta)
