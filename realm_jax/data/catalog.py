"""From config names to data objects: the tokenizer, the block store, the
pretraining query records and the QA examples a task needs.

Everything built here is cached in the workdir (or `data.block_store`), so a
second run reuses it.
"""
import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from realm_jax import workdir as workdir_lib
from realm_jax.data import block_builder
from realm_jax.data import corpus
from realm_jax.data import demo_corpus
from realm_jax.data import ner
from realm_jax.data import qa_data
from realm_jax.data import question_gen
from realm_jax.data import sources
from realm_jax.data import tokenizer as tokenizer_lib


def tokenizer(config) -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.load_tokenizer(config.data.tokenizer)


def block_store_path(config) -> str:
  return config.data.block_store or workdir_lib.blocks_dir(config.workdir)


def documents(config):
  """(title, text) pairs of the knowledge corpus Z, in a fixed order."""
  name, limit = config.data.corpus, config.data.corpus_limit or None
  if name == "demo":
    return demo_corpus.demo_documents(limit)
  if name.startswith("jsonl:"):
    docs = sources.JsonlDocuments(name.split(":", 1)[1])
  elif name == "wikipedia" or name.startswith("wikipedia/"):
    docs = sources.tfds_documents(
        name if "/" in name else "wikipedia/20230601.en", split="train",
        data_dir=config.data.tfds_data_dir or None)
  else:
    raise ValueError(f"data.corpus={name!r}: expected demo, wikipedia[/<config>]"
                     " or jsonl:<path>")
  if limit:
    return (docs[i] for i in range(min(limit, len(docs))))
  return iter(docs)


# [CLS] title [SEP] body [SEP]: below this a block holds a few words of body
# (block_len=8 gave 3-5-token blocks) and nothing worth retrieving.
MIN_BLOCK_LEN = 32


def block_store(config, progress: bool = True) -> corpus.BlockStore:
  """Opens the block store, building (or resuming) it first if needed."""
  if config.data.block_len < MIN_BLOCK_LEN:
    raise ValueError(f"data.block_len={config.data.block_len}: blocks need at "
                     f"least {MIN_BLOCK_LEN} tokens ([CLS] title [SEP] body "
                     "[SEP]); REALM uses 288")
  path = block_store_path(config)
  if not corpus.is_block_store(path):
    logging.info("building the block store at %s from data.corpus=%s", path,
                 config.data.corpus)
    block_builder.build_block_store(documents(config), tokenizer(config), path,
                             block_len=config.data.block_len, progress=progress)
  store = corpus.BlockStore(path)
  if store.block_len != config.data.block_len:
    raise ValueError(f"the block store at {path} has block_len "
                     f"{store.block_len}, but data.block_len is "
                     f"{config.data.block_len}; use another data.block_store")
  return store


class Subset(Sequence):
  """Records `indices` of `records`, as a random-access source for grain."""

  def __init__(self, records, indices: np.ndarray):
    self.records, self.indices = records, indices

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i: int) -> dict:
    return self.records[int(self.indices[i])]


def heldout_mask(n: int, fraction: float) -> np.ndarray:
  """bool [n]: which of n query records are held out of pretraining.

  A multiplicative hash of the record index: fixed for a given record store,
  spread evenly, and free to compute for 10^8 records (nothing is read).
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"data.heldout_fraction={fraction}: expected [0, 1)")
  h = (np.arange(n, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
  return h < np.uint64(int(fraction * 2**32))


def query_records(config, store=None, split: str = "all"):
  """Random-access query records {"text", "spans", "source_uid"} of X.

  split: "all"; "train" (pretraining: all but the held-out records) or
  "heldout" (`data.heldout_fraction` of them, for `realm_jax.index.masked_recall`).
  """
  records = _query_records(config, store)
  if split == "all" or (split == "train" and not config.data.heldout_fraction):
    return records
  if split not in ("train", "heldout"):
    raise ValueError(f"split={split!r}: expected all, train or heldout")
  held = heldout_mask(len(records), config.data.heldout_fraction)
  return Subset(records, np.flatnonzero(held if split == "heldout" else ~held))


def _query_records(config, store=None):
  name = config.data.queries
  if name == "demo":
    # X = Z: sentences of the demo blocks, NER-tagged once and cached.
    return ner.QueryRecords(store if store is not None else block_store(config))
  if name == "salient_span_wikipedia":
    return sources.query_records("train", data_dir=config.data.tfds_data_dir or None)
  if name == "cc_news":
    # X != Z: the news articles are packed into a block store of their own
    # (built once, cached) only to split and tag their sentences; their
    # source uids match no Wikipedia block, so nothing is excluded.
    path = os.path.join(config.workdir, "cc_news_sentences")
    if not corpus.is_block_store(path):
      from realm_jax.data import cc_news  # noqa: F401  registers the builder
      docs = sources.tfds_documents("cc_news", split="train",
                                    data_dir=config.data.tfds_data_dir or None)
      block_builder.build_block_store(iter(docs), tokenizer(config), path,
                               block_len=config.data.block_len)
    return ner.QueryRecords(corpus.BlockStore(path))
  raise ValueError(f"data.queries={name!r}: expected demo, "
                   "salient_span_wikipedia or cc_news")


def training_questions(config, store) -> list[dict]:
  """The fine-tuning questions: finetune.dataset's train split, mixed with
  reading questions generated from the block store's own sentences
  (data/question_gen.py) so that they make finetune.generated_fraction of
  the whole (1: generated only, for a corpus without QA pairs)."""
  fraction = config.finetune.generated_fraction
  if not 0 <= fraction <= 1:
    raise ValueError("finetune.generated_fraction must be in [0, 1], got "
                     f"{fraction}")
  examples = ([] if fraction == 1 else
              list(qa_examples(config, config.finetune.split)))
  if not fraction:
    return examples
  kinds = config.finetune.generated_kinds.split(",")
  if not set(kinds) <= {"subject", "inside"}:
    raise ValueError("finetune.generated_kinds must name subject and/or "
                     f"inside, got {config.finetune.generated_kinds!r}")
  generated = [q for q in generated_questions(
      store, config.finetune.subject_percent) if q["kind"] in kinds]
  want = (len(generated) if fraction == 1 else
          round(len(examples) * fraction / (1 - fraction)))
  order = np.random.default_rng(config.seed).permutation(len(generated))
  chosen = [generated[i] for i in np.sort(order[:want])]
  logging.info("fine-tuning questions: %d of %s + %d generated from the "
               "corpus (%d available); by wh-word:\n%s", len(examples),
               config.finetune.dataset, len(chosen), len(generated),
               wh_table(examples + chosen))
  return examples + chosen


_WH_WORDS = ("how", "what", "which", "who", "whom", "whose", "when", "where",
             "why")


def wh_word(question: str) -> str:
  """The question's first wh-word ("how many" as one), or "none" (a
  description such as "Capital of Colorado")."""
  words = question.lower().replace("?", " ").split()
  for i, word in enumerate(words):
    if word in _WH_WORDS:
      return "how many" if words[i:i + 2] == ["how", "many"] else word
  return "none"


def wh_table(examples) -> str:
  """Markdown: per wh-word, the questions and the share whose answer is the
  subject of their passage ("kind": subject; a question without a kind
  counts as not), so that no question form tells the answer's place."""
  counts = {}
  for ex in examples:
    row = counts.setdefault(wh_word(ex["question"]), [0, 0])
    row[0] += 1
    row[1] += ex.get("kind") == "subject"
  lines = ["| wh-word | questions | subject answers |", "|---|---|---|"]
  for wh, (n, subject) in sorted(counts.items(), key=lambda kv: -kv[1][0]):
    lines.append(f"| {wh} | {n} | {100 * subject / n:.0f}% |")
  return "\n".join(lines)


def generated_questions(store, subject_percent: int = 0) -> list[dict]:
  """Reading questions generated from the block store's own sentences, the
  train split of question_gen (held-out documents never give one)."""
  return question_gen.from_store(store, ner.QueryRecords(store), "train",
                                 subject_percent)


def qa_examples(config, split: str):
  """[{"question", "answer": [...]}] for finetune/eval."""
  name = config.finetune.dataset
  if name == "demo":
    return demo_corpus.demo_qa(split, limit=config.data.corpus_limit or None)
  if name.startswith("jsonl:"):
    # "{split}" in the path picks the split's file, e.g. the resplit files
    # CuratedTrec.resplit.{split}.jsonl; a path without it is every split.
    return qa_data.read_qa_jsonl(name.split(":", 1)[1].replace("{split}", split))
  if name in ("natural_questions_open", "web_questions"):
    tfds_split = {"dev": "validation"}.get(split, split)
    return sources.qa_examples(name, tfds_split,
                               data_dir=config.data.tfds_data_dir or None)
  raise ValueError(f"finetune.dataset={name!r}: expected demo, "
                   "natural_questions_open, web_questions or jsonl:<path>")
