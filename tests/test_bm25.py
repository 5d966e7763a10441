"""The eval baselines bm25 and dense_zero_shot (realm_jax/index/bm25.py,
realm_jax/tasks/evaluate.py) on the small demo Open-QA setup of openqa_workdir:
BM25 finds the answer block, eval writes the usual predictions with recall@k
equal to a hand count, the BM25 index is cached and loaded, dense_zero_shot
searches with the retriever where fine-tuning started, and both run without
a fine-tuned reader (recall only)."""
import os

import jax
import numpy as np
import pytest

from realm_jax import checkpoint as ckpt_lib
from realm_jax.batching import qa_inputs
from realm_jax.index import bm25
from realm_jax.models import convert
from realm_jax.models.reader import SpanReader
from realm_jax.models.retriever import Retriever
from realm_jax.qa import model as qa_model
from realm_jax.retrieval import openqa_record
from realm_jax.tasks import evaluate
from realm_jax.train import finetune_step
from realm_jax.train import state as state_lib
from random_params import random_params
import openqa_workdir as ow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A pretraining workdir and a fine-tuning workdir on its index whose
  checkpoint holds a retriever OTHER than the pretrained one (random reader:
  the plumbing is tested, not the answers)."""
  pre = str(tmp_path_factory.mktemp("pretrain"))
  store, pre_params = ow.make_pretrain_workdir(pre)
  tmp = tmp_path_factory.mktemp("finetuned")
  questions = ow.answerable_questions(store, 4)
  qa_file = ow.write_jsonl(str(tmp / "qa.jsonl"), questions)
  config = ow.tiny_config(str(tmp / "work"), **{
      "finetune.init_from": pre, "eval.file": qa_file})
  cfg = openqa_record.model_config(config, store.tokenizer().vocab_size)
  retriever, reader = Retriever(cfg), SpanReader(cfg)
  params = {"retriever": ow.content_sensitive(random_params(
                retriever, *convert.example_inputs(retriever), seed=7)),
            "reader": random_params(reader, *convert.example_inputs(reader),
                                    seed=3)}
  state = state_lib.create(params, finetune_step.optimizer(config),
                           jax.random.PRNGKey(0))
  checkpointer = ckpt_lib.Checkpointer(config.workdir)
  checkpointer.save(1, state)
  checkpointer.close()
  openqa_record.write_record(config.workdir, os.path.join(pre, "index", "0"),
                        store, cfg)
  return {"config": config, "pre": pre, "pre_params": pre_params,
          "params": params, "store": store, "questions": questions,
          "tmp": tmp}


def _recall_by_hand(store, index, predictions, ks):
  """recall@k from BM25's own ranking and has_answer on the block texts."""
  hits = {k: [] for k in ks}
  for p in predictions:
    rows, _ = index.search([p["question"]], max(ks))
    found = qa_inputs.blocks_with_answer(
        [store.text(int(r)) for r in rows[0]], p["answers"])
    for k in ks:
      hits[k].append(found[:k].any())
  return {k: float(np.mean(v)) for k, v in hits.items()}


def _top_rows(predictions):
  return [[b["row"] for b in p["top_blocks"]] for p in predictions]


def test_bm25_finds_the_block_with_the_answer_words(setup):
  pytest.importorskip("bm25s")
  store = setup["store"]
  index = bm25.BM25Index(store)   # no cache_root: built, not saved
  rows, scores = index.search(["Small, long-tailed, seed-eating parakeet",
                               "Neon atomic number"], 3)
  assert rows.shape == scores.shape == (2, 3) and rows.dtype == np.int64
  assert store.title(int(rows[0, 0])) == "Budgerigar"
  assert "long-tailed" in store.text(int(rows[0, 0]))
  assert store.title(int(rows[1, 0])) == "Neon"
  assert np.all(np.diff(scores, axis=1) <= 0)   # best first


def test_eval_bm25_predictions_recall_and_cache(setup, monkeypatch):
  pytest.importorskip("bm25s")
  config, store, tmp = setup["config"], setup["store"], setup["tmp"]
  model = qa_model.load_finetuned(config)
  dense = evaluate.evaluate(config, model=model,
                            predictions_path=str(tmp / "index.jsonl"))
  result = evaluate.evaluate(config, model=model, retrieval="bm25",
                             predictions_path=str(tmp / "bm25.jsonl"))
  assert result.keys() == dense.keys() and result["retrieval"] == "bm25"
  assert result["exact_match"] is not None
  preds = ow.read_jsonl(result["predictions"])
  dense_preds = ow.read_jsonl(dense["predictions"])
  assert [p.keys() for p in preds] == [p.keys() for p in dense_preds]
  assert [p["question"] for p in preds] == [
      q["question"] for q in setup["questions"]]
  cache = os.path.join(config.workdir, "bm25_cache")
  (name,) = os.listdir(cache)
  assert name.startswith(store.fingerprint)
  index = bm25.BM25Index(store, cache)
  assert index.loaded
  ks = [1, config.finetune.reader_beam, config.eval.recall_k]
  hand = _recall_by_hand(store, index, preds, ks)
  assert {k: result[f"recall@{k}"] for k in ks} == hand
  # The reader read BM25's top K blocks, with p(z|x) over them.
  k = config.finetune.reader_beam
  assert _top_rows(preds) == [
      index.search([p["question"]], k)[0][0].tolist() for p in preds]
  for p in preds:
    assert abs(sum(b["p"] for b in p["top_blocks"]) - 1) < 1e-5
    if p["span"] is not None:
      lo, hi = p["span"]
      assert store.text(p["block"]["row"])[lo:hi] == p["prediction"]

  # A second eval loads the saved index: the store's texts are not read
  # again and the saved files are not rewritten.
  files = sorted(os.listdir(os.path.join(cache, name)))
  stamps = [os.stat(os.path.join(cache, name, f)).st_mtime_ns for f in files]

  def no_reading(*_):
    raise AssertionError("BM25 index rebuilt instead of loaded")

  monkeypatch.setattr(type(store), "iter_records", no_reading)
  again = evaluate.evaluate(config, model=model, retrieval="bm25",
                            predictions_path=str(tmp / "bm25_again.jsonl"))
  assert ow.read_jsonl(again["predictions"]) == preds
  assert sorted(os.listdir(os.path.join(cache, name))) == files
  assert [os.stat(os.path.join(cache, name, f)).st_mtime_ns
          for f in files] == stamps


def test_dense_zero_shot_searches_with_the_initial_retriever(setup):
  config, tmp = setup["config"], setup["tmp"]
  model = qa_model.load_finetuned(config)
  zero = evaluate.evaluate(config, model=model, retrieval="dense_zero_shot",
                           predictions_path=str(tmp / "zero.jsonl"))
  # The same blocks as index retrieval with the pretraining run's retriever
  # (where fine-tuning from init_from starts), and not the checkpoint's.
  pre = evaluate.evaluate(
      config, model=model, params={"retriever": setup["pre_params"]["retriever"],
                                   "reader": setup["params"]["reader"]},
      predictions_path=str(tmp / "pre.jsonl"))
  fine = ow.read_jsonl(evaluate.evaluate(
      config, model=model, predictions_path=str(tmp / "fine.jsonl"))[
          "predictions"])
  zero_rows = _top_rows(ow.read_jsonl(zero["predictions"]))
  assert zero_rows == _top_rows(ow.read_jsonl(pre["predictions"]))
  assert zero_rows != _top_rows(fine)
  for k in (1, config.eval.recall_k):
    assert zero[f"recall@{k}"] == pre[f"recall@{k}"]
  assert zero["exact_match"] is not None


@pytest.mark.parametrize("mode", ["bm25", "dense_zero_shot"])
def test_retrieval_only_without_a_finetuned_reader(setup, mode):
  if mode == "bm25":
    pytest.importorskip("bm25s")
  config, tmp = setup["config"], setup["tmp"]
  # A workdir that was never fine-tuned: only the pretraining run's blocks
  # and index (through finetune.init_from).
  bare = ow.tiny_config(str(tmp / f"bare_{mode}"), **{
      "finetune.init_from": setup["pre"], "eval.file": config.eval.file})
  result = evaluate.evaluate(bare, retrieval=mode)
  assert result["exact_match"] is None and result["step"] is None
  preds = ow.read_jsonl(result["predictions"])
  assert len(preds) == result["num_questions"] == 4
  assert all(p["prediction"] is None and p["correct"] is None
             and len(p["top_blocks"]) == config.finetune.reader_beam
             and all(b["p"] is None for b in p["top_blocks"]) for p in preds)
  # The same retrieval as with the fine-tuned workdir's reader.
  with_reader = evaluate.evaluate(config, retrieval=mode,
                                  predictions_path=str(tmp / f"r_{mode}.jsonl"))
  assert _top_rows(preds) == _top_rows(ow.read_jsonl(
      with_reader["predictions"]))
  for k in (1, config.eval.recall_k):
    assert result[f"recall@{k}"] == with_reader[f"recall@{k}"]


def test_modes_that_need_a_reader_refuse_a_bare_workdir(setup):
  bare = ow.tiny_config(str(setup["tmp"] / "bare_index"), **{
      "finetune.init_from": setup["pre"]})
  with pytest.raises(FileNotFoundError, match="not a fine-tuning workdir"):
    evaluate.evaluate(bare, retrieval="index")


def test_missing_bm25s_names_the_extra(setup, monkeypatch):
  monkeypatch.setattr(bm25, "bm25s", None)
  with pytest.raises(ImportError, match=r"pip install 'realm_jax\[baselines\]'"):
    bm25.BM25Index(setup["store"])
  with pytest.raises(ImportError, match=r"realm_jax\[baselines\]"):
    evaluate.evaluate(setup["config"], retrieval="bm25",
                      predictions_path=str(setup["tmp"] / "none.jsonl"))
