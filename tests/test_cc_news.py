"""Tests for the CC-News TFDS builder over local JSON/JSONL files."""
import gzip
import json

import pytest
import tensorflow_datasets as tfds

from realm_jax.data import cc_news
from realm_jax.data import sources


def _write_articles(manual_dir):
  (manual_dir / "2017").mkdir(parents=True)
  lines = [
      {"title": "Alpha", "text": "Alpha news.", "url": "http://a",
       "date": "2017-01-02"},
      {"title": "Empty", "text": "   "},  # skipped: no text
      {"title": "B\u00e9ta", "maintext": "B\u00e9ta text.",
       "date_publish": "2018-03-04 10:00:00"},
  ]
  (manual_dir / "2017" / "part-0.jsonl").write_text(
      json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n"
      + json.dumps(lines[2]) + "\n", encoding="utf-8")
  # news-please layout: one article per .json file.
  (manual_dir / "gamma.json").write_text(
      json.dumps({"title": "Gamma", "maintext": "Gamma.", "url": "http://c"}))
  with gzip.open(manual_dir / "list.json.gz", "wt", encoding="utf-8") as f:
    json.dump([{"title": "Delta", "text": "Delta."},
               {"text": "Untitled."}], f)
  (manual_dir / "README.txt").write_text("not an article file")


def test_builder_writes_array_record_readable_without_tensorflow(tmp_path):
  manual_dir, data_dir = tmp_path / "manual", tmp_path / "tfds"
  _write_articles(manual_dir)
  builder = cc_news.CcNews(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=cc_news.download_config(str(manual_dir)))
  assert builder.info.splits["train"].num_examples == 5
  assert list((data_dir / "cc_news" / "1.0.0").glob("*.array_record-*"))

  raw = tfds.data_source("cc_news", split="train", data_dir=str(data_dir))
  by_title = {r["title"].decode(): r for r in (raw[i] for i in range(len(raw)))}
  assert by_title["Alpha"]["url"] == b"http://a"
  assert by_title["B\u00e9ta"]["date"] == b"2018-03-04 10:00:00"

  docs = sources.tfds_documents("cc_news", data_dir=str(data_dir))
  assert sorted((d["title"], d["text"]) for d in docs) == [
      ("", "Untitled."), ("Alpha", "Alpha news."),
      ("B\u00e9ta", "B\u00e9ta text."),
      ("Delta", "Delta."), ("Gamma", "Gamma.")]


def test_malformed_article_names_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "fine"}\n{"text": "cut\n')
  with pytest.raises(ValueError, match=r"bad.jsonl line 2: invalid JSON"):
    list(cc_news.read_articles(str(path)))
  path.write_text('{"text": ["not", "a", "string"]}\n')
  with pytest.raises(ValueError,
                     match=r"line 1: field 'text' must be a string"):
    list(cc_news.read_articles(str(path)))


def test_empty_manual_dir_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="no .jsonl/.*files under"):
    cc_news.article_files(str(tmp_path))
