"""Host side of Open-QA: answer-bearing blocks, reader inputs, whole-word
spans, gold spans and the mapping of predicted spans back to text."""
import numpy as np
import pytest

from realm_jax.batching import qa_inputs
from realm_jax.data import catalog
from realm_jax.data import demo_corpus
from realm_jax.data import pipeline
from realm_jax.data import qa_data
from realm_jax.data import tokenizer as tokenizer_lib
from realm_jax.models import convert
from realm_jax.models import model_config as config_lib
from realm_jax.models import retrieve_and_read
from realm_jax.models.bert import MASK_VALUE
from realm_jax.models.reader import SpanReader
from realm_jax.models.retriever import Retriever
from realm_jax.qa.predictor import span_text
import openqa_workdir as ow
from random_params import random_params


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.minilm_tokenizer()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  c = ow.tiny_config(str(tmp_path_factory.mktemp("store")),
                     **{"data.corpus_limit": 6})
  return catalog.block_store(c, progress=False)


def test_blocks_with_answer_agrees_with_has_answer():
  texts = [t for _, t in demo_corpus.demo_documents(300)]
  texts += ["O'Neill met the Beatles in São Paulo.", "Pelé: 1,000 goals!",
            "the", "U.S. Army", "an apple a day"]
  answers = [[title] for title, _ in demo_corpus.demo_documents(60)] + [
      ["ONeill"], ["O'Neill"], ["beatles"], ["The Beatles!"], ["sao paulo"],
      ["Pele"], ["Pelé"], ["1000 goals"], ["1,000"], ["the"], ["US army"],
      ["apple a day"], ["a"], ["", "U.S."], ["Jane Austen", "english"]]
  for match in ("normalized", "raw"):
    for refs in answers:
      expected = [qa_data.has_answer(t, refs, match) for t in texts]
      got = qa_inputs.blocks_with_answer(texts, refs, match)
      assert got.tolist() == expected, (refs, match)
  assert qa_inputs.blocks_with_answer(texts, ["Pel[eé]"], "regex").sum() == 1


def test_reading_rows_put_the_answer_block_first_then_distractors():
  rows = np.array([[5, 3, 7, 8], [2, 9, 4, 1]])
  source = np.array([3, 6])           # a question's own block, retrieved or not
  np.testing.assert_array_equal(
      qa_inputs.reading_rows(rows, source, None, None, "normalized", beam=3),
      [[3, 5, 7], [6, 2, 9]])
  np.testing.assert_array_equal(
      qa_inputs.reading_rows(rows, source, None, None, "normalized"), [[3], [6]])


def test_reader_block_mask_excludes_question_and_separators():
  # [CLS] q q [SEP] b b b [SEP] pad pad, and the null document's input.
  segments = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 0, 0],
                       [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]])
  mask = np.array([[1] * 8 + [0] * 2, [1] * 5 + [0] * 5])
  got = qa_inputs.reader_block_mask(segments, mask)
  assert got[0].tolist() == [False] * 4 + [True] * 3 + [False] * 3
  assert not got[1].any()


def test_regex_spans_align_to_tokens(tok):
  text = "Lu Xun (1881–1936) was a writer; Xun means fast."
  enc = tok.encode(text)
  offsets = qa_inputs.body_char_offsets(tok, text, enc.ids)
  spans = qa_inputs.regex_gold_spans(
      [r"lu\s+xun", r"rite", r"[", r"1881.1936", r"writer"], text, offsets,
      first=5, max_width=3)
  ids = lambda s, e: tok.decode(enc.ids[s - 5:e - 5 + 1])
  # "rite" lies inside the token "writer": no span; "[" does not compile;
  # "1881–1936" is 3 tokens: fits max_width=3.
  assert [ids(s, e) for s, e in spans] == ["lu xun", "1881 – 1936", "writer"]
  assert qa_inputs.regex_gold_spans(["writer"], text, None, 5, 3) == []


def test_training_batch_gold_spans_and_correct_blocks(store, tok):
  text = store.text(1)
  words = text.split()
  answer = " ".join(words[2:4]).strip(".,;:()\"'")
  examples = [{"question": "what is it", "answer": [answer, "zzqq"]}]
  qa_batch = next(iter(pipeline.qa_dataset(examples, tok, 0, 1, 16,
                                           train=False, read_threads=0)))
  rows = np.array([[0, 1, 2, 3]])
  cand = np.zeros((1, 4, 8), np.float32)
  kwargs = dict(reader_beam=3, reader_len=96, max_span_width=10,
                max_gold_spans=4)
  batch = qa_inputs.training_batch(qa_batch, rows, cand, store, tok,
                                      **kwargs)
  assert batch["reader_ids"].shape == (1, 3, 96)
  assert batch["retriever_correct"][0].tolist() == [
      qa_data.has_answer(store.text(r), [answer, "zzqq"]) for r in rows[0]]
  assert batch["retriever_correct"][0, 1]
  starts, ends = batch["gold_starts"][0], batch["gold_ends"][0]
  answer_ids = tok.encode(answer).ids
  assert starts[1, 0] >= 0
  for j in range(3):
    for s, e in zip(starts[j], ends[j]):
      if s < 0:
        continue
      assert batch["block_mask"][0, j, s:e + 1].all()
      np.testing.assert_array_equal(batch["reader_ids"][0, j, s:e + 1],
                                    answer_ids)
  # The same answer as a regex (CuratedTREC) finds the same spans in block 1.
  examples[0]["answer"] = [answer.replace(" ", r"\s+")]
  qa_batch = next(iter(pipeline.qa_dataset(examples, tok, 0, 1, 16,
                                           train=False, read_threads=0)))
  regex = qa_inputs.training_batch(qa_batch, rows, cand, store, tok,
                                      regex_answers=True, **kwargs)
  np.testing.assert_array_equal(regex["gold_starts"][0, 1], starts[1])
  assert regex["retriever_correct"][0, 1]


def test_span_text_keeps_the_original_case_or_decodes(store, tok):
  text = "The Copa América determines the champion."
  ids = tok.encode(text).ids
  # tokens: the copa america ... (accents stripped); span 1..2.
  answer, chars = span_text(tok, text, ids, 1, 2)
  assert answer == "Copa América" and text[chars[0]:chars[1]] == answer
  # Ids that the text does not re-tokenize to: fall back to decoding them.
  other = np.array(tok.encode("copa america wins").ids)
  assert span_text(tok, text, other, 0, 1) == ("copa america", None)


class TextStore:
  """A block store stand-in over hand-made texts (body ids, text by row)."""

  def __init__(self, tok, texts):
    self.texts, self.ids = texts, [tok.encode(t).ids for t in texts]

  def body_ids(self, row):
    return self.ids[row]

  def text(self, row):
    return self.texts[row]


SERFDOM = "Serfdom was abolished."   # ser ##f ##dom was abolished .


def _serfdom_batch(tok, answers, reader_len=16):
  # [CLS] when was ser ##f ##dom abolished [SEP] = 8 tokens; block from 8.
  examples = [{"question": "when was serfdom abolished", "answer": answers}]
  q = next(iter(pipeline.qa_dataset(examples, tok, 0, 1, 16, train=False,
                                    read_threads=0)))
  assert q["question_mask"].sum() == 8
  return q, qa_inputs.reader_batch(q["question_ids"], q["question_mask"],
                                      TextStore(tok, [SERFDOM]),
                                      np.zeros((1, 1), np.int64), reader_len,
                                      tok)


def test_whole_word_span_masks(tok):
  _, batch = _serfdom_batch(tok, ["x"])
  off = [False] * 8
  # A span starts at ser/was/abolished/. and ends at ##dom/was/abolished/.
  assert batch["span_start_mask"][0, 0].tolist() == (
      off + [True, False, False, True, True, True] + [False] * 2)
  assert batch["span_end_mask"][0, 0].tolist() == (
      off + [False, False, True, True, True, True] + [False] * 2)
  # A block cut mid-word (ser ##f [SEP]) may end where it was cut.
  _, cut = _serfdom_batch(tok, ["x"], reader_len=11)
  assert cut["span_start_mask"][0, 0].tolist() == off + [True, False, False]
  assert cut["span_end_mask"][0, 0].tolist() == off + [False, True, False]


@pytest.mark.parametrize("whole_words", [True, False])
def test_no_span_inside_a_word_unless_the_option_is_off(tok, whole_words):
  cfg = config_lib.RealmConfig(
      bert=config_lib.tiny(num_layers=1, vocab_size=tok.vocab_size),
      proj_size=8, span_hidden_size=8, max_span_width=4,
      whole_word_spans=whole_words)
  params = {m: random_params(module, *convert.example_inputs(module))
            for m, module in (("retriever", Retriever(cfg)),
                              ("reader", SpanReader(cfg)))}
  q, batch = _serfdom_batch(tok, ["x"])
  batch.update(question_ids=q["question_ids"],
               question_mask=q["question_mask"],
               cand_emb=np.zeros((1, 1, 8), np.float32))
  _, logits, starts, ends = retrieve_and_read.read(params, batch, cfg)
  valid = np.asarray(logits)[0, 0] > MASK_VALUE / 2
  body = batch["reader_ids"][0, 0, 8:14]
  spans = {span_text(tok, SERFDOM, body, s - 8, e - 8)[0]
           for s, e in zip(starts[valid], ends[valid])}
  if whole_words:   # at most 4 wordpieces wide
    assert spans == {"Serfdom", "Serfdom was", "was", "was abolished",
                     "was abolished.", "abolished", "abolished.", "."}
  else:   # any wordpiece span, as in ORQA/REALM: all 6 + 5 + 4 + 3
    assert {"Ser", "Serf", "fdom", "dom was"} <= spans and len(spans) == 18


def test_gold_spans_are_whole_words(tok):
  q, _ = _serfdom_batch(tok, ["Ser", "serfdom was"])
  kwargs = dict(reader_beam=1, reader_len=16, max_span_width=4,
                max_gold_spans=4)
  gold = lambda batch: [(int(s), int(e)) for s, e in zip(
      batch["gold_starts"][0, 0], batch["gold_ends"][0, 0]) if s >= 0]
  args = (q, np.zeros((1, 1), np.int64), np.zeros((1, 1, 8), np.float32),
          TextStore(tok, [SERFDOM]), tok)
  # "Ser" (ser of ser ##f ##dom) is no whole-word span: the reader could
  # never give it, so it is no gold span either.
  assert gold(qa_inputs.training_batch(*args, **kwargs)) == [(8, 11)]
  assert gold(qa_inputs.training_batch(
      *args, whole_word_spans=False, **kwargs)) == [(8, 8), (8, 11)]
  # The same for regex answers (CuratedTREC).
  q["answers"] = (("ser", r"serfdom\s+was"),)
  assert gold(qa_inputs.training_batch(*args, regex_answers=True,
                                          **kwargs)) == [(8, 11)]
  assert gold(qa_inputs.training_batch(
      *args, regex_answers=True, whole_word_spans=False, **kwargs)) == [
          (8, 8), (8, 11)]


def test_every_answer_gives_gold_spans(tok):
  # Demo answers: "Point (geometry)" never occurs in the text, "Point" does.
  text = "A point is a location. Points have no size."
  examples = [{"question": "fundamental object of geometry",
               "answer": demo_corpus.answers_of("Point (geometry)")}]
  q = next(iter(pipeline.qa_dataset(examples, tok, 0, 1, 16, train=False,
                                    read_threads=0)))
  batch = qa_inputs.training_batch(
      q, np.zeros((1, 1), np.int64), np.zeros((1, 1, 8), np.float32),
      TextStore(tok, [text]), tok, reader_beam=1, reader_len=32,
      max_span_width=10, max_gold_spans=4)
  assert batch["retriever_correct"].tolist() == [[True]]
  first = int(q["question_mask"].sum())
  spans = [(s - first, e - first) for s, e in zip(
      batch["gold_starts"][0, 0], batch["gold_ends"][0, 0]) if s >= 0]
  # "point" (token 1); "points" is another word, not a gold span.
  assert [span_text(tok, text, tok.encode(text).ids, s, e)[0]
          for s, e in spans] == ["point"]
