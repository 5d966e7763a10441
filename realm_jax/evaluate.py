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
          by construction; it is the floor that retrieval lifts.

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

from realm_jax.data import catalog
from realm_jax.data import pipeline
from realm_jax.data import qa
from realm_jax.models.bert import MASK_VALUE
from realm_jax.models.reader import SpanReader, span_candidates
from realm_jax.models.retriever import embed_queries
from realm_jax.train import finetune
from realm_jax.train import qa_retrieval
from realm_jax.train import qa_setup
from realm_jax.train import retrieval as pretrain_retrieval

RETRIEVAL_MODES = ("index", "random", "null")


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
               seed: int = 0):
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
    cfg = model.cfg
    self._embed, self._read = _jitted(cfg)
    self.starts, self.ends = span_candidates(reader_len, cfg.max_span_width)

  def retrieve(self, question_ids, question_mask):
    """rows int64 [B, beam] (NULL_ROW for null) and cand_emb [B, K, D]."""
    b = len(question_ids)
    if self.retrieval == "null":
      rows = np.full((b, self.k), pretrain_retrieval.NULL_ROW, np.int64)
      return rows, np.zeros((b, self.k, self.model.emb.shape[1]), np.float32)
    if self.retrieval == "random":
      rows = np.stack([self.rng.choice(self.model.store.num_blocks, self.k,
                                       replace=False) for _ in range(b)])
      return rows.astype(np.int64), np.asarray(self.model.emb[rows])
    q_emb = np.asarray(self._embed(self.model.params["retriever"],
                                   question_ids, question_mask))
    rows, cand = qa_retrieval.search(self.model.searcher, self.model.emb,
                                     q_emb, self.beam)
    return rows, cand[:, :self.k]

  def predict(self, qa_batch: dict) -> list[dict]:
    ids, mask = qa_batch["question_ids"], qa_batch["question_mask"]
    rows, cand = self.retrieve(ids, mask)
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


def evaluate(config, params=None, *, model: qa_setup.FineTuned | None = None,
             examples: Sequence[dict] | None = None,
             retrieval: str | None = None,
             predictions_path: str | None = None) -> dict:
  """EM and recall@k of a fine-tuned model; writes the predictions JSONL.

  Args:
    config: the run config (finetune.* reader settings, eval.*).
    params: {"retriever", "reader" (SpanReader)} to evaluate instead of the
      latest checkpoint of config.workdir (same model shape and index).
    model: an already loaded qa_setup.FineTuned (default: load_finetuned).
    examples: [{"question", "answer": [...]}] (default: `eval_examples`).
    retrieval: index | random | null (default eval.retrieval), see the
      module docstring.
    predictions_path: default eval.predictions or <workdir>/predictions.jsonl.

  Returns:
    {"exact_match", "recall@<k>"..., "num_questions", "metric" (exact_match
    or regex_match), "retrieval", "step", "predictions"}.
  """
  model = model or qa_setup.load_finetuned(config)
  if params is not None:
    qa_setup.check_shapes(params["reader"], SpanReader(model.cfg),
                          "evaluate(params=...) reader")
    model = dataclasses.replace(model, params=params)
  examples = list(examples) if examples is not None else eval_examples(config)
  retrieval = retrieval or config.eval.retrieval
  f = config.finetune
  tok = model.store.tokenizer()
  predictor = Predictor(model, tok, reader_len=f.reader_len,
                        reader_beam=f.reader_beam, recall_k=config.eval.recall_k,
                        retrieval=retrieval, seed=config.seed)
  ks = sorted({1, predictor.k, config.eval.recall_k} - {0})
  match = "regex" if f.regex_answers else f.answer_match
  path = (predictions_path or config.eval.predictions
          or os.path.join(config.workdir, "predictions.jsonl"))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  correct, hits = [], []
  with open(path + ".tmp", "w", encoding="utf-8") as out:
    for batch, n in _batches(examples, tok, config):
      for pred in predictor.predict(batch)[:n]:
        pred["correct"] = qa.is_correct(pred["prediction"], pred["answers"],
                                        is_regex=f.regex_answers)
        rows = [r for r in pred.pop("retrieved") if r >= 0][:max(ks)]
        hit = qa_retrieval.blocks_with_answer(
            [model.store.text(r) for r in rows], pred["answers"], match)
        hits.append(np.pad(hit, (0, max(ks) - len(hit))))
        for block in pred["top_blocks"]:
          block["has_answer"] = bool(hit[rows.index(block["row"])]) if (
              block["row"] in rows) else None
        correct.append(pred["correct"])
        out.write(json.dumps(pred, ensure_ascii=False) + "\n")
  os.replace(path + ".tmp", path)
  recall = qa.recall_at_k(np.stack(hits), ks)
  result = {"exact_match": float(np.mean(correct)),
            "metric": "regex_match" if f.regex_answers else "exact_match",
            "num_questions": len(correct), "retrieval": retrieval,
            "step": model.step, "predictions": path}
  if f.regex_answers:
    result["regex_match"] = result["exact_match"]
  result.update({f"recall@{k}": v for k, v in recall.items()})
  logging.info("eval (%s retrieval, %d questions, step %d): EM %.4f %s",
               retrieval, len(correct), model.step, result["exact_match"],
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
