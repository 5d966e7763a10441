"""Predicts answers with a fine-tuned model and its index (eval, answer).

The answer string is the block's own text between the char offsets of the
span's first and last token (found by re-tokenizing the block text), so it
keeps the original case and spacing; where re-tokenizing disagrees with the
stored ids it falls back to tokenizer.decode of the span's ids.

Baselines (eval.retrieval, or `retrieval=` of `evaluate`):
  index   the fine-tuned retriever (the default);
  random  K blocks drawn uniformly at random per question (seeded): chance
          retrieval with the same reader;
  null    no evidence at all: the reader reads `[CLS] q [SEP][SEP]`, REALM's
          null document. An extractive reader can only copy a span of its
          evidence, so with none it predicts the empty string and scores EM 0
          by construction; it is the floor that retrieval lifts;
  bm25    BM25 (index/bm25.py, the `baselines` extra) over the block store's
          titles and texts, searched with the question string: its top
          max(K, eval.recall_k) blocks give recall@k, and the reader reads its
          top K. Their f(x, z) (the retriever term of the joint logit, and
          p(z|x)) is the fine-tuned query embedder's against the workdir's
          index embeddings of those rows, so the reader scores them exactly as
          it scores its own retriever's blocks and only the choice of blocks
          differs. The index is cached under <workdir>/bm25_cache/;
  dense_zero_shot  the questions are embedded with the retriever that
          fine-tuning started from (`initial_retriever`: model.init, plus
          model.retriever_init, or finetune.init_from's checkpoint) instead
          of the fine-tuned one, and searched in the workdir's index; the
          workdir's reader reads. Pass the fine-tuning config. Query and
          document embedders match exactly for a workdir fine-tuned without
          finetune.init_from (its index/0 was embedded by that same initial
          embedder); with init_from the index is the pretraining run's newest,
          whose embedder may be a refresh older than its last checkpoint.
"""
import functools

import jax
import numpy as np

from realm_jax.index import bm25
from realm_jax.models import openqa as openqa_model
from realm_jax.models.bert import MASK_VALUE
from realm_jax.models.reader import span_candidates
from realm_jax.models.retriever import embed_queries
from realm_jax.qa.model import FineTuned
from realm_jax.retrieval import candidates
from realm_jax.retrieval import qa_inputs


RETRIEVAL_MODES = ("index", "random", "null", "bm25", "dense_zero_shot")
# Modes that need no fine-tuned reader (recall@k only without one).
RETRIEVAL_ONLY_MODES = ("bm25", "dense_zero_shot")


def _softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def span_text(tokenizer, text: str, body_ids: np.ndarray, start: int,
              end: int):
  """(answer string, (char_start, char_end) or None) of body tokens start..end.

  The string is cut from `text` through the tokens' char offsets; if the text
  does not re-tokenize to `body_ids`, it is tokenizer.decode of the ids and
  the char span is None.
  """
  offsets = qa_inputs.body_char_offsets(tokenizer, text, body_ids)
  if offsets is None:
    return tokenizer.decode(body_ids[start:end + 1]), None
  lo, hi = int(offsets[start, 0]), int(offsets[end, 1])
  return text[lo:hi], (lo, hi)


@functools.lru_cache(maxsize=4)
def _jitted(cfg):
  """(embed, read) jitted once per model config, so that several
  evaluations in one process (e.g. the demo's comparisons) compile once."""
  embed = jax.jit(functools.partial(embed_queries, config=cfg))
  read = jax.jit(lambda params, batch: openqa_model.read(params, batch, cfg)[:2])
  return embed, read


class Predictor:
  """Answers batches of questions with a fine-tuned model and its index.

  predict(qa_batch) -> one dict per question (see the module docstring);
  the jitted functions compile once per batch shape.
  """

  def __init__(self, model: FineTuned, tokenizer, *, reader_len: int,
               reader_beam: int, recall_k: int = 0, retrieval: str = "index",
               seed: int = 0, query_params=None,
               bm25_index: bm25.BM25Index | None = None):
    """query_params: retriever params that embed the questions (default the
    model's; dense_zero_shot passes the initial ones). bm25_index: the
    BM25Index searched in bm25 mode."""
    if retrieval not in RETRIEVAL_MODES:
      raise ValueError(f"retrieval must be one of {RETRIEVAL_MODES}, got "
                       f"{retrieval!r}")
    self.model, self.tok, self.retrieval = model, tokenizer, retrieval
    self.reader_len = reader_len
    # The null mode reads k copies of the null document: same shapes as the
    # other modes, so nothing recompiles, and the same (empty) answer.
    self.k = min(reader_beam, model.store.num_blocks)
    self.beam = min(max(self.k, recall_k), model.store.num_blocks)
    self.rng = np.random.default_rng(seed)
    if retrieval == "bm25" and bm25_index is None:
      raise ValueError("retrieval='bm25' needs bm25_index (index.bm25.BM25Index)")
    self.bm25 = bm25_index
    self.query_params = (model.params["retriever"] if query_params is None
                         else query_params)
    cfg = model.cfg
    self._embed, self._read = _jitted(cfg)
    self.starts, self.ends = span_candidates(reader_len, cfg.max_span_width)

  def retrieve(self, question_ids, question_mask, questions=None):
    """rows int64 [B, beam] (NULL_ROW for null) and cand_emb [B, K, D] (None
    for bm25 without an index). `questions`: the strings, for bm25."""
    b = len(question_ids)
    if self.retrieval == "null":
      rows = np.full((b, self.k), candidates.NULL_ROW, np.int64)
      return rows, np.zeros((b, self.k, self.model.emb.shape[1]), np.float32)
    if self.retrieval == "random":
      rows = np.stack([self.rng.choice(self.model.store.num_blocks, self.k,
                                       replace=False) for _ in range(b)])
      return rows.astype(np.int64), np.asarray(self.model.emb[rows])
    if self.retrieval == "bm25":
      rows, _ = self.bm25.search(questions, self.beam)
      # The index's embeddings of BM25's rows: the reader recomputes f(x, z)
      # with its query embedder, as for its own retriever's blocks.
      cand = (None if self.model.emb is None else
              np.asarray(self.model.emb[rows[:, :self.k]], np.float32))
      return rows, cand
    q_emb = np.asarray(self._embed(self.query_params, question_ids,
                                   question_mask))
    rows, cand = qa_inputs.search(self.model.searcher, self.model.emb,
                                     q_emb, self.beam)
    return rows, cand[:, :self.k]

  def predict(self, qa_batch: dict) -> list[dict]:
    ids, mask = qa_batch["question_ids"], qa_batch["question_mask"]
    rows, cand = self.retrieve(ids, mask, qa_batch["question"])
    if self.model.params["reader"] is None:   # retrieval only
      return [self._unread(qa_batch, i, rows[i]) for i in range(len(ids))]
    store = self.model.store
    reader = qa_inputs.reader_batch(ids, mask, store, rows[:, :self.k],
                                       self.reader_len, self.tok)
    batch = dict(reader, question_ids=ids, question_mask=mask, cand_emb=cand)
    scores, logits = jax.device_get(self._read(self.model.params, batch))
    out = []
    for i in range(len(ids)):
      out.append(self._one(qa_batch, i, rows[i], scores[i], logits[i],
                           reader))
    return out

  def _unread(self, qa_batch, i, rows) -> dict:
    """The prediction record without a reader: the blocks, no answer."""
    titles = [self.model.store.title(int(r)) for r in rows[:self.k]]
    return {"question": qa_batch["question"][i],
            "answers": list(qa_batch["answers"][i]), "prediction": None,
            "score": None, "prob": None, "block": None, "span": None,
            "top_blocks": [{"row": int(r), "title": t, "p": None}
                           for r, t in zip(rows[:self.k], titles)],
            "retrieved": [int(r) for r in rows]}

  def _one(self, qa_batch, i, rows, scores, logits, reader) -> dict:
    store, k = self.model.store, self.k
    first = int(qa_batch["question_mask"][i].sum())
    flat = logits.reshape(-1)
    best = int(np.argmax(flat))
    block, span = divmod(best, logits.shape[-1])
    p_z = _softmax(scores[:k])
    top = [{"row": int(r), "title": store.title(int(r)), "p": float(p)}
           for r, p in zip(rows[:k], p_z) if r >= 0]
    pred = {"question": qa_batch["question"][i],
            "answers": list(qa_batch["answers"][i]), "prediction": "",
            "score": None, "prob": None, "block": None, "span": None,
            "top_blocks": top, "retrieved": [int(r) for r in rows]}
    if flat[best] <= MASK_VALUE / 2:   # no span inside any block (null doc)
      return pred
    row = int(rows[block])
    n = int(reader["block_mask"][i, block].sum())
    body = reader["reader_ids"][i, block, first:first + n]
    text = store.text(row)
    answer, chars = span_text(self.tok, text, body,
                              int(self.starts[span]) - first,
                              int(self.ends[span]) - first)
    valid = flat > MASK_VALUE / 2
    prob = _softmax(flat[valid])[np.flatnonzero(valid) == best][0]
    pred.update(prediction=answer, score=float(flat[best]), prob=float(prob),
                block={"row": row, "title": store.title(row), "rank": block},
                span=None if chars is None else list(chars))
    return pred
