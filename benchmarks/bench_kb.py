"""Knowledge base update cost: changing 1% of the documents against a build
from scratch, side by side in one process.

  python benchmarks/bench_kb.py [--copies 8] [--block_len 128]
      [--encoder tiny] [--searcher exact] [--change 0.01] [--docs 0]

Corpus: the demo's 10,033 Wikipedia summaries, `copies` times over with
distinct ids (8 copies at block_len 128: 103k blocks). Model:
config.model's initial retriever (`--encoder` preset, random weights: the
cost does not depend on what the weights are), kb.model="". Steps, each
timed around kb_update.update() (process start-up and imports excluded):
  1. full build of the whole corpus (tokenize, pack, embed, assemble,
     commit), the first compile included;
  2. the same corpus again (nothing changed: no new version);
  3. `change` of the documents edited (text shortened by one sentence's
     worth), as many removed and as many added: the update;
  4. a full build of that changed corpus from scratch, for the ratio.
Prints a markdown table; the ratio is update / full build of the same corpus.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import shutil
import tempfile
import time

from absl import logging

from realm_jax import config as config_lib
from realm_jax.data import demo_corpus
from realm_jax.index import store as index_store
from realm_jax.kb import update as kb_update
from realm_jax.kb import versions as kb


def corpus(copies: int, limit: int = 0) -> list[dict]:
  docs = demo_corpus.demo_documents(limit or None)
  return [{"id": f"{k}-{i}", "title": t, "text": x}
          for k in range(copies) for i, (t, x) in enumerate(docs)]


def changed(docs: list[dict], fraction: float) -> list[dict]:
  """`fraction` of the documents edited, as many removed, as many added."""
  n = max(1, int(len(docs) * fraction))
  out = [dict(d) for d in docs]
  for d in out[1::len(out) // n][:n]:
    d["text"] = d["text"][:max(20, len(d["text"]) // 2)] + " (edited)"
  removed = set(d["id"] for d in out[2::len(out) // n][:n])
  out = [d for d in out if d["id"] not in removed]
  out += [{"id": f"new-{j}", "title": d["title"] + " (new)",
           "text": d["text"]} for j, d in enumerate(docs[3::len(docs) // n][:n])]
  return out


def write(path: str, docs: list[dict]):
  with open(path, "w", encoding="utf-8") as f:
    for d in docs:
      f.write(json.dumps(d, ensure_ascii=False) + "\n")


def config(workdir: str, path: str, args):
  c = config_lib.default_config()
  c.task = "index"
  c.workdir = workdir
  c.model.encoder = args.encoder
  c.model.init = "random"
  c.model.dropout_rate = 0.0
  c.data.tokenizer = "minilm"
  c.data.block_len = args.block_len
  c.data.corpus = f"jsonl:{path}"
  c.index.searcher = args.searcher
  c.index.embed_batch_size = 256
  c.index.keep = 2
  return c


def timed(c) -> tuple[float, str]:
  start = time.perf_counter()
  path = kb_update.update(c, progress=False)
  return time.perf_counter() - start, path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--copies", type=int, default=8)
  parser.add_argument("--block_len", type=int, default=128)
  parser.add_argument("--encoder", default="tiny")
  parser.add_argument("--searcher", default="exact")
  parser.add_argument("--change", type=float, default=0.01)
  parser.add_argument("--docs", type=int, default=0,
                      help="demo documents per copy (0: all 10,033)")
  parser.add_argument("--dir", default="")
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  root = args.dir or tempfile.mkdtemp(prefix="bench_kb_")
  v1, v2 = os.path.join(root, "v1.jsonl"), os.path.join(root, "v2.jsonl")
  docs = corpus(args.copies, args.docs)
  write(v1, docs)
  write(v2, changed(docs, args.change))
  live = config(os.path.join(root, "kb"), v1, args)
  full, first = timed(live)
  same, again = timed(live)
  assert again == first
  live.data.corpus = f"jsonl:{v2}"
  update, second = timed(live)
  scratch = config(os.path.join(root, "scratch"), v2, args)
  full2, _ = timed(scratch)
  m1, m2 = index_store.read_manifest(first), index_store.read_manifest(second)
  before = {(d["id"], d["digest"]) for d in kb.read_documents(first)}
  embedded = sum(d["rows"] for d in kb.read_documents(second)
                 if (d["id"], d["digest"]) not in before)
  rows = [
      ("full build", m1["export"]["documents"], m1["num_blocks"], full),
      ("rerun, corpus unchanged", m1["export"]["documents"], 0, same),
      (f"update: {json.dumps(m2['export']['changes'])}",
       m2["export"]["documents"], embedded, update),
      ("full build of the changed corpus", m2["export"]["documents"],
       m2["num_blocks"], full2)]
  print(f"\n{args.copies} x demo corpus, block_len {args.block_len}, encoder "
        f"{args.encoder}, searcher {args.searcher}\n")
  print("| run | documents | blocks embedded | seconds | / full build |")
  print("|---|---|---|---|---|")
  for name, ndocs, blocks, seconds in rows:
    print(f"| {name} | {ndocs:,} | "
          f"{blocks:,} | "
          f"{seconds:.1f} | {seconds / full2:.3f} |")
  if not args.dir:
    shutil.rmtree(root)


if __name__ == "__main__":
  main()
