"""Open-QA data and metrics: answer normalization, EM, regex match, recall@k.

The definitions follow the official scripts so that our numbers can be
compared with the paper's:

* `normalize_answer` is the SQuAD v1.1 `normalize_answer` (lowercase, strip
  ASCII punctuation, drop the articles a/an/the, collapse whitespace) preceded
  by NFD unicode normalization, exactly as ORQA's `eval_utils` (used for REALM's
  NQ and WebQuestions numbers).
* `exact_match` is the max over references of normalized string equality.
* `regex_match` is ORQA's CuratedTREC metric: `re.match` of each reference
  pattern (IGNORECASE | UNICODE | MULTILINE) against the raw prediction; a
  pattern that does not compile counts as no match, as in ORQA.
* `has_answer` decides whether a retrieved block is "correct" (retriever loss,
  recall@k). ORQA's `HasAnswer` op is a raw, case-sensitive substring search
  (`match="raw"`). The default here, `match="normalized"`, looks for the
  normalized answer as a whole-token run inside the normalized block, which
  ignores case, punctuation and articles (and cannot match inside a word).
  CuratedTREC uses `match="regex"` (re.search, IGNORECASE).
* `answer_token_spans` finds gold spans by token ids inside the block portion of
  a reader input `[CLS] question [SEP] block [SEP]`, like ORQA's
  `ReaderInputs` op (every occurrence of every tokenized answer; ends
  inclusive).

Question files are the original resplit JSONL format, one
`{"question": str, "answer": [str, ...]}` per line (CuratedTREC answers are
regexes); see `read_qa_jsonl` / `write_qa_jsonl`.
"""
from __future__ import annotations

import json
import os
import re
import string
import unicodedata
from typing import Iterable, Mapping, Sequence

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_MATCH_KINDS = ("normalized", "raw", "regex")


def normalize_answer(text: str) -> str:
  """NFD, lowercase, strip punctuation, drop a/an/the, collapse whitespace."""
  text = unicodedata.normalize("NFD", text).lower()
  text = "".join(ch for ch in text if ch not in _PUNCTUATION)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def exact_match(prediction: str, references: Iterable[str]) -> bool:
  """True if the normalized prediction equals any normalized reference."""
  normalized = normalize_answer(prediction)
  return any(normalized == normalize_answer(r) for r in references)


def wrong_edges(prediction: str, references: Iterable[str]) -> bool:
  """A span-edge error: not an exact match, but sharing a word with a
  reference ("Paris is the capital ... of France" for "Paris", "Denver" for
  "Denver, Colorado")."""
  words = set(normalize_answer(prediction).split())
  return (not exact_match(prediction, references) and any(
      words & set(normalize_answer(r).split()) for r in references))


def compiled_answers(patterns: Iterable[str]) -> list[re.Pattern]:
  """CuratedTREC's answer regexes, compiled case-blind (its official
  flags); an invalid pattern is skipped: it never matches."""
  out = []
  for pattern in patterns:
    try:
      out.append(re.compile(pattern, re.IGNORECASE | re.UNICODE | re.MULTILINE))
    except re.error:
      pass
  return out


def regex_match(prediction: str, patterns: Iterable[str]) -> bool:
  """CuratedTREC: any pattern `re.match`es the raw prediction (case-blind)."""
  return any(c.match(prediction) for c in compiled_answers(patterns))


def is_correct(prediction: str, references: Sequence[str],
               is_regex: bool = False) -> bool:
  """The official per-question metric: EM, or regex match for CuratedTREC."""
  if is_regex:
    return regex_match(prediction, references)
  return exact_match(prediction, references)


def has_answer(text: str, answers: Iterable[str],
               match: str = "normalized") -> bool:
  """Whether a block's text contains any of the answers.

  Args:
    text: the block text (title excluded or included, as the caller likes).
    answers: answer strings, or regex patterns when `match="regex"`.
    match: "normalized" (whole-token run of the normalized answer inside the
      normalized text; an answer that normalizes to "" never matches), "raw"
      (ORQA's case-sensitive substring search) or "regex" (re.search,
      IGNORECASE; invalid patterns never match).

  Returns:
    True if any answer is found.
  """
  if match == "raw":
    return any(a and a in text for a in answers)
  if match == "regex":
    return any(c.search(text) for c in compiled_answers(answers))
  if match == "normalized":
    # Padding with spaces turns substring search into whole-token matching,
    # since normalized text has exactly one space between tokens.
    haystack = f" {normalize_answer(text)} "
    for answer in answers:
      needle = normalize_answer(answer)
      if needle and f" {needle} " in haystack:
        return True
    return False
  raise ValueError(f"match must be one of {_MATCH_KINDS}, got {match!r}")


def retrieval_hits(block_texts: Sequence[Sequence[str]],
                   answers: Sequence[Sequence[str]],
                   match: str = "normalized") -> np.ndarray:
  """Which retrieved blocks contain an answer.

  Args:
    block_texts: per question, the texts of its retrieved blocks in rank
      order; [num_questions][k].
    answers: per question, its answer strings (or patterns); [num_questions][*].
    match: see `has_answer`.

  Returns:
    bool [num_questions, k] (k = the longest list; shorter lists pad False).
  """
  if len(block_texts) != len(answers):
    raise ValueError(f"{len(block_texts)} questions have retrieved blocks but "
                     f"{len(answers)} have answers; they must match")
  k = max((len(texts) for texts in block_texts), default=0)
  hits = np.zeros((len(block_texts), k), dtype=bool)
  for q, (texts, refs) in enumerate(zip(block_texts, answers)):
    for rank, text in enumerate(texts):
      hits[q, rank] = has_answer(text, refs, match)
  return hits


def recall_at_k(hits: np.ndarray, ks: Sequence[int] = (1, 5, 20, 100)
                ) -> dict[int, float]:
  """Fraction of questions with an answer-bearing block in the top k.

  Args:
    hits: bool [num_questions, num_retrieved], column j = rank j.
    ks: cut-offs; a k larger than num_retrieved uses all retrieved blocks.

  Returns:
    {k: recall} for each k in ks.
  """
  hits = np.asarray(hits, dtype=bool)
  if hits.ndim != 2:
    raise ValueError(f"hits must be [num_questions, k], got shape {hits.shape}")
  if hits.shape[0] == 0:
    raise ValueError("recall@k of zero questions is undefined")
  out = {}
  for k in ks:
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    out[k] = float(hits[:, :k].any(axis=1).mean())
  return out


def answer_token_spans(input_ids: np.ndarray, block_mask: np.ndarray,
                       answer_ids: Sequence[Sequence[int]],
                       max_width: int | None = None) -> list[tuple[int, int]]:
  """All token spans of a reader input that spell one of the answers.

  Args:
    input_ids: int [seq], e.g. `[CLS] question [SEP] block [SEP] pad...`.
    block_mask: int/bool [seq], 1 on block tokens (the only allowed positions).
    answer_ids: each answer tokenized WITHOUT special tokens.
    max_width: if set, drop spans longer than this many tokens.

  Returns:
    Sorted, de-duplicated (start, end) pairs, end inclusive, with every token of
    the span inside the block.
  """
  input_ids = np.asarray(input_ids)
  in_block = np.asarray(block_mask).astype(bool)
  if input_ids.shape != in_block.shape or input_ids.ndim != 1:
    raise ValueError(f"input_ids {input_ids.shape} and block_mask "
                     f"{in_block.shape} must be the same 1-D shape")
  spans = set()
  for answer in answer_ids:
    answer = np.asarray(answer, dtype=input_ids.dtype)
    width = len(answer)
    if width == 0 or width > len(input_ids):
      continue
    if max_width is not None and width > max_width:
      continue
    windows = np.lib.stride_tricks.sliding_window_view(input_ids, width)
    inside = np.lib.stride_tricks.sliding_window_view(in_block, width)
    found = np.all(windows == answer, axis=1) & np.all(inside, axis=1)
    spans.update((int(s), int(s) + width - 1) for s in np.flatnonzero(found))
  return sorted(spans)


def gold_span_arrays(input_ids: np.ndarray, block_mask: np.ndarray,
                     answer_ids: Sequence[Sequence[int]], max_spans: int,
                     max_width: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
  """`answer_token_spans` for k reader inputs, as fixed-size arrays.

  Args:
    input_ids: int [k, seq] reader inputs of one question's k blocks.
    block_mask: [k, seq] 1 on block tokens.
    answer_ids: the question's answers, tokenized.
    max_spans: spans kept per block (earliest first); the rest are dropped.
    max_width: see `answer_token_spans`.

  Returns:
    (starts, ends) int32 [k, max_spans], padded with -1.
  """
  input_ids = np.asarray(input_ids)
  k = input_ids.shape[0]
  starts = np.full((k, max_spans), -1, np.int32)
  ends = np.full((k, max_spans), -1, np.int32)
  for b in range(k):
    spans = answer_token_spans(input_ids[b], block_mask[b], answer_ids,
                               max_width)[:max_spans]
    for j, (s, e) in enumerate(spans):
      starts[b, j], ends[b, j] = s, e
  return starts, ends


def _check_example(obj, where: str) -> dict:
  if not isinstance(obj, Mapping):
    raise ValueError(f"{where}: expected a JSON object, got "
                     f"{type(obj).__name__}")
  for key in ("question", "answer"):
    if key not in obj:
      raise ValueError(f"{where}: missing key {key!r} (have {sorted(obj)})")
  question, answer = obj["question"], obj["answer"]
  if not isinstance(question, str):
    raise ValueError(f"{where}: 'question' must be a string, got "
                     f"{type(question).__name__}")
  if (not isinstance(answer, list) or not answer
      or not all(isinstance(a, str) for a in answer)):
    raise ValueError(f"{where}: 'answer' must be a non-empty list of strings, "
                     f"got {answer!r}")
  example = {"question": question, "answer": list(answer)}
  if isinstance(obj.get("kind"), str):   # subject | inside: EM is kept by kind
    example["kind"] = obj["kind"]
  return example


def read_qa_jsonl(path: str | os.PathLike) -> list[dict]:
  """Reads a resplit file: one {"question": str, "answer": [str, ...]} a line.

  Blank lines are skipped; extra keys are dropped, except a string "kind"
  (evaluation reports EM by kind, e.g. subject and inside answers).

  Raises:
    ValueError naming the file and 1-based line number of a malformed line.
  """
  examples = []
  # utf-8-sig: a byte-order mark (Windows editors write one) is skipped.
  with open(path, encoding="utf-8-sig") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{os.fspath(path)} line {line_number}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg} at column "
                         f"{e.colno})") from e
      examples.append(_check_example(obj, where))
  return examples


def write_qa_jsonl(path: str | os.PathLike,
                   examples: Iterable[Mapping]) -> int:
  """Writes examples in the resplit format; returns how many were written."""
  count = 0
  with open(path, "w", encoding="utf-8") as f:
    for i, example in enumerate(examples):
      checked = _check_example(example, f"example {i}")
      f.write(json.dumps(checked, ensure_ascii=False) + "\n")
      count += 1
  return count
