"""Tokenizers: real vocabularies, real text, exact offsets."""
import os
import unicodedata

import numpy as np
import pytest

from realm_jax.data import demo_corpus
from realm_jax.data import tokenizer as tk


@pytest.fixture(scope="module")
def texts():
  return [text for _, text in demo_corpus.demo_documents(limit=120)]


@pytest.fixture(scope="module")
def minilm():
  return tk.minilm_tokenizer()


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory, texts):
  prefix = str(tmp_path_factory.mktemp("spm") / "demo")
  return tk.SentencePieceTokenizer(tk.train_sentencepiece(texts, 800, prefix))


def test_minilm_has_bert_uncased_vocab_and_special_ids(minilm):
  assert minilm.vocab_size == 30522
  assert (minilm.pad_id, minilm.unk_id, minilm.cls_id, minilm.sep_id,
          minilm.mask_id) == (0, 100, 101, 102, 103)


def test_minilm_matches_the_packaged_tokenizer_json(minilm, texts):
  from tokenizers import Tokenizer
  packaged = Tokenizer.from_file(os.path.join(tk.minilm_dir(), "tokenizer.json"))
  packaged.no_padding()
  packaged.no_truncation()
  for text in texts[:40]:
    want = packaged.encode(text, add_special_tokens=False).ids
    assert minilm.encode(text).ids.tolist() == want


def _fold(s):
  # What BERT uncased does to a word: lowercase and strip accents.
  return "".join(c for c in unicodedata.normalize("NFD", s.lower())
                 if unicodedata.category(c) != "Mn")


def test_wordpiece_offsets_point_at_the_token_text(minilm, texts):
  checked = 0
  for text in texts:
    enc = minilm.encode(text)
    assert enc.ids.dtype == np.int32 and enc.offsets.shape == (len(enc.ids), 2)
    for i, (s, e) in zip(enc.ids, enc.offsets):
      if i == minilm.unk_id:
        continue
      assert _fold(text[s:e]) == minilm.id_to_token(i).removeprefix("##")
      checked += 1
  assert checked > 10_000


def test_encode_batch_equals_encode(minilm, sentencepiece, texts):
  for tok in (minilm, sentencepiece):
    batch = tok.encode_batch(texts[:30])
    for text, enc in zip(texts[:30], batch):
      single = tok.encode(text)
      np.testing.assert_array_equal(enc.ids, single.ids)
      np.testing.assert_array_equal(enc.offsets, single.offsets)


def test_no_special_tokens_added_and_literal_mask_is_plain_text(minilm, sentencepiece):
  for tok in (minilm, sentencepiece):
    ids = tok.encode("The [MASK] of [CLS] Paris [SEP].").ids
    assert not set(ids.tolist()) & {tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id}


def test_sentencepiece_has_bert_special_tokens(sentencepiece):
  tok = sentencepiece
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.id_to_token(tok.mask_id) == "[MASK]"
  assert tok.token_to_id("no-such-piece-here") is None


def test_sentencepiece_round_trips_text_and_offsets(sentencepiece, texts):
  tok = sentencepiece
  checked = 0
  for text in texts[:60]:
    if (unicodedata.normalize("NFKC", text) != text or "  " in text
        or any(c.isspace() and c != " " for c in text)):
      continue  # normalization would (rightly) change such text
    enc = tok.encode(text)
    if tok.unk_id not in enc.ids:
      assert tok.decode(enc.ids) == text
      checked += 1
    for i, (s, e) in zip(enc.ids, enc.offsets):
      if i != tok.unk_id:
        assert text[s:e] == tok.id_to_token(i).replace("\u2581", "")
  assert checked >= 20


def test_sentencepiece_offsets_are_chars_not_bytes(sentencepiece):
  text = "Zoë Ürümqi naïve 日本 café. Côte d'Ivoire"
  fast = sentencepiece.encode(text)
  via_proto = sentencepiece.encode_via_proto(text)  # byte offsets converted
  np.testing.assert_array_equal(fast.ids, via_proto.ids)
  np.testing.assert_array_equal(fast.offsets, via_proto.offsets)
  assert fast.offsets.max() == len(text)
  for i, (s, e) in zip(fast.ids, fast.offsets):
    piece = sentencepiece.id_to_token(i).replace("\u2581", "")
    assert text[s:e] == piece if i != sentencepiece.unk_id else e > s


def test_load_tokenizer_forms(minilm):
  vocab = os.path.join(tk.minilm_dir(), "vocab.txt")
  tok = tk.load_tokenizer(f"wordpiece:{vocab}")
  assert tok.encode("Lu Xun").ids.tolist() == minilm.encode("Lu Xun").ids.tolist()
  assert tk.load_tokenizer("minilm").identity == minilm.identity == tok.identity
  with pytest.raises(ValueError, match="unknown tokenizer kind 'bpe'"):
    tk.load_tokenizer("bpe", vocab)


def test_spec_round_trip_checks_the_vocab_hash(tmp_path, minilm):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text(open(os.path.join(tk.minilm_dir(), "vocab.txt")).read())
  spec = tk.WordPieceTokenizer(str(vocab)).spec()
  assert tk.tokenizer_from_spec(spec).spec() == spec
  with open(vocab, "a") as f:
    f.write("zzznewtoken\n")
  tk._sha256_cached.cache_clear()
  with pytest.raises(ValueError, match="vocabulary changed"):
    tk.tokenizer_from_spec(spec)


def test_missing_files_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    tk.WordPieceTokenizer(str(tmp_path / "nope.txt"))
  with pytest.raises(FileNotFoundError, match="nope.model"):
    tk.SentencePieceTokenizer(str(tmp_path / "nope.model"))


def test_word_start_mask(minilm, sentencepiece):
  # WordPiece: "##" continues a word (ser ##f ##dom); punctuation and
  # special tokens start one. Any id shape works.
  ids = minilm.encode("Serfdom was abolished.").ids
  assert [minilm.id_to_token(i) for i in ids] == [
      "ser", "##f", "##dom", "was", "abolished", "."]
  assert minilm.word_start_mask(ids).tolist() == [
      True, False, False, True, True, True]
  assert minilm.word_start_mask(np.array([[minilm.cls_id, minilm.sep_id]])
                                ).tolist() == [[True, True]]
  # SentencePiece: "▁" starts a word, and so do punctuation and the piece
  # after it, as BERT's pre-tokenizer splits punctuation off (else no span
  # could end before the "." of "Paris.", nor start at "geometry").
  tok = sentencepiece
  ids = tok.encode("Point (geometry), Paris.").ids
  starts = [tok.id_to_token(i) for i, m in zip(ids, tok.word_start_mask(ids))
            if m]
  # 800 pieces learnt from 120 summaries: "Point" is ▁P o in t.
  assert starts == ["\u2581P", "\u2581", "(", "ge", ")", ",", "\u2581P", "."]
  assert tok.word_start_mask(np.array([tok.cls_id, tok.sep_id])).all()
