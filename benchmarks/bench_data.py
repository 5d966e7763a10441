"""Data pipeline throughput on the embedded demo corpus, one CPU thread.

  python benchmarks/bench_data.py [--ner_docs 300] [--mask_examples 20000]

Measures: building the block store for the whole demo corpus (10,033
Wikipedia summaries, block_len 288, MiniLM uncased WordPiece); spaCy NER
(en_core_web_sm, NER only, + date regex) over the sentences of the first
`ner_docs` documents; tokenize + salient-span masking of those query records,
one record at a time (as a per-example pipeline would) and batched; and the
size of the block store on disk. Prints a markdown table.
"""
import os

# One thread everywhere, so numbers are per core and comparable across hosts.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import shutil
import sys
import tempfile
import time

# Runs from a checkout without `pip install -e .` too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from realm_jax.data import block_builder, demo_corpus, masking, ner
from realm_jax.data import tokenizer as tk


def _dir_size(path):
  sizes = {}
  for name in os.listdir(path):
    kind = name.split("-")[0] if name.startswith("tokens-") else name
    sizes[kind] = sizes.get(kind, 0) + os.path.getsize(os.path.join(path, name))
  return sizes


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--ner_docs", type=int, default=300)
  parser.add_argument("--mask_examples", type=int, default=20000)
  parser.add_argument("--block_len", type=int, default=288)
  args = parser.parse_args()
  tok = tk.minilm_tokenizer()
  rows = []
  work = tempfile.mkdtemp(prefix="bench_data_")
  try:
    docs = demo_corpus.demo_documents()
    start = time.perf_counter()
    store = block_builder.build_block_store(docs, tok, os.path.join(work, "demo"),
                                     block_len=args.block_len, progress=False)
    secs = time.perf_counter() - start
    rows.append(("block store build (full demo corpus)",
                 f"{store.num_blocks / secs:,.0f} blocks/s",
                 f"{store.num_blocks:,} blocks from {len(docs):,} docs in {secs:.1f} s"))
    sizes = _dir_size(store.path)
    total = sum(sizes.values())
    rows.append(("block store size on disk", f"{total / 2**20:.1f} MiB",
                 f"tokens {sizes['tokens'] / 2**20:.1f} MiB, blocks.jsonl "
                 f"{sizes['blocks.jsonl'] / 2**20:.1f} MiB, other "
                 f"{(total - sizes['tokens'] - sizes['blocks.jsonl']) / 2**10:.0f} KiB"))

    small = block_builder.build_block_store(demo_corpus.demo_documents(args.ner_docs), tok,
                                     os.path.join(work, "small"),
                                     block_len=args.block_len, progress=False)
    start = time.perf_counter()
    tagger = ner.SpacyTagger()
    load_secs = time.perf_counter() - start
    start = time.perf_counter()
    records = ner.QueryRecords(small, tagger=tagger, progress=False)
    secs = time.perf_counter() - start
    rows.append(("NER (spaCy sm, NER only, + dates)",
                 f"{len(records) / secs:,.0f} sentences/s",
                 f"{len(records):,} sentences in {secs:.1f} s (+{load_secs:.1f} s "
                 f"model load); {records.meta['with_spans']:,} with spans"))

    recs = list(records)
    rng = np.random.default_rng(0)
    n = args.mask_examples
    start = time.perf_counter()
    made = sum(masking.mask_record(tok, recs[i % len(recs)], rng) is not None
               for i in range(n))
    secs = time.perf_counter() - start
    rows.append(("salient masking, per record (tokenize + mask)",
                 f"{made / secs:,.0f} examples/s",
                 f"{n:,} records -> {made:,} examples in {secs:.1f} s"))
    start = time.perf_counter()
    made = 0
    for lo in range(0, n, 512):
      batch = [recs[i % len(recs)] for i in range(lo, min(n, lo + 512))]
      made += len(masking.mask_records(tok, batch, rng))
    secs = time.perf_counter() - start
    rows.append(("salient masking, batches of 512",
                 f"{made / secs:,.0f} examples/s",
                 f"{n:,} records -> {made:,} examples in {secs:.1f} s"))
  finally:
    shutil.rmtree(work, ignore_errors=True)

  print(f"\nData pipeline, one CPU thread (block_len {args.block_len}, MiniLM "
        "uncased WordPiece)\n")
  print("| measure | rate | detail |")
  print("|---|---|---|")
  for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
  main()
