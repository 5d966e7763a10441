"""BM25 over a block store: the sparse-retrieval baseline of `eval`
(eval.retrieval=bm25).

A block is indexed as its title followed by its text, as the dense index
embeds `[CLS] title [SEP] body [SEP]`: both retrievers see the title.
Tokenization is bm25s's plain one (lowercase, words of two or more word
characters, English stopwords removed) with Snowball stemming where
PyStemmer is installed (the `baselines` extra installs it; on the demo it
adds 1.2 points of recall@5). Whether it stemmed is part of the cache
key, so an index is never searched with queries tokenized differently.

The index is built once per block store (one pass over blocks.jsonl) and
saved with bm25s under <cache_root>/<store fingerprint>-<tokenization>/;
later evaluations load it. bm25s is an optional extra:
`pip install realm_jax[baselines]`.
"""
import os
import shutil

import numpy as np
from absl import logging

try:
  import bm25s
except ImportError:   # optional: only the BM25 baseline needs it
  bm25s = None

# Bump when what is indexed or how it is tokenized changes: old caches are
# then simply not found.
VERSION = 1
MISSING = ("BM25 retrieval needs the optional package bm25s: "
           "pip install 'realm_jax[baselines]' (or pip install 'bm25s>=0.2')")


def require_bm25s():
  if bm25s is None:
    raise ImportError(MISSING)


def _stemmer():
  try:
    import Stemmer  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return Stemmer.Stemmer("english")


def block_text(record: dict) -> str:
  """What BM25 indexes of a blocks.jsonl record: title, then text."""
  return record["title"] + "\n" + record["text"]


class BM25Index:
  """search(questions, k) -> (rows int64 [B, k], scores float32 [B, k]).

  Rows are block-store rows, like the dense index's. `loaded` says whether
  the index came from the cache (True) or was built now.
  """

  def __init__(self, store, cache_root: str | None = None):
    require_bm25s()
    self.num_blocks = store.num_blocks
    self.stemmer = _stemmer()
    name = (f"{store.fingerprint}-{'stem' if self.stemmer else 'nostem'}"
            f"-v{VERSION}")
    self.path = os.path.join(cache_root, name) if cache_root else None
    if self.path and os.path.isdir(self.path):
      self.bm25 = bm25s.BM25.load(self.path, show_progress=False)
      self.loaded = True
      logging.info("BM25 index of %d blocks loaded from %s", self.num_blocks,
                   self.path)
      return
    texts = [block_text(r) for _, r in store.iter_records()]
    self.bm25 = bm25s.BM25()
    self.bm25.index(self._tokenize(texts, return_ids=True),
                    show_progress=False)
    self.loaded = False
    logging.info("BM25 index of %d blocks built", self.num_blocks)
    if self.path:
      self._save()

  def _save(self):
    # Written privately and renamed, so a killed run never leaves a partial
    # index that the next one would load.
    tmp = f"{self.path}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    self.bm25.save(tmp, show_progress=False)
    try:
      os.rename(tmp, self.path)
    except OSError:   # another process saved the same index first
      shutil.rmtree(tmp, ignore_errors=True)

  def _tokenize(self, texts, return_ids: bool):
    return bm25s.tokenize(texts, stopwords="english", stemmer=self.stemmer,
                          return_ids=return_ids, show_progress=False)

  def search(self, questions, k: int):
    """Top k rows per question, best first. Words the corpus lacks are
    ignored; a question with no indexed word scores every block 0 (its rows
    are then arbitrary)."""
    if not 0 < k <= self.num_blocks:
      raise ValueError(f"k must lie in [1, {self.num_blocks}], got {k}")
    # Strings, not ids: bm25s maps them through the index's own vocabulary.
    tokens = self._tokenize(list(questions), return_ids=False)
    rows, scores = self.bm25.retrieve(tokens, k=k, show_progress=False)
    return np.asarray(rows, np.int64), np.asarray(scores, np.float32)
