"""`task=answer`: evidence and the highlighted span are printed; empty and
over-long questions get clear messages before anything heavy loads."""
import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from realm_jax.data import corpus
from realm_jax.retrieval import openqa_record
from realm_jax.tasks import answer
import openqa_workdir as ow

FLAGS = ("--config.finetune.question_len=24", "--config.finetune.reader_len=64",
         "--config.finetune.reader_beam=2")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A fine-tuning workdir: record, index of the pretraining run, and a
  checkpoint of {pretrained retriever, span reader} (random reader weights:
  what is tested here is the plumbing, not the answers)."""
  pre = str(tmp_path_factory.mktemp("pretrain"))
  store, pre_params = ow.make_pretrain_workdir(pre)
  return ow.make_finetuned_workdir(str(tmp_path_factory.mktemp("finetuned")),
                                   pre, store, pre_params)


def _answer(workdir, *flags, env=None):
  return subprocess.run(
      [sys.executable, "-m", "realm_jax.main", "--config=configs/tiny_cpu.py",
       f"--config.workdir={workdir}", "--config.task=answer", *FLAGS, *flags],
      cwd=ow.ROOT, capture_output=True, text=True, timeout=600,
      # Not the suite's shared compilation cache (conftest.py): the
      # workdir's own is tested below.
      env={k: v for k, v in dict(os.environ, **(env or {})).items()
           if k != "JAX_COMPILATION_CACHE_DIR"})


def test_prints_answer_evidence_and_highlight(workdir, tmp_path):
  questions = tmp_path / "questions.txt"
  questions.write_text("Chinese novelist and essayist\n\n" + "word " * 30 + "\n")
  flags = (f"--config.answer.questions_file={questions}",
           "--config.index.searcher=scann", "--config.answer.num_evidence=2")
  r = _answer(workdir, *flags)
  assert r.returncode == 1, r.stderr[-3000:]   # two of the three were refused
  assert "error (line 2): the question is empty" in r.stderr
  assert ("error (line 3): the question is 30 tokens long; at most 22 fit "
          "(finetune.question_len=24") in r.stderr
  out = r.stdout
  assert out.startswith("Q: Chinese novelist and essayist\nA: ")
  answer_text = re.search(r"^A: (.*?)    \(score -?\d+\.\d+, p \d\.\d+, from "
                          r"block \d \"", out, re.M).group(1)
  evidence = re.findall(r"^  (\d)\. p=(\d\.\d+)  (.+)  \[block (\d+)\]$", out,
                        re.M)
  assert [e[0] for e in evidence] == ["1", "2"]
  store = corpus.BlockStore(openqa_record.read_record(workdir)["block_store"])
  assert [e[2] for e in evidence] == [store.title(int(e[3])) for e in evidence]
  assert sum(float(e[1]) for e in evidence) <= 1.0 + 1e-3
  assert f">>>{answer_text}<<<" in out   # not a tty: no ANSI codes
  # The second start loads the serialized ScaNN searcher and cached programs.
  cache = os.path.join(workdir, "searcher_cache")
  assert any(name.startswith("scann-") for sub in os.listdir(cache)
             for name in os.listdir(os.path.join(cache, sub)))
  assert os.listdir(os.path.join(workdir, "jax_cache"))
  # Every program the second start runs comes from <workdir>/jax_cache,
  # whatever the machine's speed (JAX logs each persistent-cache miss when
  # asked to; how long a start takes is not asserted anywhere).
  again = _answer(workdir, *flags, env={"JAX_EXPLAIN_CACHE_MISSES": "true"})
  assert again.returncode == 1, again.stderr[-3000:]
  assert again.stdout == out
  misses = [line for line in again.stderr.splitlines()
            if "PERSISTENT COMPILATION CACHE MISS" in line]
  assert not misses, "\n".join(misses)
  assert "TRACING CACHE MISS" in again.stderr   # (misses would be logged)


@pytest.mark.parametrize("question,message", [
    ("   ", "error: the question is empty"),
    ("why " * 23, "error: the question is 23 tokens long; at most 22 fit"),
    ("\u200b", "error: the question has no words"),
    ("\ufeff\x07", "error: the question has no words"),
])
def test_bad_question_is_refused_before_loading(workdir, capsys, question,
                                                message):
  config = ow.tiny_config(workdir, **{"answer.question": question})
  with pytest.raises(SystemExit) as exit_info:
    answer.run(config)
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.strip().startswith(message)


def test_question_of_exactly_the_limit_is_accepted(workdir):
  tok = corpus.BlockStore(openqa_record.read_record(workdir)["block_store"]
                          ).tokenizer()
  assert answer.check_question("why " * 22, tok, 24) is None
  assert answer.check_question("why " * 23, tok, 24) is not None


def test_answerer_refuses_what_is_not_a_list_of_strings(workdir):
  """answer(None) was an AttributeError, answer_batch("abc") three answers."""
  from realm_jax.qa import Answerer   # pylint: disable=g-import-not-at-top
  with Answerer(workdir, config=ow.tiny_config(workdir)) as answerer:
    for bad in (None, 3):
      with pytest.raises(ValueError, match="must be a string, got"):
        answerer.answer(bad)
    with pytest.raises(TypeError, match="takes a list of questions"):
      answerer.answer_batch("abc")


def test_highlight_marks_the_span():
  assert answer.highlight("Lu Xun was a writer", (0, 6), False) == (
      ">>>Lu Xun<<< was a writer")
  assert answer.highlight("ab", (1, 2), True) == "a\033[1m\033[4mb\033[0m"


def test_control_characters_are_shown_not_sent_to_the_terminal(workdir):
  """A document or question holding an escape sequence ("\x1b[2J" clears
  the screen) is printed with it spelled out, never raw; our own highlight
  codes stay."""
  assert answer.printable("a\x1b[2Jb\x07\nc\td é") == "a\\x1b[2Jb\\x07 c d é"
  marked = answer.highlight("x\x1b[2J Lu Xun \x9b31m", (6, 12), True)
  assert marked == ("x\\x1b[2J \033[1m\033[4mLu Xun\033[0m \\x9b31m")
  store = corpus.BlockStore(openqa_record.read_record(workdir)["block_store"])
  pred = {"question": "Who?\x1b]0;owned\x07", "score": None,
          "top_blocks": [{"row": 0, "p": 1.0, "title": "T\x1b[8m"}],
          "block": None, "span": None}
  out = answer.format_prediction(pred, store, 1, color=True)
  assert "\x1b" not in out and "\x07" not in out, out
  assert out.startswith("Q: Who?\\x1b]0;owned\\x07\n")
  assert "1. p=1.000  T\\x1b[8m  [block 0]" in out


def test_an_empty_questions_file_is_an_error(workdir, tmp_path, capsys):
  empty = tmp_path / "none.txt"
  empty.write_text("")
  config = ow.tiny_config(workdir, **{"answer.questions_file": str(empty)})
  with pytest.raises(SystemExit) as exit_info:
    answer.run(config)
  assert "holds no questions" in str(exit_info.value.code)


@pytest.mark.parametrize("second, message", [
    ('{"question": "q"', "line 2: invalid JSON"),
    ('{"question": 5}', 'line 2: "question" must be a string, got 5')])
def test_a_bad_questions_line_is_named_by_its_number(tmp_path, second,
                                                     message):
  path = tmp_path / "q.jsonl"
  path.write_text('\ufeff{"question": "first"}\n' + second + "\n",
                  encoding="utf-8")
  config = ow.tiny_config(str(tmp_path), **{"answer.questions_file": str(path)})
  with pytest.raises(ValueError, match=re.escape(message)):
    answer.read_questions(config)


def test_a_questions_file_with_a_byte_order_mark_is_read(tmp_path):
  path = tmp_path / "q.txt"
  path.write_text("\ufeffWho wrote Hamlet?\nWhat is 2+2?\n", encoding="utf-8")
  config = ow.tiny_config(str(tmp_path), **{"answer.questions_file": str(path)})
  assert answer.read_questions(config) == ["Who wrote Hamlet?", "What is 2+2?"]


def test_an_answer_the_question_already_says_is_passed_over(workdir):
  """eval.answer_not_in_question: a block's best span that is a phrase of
  the question gives way to its next best span that is not; spans whose
  words are only spread over the question stay (predictor._block_read on a
  real block, with span logits set by hand)."""
  from realm_jax.batching import qa_inputs  # pylint: disable=g-import-not-at-top
  from realm_jax.models.reader import span_candidates  # pylint: disable=g-import-not-at-top
  from realm_jax.qa import model as qa_model  # pylint: disable=g-import-not-at-top
  from realm_jax.qa import answer_rules  # pylint: disable=g-import-not-at-top
  from realm_jax.qa import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  config = ow.tiny_config(workdir)
  model = qa_model.load_finetuned(config)
  tok = model.store.tokenizer()
  predictor = predictor_lib.Predictor(model, tok, reader_len=64, reader_beam=1,
                                      answer_not_in_question=True)
  q = np.asarray([tok.encode("x").ids])
  batch = qa_inputs.reader_batch(
      np.pad(q, ((0, 0), (1, 0)), constant_values=tok.cls_id),
      np.ones((1, q.shape[1] + 1), int), model.store, np.zeros((1, 1), int),
      64, tok)
  ids, first = batch["reader_ids"][0, 0], q.shape[1] + 2
  n = int(batch["block_mask"][0, 0].sum())
  starts, ends = span_candidates(64, model.cfg.max_span_width)
  text = model.store.text(0)
  spans = [j for j in range(len(starts))
           if batch["span_start_mask"][0, 0, starts[j]]
           and batch["span_end_mask"][0, 0, ends[j]]
           and starts[j] >= first and ends[j] < first + n]
  best, second = spans[0], spans[-1]
  logits = np.full(len(starts), predictor_lib.MASK_VALUE)
  logits[spans] = 0.0
  logits[best], logits[second] = 5.0, 4.0

  def read(question):
    words = None if question is None else answer_rules.question_words(
        question)
    return predictor._block_read(logits, first, 0, ids, n, 64, words)  # pylint: disable=protected-access
  said = read(None).answer
  assert said and said in text
  other = read(f"Which one is {said}, then?")
  assert other.answer not in ("", said) and other.best == 4.0
  assert other.logsumexp == read(None).logsumexp
  assert read("Nothing of it here?").answer == said
  assert answer_rules.in_question("Harry Potter", answer_rules.question_words(
      "Who wrote the Harry Potter novels?"))
  assert answer_rules.in_question("Teresa Teng", answer_rules.question_words(
      "What is Teresa Teng's birth name?"))
  assert not answer_rules.in_question(
      "Triangulum Galaxy", answer_rules.question_words(
          "Spiral galaxy in the constellation Triangulum"))


def test_the_model_is_put_on_the_device_once(workdir):
  """The Predictor holds the params as device arrays: a numpy tree would be
  copied to the device again by every jitted call (~30 ms for MiniLM on a
  CPU, which doubled the cost of a lone question)."""
  import jax  # pylint: disable=g-import-not-at-top
  from realm_jax.qa import model as qa_model  # pylint: disable=g-import-not-at-top
  from realm_jax.qa import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  model = qa_model.load_finetuned(ow.tiny_config(workdir))
  host = jax.tree_util.tree_map(np.asarray, model.params)
  for query_params in (None, host["retriever"]):
    predictor = predictor_lib.Predictor(
        dataclasses.replace(model, params=host), model.store.tokenizer(),
        reader_len=64, reader_beam=1, query_params=query_params)
    for tree in (predictor.model.params, predictor.query_params):
      leaves = jax.tree_util.tree_leaves(tree)
      assert leaves and all(isinstance(x, jax.Array) for x in leaves)


def test_an_answer_below_answer_min_score_is_no_answer(workdir):
  """The reader never abstained: nonsense got an answer with p ~0.5. Below
  answer.min_score the Answerer (and so the API and the page) gives none,
  keeping the score; task=answer says why."""
  from realm_jax.qa import Answerer   # pylint: disable=g-import-not-at-top
  config = ow.tiny_config(workdir)
  question = "Chinese novelist and essayist"
  with Answerer(workdir, config=config) as answerer:
    given = answerer.answer(question)
    config.answer.min_score = given.score + 1e-3
    withheld = answerer.answer(question)
  assert not given.abstained and given.answer
  assert withheld.abstained and withheld.answer is None
  assert withheld.score == given.score and withheld.evidence == given.evidence
  from realm_jax.serve import app   # pylint: disable=g-import-not-at-top
  sent = app.answer_json(withheld, top_k=2, seconds=0.1)
  assert sent["abstained"] is True and sent["answer"] is None
  assert app.answer_json(given, top_k=2, seconds=0.1)["abstained"] is False
  r = _answer(workdir, f"--config.answer.question={question}",
              f"--config.answer.min_score={given.score + 1e-3}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert re.search(r"^A: \(no answer: the best span, \".+\", scores "
                   r"-?\d+\.\d+, below answer.min_score\)$", r.stdout, re.M), r.stdout
