"""Documents of a knowledge base, each with a stable identity.

A document's identity is its `id` when the corpus gives one (a JSONL `id`
field), and otherwise the sha1 of its title and text, so an unchanged document
keeps its identity from one indexing run to the next and a knowledge base
update (kb/update.py) can tell added, changed and removed documents
apart. `digest` (sha1 of title and text) tells a changed document with a
given id from an unchanged one.

Bad input, decided here once for every source:
  empty text, or bytes that are not UTF-8     skipped, counted (empty_text,
  (in the title, the text or the id)          undecodable)
  the same id twice                           ValueError naming both places
  the same title and text twice, no ids       the second is skipped, counted
                                              (duplicate): it is the same
                                              document
"""
import collections
from typing import Iterable, NamedTuple

from realm_jax.data import block_builder
from realm_jax.data import sources

SKIP_REASONS = ("empty_text", "undecodable", "duplicate")


class Document(NamedTuple):   # a tuple: ~10^5 of them are made per run
  id: str
  title: str
  text: str
  digest: str      # sha1 hex of title and text

  def as_dict(self) -> dict:
    return {"id": self.id, "title": self.title, "text": self.text}


def identify(docs: Iterable, where=None) -> tuple[list[Document], dict]:
  """(the usable documents in corpus order, {skip reason: count}).

  docs: (title, text) pairs or {"title", "text", "id"?} dicts, as the data
  layer yields them (catalog.documents). where(i): a place for messages,
  e.g. JsonlDocuments.where (default "document <i>").
  """
  where = where or (lambda i: f"document {i}")
  out, skipped = [], collections.Counter()
  first_place = {}   # id -> index of its document
  for i, doc in enumerate(docs):
    decoded = block_builder.decode(doc, drop_list_pages=False)
    if isinstance(decoded, str):
      skipped[decoded] += 1
      continue
    title, text, given = decoded
    digest = sources.source_uid(title, text)
    doc_id = digest if given is None else str(given)
    if doc_id in first_place:
      if given is None:
        skipped["duplicate"] += 1
        continue
      raise ValueError(f"duplicate document id {doc_id!r}: "
                       f"{where(first_place[doc_id])} and {where(i)}; ids "
                       "must be unique in a corpus")
    first_place[doc_id] = i
    out.append(Document(doc_id, title, text, digest))
  return out, {r: skipped.get(r, 0) for r in SKIP_REASONS}
