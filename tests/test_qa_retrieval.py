"""Host side of Open-QA: answer-bearing blocks, reader inputs, gold spans and
the mapping of predicted spans back to text."""
import numpy as np
import pytest

from realm_jax.data import catalog
from realm_jax.data import demo
from realm_jax.data import pipeline
from realm_jax.data import qa
from realm_jax.data import tokenizer as tokenizer_lib
from realm_jax.evaluate import span_text
from realm_jax.train import qa_retrieval
import openqa_workdir as ow


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.minilm_tokenizer()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  c = ow.tiny_config(str(tmp_path_factory.mktemp("store")),
                     **{"data.corpus_limit": 6})
  return catalog.block_store(c, progress=False)


def test_blocks_with_answer_agrees_with_has_answer():
  texts = [t for _, t in demo.demo_documents(300)]
  texts += ["O'Neill met the Beatles in São Paulo.", "Pelé: 1,000 goals!",
            "the", "U.S. Army", "an apple a day"]
  answers = [[title] for title, _ in demo.demo_documents(60)] + [
      ["ONeill"], ["O'Neill"], ["beatles"], ["The Beatles!"], ["sao paulo"],
      ["Pele"], ["Pelé"], ["1000 goals"], ["1,000"], ["the"], ["US army"],
      ["apple a day"], ["a"], ["", "U.S."], ["Jane Austen", "english"]]
  for match in ("normalized", "raw"):
    for refs in answers:
      expected = [qa.has_answer(t, refs, match) for t in texts]
      got = qa_retrieval.blocks_with_answer(texts, refs, match)
      assert got.tolist() == expected, (refs, match)
  assert qa_retrieval.blocks_with_answer(texts, ["Pel[eé]"], "regex").sum() == 1


def test_reader_block_mask_excludes_question_and_separators():
  # [CLS] q q [SEP] b b b [SEP] pad pad, and the null document's input.
  segments = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 0, 0],
                       [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]])
  mask = np.array([[1] * 8 + [0] * 2, [1] * 5 + [0] * 5])
  got = qa_retrieval.reader_block_mask(segments, mask)
  assert got[0].tolist() == [False] * 4 + [True] * 3 + [False] * 3
  assert not got[1].any()


def test_regex_spans_align_to_tokens(tok):
  text = "Lu Xun (1881–1936) was a writer; Xun means fast."
  enc = tok.encode(text)
  offsets = qa_retrieval.body_char_offsets(tok, text, enc.ids)
  spans = qa_retrieval.regex_gold_spans(
      [r"lu\s+xun", r"rite", r"[", r"1881.1936", r"writer"], text, offsets,
      first=5, max_width=3)
  ids = lambda s, e: tok.decode(enc.ids[s - 5:e - 5 + 1])
  # "rite" lies inside the token "writer": no span; "[" does not compile;
  # "1881–1936" is 3 tokens: fits max_width=3.
  assert [ids(s, e) for s, e in spans] == ["lu xun", "1881 – 1936", "writer"]
  assert qa_retrieval.regex_gold_spans(["writer"], text, None, 5, 3) == []


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
  batch = qa_retrieval.training_batch(qa_batch, rows, cand, store, tok,
                                      **kwargs)
  assert batch["reader_ids"].shape == (1, 3, 96)
  assert batch["retriever_correct"][0].tolist() == [
      qa.has_answer(store.text(r), [answer, "zzqq"]) for r in rows[0]]
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
  regex = qa_retrieval.training_batch(qa_batch, rows, cand, store, tok,
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
