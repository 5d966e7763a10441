"""The rules the Predictor chooses blocks and answers by, beyond the
model's scores: which phrases a question already says, which answers its
wh-word rules out, and how BM25 and dense rankings are fused (all ours).
"""
import re

import numpy as np

from realm_jax.data import qa_data

_POSSESSIVE = re.compile(r"['\u2019]s\b")
# Reciprocal-rank fusion: Cormack et al.'s (2009) constant.
RRF_K = 60


def question_words(question: str) -> str:
  """The question normalized, possessives dropped ("Teng's" -> teng), and
  padded with spaces, for `in_question`."""
  return f" {qa_data.normalize_answer(_POSSESSIVE.sub('', question))} "


def in_question(answer: str, question: str) -> bool:
  """True if `answer`, normalized, is a run of whole words of the question
  (`question_words`): "Who wrote the Harry Potter novels?" -> "Harry Potter"
  says nothing new. Words spread over the question do not count: "Spiral
  galaxy in the constellation Triangulum" -> "Triangulum Galaxy" stays."""
  answer = qa_data.normalize_answer(_POSSESSIVE.sub("", answer))
  return bool(answer) and f" {answer} " in question


_NUMBER_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve twenty "
    "hundred thousand million billion dozen several".split())


def wrong_type(answer: str, question: str) -> bool:
  """True if `answer` cannot be what the question's wh-word asks for
  (`question` as `question_words`): a count ("how many") without a number,
  a year or date ("when", "what year") without a digit, a person or place
  ("who", "where") that holds a digit or starts in lowercase. Ours."""
  digit = any(ch.isdigit() for ch in answer)
  if " how many " in question:
    return not (digit or any(w.lower() in _NUMBER_WORDS
                             for w in answer.split()))
  if question.startswith(" when ") or any(
      f" {w} year " in question for w in ("what", "which")):
    return not digit
  if question.startswith((" who ", " whom ", " where ")):
    return digit or not answer[:1].isupper()
  return False


def fuse_ranks(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
  """Reciprocal-rank fusion of two rankings of rows [B, n] (best first; -1
  pads): the top k rows [B, k] by sum of 1 / (RRF_K + rank), ties broken
  by the first ranking."""
  out = np.empty((len(a), k), np.int64)
  for i, rankings in enumerate(zip(a, b)):
    score = {}
    for ranking in rankings:
      for rank, row in enumerate(ranking):
        if row >= 0:
          score[int(row)] = score.get(int(row), 0.0) + 1 / (RRF_K + rank + 1)
    best = sorted(score, key=score.get, reverse=True)[:k]   # stable sort
    out[i] = best + [-1] * (k - len(best))
  return out
