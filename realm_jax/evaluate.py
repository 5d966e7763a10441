"""Open-QA evaluation (config.task == "eval"): exact match, recall@k, predictions.

For each question the fine-tuned retriever searches the frozen index, the
reader reads the top K = finetune.reader_beam blocks, and the prediction is
the argmax of the joint (block, span) logits (retriever score included), as
in ORQA. Reported:
  exact_match  EM after SQuAD normalization, max over references; for
               CuratedTREC (finetune.regex_answers) the regex match of ORQA
               (re.match, IGNORECASE) on the raw prediction, which the paper
               also reports as EM.
  recall@k     fraction of questions with an answer-bearing block among the
               top k retrieved (k in {1, reader_beam, eval.recall_k}).
and one JSON line per question in eval.predictions (default
<workdir>/predictions.jsonl): question, gold answers, predicted answer, score
(joint logit) and prob (its share of the joint softmax), the answer block,
the answer's char span in that block's text, and the top blocks with titles
and p(z|x) (softmax of the retriever scores over the K blocks read).

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
bm25 and dense_zero_shot also run without a fine-tuned reader (a workdir with
no openqa.json, e.g. only data.block_store or an index: `retrieval_model`):
then only recall@k is measured, exact_match is None, and each prediction has
"prediction": null and p: null in top_blocks.

A comparison such as the demo's is then: (a) no retrieval =
evaluate(config, retrieval="null"); (b) the initial retriever = evaluate of
a workdir fine-tuned from model.init (+ model.retriever_init, e.g. ICT);
(c) REALM = evaluate of a workdir fine-tuned with finetune.init_from=<the
pretraining workdir>. `evaluate` also takes `params` (same model shape and
index as the workdir's) and an already loaded `model`, and several calls in
one process compile once.
"""
import dataclasses
import functools
import json
import os
from typing import Sequence

import jax
import numpy as np
from absl import logging

from realm_jax import stats
from realm_jax.data import catalog
from realm_jax.data import pipeline
from realm_jax.data import qa
from realm_jax.index import bm25
from realm_jax.models.bert import MASK_VALUE
from realm_jax.models.reader import SpanReader, span_candidates
from realm_jax.models.retriever import embed_queries
from realm_jax.train import finetune
from realm_jax.train import loop
from realm_jax.train import qa_retrieval
from realm_jax.train import qa_setup
from realm_jax.train import retrieval as pretrain_retrieval

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
  offsets = qa_retrieval.body_char_offsets(tokenizer, text, body_ids)
  if offsets is None:
    return tokenizer.decode(body_ids[start:end + 1]), None
  lo, hi = int(offsets[start, 0]), int(offsets[end, 1])
  return text[lo:hi], (lo, hi)


@functools.lru_cache(maxsize=4)
def _jitted(cfg):
  """(embed, read) jitted once per model config, so that several
  evaluations in one process (e.g. the demo's comparisons) compile once."""
  embed = jax.jit(functools.partial(embed_queries, config=cfg))
  read = jax.jit(lambda params, batch: finetune.read(params, batch, cfg)[:2])
  return embed, read


class Predictor:
  """Answers batches of questions with a fine-tuned model and its index.

  predict(qa_batch) -> one dict per question (see the module docstring);
  the jitted functions compile once per batch shape.
  """

  def __init__(self, model: qa_setup.FineTuned, tokenizer, *, reader_len: int,
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
      rows = np.full((b, self.k), pretrain_retrieval.NULL_ROW, np.int64)
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
    rows, cand = qa_retrieval.search(self.model.searcher, self.model.emb,
                                     q_emb, self.beam)
    return rows, cand[:, :self.k]

  def predict(self, qa_batch: dict) -> list[dict]:
    ids, mask = qa_batch["question_ids"], qa_batch["question_mask"]
    rows, cand = self.retrieve(ids, mask, qa_batch["question"])
    if self.model.params["reader"] is None:   # retrieval only
      return [self._unread(qa_batch, i, rows[i]) for i in range(len(ids))]
    store = self.model.store
    reader = qa_retrieval.reader_batch(ids, mask, store, rows[:, :self.k],
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


def eval_examples(config) -> list[dict]:
  """eval.file if set, else finetune.dataset's eval.split; eval.max_questions."""
  if config.eval.file:
    examples = qa.read_qa_jsonl(config.eval.file)
  else:
    examples = catalog.qa_examples(config, config.eval.split)
  if config.eval.max_questions:
    examples = examples[:config.eval.max_questions]
  if not examples:
    raise ValueError("no questions to evaluate (eval.file / finetune.dataset "
                     f"split {config.eval.split!r} is empty)")
  return examples


def _batches(examples, tokenizer, config):
  """qa_dataset batches in file order, the last one padded to full size."""
  size = config.eval.batch_size
  dataset = pipeline.qa_dataset(
      examples, tokenizer, config.seed, size,
      question_len=config.finetune.question_len, train=False, read_threads=0,
      shard_options=pipeline.ShardOptions(0, 1, drop_remainder=False))
  for batch in dataset:
    n = len(batch["question"])
    if n < size:   # one compiled shape: repeat row 0, drop its results later
      pad = np.zeros(size - n, np.int64)
      batch = {k: np.concatenate([v, v[pad]]) for k, v in batch.items()}
    yield batch, n


def initial_retriever(config, cfg):
  """The retriever params fine-tuning starts from: qa_setup.initial_params
  with the key finetune.run gives it (loop.params_key), so that a
  random model.init reproduces the same draw."""
  return qa_setup.initial_params(config, cfg, loop.params_key(config.seed)
                                 )["retriever"]


def retrieval_model(config, retrieval: str) -> qa_setup.FineTuned:
  """A model with no reader (params["reader"] None), for recall@k only.

  The block store of qa_setup.block_store(config). For dense_zero_shot also
  the initial retriever and the index of qa_setup.find_index(config), or, if
  there is none, <workdir>/index/0 embedded by the initial document embedder
  (what fine-tuning would bootstrap).
  """
  store = qa_setup.block_store(config)
  cfg = qa_setup.model_config(config, store.tokenizer().vocab_size)
  retriever = emb = searcher = path = None
  if retrieval == "dense_zero_shot":
    retriever = initial_retriever(config, cfg)
    path = qa_setup.find_index(config) or qa_setup.bootstrap_index(
        config, cfg, retriever, store)
    emb, searcher = qa_setup.open_index(path, store, config.index,
                                        qa_setup.searcher_cache(config))
  elif retrieval != "bm25":
    raise ValueError(f"retrieval={retrieval!r} needs a fine-tuned reader; "
                     f"only {RETRIEVAL_ONLY_MODES} run without one")
  return qa_setup.FineTuned(cfg=cfg, params={"retriever": retriever,
                                             "reader": None},
                            store=store, emb=emb, searcher=searcher,
                            index_path=path, step=None)


def evaluate(config, params=None, *, model: qa_setup.FineTuned | None = None,
             examples: Sequence[dict] | None = None,
             retrieval: str | None = None,
             predictions_path: str | None = None) -> dict:
  """EM and recall@k of a fine-tuned model; writes the predictions JSONL.

  Args:
    config: the run config (finetune.* reader settings, eval.*).
    params: {"retriever", "reader" (SpanReader)} to evaluate instead of the
      latest checkpoint of config.workdir (same model shape and index).
    model: an already loaded qa_setup.FineTuned (default: load_finetuned,
      or `retrieval_model` for bm25 / dense_zero_shot in a workdir that was
      not fine-tuned).
    examples: [{"question", "answer": [...]}] (default: `eval_examples`).
    retrieval: one of RETRIEVAL_MODES (default eval.retrieval), see the
      module docstring.
    predictions_path: default eval.predictions or <workdir>/predictions.jsonl.

  Returns:
    {"exact_match" (None without a reader), "recall@<k>"...,
    "num_questions", "metric" (exact_match or regex_match), "retrieval",
    "step", "predictions"}.
  """
  retrieval = retrieval or config.eval.retrieval
  if model is None:
    if (retrieval in RETRIEVAL_ONLY_MODES
        and qa_setup.read_record(config.workdir) is None):
      logging.info("%s is not a fine-tuning workdir: %s retrieval only, no EM",
                   config.workdir, retrieval)
      model = retrieval_model(config, retrieval)
    else:
      model = qa_setup.load_finetuned(config)
  if params is not None:
    qa_setup.check_shapes(params["reader"], SpanReader(model.cfg),
                          "evaluate(params=...) reader")
    model = dataclasses.replace(model, params=params)
  examples = list(examples) if examples is not None else eval_examples(config)
  f = config.finetune
  tok = model.store.tokenizer()
  read = model.params["reader"] is not None
  query_params = None
  if retrieval == "dense_zero_shot" and read:   # else already the initial ones
    query_params = initial_retriever(config, model.cfg)
  bm25_index = None
  if retrieval == "bm25":
    bm25_index = bm25.BM25Index(model.store,
                                os.path.join(config.workdir, "bm25_cache"))
  predictor = Predictor(model, tok, reader_len=f.reader_len,
                        reader_beam=f.reader_beam, recall_k=config.eval.recall_k,
                        retrieval=retrieval, seed=config.seed,
                        query_params=query_params, bm25_index=bm25_index)
  ks = sorted({1, predictor.k, config.eval.recall_k} - {0})
  match = "regex" if f.regex_answers else f.answer_match
  path = (predictions_path or config.eval.predictions
          or os.path.join(config.workdir, "predictions.jsonl"))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  correct, hits = [], []
  with open(path + ".tmp", "w", encoding="utf-8") as out:
    for batch, n in _batches(examples, tok, config):
      for pred in predictor.predict(batch)[:n]:
        pred["correct"] = None if not read else qa.is_correct(
            pred["prediction"], pred["answers"], is_regex=f.regex_answers)
        rows = [r for r in pred.pop("retrieved") if r >= 0][:max(ks)]
        hit = qa_retrieval.blocks_with_answer(
            [model.store.text(r) for r in rows], pred["answers"], match)
        hits.append(np.pad(hit, (0, max(ks) - len(hit))))
        # 1-based rank of the first answer-bearing block (None: not in the
        # top max(ks)); recall@k and its CI can be recomputed from it.
        pred["answer_rank"] = int(np.argmax(hit)) + 1 if hit.any() else None
        for block in pred["top_blocks"]:
          block["has_answer"] = bool(hit[rows.index(block["row"])]) if (
              block["row"] in rows) else None
        correct.append(pred["correct"])
        out.write(json.dumps(pred, ensure_ascii=False) + "\n")
  os.replace(path + ".tmp", path)
  hits = np.stack(hits)
  recall = qa.recall_at_k(hits, ks)
  result = {"exact_match": float(np.mean(correct)) if read else None,
            "metric": "regex_match" if f.regex_answers else "exact_match",
            "num_questions": len(correct), "retrieval": retrieval,
            "step": model.step, "predictions": path}
  if f.regex_answers:
    result["regex_match"] = result["exact_match"]
  result.update({f"recall@{k}": v for k, v in recall.items()})
  per_question = {f"recall@{k}": hits[:, :k].any(axis=1)
                  for k in ks}
  if read:
    per_question["exact_match"] = np.asarray(correct, np.float64)
  result["ci95"] = {name: list(stats.bootstrap_ci(v))
                    for name, v in per_question.items()}
  em = result["exact_match"]
  logging.info("eval (%s retrieval, %d questions, step %s): EM %s %s",
               retrieval, len(correct), model.step,
               "–" if em is None else f"{em:.4f}",
               " ".join(f"recall@{k} {v:.3f}" for k, v in recall.items()))
  return result


def run(config):
  result = evaluate(config)
  name = (os.path.splitext(os.path.basename(config.eval.file))[0]
          if config.eval.file else config.eval.split)
  path = os.path.join(config.workdir, f"eval_{name}_{result['retrieval']}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))
  return result
