"""Tests for realm_jax.data.sources: TFDS (under mock_data) and local files."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from realm_jax.data import qa_data
from realm_jax.data import sources


def test_natural_questions_open_examples_from_mock_data():
  with tfds.testing.mock_data(num_examples=3):
    raw = sources.tfds_source("natural_questions_open", "train")
    examples = sources.qa_examples("natural_questions_open", "train")
    assert len(examples) == 3
    for i in range(3):
      ex = examples[i]
      assert ex["question"] == raw[i]["question"]
      assert ex["answer"] == [str(a) for a in raw[i]["answer"]]
      assert all(isinstance(a, str) for a in ex["answer"])


def test_web_questions_reads_its_plural_answers_feature():
  with tfds.testing.mock_data(num_examples=2):
    raw = sources.tfds_source("web_questions", "test")
    assert "answers" in raw[0] and "answer" not in raw[0]
    examples = sources.qa_examples("web_questions", "test")
    assert examples[1]["answer"] == [str(a) for a in raw[1]["answers"]]


def test_unknown_qa_dataset_is_refused():
  with pytest.raises(ValueError,
                     match="no QA mapping for TFDS dataset 'squad'"):
    sources.qa_examples("squad", "train")


@pytest.mark.parametrize("name", ["wikipedia/20230601.en",
                                  "salient_span_wikipedia/documents"])
def test_documents_from_mock_data(name):
  with tfds.testing.mock_data(num_examples=4):
    docs = sources.tfds_documents(name)
    assert len(docs) == 4
    doc = docs[-1]
    assert set(doc) == {"title", "text"}
    assert isinstance(doc["title"], str) and isinstance(doc["text"], str)


def _salient_sentences(self, split, **kwargs):
  """A controlled stand-in for salient_span_wikipedia/sentences records."""
  del self, split, kwargs
  text = "\u00dcber Paris in 1889."  # "\u00dc" is 2 bytes in UTF-8
  return [{
      "title": b"Eiffel Tower",  # real TFDS records decode Text to bytes
      "text": text.encode("utf-8"),
      # byte spans: "Paris" [6, 11), "1889" [15, 19), mid-"\u00dc" [1, 3),
      # empty [4, 4), past the end [18, 40).
      "spans": {"start": np.array([15, 6, 1, 4, 18], np.int32),
                "limit": np.array([19, 11, 3, 4, 40], np.int32),
                "type": np.array([b"DATE", b"LOC", b"X", b"X", b"X"])},
  }, {
      "title": "ASCII", "text": "Lu Xun wrote it.",
      "spans": {"start": np.array([0], np.int32),
                "limit": np.array([6], np.int32),
                "type": np.array(["PER"])},
  }]


def test_query_records_convert_byte_spans_to_char_spans():
  with tfds.testing.mock_data(as_data_source_fn=_salient_sentences):
    records = sources.query_records()
    first = records[0]
  text = "\u00dcber Paris in 1889."
  assert first["text"] == text
  assert first["spans"] == [(5, 10), (14, 18)]
  assert [text[s:l] for s, l in first["spans"]] == ["Paris", "1889"]
  assert first["title"] == "Eiffel Tower"
  assert first["source_uid"] == sources.source_uid("Eiffel Tower", text)
  assert records[1]["spans"] == [(0, 6)]


def test_query_records_name_the_corrupt_record():
  # TFDS's random mock draws start/limit lists of different lengths, which in
  # real data would mean a corrupt record: the error says which one.
  with tfds.testing.mock_data(num_examples=2):
    records = sources.query_records()
    with pytest.raises(ValueError, match=r"sentences record 1: spans have \d+ "
                       r"starts but \d+ limits"):
      records[1]


def test_missing_tfds_data_gives_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not prepared under"):
    sources.qa_examples("natural_questions_open", "train",
                        data_dir=str(tmp_path))


def test_salient_spans_drop_spans_off_character_boundaries():
  text = "a\u00e9b"  # bytes: a=0, \u00e9=1..3, b=3
  assert sources.salient_spans(text, [0, 1, 2, 3], [1, 3, 3, 4]) == [
      (0, 1), (1, 2), (2, 3)]
  with pytest.raises(ValueError, match="2 starts but 1 limits"):
    sources.salient_spans(text, [0, 1], [1])


def test_resplit_and_curated_trec_files(tmp_path):
  trec = [{"question": "when did ww2 end", "answer": [r"19[45]5"]}]
  qa_data.write_qa_jsonl(tmp_path / "CuratedTrec.resplit.dev.jsonl", trec)
  assert sources.curated_trec(str(tmp_path), "dev") == trec
  with pytest.raises(FileNotFoundError, match="WebQuestions.resplit.test"):
    sources.resplit_examples(str(tmp_path), "WebQuestions", "test")
  with pytest.raises(ValueError, match="resplit dataset must be one of"):
    sources.resplit_examples(str(tmp_path), "TriviaQA", "test")
  with pytest.raises(ValueError, match="split must be train, dev or test"):
    sources.resplit_examples(str(tmp_path), "CuratedTrec", "validation")


def test_jsonl_documents_random_access(tmp_path):
  path = tmp_path / "docs.jsonl"
  rows = [{"title": "A", "text": "alpha"}, {"text": "no title \u00e9"},
          {"title": "C", "text": "gamma", "url": "ignored"}]
  path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n"
                  + json.dumps(rows[2]) + "\n", encoding="utf-8")
  docs = sources.JsonlDocuments(path)
  assert len(docs) == 3
  assert docs[2] == {"title": "C", "text": "gamma"}
  assert docs[1] == {"title": "", "text": "no title \u00e9"}
  assert docs[-3] == {"title": "A", "text": "alpha"}
  assert docs[0:2] == [docs[0], docs[1]]
  with pytest.raises(IndexError):
    docs[3]


def test_jsonl_documents_errors_name_the_line(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_text('{"text": "ok"}\n\n{"title": "x"}\n{"text": 3\n')
  docs = sources.JsonlDocuments(path)
  with pytest.raises(ValueError, match="line 3: expected an object with a "
                     "string 'text'"):
    docs[1]
  with pytest.raises(ValueError, match="line 4: invalid JSON"):
    docs[2]


def test_document_query_records_split_at_sentences():
  text = "\u00c9mile Zola wrote. He lived in Paris in 1880. No spans here."
  raw = text.encode("utf-8")
  b = lambda sub: raw.index(sub.encode("utf-8"))  # byte offset of a substring
  example = {
      "title": b"Emile Zola", "text": raw,
      "sentences": {"start": np.array([0, b("He"), b("No")]),
                    "limit": np.array([b(" He"), b(" No"), len(raw)])},
      # "\u00c9mile Zola", "Paris", "1880", and one crossing two sentences.
      "spans": {"start": np.array([0, b("Paris"), b("1880"), b("wrote")]),
                "limit": np.array([b(" wrote"), b(" in 1880"), b(". No"),
                                   b(" lived")]),
                "type": np.array([b"PER", b"LOC", b"DATE", b"X"])},
  }
  records = sources.document_query_records(example)
  assert [r["text"] for r in records] == ["\u00c9mile Zola wrote.",
                                          "He lived in Paris in 1880."]
  assert records[0]["spans"] == [(0, 10)]
  assert [records[1]["text"][s:l] for s, l in records[1]["spans"]] == [
      "Paris", "1880"]
  assert {r["source_uid"] for r in records} == {
      sources.source_uid("Emile Zola", text)}


def test_a_jsonl_corpus_with_a_byte_order_mark_is_read(tmp_path):
  """Windows editors start a UTF-8 file with a BOM; it used to make the
  first line invalid JSON and refuse the whole corpus."""
  path = tmp_path / "docs.jsonl"
  path.write_bytes(b"\xef\xbb\xbf" + json.dumps(
      {"title": "A", "text": "alpha"}).encode() + b"\n")
  assert list(sources.JsonlDocuments(path)) == [{"title": "A", "text": "alpha"}]
