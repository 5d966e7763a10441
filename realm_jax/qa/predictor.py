"""Predicts answers with a fine-tuned model and its index (eval, answer).

The answer string is the block's own text between the char offsets of the
span's first and last token (found by re-tokenizing the block text), so it
keeps the original case and spacing; where re-tokenizing disagrees with the
stored ids it falls back to tokenizer.decode of the span's ids.

Baselines (eval.retrieval, or `retrieval=` of `evaluate`):
  index   the fine-tuned retriever (the default);
  random  K blocks drawn uniformly at random per question (seeded): chance
          retrieval with the same reader;
  null    no evidence at all: REALM's null document `[CLS] q [SEP][SEP]`.
          An extractive reader can only copy a span of its evidence, so with
          none it predicts the empty string and scores EM 0 by construction
          (nothing is read); it is the floor that retrieval lifts;
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
          whose embedder may be a refresh older than its last checkpoint;
  hybrid  BM25 and the fine-tuned retriever fused by reciprocal rank over
          each one's top HYBRID_DEPTH (answer_rules.fuse_ranks): BM25 finds
          the blocks that share the question's rare words (names), the
          dense retriever those that paraphrase it. Scored by the
          fine-tuned query embedder as in bm25. Ours.
"""
import dataclasses
import functools

import jax
import numpy as np

from realm_jax.batching import candidates
from realm_jax.batching import qa_inputs
from realm_jax.index import bm25
from realm_jax.models import retrieve_and_read
from realm_jax.models.bert import MASK_VALUE
from realm_jax.models.reader import span_candidates
from realm_jax.models.retriever import jitted_embed_queries
from realm_jax.qa import answer_rules
from realm_jax.qa.model import FineTuned


# With answer_not_in_question, the best spans looked at per block.
_SPANS_LOOKED_AT = 20

# Reader inputs are cut to a multiple of this many tokens (as index/build.py
# cuts blocks): at most reader_len / 16 widths compile.
_WIDTH_STEP = 16

RETRIEVAL_MODES = ("index", "random", "null", "bm25", "dense_zero_shot",
                   "hybrid")
# How deep each ranking is read for the hybrid's fusion.
HYBRID_DEPTH = 100
# Modes that need no fine-tuned reader (recall@k only without one).
RETRIEVAL_ONLY_MODES = ("bm25", "dense_zero_shot")


def _softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def span_text(tokenizer, text: str, body_ids: np.ndarray, start: int,
              end: int, offsets=False):
  """(answer string, (char_start, char_end) or None) of body tokens start..end.

  The string is cut from `text` through the tokens' char offsets; if the text
  does not re-tokenize to `body_ids`, it is tokenizer.decode of the ids and
  the char span is None. `offsets`: qa_inputs.body_char_offsets of the
  block, when already computed.
  """
  if offsets is False:
    offsets = qa_inputs.body_char_offsets(tokenizer, text, body_ids)
  if offsets is None:
    return tokenizer.decode(body_ids[start:end + 1]), None
  lo, hi = int(offsets[start, 0]), int(offsets[end, 1])
  return text[lo:hi], (lo, hi)


@functools.lru_cache(maxsize=4)
def _jitted(cfg):
  """(embed, read) jitted once per model config, so that several
  evaluations in one process (e.g. the demo's comparisons) compile once.
  read gives the reader's span logits alone; f(x, z) is added on the host."""
  embed = jitted_embed_queries(cfg)
  read = jax.jit(lambda reader_params, batch: retrieve_and_read.read_spans(
      reader_params, batch, cfg)[0])
  return embed, read


@dataclasses.dataclass(frozen=True)
class BlockRead:
  """What the reader found in one block for one question: its best span's
  logit and answer (string, char span or None), and the logsumexp of all its
  spans' logits (for the joint softmax); best is MASK_VALUE where no span can
  be read (the null document)."""
  best: float
  logsumexp: float
  answer: str = ""
  chars: tuple | None = None
  fits: bool = True   # answer passed the answer rules (or none applied)


class Predictor:
  """Answers batches of questions with a fine-tuned model and its index.

  predict(qa_batch) -> one dict per question (see the module docstring).
  The reader reads each (question, block) pair once: `read_cache`, a dict
  shared by Predictors of the same reader params and reader_len (the demo's
  systems that differ only in retrieval), keeps what it found, so a block
  that two retrievers both return is read once; by default the cache lives
  for one predict call. Pairs are read `read_batch` at a time (k at a time
  when there are no more than k, else padded to a power of two), shortest
  first (`_read_pairs`).
  """

  def __init__(self, model: FineTuned, tokenizer, *, reader_len: int,
               reader_beam: int, recall_k: int = 0, retrieval: str = "index",
               seed: int = 0, query_params=None,
               bm25_index: bm25.BM25Index | None = None,
               read_cache: dict | None = None, read_batch: int = 8,
               answer_not_in_question: bool = False,
               answer_types: bool = False):
    """query_params: retriever params that embed the questions (default the
    model's; dense_zero_shot passes the initial ones). bm25_index: the
    BM25Index searched in bm25 mode. answer_not_in_question: a block's
    answer is its best span that is not a phrase of the question (of its 20
    best; ours, eval.answer_not_in_question), else its best span.
    answer_types: also not of a type the wh-word rules out (`wrong_type`;
    ours, eval.answer_types)."""
    if retrieval not in RETRIEVAL_MODES:
      raise ValueError(f"retrieval must be one of {RETRIEVAL_MODES}, got "
                       f"{retrieval!r}")
    # The params on the device once: a numpy tree would be copied to it again
    # by every jitted call (91 MB for MiniLM, ~30 ms a call on a CPU, a PCIe
    # transfer on an accelerator), which made a lone question cost 2x its
    # arithmetic. Arrays already there are not copied.
    model = dataclasses.replace(model, params=jax.device_put(model.params))
    self.model, self.tok, self.retrieval = model, tokenizer, retrieval
    self.reader_len = reader_len
    # The null mode retrieves k copies of the null document (same shapes as
    # the other modes) and reads none: it has no span, the answer is empty.
    self.k = min(reader_beam, model.store.num_blocks)
    self.beam = min(max(self.k, recall_k), model.store.num_blocks)
    self.rng = np.random.default_rng(seed)
    if retrieval in ("bm25", "hybrid") and bm25_index is None:
      raise ValueError(f"retrieval={retrieval!r} needs bm25_index "
                       "(index.bm25.BM25Index)")
    self.bm25 = bm25_index
    self.query_params = (model.params["retriever"] if query_params is None
                         else jax.device_put(query_params))
    self.read_cache, self.read_batch = read_cache, max(read_batch, self.k)
    self.answer_not_in_question = answer_not_in_question
    self.answer_types = answer_types
    cfg = model.cfg
    self._embed, self._read = _jitted(cfg)

  def warm_up(self, question_ids, question_mask, batch_sizes, max_pairs):
    """Compiles the programs predict runs for question batches of
    `batch_sizes` rows and up to `max_pairs` (question, block) reads, so a
    server's first questions of each shape do not wait for XLA. The
    question_ids/mask [1, question_len] are any encoded question."""
    for size in batch_sizes:
      self._embed(self.query_params, np.repeat(question_ids, size, 0),
                  np.repeat(question_mask, size, 0))
    if self.model.params["reader"] is None:
      return
    reader = qa_inputs.reader_batch(question_ids, question_mask,
                                    self.model.store, np.zeros((1, 1), int),
                                    self.reader_len, self.tok)
    sizes = {self._read_rows(n)
             for n in range(1, min(max_pairs, self.read_batch) + 1)}
    widths = {min(w, self.reader_len) for w in range(
        _WIDTH_STEP, self.reader_len + _WIDTH_STEP, _WIDTH_STEP)}
    for size in sorted(sizes):
      for width in sorted(widths):
        self._read(self.model.params["reader"],
                   {name: np.repeat(x[..., :width], size, 0)
                    for name, x in reader.items()})

  def _read_rows(self, pairs: int) -> int:
    """The rows a read of `pairs` pairs (at most read_batch) is padded to:
    k, else a power of two up to read_batch. A few shapes compile, and a
    server's small batches do not read read_batch rows each."""
    return (self.k if pairs <= self.k else
            min(self.read_batch, 1 << (pairs - 1).bit_length()))

  def retrieve(self, question_ids, question_mask, questions=None,
               own_emb=None):
    """rows int64 [B, beam] (NULL_ROW for null) and cand_emb [B, K, D] (None
    for bm25 without an index). `questions`: the strings, for bm25;
    `own_emb`: the questions embedded by the model's retriever, if done."""
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
    q_emb = (own_emb if own_emb is not None
             and self.query_params is self.model.params["retriever"]
             else np.asarray(self._embed(self.query_params, question_ids,
                                         question_mask)))
    if self.retrieval == "hybrid":
      depth = min(max(HYBRID_DEPTH, self.beam), self.model.store.num_blocks)
      dense, _ = qa_inputs.search(self.model.searcher, self.model.emb, q_emb,
                                  depth)
      rows = answer_rules.fuse_ranks(self.bm25.search(questions, depth)[0], dense,
                        self.beam)
      return rows, np.asarray(self.model.emb[rows[:, :self.k]], np.float32)
    rows, cand = qa_inputs.search(self.model.searcher, self.model.emb,
                                     q_emb, self.beam)
    return rows, cand[:, :self.k]

  def predict(self, qa_batch: dict) -> list[dict]:
    ids, mask = qa_batch["question_ids"], qa_batch["question_mask"]
    if self.model.params["reader"] is None:   # retrieval only
      rows, _ = self.retrieve(ids, mask, qa_batch["question"])
      return [self._unread(qa_batch, i, rows[i]) for i in range(len(ids))]
    # f(x, z) of the K blocks read, by the fine-tuned query embedder (also
    # in dense_zero_shot and bm25: only the choice of blocks differs).
    q_emb = np.asarray(self._embed(self.model.params["retriever"], ids, mask),
                       np.float32)
    rows, cand = self.retrieve(ids, mask, qa_batch["question"], q_emb)
    scores = np.einsum("bp,bkp->bk", q_emb, np.asarray(cand, np.float32))
    reads = self._read_blocks(ids, mask, rows[:, :self.k])
    return [self._one(qa_batch, i, rows[i], scores[i], reads[i])
            for i in range(len(ids))]

  def _read_blocks(self, ids, mask, rows) -> list[list[BlockRead]]:
    """BlockRead of every (question i, block rows[i, j]), [B][K]; pairs not
    in the cache are read, in batches of read_batch (or k)."""
    cache = {} if self.read_cache is None else self.read_cache
    keys = [[(ids[i, :int(mask[i].sum())].tobytes(), int(r)) for r in row]
            for i, row in enumerate(rows)]
    todo = {}
    for i, row in enumerate(keys):
      for j, key in enumerate(row):
        if rows[i, j] == candidates.NULL_ROW:
          # The null document has no span: nothing to read (`null` mode).
          cache[key] = BlockRead(best=MASK_VALUE, logsumexp=-np.inf)
        elif key not in cache and key not in todo:
          todo[key] = (i, j)
    if todo:
      self._read_pairs(ids, mask, rows, list(todo.items()), cache)
    return [[cache[key] for key in row] for row in keys]

  def _read_pairs(self, ids, mask, rows, pairs, cache):
    """Reads (key, (i, j)) pairs into `cache`, shortest first, each batch
    cut to its longest input rounded up to _WIDTH_STEP tokens (padding is
    masked out, so only float summation order can change)."""
    # Question i as words, for answer_not_in_question: decoded from its ids
    # (the cache's key), [CLS] and [SEP] left out.
    asked = ({i for _, (i, _) in pairs}
             if self.answer_not_in_question or self.answer_types else ())
    words = {i: answer_rules.question_words(self.tok.decode(ids[i, 1:int(mask[i].sum()) - 1]))
             for i in asked}
    q = np.asarray([i for _, (i, _) in pairs])
    r = np.asarray([rows[i, j] for _, (i, j) in pairs])
    reader = qa_inputs.reader_batch(ids[q], mask[q], self.model.store,
                                    r[:, None], self.reader_len, self.tok)
    lengths = reader["reader_mask"][:, 0].sum(axis=-1)
    order = np.argsort(lengths, kind="stable")
    for lo in range(0, len(order), self.read_batch):
      chunk = order[lo:lo + self.read_batch]
      size = self._read_rows(len(chunk))
      width = min(self.reader_len, -(-int(lengths[chunk].max()) // _WIDTH_STEP)
                  * _WIDTH_STEP)
      # Padded with the chunk's first pair (read again, result dropped).
      padded = np.concatenate([chunk, np.repeat(chunk[:1], size - len(chunk))])
      batch = {name: x[padded][..., :width] for name, x in reader.items()}
      logits = np.asarray(jax.device_get(self._read(
          self.model.params["reader"], batch)), np.float64)
      for n, p in enumerate(chunk):
        key, (i, _) = pairs[p]
        cache[key] = self._block_read(
            logits[n, 0], int(mask[i].sum()), int(r[p]), batch["reader_ids"][n, 0],
            int(batch["block_mask"][n, 0].sum()), width, words.get(i))

  def _block_read(self, logits, first, row, reader_ids, n, width,
                  question=None) -> BlockRead:
    """A BlockRead from one block's span logits [num_spans] of an input
    `width` tokens wide; `first` is the position of its first body token,
    n the number of body tokens; `question`: its words, to pass over spans
    that only repeat them (answer_not_in_question)."""
    valid = logits > MASK_VALUE / 2
    if not valid.any():   # no whole word fits (a block of one split word)
      return BlockRead(best=MASK_VALUE, logsumexp=-np.inf)
    starts, ends = span_candidates(width, self.model.cfg.max_span_width)
    text, body = self.model.store.text(row), reader_ids[first:first + n]
    offsets = qa_inputs.body_char_offsets(self.tok, text, body)
    cut = lambda j: span_text(self.tok, text, body, int(starts[j]) - first,
                              int(ends[j]) - first, offsets)
    best = int(np.argmax(logits))
    answer, chars = cut(best)
    unfit = lambda a: ((self.answer_not_in_question and answer_rules.in_question(a, question))
                       or (self.answer_types and answer_rules.wrong_type(a, question)))
    fits = question is None or not unfit(answer)
    if not fits:
      # The best of the next spans that fits, if any.
      for j in np.argsort(-logits, kind="stable")[1:_SPANS_LOOKED_AT]:
        if not valid[j]:
          break
        other, other_chars = cut(int(j))
        if not unfit(other):
          best, answer, chars, fits = int(j), other, other_chars, True
          break
    return BlockRead(best=float(logits[best]),
                     logsumexp=float(np.logaddexp.reduce(logits[valid])),
                     answer=answer, chars=chars, fits=fits)

  def _unread(self, qa_batch, i, rows) -> dict:
    """The prediction record without a reader: the blocks, no answer."""
    titles = [self.model.store.title(int(r)) for r in rows[:self.k]]
    return {"question": qa_batch["question"][i],
            "answers": list(qa_batch["answers"][i]), "prediction": None,
            "score": None, "prob": None, "block": None, "span": None,
            "top_blocks": [{"row": int(r), "title": t, "p": None}
                           for r, t in zip(rows[:self.k], titles)],
            "retrieved": [int(r) for r in rows], "retrieval_score": None}

  def _one(self, qa_batch, i, rows, scores, reads) -> dict:
    """The prediction: the argmax of the joint (block, span) logits, reader
    logit + f(x, z), and its share of their softmax, as in ORQA."""
    store, k = self.model.store, self.k
    p_z = _softmax(scores[:k])
    top = [{"row": int(r), "title": store.title(int(r)), "p": float(p)}
           for r, p in zip(rows[:k], p_z) if r >= 0]
    pred = {"question": qa_batch["question"][i],
            "answers": list(qa_batch["answers"][i]), "prediction": "",
            "score": None, "prob": None, "block": None, "span": None,
            "top_blocks": top, "retrieved": [int(r) for r in rows],
            # f(x, z) of the best block read: how well anything matched.
            "retrieval_score": float(np.max(scores[:k]))}
    readable = [j for j, read in enumerate(reads) if read.best > MASK_VALUE / 2]
    if not readable:   # no span inside any block (null doc)
      return pred
    joint = {j: reads[j].best + float(scores[j]) for j in readable}
    block = answer_rules.best_block(joint, {j: reads[j].fits for j in readable})
    lse = np.logaddexp.reduce([reads[j].logsumexp + float(scores[j])
                               for j in readable])
    row = int(rows[block])
    pred.update(prediction=reads[block].answer, score=joint[block],
                prob=float(np.exp(joint[block] - lse)),
                block={"row": row, "title": store.title(row), "rank": block},
                span=None if reads[block].chars is None
                else list(reads[block].chars))
    return pred
