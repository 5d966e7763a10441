"""Open-QA fine-tuning from a pretraining workdir, and its evaluation.

One small fine-tuning run (tiny BERT, demo corpus, 4 answerable questions)
is shared by the tests: the loss falls, the reader started from the MLM
encoder's BERT and the index stayed the pretraining run's, and `eval`
reports exactly the EM one computes by hand from its predictions. Without
a pretraining run, fine-tuning builds its block store itself.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from realm_jax import checkpoint as ckpt_lib
from realm_jax.batching import qa_inputs
from realm_jax.data import corpus
from realm_jax.data import demo_corpus
from realm_jax.data import qa_data
from realm_jax.index import build
from realm_jax.index import store as index_store
from realm_jax.models import retrieve_and_read
from realm_jax.models.retriever import embed_queries
from realm_jax.qa import answerer
from realm_jax.qa import model as qa_model
from realm_jax.retrieval import openqa_record
from realm_jax.tasks import evaluate
from realm_jax.tasks import finetune as finetune_task
from realm_jax.train import finetune_step
import openqa_workdir as ow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  pre = str(tmp_path_factory.mktemp("pretrain"))
  store, pre_params = ow.make_pretrain_workdir(pre)
  tmp = tmp_path_factory.mktemp("finetune")
  questions = ow.answerable_questions(store, 4)
  qa_file = ow.write_jsonl(str(tmp / "qa.jsonl"), questions)
  config = ow.tiny_config(
      str(tmp / "work"), **{"finetune.init_from": pre,
                            "finetune.dataset": "jsonl:" + qa_file,
                            "finetune.retriever_beam": store.num_blocks,
                            "finetune.num_steps": 12,
                            "train.checkpoint_every": 6})
  finetune_task.run(config)
  return {"config": config, "pre": pre, "pre_params": pre_params,
          "questions": questions, "store": store, "tmp": tmp}


def test_finetuning_lowers_the_loss(run):
  rows = ow.read_jsonl(os.path.join(run["config"].workdir,
                                    "finetune_metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(1, 13))
  loss = ow.first_logged(rows, "loss")
  retriever_loss = ow.first_logged(rows, "retriever_loss")
  # Every question has a correct block among the S = all blocks.
  assert np.all(ow.first_logged(rows, "retriever_has_answer") == 1.0)
  assert retriever_loss[-3:].mean() < 0.5 * retriever_loss[0]
  assert loss[-3:].mean() < 0.7 * loss[0]
  assert np.all(ow.first_logged(rows, "query_grad_norm") > 0)


def test_starts_from_pretraining_and_keeps_its_index(run):
  config, pre, pre_params = run["config"], run["pre"], run["pre_params"]
  _, params = ckpt_lib.restore_params(config.workdir)
  # Rows of the word embeddings that no question or block used get no
  # gradient: they still hold the pretraining values up to weight decay
  # (relative change <= 0.01 * sum of learning rates = 1.2e-4), which no
  # other initialisation could match.
  for got, pretrained in (
      (params["reader"]["bert"], pre_params["reader"]["bert"]),
      (params["retriever"]["embedder"]["bert"],
       pre_params["retriever"]["embedder"]["bert"])):
    table = lambda p: p["embeddings"]["word_embeddings"]["embedding"]
    same = np.all(np.isclose(table(got), table(pretrained), rtol=2e-4,
                             atol=1e-7), axis=1)
    assert 0.9 < same.mean() < 1.0
  assert "span_projection" in params["reader"]   # a fresh span head
  assert "mlm_transform" not in params["reader"]
  record = openqa_record.read_record(config.workdir)
  assert record["index_path"] == os.path.join(pre, "index", "0")
  assert record["block_store"] == os.path.join(pre, "blocks")


def test_eval_exact_match_is_the_hand_computed_value(run):
  config, tmp = run["config"], run["tmp"]
  model = qa_model.load_finetuned(config)
  first = evaluate.evaluate(config, model=model,
                            predictions_path=str(tmp / "first.jsonl"))
  preds = ow.read_jsonl(first["predictions"])
  assert len(preds) == first["num_questions"] == 4
  assert first["exact_match"] == np.mean(
      [qa_data.exact_match(p["prediction"], p["answers"]) for p in preds])
  for p in preds:
    assert p["prediction"], "every question has a span to predict"
    assert abs(sum(b["p"] for b in p["top_blocks"]) - 1.0) < 1e-5
    assert p["block"]["title"] == p["top_blocks"][p["block"]["rank"]]["title"]
    lo, hi = p["span"]
    assert run["store"].text(p["block"]["row"])[lo:hi] == p["prediction"]
  # Predictions are deterministic, so answers built from them are known to be
  # right (up to EM normalization: case, punctuation, articles) or wrong.
  cases = [{"question": preds[0]["question"],
            "answer": ["The " + preds[0]["prediction"].upper() + "!"]},
           {"question": preds[1]["question"], "answer": ["zzz", preds[1][
               "prediction"]]},
           {"question": preds[2]["question"], "answer": ["not it at all"]},
           {"question": preds[3]["question"], "answer": ["nope"]},
           {"question": preds[0]["question"], "answer": ["wrong"]}]
  second = evaluate.evaluate(config, model=model, examples=cases,
                             predictions_path=str(tmp / "second.jsonl"))
  assert second["exact_match"] == pytest.approx(2 / 5)
  assert [p["correct"] for p in ow.read_jsonl(second["predictions"])] == [
      True, True, False, False, False]


def test_predictions_are_the_joint_argmax_and_a_shared_cache_reads_once(run):
  """The predictor reads (question, block) pairs apart and adds f(x, z) on the
  host: its answer, score and prob must be those of the training forward's
  joint (block, span) softmax. A second evaluation sharing the read cache
  reads nothing again and predicts the same."""
  config, tmp, store = run["config"], run["tmp"], run["store"]
  model = qa_model.load_finetuned(config)
  cache = {}
  first = evaluate.evaluate(config, model=model, read_cache=cache,
                            predictions_path=str(tmp / "cached.jsonl"))
  preds = ow.read_jsonl(first["predictions"])
  k = config.finetune.reader_beam
  assert len(cache) == len(preds) * k
  tok = store.tokenizer()
  for p in preds:
    q = answerer.question_batch([p["question"]], tok,
                                config.finetune.question_len, 1)
    rows = np.array([[b["row"] for b in p["top_blocks"]]])
    batch = dict(qa_inputs.reader_batch(q["question_ids"], q["question_mask"],
                                        store, rows, config.finetune.reader_len,
                                        tok),
                 question_ids=q["question_ids"],
                 question_mask=q["question_mask"],
                 cand_emb=np.asarray(model.emb[rows], np.float32))
    _, logits, _, _ = retrieve_and_read.read(model.params, batch, model.cfg)
    flat = np.asarray(logits, np.float64).reshape(-1)
    best = int(np.argmax(flat))
    assert p["block"]["rank"] == best // logits.shape[-1]
    assert p["score"] == pytest.approx(flat[best], abs=1e-4)
    valid = flat[flat > -1e8]
    assert p["prob"] == pytest.approx(
        np.exp(flat[best] - np.logaddexp.reduce(valid)), rel=1e-4)
  read_before = dict(cache)
  again = evaluate.evaluate(config, model=model, read_cache=cache,
                            predictions_path=str(tmp / "cached2.jsonl"))
  assert cache == read_before
  assert ow.read_jsonl(again["predictions"]) == preds
  with pytest.raises(ValueError, match="read_cache"):
    evaluate.evaluate(config, params=model.params, read_cache=cache)


def test_eval_task_reads_a_jsonl_file_and_baselines(run, capsys):
  config, tmp = run["config"], run["tmp"]
  preds = ow.read_jsonl(str(tmp / "first.jsonl"))
  # CuratedTREC style: regex answers, matched with re.match on the prediction.
  regex_file = ow.write_jsonl(str(tmp / "ct.jsonl"), [
      {"question": preds[0]["question"],
       "answer": [r"\s*" + "".join(f"[{ch}]" if ch.isalnum() else "." for ch
                                   in preds[0]["prediction"])]},
      {"question": preds[1]["question"], "answer": ["^zzz$"]}])
  config = ow.tiny_config(config.workdir, **{
      "eval.file": regex_file, "finetune.regex_answers": True})
  result = evaluate.run(config)
  assert result["exact_match"] == 0.5 and result["metric"] == "regex_match"
  assert json.loads(capsys.readouterr().out)["exact_match"] == 0.5
  saved = os.path.join(config.workdir, "eval_ct_index.json")
  assert json.load(open(saved))["num_questions"] == 2
  null = evaluate.evaluate(config, retrieval="null",
                           predictions_path=str(tmp / "null.jsonl"))
  assert null["exact_match"] == 0.0 and null["recall@1"] == 0.0
  assert all(p["prediction"] == "" and p["top_blocks"] == []
             for p in ow.read_jsonl(null["predictions"]))
  chance = evaluate.evaluate(config, retrieval="random",
                             predictions_path=str(tmp / "random.jsonl"))
  assert chance["retrieval"] == "random"
  assert all(len(p["top_blocks"]) == config.finetune.reader_beam
             and p["prediction"]
             for p in ow.read_jsonl(chance["predictions"]))


def test_resume_repeats_the_uninterrupted_run(run):
  config = run["config"]
  _, straight = ckpt_lib.restore_params(config.workdir)
  losses = [r["loss"] for r in ow.read_jsonl(
      os.path.join(config.workdir, "finetune_metrics.jsonl"))]
  # A copy of the run that lost everything after step 6, as a job killed
  # there would; restarted with the same config it continues from step 6.
  work = str(run["tmp"] / "resumed")
  shutil.copytree(config.workdir, work)
  shutil.rmtree(os.path.join(work, "checkpoints", "12"))
  os.remove(os.path.join(work, "finetune_metrics.jsonl"))
  resumed_config = ow.tiny_config(work, **{
      k: config.finetune[k.split(".")[1]] for k in (
          "finetune.init_from", "finetune.dataset", "finetune.retriever_beam",
          "finetune.num_steps")}, **{"train.checkpoint_every": 6})
  finetune_task.run(resumed_config)
  _, resumed = ckpt_lib.restore_params(work)
  rows = ow.read_jsonl(os.path.join(work, "finetune_metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(7, 13))
  assert [r["loss"] for r in rows] == losses[6:]
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_eval_refuses_params_that_are_not_a_span_reader(run):
  # The pretraining params hold an MLM encoder where a span reader belongs.
  with pytest.raises(ValueError, match=r"reader: .*parameter .*mlm"):
    evaluate.evaluate(run["config"], params=run["pre_params"])


@pytest.mark.parametrize("explicit_store", [False, True])
def test_finetune_builds_a_missing_block_store(tmp_path, explicit_store):
  # No pretraining run: fine-tuning builds the block store from data.corpus,
  # as pretraining does, at <workdir>/blocks or a data.block_store not yet
  # built.
  docs = demo_corpus.demo_documents(6)
  corpus_file = ow.write_jsonl(str(tmp_path / "corpus.jsonl"),
                               [{"title": t, "text": x} for t, x in docs])
  qa_file = ow.write_jsonl(str(tmp_path / "qa.jsonl"), [
      {"question": f"what is {t}", "answer": [t]} for t, _ in docs[:2]])
  work = str(tmp_path / "work")
  blocks = os.path.join(work, "blocks")
  config = ow.tiny_config(work, **{
      "data.corpus": "jsonl:" + corpus_file,
      "data.block_store": blocks if explicit_store else "",
      "finetune.dataset": "jsonl:" + qa_file, "finetune.batch_size": 2,
      "finetune.retriever_beam": 4, "finetune.num_steps": 2})
  finetune_task.run(config)
  store = corpus.BlockStore(blocks)
  assert store.num_blocks >= len(docs)
  assert store.title(0) == docs[0][0]
  assert openqa_record.read_record(work)["block_store"] == blocks
  assert ckpt_lib.restore_params(work)[0] == 2


def test_a_recorded_index_that_went_bad_before_training_is_chosen_again(
    run, tmp_path):
  """openqa.json pins the index a run trains against. If that version is
  moved away or corrupt before any checkpoint exists, a rerun chooses the
  newest intact version again instead of failing on the pinned one."""
  pre_index = os.path.join(run["pre"], "index")
  work = str(tmp_path / "work")
  gone = os.path.join(str(tmp_path), "moved_away", "0")
  openqa_record.write_record(work, gone, run["store"], openqa_record.read_record(
      run["config"].workdir)["model"])
  config = ow.tiny_config(work, **{"finetune.init_from": run["pre"]})
  _, _, _, index_path, recorded = finetune_task._resolve(config)
  assert not recorded
  assert os.path.dirname(index_path) == pre_index


def test_doc_pairs_take_the_best_ranked_block_with_and_without_an_answer(run):
  store = run["store"]
  rows = np.array([[5, 3, 7, 2], [1, 4, 6, 0], [2, 3, 4, 5]])
  correct = np.array([[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
  pairs = qa_inputs._doc_pairs(rows, correct, store)   # pylint: disable=protected-access
  assert pairs["doc_valid"].tolist() == [True, False, False]
  ids, segments, mask = store.doc_inputs(np.array([3, 5]))
  np.testing.assert_array_equal(pairs["doc_ids"][0], ids)
  np.testing.assert_array_equal(pairs["doc_segments"][0], segments)
  np.testing.assert_array_equal(pairs["doc_mask"][0], mask)


def test_doc_loss_is_the_in_batch_softmax_and_reaches_the_documents(run):
  config, store = run["config"], run["store"]
  _, params = ckpt_lib.restore_params(config.workdir)
  cfg = openqa_record.read_record(config.workdir)["model"]
  q_ids = np.array([[101, 2023, 102, 0], [101, 2008, 2003, 102]], np.int32)
  q_mask = (q_ids > 0).astype(np.int32)
  ids, segments, mask = store.doc_inputs(np.array([[0, 1], [2, 3]]))
  batch = {"question_ids": q_ids, "question_mask": q_mask, "doc_ids": ids,
           "doc_segments": segments, "doc_mask": mask,
           "doc_valid": np.array([True, False])}
  loss = finetune_step.doc_contrastive_loss(params["retriever"], batch, cfg,
                                       True, None)
  q = np.asarray(embed_queries(params["retriever"], q_ids, q_mask, cfg))
  embed = build.make_embed_fn(cfg)
  d = np.asarray(embed(params["retriever"]["embedder"], ids.reshape(4, -1),
                       segments.reshape(4, -1), mask.reshape(4, -1)))
  scores = q[0] @ d.T            # only question 0 is valid; its target is 0
  want = np.log(np.sum(np.exp(scores - scores.max()))) + scores.max() - scores[0]
  assert float(loss) == pytest.approx(want, rel=1e-4)
  grads = jax.grad(finetune_step.doc_contrastive_loss)(
      params["retriever"], batch, cfg, True, None)
  # Only the documents carry segment 1: its embedding gets a gradient only
  # through them.
  seg = grads["embedder"]["bert"]["embeddings"]["token_type_embeddings"][
      "embedding"]
  assert np.abs(np.asarray(seg[1])).sum() > 0


def test_doc_loss_reembeds_the_corpus_for_eval(run):
  config = run["config"]
  work = str(run["tmp"] / "doc_loss")
  doc_config = ow.tiny_config(work, **{
      k: config.finetune[k.split(".")[1]] for k in (
          "finetune.init_from", "finetune.dataset", "finetune.retriever_beam")},
      **{"finetune.num_steps": 4, "finetune.doc_loss_weight": 1.0})
  finetune_task.run(doc_config)
  rows = ow.read_jsonl(os.path.join(work, "finetune_metrics.jsonl"))
  assert all(np.isfinite(r["doc_loss"]) for r in rows)
  record = openqa_record.read_record(work)
  assert record["index_path"] == os.path.join(work, "index", "4")
  step, params = ckpt_lib.restore_params(work)
  emb = index_store.load(record["index_path"])
  embed = build.make_embed_fn(record["model"])
  want = np.asarray(embed(params["retriever"]["embedder"],
                          *run["store"].doc_inputs(np.arange(4))))
  np.testing.assert_allclose(emb[:4], want, rtol=1e-4, atol=1e-5)
  pre_emb = index_store.load(os.path.join(run["pre"], "index", "0"))
  assert not np.allclose(emb, pre_emb, atol=1e-3)
  result = evaluate.evaluate(doc_config, predictions_path=str(
      run["tmp"] / "doc_loss.jsonl"))
  assert result["num_questions"] == 4 and result["step"] == step
  # The zero-shot baseline still searches the index fine-tuning started
  # from (with the retriever it started from), not the new one.
  assert record["start_index_path"] == os.path.join(run["pre"], "index", "0")
  model = qa_model.load_finetuned(doc_config)
  start = evaluate._start_index(doc_config, model)   # pylint: disable=protected-access
  assert model.index_path == record["index_path"]
  assert start.index_path == record["start_index_path"]
  np.testing.assert_array_equal(np.asarray(start.emb), pre_emb)
  zero_shot = evaluate.evaluate(doc_config, retrieval="dense_zero_shot",
                                predictions_path=str(run["tmp"] / "zs.jsonl"))
  assert zero_shot["num_questions"] == 4
  finetune_task.run(doc_config)      # finished: nothing is embedded again
  assert sorted(os.listdir(os.path.join(work, "index"))) == ["4"]


def test_reading_steps_train_only_the_reader_and_resume_across_the_switch(
    run):
  """finetune.reading_steps: the first steps read each question in one block
  that holds its answer (no gradient reaches the query embedder), the rest
  are open-QA steps; a job killed during the reading steps resumes exactly,
  across the switch."""
  overrides = {"finetune.init_from": run["pre"],
               "finetune.dataset": run["config"].finetune.dataset,
               "finetune.retriever_beam": run["store"].num_blocks,
               "finetune.num_steps": 8, "finetune.reading_steps": 5,
               "train.checkpoint_every": 3}
  config = ow.tiny_config(str(run["tmp"] / "reading"), **overrides)
  finetune_task.run(config)
  rows = ow.read_jsonl(os.path.join(config.workdir, "finetune_metrics.jsonl"))
  grad = ow.first_logged(rows, "query_grad_norm")
  assert np.all(grad[:5] == 0) and np.all(grad[5:] > 0)
  # One block per reading question, one with its answer.
  assert np.all(ow.first_logged(rows, "retriever_has_answer")[:5] == 1.0)
  _, straight = ckpt_lib.restore_params(config.workdir)

  work = str(run["tmp"] / "reading_resumed")
  shutil.copytree(config.workdir, work)
  for step in ("6", "8"):
    shutil.rmtree(os.path.join(work, "checkpoints", step))
  os.remove(os.path.join(work, "finetune_metrics.jsonl"))
  finetune_task.run(ow.tiny_config(work, **overrides))
  resumed = ow.read_jsonl(os.path.join(work, "finetune_metrics.jsonl"))
  assert [r["step"] for r in resumed] == list(range(4, 9))
  assert [r["loss"] for r in resumed] == [r["loss"] for r in rows[3:]]
  _, params = ckpt_lib.restore_params(work)
  jax.tree.map(np.testing.assert_array_equal, params, straight)


def test_reading_steps_with_distractors_still_train_only_the_reader(run):
  """finetune.reading_beam=2: each reading question is read in the block
  with its answer and its best other retrieved block; the query embedder
  still gets no gradient until the open-QA steps."""
  config = ow.tiny_config(str(run["tmp"] / "distractors"), **{
      "finetune.init_from": run["pre"],
      "finetune.dataset": run["config"].finetune.dataset,
      "finetune.retriever_beam": run["store"].num_blocks,
      "finetune.num_steps": 5, "finetune.reading_steps": 3,
      "finetune.reading_beam": 2, "train.checkpoint_every": 5})
  finetune_task.run(config)
  rows = ow.read_jsonl(os.path.join(config.workdir, "finetune_metrics.jsonl"))
  grad = ow.first_logged(rows, "query_grad_norm")
  assert np.all(grad[:3] == 0) and np.all(grad[3:] > 0)
  assert np.all(ow.first_logged(rows, "retriever_has_answer")[:3] == 1.0)
  wide = ow.tiny_config(str(run["tmp"] / "too_wide"), **{
      "finetune.init_from": run["pre"],
      "finetune.dataset": run["config"].finetune.dataset,
      "finetune.reading_beam": run["store"].num_blocks + 1})
  with pytest.raises(ValueError, match="reading_beam"):
    finetune_task.run(wide)


def test_a_run_can_start_after_another_runs_reading_steps(run):
  """finetune.reading_from: a run of the same recipe starts from the state
  another run saved after its reading steps. With the same query embedder
  (and no weight decay to move it during the reading steps) it is that
  run, step for step."""
  overrides = {"finetune.init_from": run["pre"],
               "finetune.dataset": run["config"].finetune.dataset,
               "finetune.retriever_beam": run["store"].num_blocks,
               "finetune.num_steps": 8, "finetune.reading_steps": 5,
               "train.weight_decay": 0.0, "train.checkpoint_every": 8}
  first = ow.tiny_config(str(run["tmp"] / "reads"), **overrides)
  finetune_task.run(first)
  config = ow.tiny_config(str(run["tmp"] / "after_reading"), **overrides,
                          **{"finetune.reading_from": first.workdir})
  finetune_task.run(config)
  rows = ow.read_jsonl(os.path.join(first.workdir, "finetune_metrics.jsonl"))
  after = ow.read_jsonl(os.path.join(config.workdir, "finetune_metrics.jsonl"))
  assert [r["step"] for r in after] == [6, 7, 8]
  assert [r["loss"] for r in after] == [r["loss"] for r in rows[5:]]
  jax.tree.map(np.testing.assert_array_equal,
               ckpt_lib.restore_params(config.workdir)[1],
               ckpt_lib.restore_params(first.workdir)[1])
  none = ow.tiny_config(str(run["tmp"] / "after_nothing"), **overrides,
                        **{"finetune.reading_from": run["config"].workdir})
  with pytest.raises(FileNotFoundError, match="no state saved after"):
    finetune_task.run(none)


def test_reading_steps_beyond_the_run_are_refused(run):
  config = ow.tiny_config(str(run["tmp"] / "too_many"), **{
      "finetune.init_from": run["pre"],
      "finetune.dataset": run["config"].finetune.dataset,
      "finetune.num_steps": 4, "finetune.reading_steps": 5})
  with pytest.raises(ValueError, match="reading_steps=5 must be"):
    finetune_task.run(config)
