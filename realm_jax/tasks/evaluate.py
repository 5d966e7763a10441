"""Open-QA evaluation (config.task == "eval"): exact match, recall@k, predictions.

For each question the fine-tuned retriever searches the frozen index, the
reader reads the top K = finetune.reader_beam blocks, and the prediction is
the argmax of the joint (block, span) logits (retriever score included), as
in ORQA. Reported:
  exact_match  EM after SQuAD normalization, max over references; for
               CuratedTREC (finetune.regex_answers) the regex match of ORQA
               (re.match, IGNORECASE) on the raw prediction, which the paper
               also reports as EM.
  wrong_edges  the share of answers that share a word with a reference but
               are not it: spans cut too long or too short (qa.wrong_edges).
  recall@k     fraction of questions with an answer-bearing block among the
               top k retrieved (k in {1, reader_beam, eval.recall_k}).
and one JSON line per question in eval.predictions (default
<workdir>/predictions.jsonl): question, gold answers, predicted answer, score
(joint logit) and prob (its share of the joint softmax), the answer block,
the answer's char span in that block's text, and the top blocks with titles
and p(z|x) (softmax of the retriever scores over the K blocks read).

Predicting (the answer string, the baselines' retrieval modes) is
realm_jax/qa/predictor.py.

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
import json
import os
from typing import Sequence

import numpy as np
from absl import logging

from realm_jax import stats
from realm_jax.batching import qa_inputs
from realm_jax.data import catalog
from realm_jax.data import pipeline
from realm_jax.data import qa_data
from realm_jax.index import bm25
from realm_jax.kb import versions as kb
from realm_jax.models.reader import SpanReader
from realm_jax.qa import model as qa_model
from realm_jax.qa import predictor as predictor_lib
from realm_jax.qa.model import FineTuned
from realm_jax.retrieval import openqa_record
from realm_jax.weights import model_init


def eval_examples(config) -> list[dict]:
  """eval.file if set, else finetune.dataset's eval.split; eval.max_questions."""
  if config.eval.file:
    examples = qa_data.read_qa_jsonl(config.eval.file)
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
  """The retriever params fine-tuning starts from: model_init.openqa_params
  with the key finetune.run gives it (model_init.params_key), so that a
  random model.init reproduces the same draw."""
  key = model_init.params_key(config.seed)
  return model_init.openqa_params(config, cfg, key)["retriever"]


def retrieval_model(config, retrieval: str) -> FineTuned:
  """A model with no reader (params["reader"] None), for recall@k only.

  The block store of finetuned.block_store(config). For dense_zero_shot also
  the initial retriever and the index of finetuned.find_index(config), or, if
  there is none, <workdir>/index/0 embedded by the initial document embedder
  (what fine-tuning would bootstrap).
  """
  store = openqa_record.block_store(config)
  cfg = openqa_record.model_config(config, store.tokenizer().vocab_size)
  retriever = emb = searcher = path = None
  if retrieval == "dense_zero_shot":
    retriever = initial_retriever(config, cfg)
    path = openqa_record.find_index(config, store) or openqa_record.bootstrap_index(
        config, cfg, retriever, store)
    emb, searcher = openqa_record.open_index(path, store, config.index,
                                        openqa_record.searcher_cache(config))
  elif retrieval != "bm25":
    raise ValueError(f"retrieval={retrieval!r} needs a fine-tuned reader; "
                     f"only {predictor_lib.RETRIEVAL_ONLY_MODES} run without one")
  return FineTuned(cfg=cfg, params={"retriever": retriever,
                                             "reader": None},
                            store=store, emb=emb, searcher=searcher,
                            index_path=path, step=None)


def _start_index(config, model: FineTuned) -> FineTuned:
  """The model searching the index fine-tuning started from, where the
  corpus was embedded again after it (finetune.doc_loss_weight)."""
  record = openqa_record.read_record(config.workdir) or {}
  start = record.get("start_index_path")
  if not start or start == model.index_path:
    return model
  emb, searcher = openqa_record.open_index(start, model.store, config.index,
                                    openqa_record.searcher_cache(config))
  return dataclasses.replace(model, emb=emb, searcher=searcher,
                             index_path=start)


def evaluate(config, params=None, *, model: FineTuned | None = None,
             examples: Sequence[dict] | None = None,
             retrieval: str | None = None,
             predictions_path: str | None = None,
             read_cache: dict | None = None) -> dict:
  """EM and recall@k of a fine-tuned model; writes the predictions JSONL.

  Args:
    config: the run config (finetune.* reader settings, eval.*).
    params: {"retriever", "reader" (SpanReader)} to evaluate instead of the
      latest checkpoint of config.workdir (same model shape and index).
    model: an already loaded FineTuned (default: load_finetuned,
      or `retrieval_model` for bm25 / dense_zero_shot in a workdir that was
      not fine-tuned).
    examples: [{"question", "answer": [...]}] (default: `eval_examples`).
    retrieval: one of predictor_lib.RETRIEVAL_MODES (default eval.retrieval), see the
      module docstring.
    predictions_path: default eval.predictions or <workdir>/predictions.jsonl.
    read_cache: what the reader found per (question, block), shared by the
      evaluations of one loaded `model` (Predictor): a block that several
      retrieval modes return is read once. Not with `params`.

  Returns:
    {"exact_match" (None without a reader), "recall@<k>"...,
    "num_questions", "metric" (exact_match or regex_match), "retrieval",
    "step", "predictions", "ci95", and "by_kind" where examples have a
    "kind"}.
  """
  retrieval = retrieval or config.eval.retrieval
  if model is None:
    if (retrieval in predictor_lib.RETRIEVAL_ONLY_MODES
        and openqa_record.read_record(config.workdir) is None
        and not kb.is_kb(config.workdir)):
      logging.info("%s is not a fine-tuning workdir: %s retrieval only, no EM",
                   config.workdir, retrieval)
      model = retrieval_model(config, retrieval)
    else:
      model = qa_model.load_finetuned(config)
  if params is not None:
    if read_cache is not None:
      raise ValueError("read_cache holds what one model's reader read; "
                       "evaluate(params=...) reads with other params")
    model_init.check_shapes(params["reader"], SpanReader(model.cfg),
                          "evaluate(params=...) reader")
    model = dataclasses.replace(model, params=params)
  examples = list(examples) if examples is not None else eval_examples(config)
  f = config.finetune
  tok = model.store.tokenizer()
  read = model.params["reader"] is not None
  query_params = None
  if retrieval == "dense_zero_shot" and read:   # else already the initial ones
    query_params = initial_retriever(config, model.cfg)
    model = _start_index(config, model)
  bm25_index = None
  if retrieval in ("bm25", "hybrid"):
    bm25_index = bm25.BM25Index(model.store,
                                os.path.join(config.workdir, "bm25_cache"))
  predictor = predictor_lib.Predictor(model, tok, reader_len=f.reader_len,
                        reader_beam=f.reader_beam, recall_k=config.eval.recall_k,
                        retrieval=retrieval, seed=config.seed,
                        query_params=query_params, bm25_index=bm25_index,
                        read_cache=read_cache, read_batch=config.eval.read_batch,
                        answer_not_in_question=config.eval.answer_not_in_question,
                        answer_types=config.eval.answer_types)
  ks = sorted({1, predictor.k, config.eval.recall_k} - {0})
  match = "regex" if f.regex_answers else f.answer_match
  path = (predictions_path or config.eval.predictions
          or os.path.join(config.workdir, "predictions.jsonl"))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  correct, hits, edges = [], [], []
  with open(path + ".tmp", "w", encoding="utf-8") as out:
    for batch, n in _batches(examples, tok, config):
      for pred in predictor.predict(batch)[:n]:
        pred["correct"] = None if not read else qa_data.is_correct(
            pred["prediction"], pred["answers"], is_regex=f.regex_answers)
        rows = [r for r in pred.pop("retrieved") if r >= 0][:max(ks)]
        hit = qa_inputs.blocks_with_answer(
            [model.store.text(r) for r in rows], pred["answers"], match)
        hits.append(np.pad(hit, (0, max(ks) - len(hit))))
        # 1-based rank of the first answer-bearing block (None: not in the
        # top max(ks)); recall@k and its CI can be recomputed from it.
        pred["answer_rank"] = int(np.argmax(hit)) + 1 if hit.any() else None
        for block in pred["top_blocks"]:
          block["has_answer"] = bool(hit[rows.index(block["row"])]) if (
              block["row"] in rows) else None
        correct.append(pred["correct"])
        edges.append(read and not f.regex_answers and qa_data.wrong_edges(
            pred["prediction"], pred["answers"]))
        out.write(json.dumps(pred, ensure_ascii=False) + "\n")
  os.replace(path + ".tmp", path)
  hits = np.stack(hits)
  recall = qa_data.recall_at_k(hits, ks)
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
    per_question["wrong_edges"] = np.asarray(edges, np.float64)
    result["wrong_edges"] = float(per_question["wrong_edges"].mean())
  result["ci95"] = {name: list(stats.bootstrap_ci(v))
                    for name, v in per_question.items()}
  kinds = np.asarray([ex.get("kind") or "" for ex in examples])
  if kinds.any():
    result["by_kind"] = by_kind(kinds, per_question)
  em = result["exact_match"]
  logging.info("eval (%s retrieval, %d questions, step %s): EM %s %s",
               retrieval, len(correct), model.step,
               "–" if em is None else f"{em:.4f}",
               " ".join(f"recall@{k} {v:.3f}" for k, v in recall.items()))
  return result


def by_kind(kinds: np.ndarray, per_question: dict) -> dict:
  """{kind: {metric: mean, "ci95": {metric: [lo, hi]}, "num_questions"}}
  for the questions of each kind (e.g. natural_qa's subject and inside
  answers), so that a reader that reads one kind only shows it."""
  out = {}
  for kind in sorted(set(kinds) - {""}):
    mask = kinds == kind
    out[kind] = {name: float(v[mask].mean()) for name, v in
                 per_question.items()}
    out[kind]["ci95"] = {name: list(stats.bootstrap_ci(v[mask]))
                         for name, v in per_question.items()}
    out[kind]["num_questions"] = int(mask.sum())
  return out


def run(config):
  result = evaluate(config)
  name = (os.path.splitext(os.path.basename(config.eval.file))[0]
          if config.eval.file else config.eval.split)
  path = os.path.join(config.workdir, f"eval_{name}_{result['retrieval']}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))
  return result
