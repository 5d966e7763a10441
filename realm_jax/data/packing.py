"""Documents -> sentences -> retrieval blocks (REALM's corpus Z).

Sentences are found by a small regex splitter (`split_sentences`): a sentence
ends at '.', '!' or '?' (plus closing quotes/brackets) followed by whitespace
and an upper-case letter, digit or opening quote; line breaks always end a
sentence. A period after a single capital letter ("Arthur C. Clarke") or a
known abbreviation ("Dr.", "St.", "e.g.") does not. It is fast (pure `re`) and
good enough for Wikipedia prose; errors only merge or split sentences, which
moves a block boundary slightly.

Blocks are packed greedily as in REALM: sentences are appended while
3 + len(title) + len(body) <= block_len; the title is repeated in every block.
A single sentence longer than the body budget is split into budget-sized
pieces at word starts (counted as `split_sentences`).

A document longer than SEGMENT_CHARS characters is tokenized and packed one
segment at a time (`pack_long_document`), cut at sentence ends: a token's
offsets cost about a hundred bytes of Python objects, so a 50 MB one-line
document tokenized whole took 5.7 GB. No block spans two segments.
"""
import dataclasses
import hashlib
import re

from typing import Callable

import numpy as np

from realm_jax.data.tokenizer import Encoding

SEGMENT_CHARS = 200_000
_DROPPED_TITLE_PREFIXES = ("List of", "Index of", "Outline of")

_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*\s+|\n\s*")
_ABBREVIATIONS = frozenset("""
    mr mrs ms dr prof st mt ft jr sr gen col lt sgt capt cpt rev hon gov sen rep
    vs etc eg ie al inc ltd co corp no nos vol pp ca approx est fig dept univ
    jan feb mar apr jun jul aug sep sept oct nov dec
""".split())


def split_sentences(text: str) -> list[tuple[int, int]]:
  """[(start, limit)] char spans of the sentences of `text`, trimmed."""
  spans = []
  start = 0
  for m in _BOUNDARY.finditer(text):
    end = m.end()
    if text[m.start()] != "\n":
      nxt = text[end:end + 2].lstrip("\"'“‘([")
      if not nxt or not (nxt[0].isupper() or nxt[0].isdigit()):
        continue
      # The word that ends in this period, without its trailing punctuation
      # (from a bounded window: a long text without sentence ends would
      # otherwise be split again at each period, quadratic in its length).
      before = text[max(start, m.start() - 64):m.start()].split()
      word = before[-1] if before else ""
      word = word.lstrip("\"'“‘([").replace(".", "").lower()
      if text[m.start()] == "." and (
          word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
        continue
    _append_trimmed(text, start, m.start() + len(m.group().rstrip()), spans)
    start = end
  _append_trimmed(text, start, len(text), spans)
  return spans


def _append_trimmed(text, start, limit, spans):
  while start < limit and text[start].isspace():
    start += 1
  while limit > start and text[limit - 1].isspace():
    limit -= 1
  if limit > start:
    spans.append((start, limit))


def is_dropped_title(title: str) -> bool:
  """REALM drops list, index and outline pages and disambiguation pages."""
  return (title.startswith(_DROPPED_TITLE_PREFIXES)
          or "(disambiguation)" in title)


def block_uid(title: str, body_text: str) -> str:
  """sha1 hex of title + "\\x1f" + body text: the block's stable identity."""
  return hashlib.sha1(f"{title}\x1f{body_text}".encode("utf-8")).hexdigest()


@dataclasses.dataclass
class Block:
  """One retrieval block before it is written to the store.

  Attributes:
    title: document title.
    text: body text (a verbatim substring of the document text).
    uid: block_uid(title, text).
    title_ids: int32 [t] title tokens.
    body_ids: int32 [b] body tokens; 3 + t + b <= block_len.
    sentence_starts: int32 [s] body-token index where each sentence starts
      (sentence j covers body tokens [starts[j], starts[j+1]) or to b).
    sentence_spans: [(start, limit)] char spans of the sentences inside `text`.
  """
  title: str
  text: str
  uid: str
  title_ids: np.ndarray
  body_ids: np.ndarray
  sentence_starts: np.ndarray
  sentence_spans: list


def _word_start_split(offsets: np.ndarray, lo: int, budget: int) -> int:
  """Where to cut tokens lo.. within `budget`, preferring a word start."""
  cut = lo + budget
  for j in range(cut, lo + budget // 2, -1):
    # A token whose start is not the previous token's end begins a new word.
    if offsets[j, 0] != offsets[j - 1, 1]:
      return j
  return cut


def pack_document(title: str, text: str, title_enc: Encoding,
                  body_enc: Encoding,
                  block_len: int) -> tuple[list[Block], int]:
  """Greedily packs one document's sentences into blocks.

  Args:
    title: the document title (kept whole in every block).
    text: the document body text.
    title_enc: tokenization of `title`.
    body_enc: tokenization of the whole of `text` (offsets into `text`).
    block_len: the document input length, [CLS] title [SEP] body [SEP].
  Returns:
    (blocks, number of sentences that had to be split because they alone
    exceeded the body budget).
  """
  budget = block_len - 3 - len(title_enc.ids)
  if budget < 1:
    raise ValueError(f"title {title!r} leaves no room for a body in "
                     f"block_len={block_len}")
  offsets = body_enc.offsets
  n = len(body_enc.ids)
  if n == 0:
    return [], 0
  # Sentence j owns the tokens starting inside its char span (tokens never
  # straddle sentence boundaries, which lie on whitespace).
  sent_chars = split_sentences(text)
  sent_starts = np.array([s for s, _ in sent_chars], np.int64)
  tok_sent = np.searchsorted(sent_starts, offsets[:, 0], side="right") - 1
  tok_sent = np.maximum(tok_sent, 0)
  bounds = np.flatnonzero(np.diff(tok_sent)) + 1
  pieces = list(zip(np.concatenate([[0], bounds]),
                    np.concatenate([bounds, [n]])))

  # Over-long sentences become several budget-sized pieces.
  split_count = 0
  fitted = []
  for lo, hi in pieces:
    if hi - lo > budget:
      split_count += 1
      while hi - lo > budget:
        cut = _word_start_split(offsets, lo, budget)
        fitted.append((lo, cut))
        lo = cut
    fitted.append((lo, hi))

  blocks = []
  current = []
  for piece in fitted:
    if current and piece[1] - current[0][0] > budget:
      blocks.append(_make_block(title, text, title_enc, body_enc, current))
      current = []
    current.append(piece)
  blocks.append(_make_block(title, text, title_enc, body_enc, current))
  return blocks, split_count


def _make_block(title, text, title_enc, body_enc, pieces) -> Block:
  lo, hi = pieces[0][0], pieces[-1][1]
  offsets = body_enc.offsets
  char_lo = int(offsets[lo, 0])
  char_hi = int(offsets[hi - 1, 1])
  body_text = text[char_lo:char_hi]
  spans = [(int(offsets[a, 0]) - char_lo, int(offsets[b - 1, 1]) - char_lo)
           for a, b in pieces]
  return Block(
      title=title, text=body_text, uid=block_uid(title, body_text),
      title_ids=title_enc.ids, body_ids=body_enc.ids[lo:hi],
      sentence_starts=np.array([a - lo for a, _ in pieces], np.int32),
      sentence_spans=spans)


def segments(text: str, max_chars: int = SEGMENT_CHARS) -> list[tuple[int, int]]:
  """[(start, limit)] char ranges of at most max_chars covering `text`, cut
  after a sentence end, else at whitespace, else anywhere."""
  out, start = [], 0
  while len(text) - start > max_chars:
    window = text[start:start + max_chars]
    m = None
    for m in _BOUNDARY.finditer(window):
      pass
    cut = m.end() if m is not None and m.end() < len(window) else (
        window.rfind(" ") + 1 or len(window))
    out.append((start, start + cut))
    start += cut
  out.append((start, len(text)))
  return out


def pack_long_document(title: str, text: str, title_enc: Encoding,
                       encode: Callable[[str], Encoding], block_len: int,
                       max_chars: int = SEGMENT_CHARS) -> tuple[list[Block], int]:
  """`pack_document` one segment of at most max_chars at a time (`encode`
  tokenizes a segment), so memory is bounded by max_chars, not the text."""
  blocks, split_count = [], 0
  for lo, hi in segments(text, max_chars):
    piece = text[lo:hi]
    more, n = pack_document(title, piece, title_enc, encode(piece), block_len)
    blocks += more
    split_count += n
  return blocks, split_count
