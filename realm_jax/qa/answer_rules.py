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


# Questions that ask for a quantity: a count, a measure, a number ("what
# is the population of", not "which element has atomic number 53").
_QUANTITY = tuple(f" how {w} " for w in (
    "many", "much", "old", "long", "tall", "high", "far", "deep", "big",
    "large"))
_WHAT_QUANTITY = re.compile(r"^ what (is|was|s|are|were) (\w+ )?(atomic "
                            r"number|population|number|percentage) ")
# "what/which <noun>" that names a person or place: a capitalized name.
_NAMED = tuple(f" {w} {noun} " for w in ("what", "which") for noun in (
    "city", "country", "state", "province", "county", "region", "island",
    "river", "mountain", "town", "capital", "continent", "language",
    "company", "team", "band", "person", "composer", "writer", "author",
    "painter", "scientist", "architect", "king", "queen", "president"))


def wrong_type(answer: str, question: str) -> bool:
  """True if `answer` cannot be what the question asks for (`question` as
  `question_words`): a quantity ("how many", "how old", "what number",
  "population") without a number, a year or date ("when", "what year")
  without a digit, a person or place ("who", "where", "which city", "the
  capital of") that holds a digit or starts in lowercase. Ours."""
  digit = any(ch.isdigit() for ch in answer)
  if any(q in question for q in _QUANTITY) or _WHAT_QUANTITY.match(question):
    return not (digit or any(w.lower() in _NUMBER_WORDS
                             for w in answer.split()))
  if question.startswith(" when ") or any(
      f" {w} year " in question for w in ("what", "which")):
    return not digit
  if question.startswith((" who ", " whom ", " where ")) or any(
      n in question for n in (*_NAMED, " capital of ")):
    return digit or not answer[:1].isupper()
  return False


def best_block(joint: dict, fits: dict) -> int:
  """The block of the highest joint (block, span) logit among those whose
  answer passed the rules (`fits`), else among all; the first of equals.
  A block whose every span breaks a rule keeps its best span as its answer,
  so without this it could still win with an answer of the wrong type
  ("the capital of Japan" read in a block without one)."""
  pool = [j for j in joint if fits[j]] or list(joint)
  return max(pool, key=joint.get)


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
