"""REALM end to end, small enough for CI: ICT warm start, the first index,
then pretraining with hot swaps by a real embedding subprocess, in which the
loss falls and retrieval utility rises.

Why this setup:
  * The reader must already be able to read for retrieval to pay off (REALM's
    is BERT). A randomly initialised tiny reader learns a unigram prior and
    ignores its evidence for hundreds of steps, so both retriever and reader
    start from the real all-MiniLM-L6-v2 weights (2 of its 6 layers).
  * MiniLM has no MLM head, so the retriever is held fixed for the first
    half (train.retriever_frozen_steps) while the reader learns one.
  * The corpus states every fact twice: each of 150 demo summaries appears
    under its title and under "<title> (mirror)", as Wikipedia repeats facts
    across pages. The query's own block is never retrieved, so the evidence
    that fills the blank has to come from the other page.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from realm_jax.data import demo_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60


@pytest.fixture(scope="module")
def mirrored_corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "mirrored.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for title, text in demo_corpus.demo_documents(150):
      for t in (title, f"{title} (mirror)"):
        f.write(json.dumps({"title": t, "text": text}) + "\n")
  return str(path)


def _run(corpus, workdir, *overrides):
  args = [sys.executable, "-m", "realm_jax.main", "--config=configs/demo.py",
          f"--config.workdir={workdir}", f"--config.data.corpus=jsonl:{corpus}",
          "--config.data.corpus_limit=0", "--config.data.heldout_fraction=0.0",
          f"--config.data.block_store={os.path.dirname(corpus)}/blocks",
          "--config.data.block_len=40", "--config.data.query_len=24",
          "--config.data.reader_len=64", "--config.data.max_masks=4",
          "--config.model.num_layers=2", "--config.model.dropout_rate=0.0",
          # The settings this test was calibrated with, whatever the demo
          # config says: REALM's random projection, one learning rate, no
          # MLM head warm-up and no held-out measures.
          "--config.model.proj_init=random", "--config.model.proj_size=128",
          "--config.train.retriever_lr_scale=1.0",
          "--config.pretrain.head_warmup_steps=0",
          "--config.pretrain.heldout_queries=0",
          "--config.index.searcher=exact", *overrides]
  r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  with open(os.path.join(workdir, f"{overrides[0].split('=')[1]}_metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_ict_then_pretraining_with_hot_swaps_loss_falls_utility_rises(
    mirrored_corpus, tmp_path):
  ict = _run(mirrored_corpus, tmp_path / "ict", "--config.task=ict",
             "--config.train.num_steps=5", "--config.train.batch_size=16",
             "--config.train.learning_rate=1e-4", "--config.train.log_every=1")
  assert ict[-1]["loss"] < ict[0]["loss"]
  rows = _run(mirrored_corpus, tmp_path / "pretrain", "--config.task=pretrain",
              f"--config.model.retriever_init={tmp_path / 'ict'}",
              f"--config.train.num_steps={STEPS}", "--config.train.batch_size=24",
              "--config.train.num_candidates=2",   # null + 1 retrieved
              "--config.train.learning_rate=3e-4", "--config.train.warmup_steps=6",
              "--config.train.retriever_frozen_steps=30",
              "--config.train.log_every=5", "--config.train.checkpoint_every=30",
              "--config.index.refresh_every=20",
              # The index versions each step uses, and so the whole run,
              # follow from the step alone, not from the two processes'
              # speeds (the asynchronous swap has tests of its own).
              "--config.index.deterministic=true")
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  versions = sorted({r["index_version"] for r in rows})
  assert versions == [0, 20, 40], f"not two hot swaps: versions {versions}"
  assert all(r["index_staleness"] >= 0 for r in rows)
  # The retriever did not move while frozen, then did.
  assert all(r["retriever_grad_norm"] == 0 for r in rows[:30])
  assert all(r["retriever_grad_norm"] > 0 for r in rows[30:])
  mean = lambda key, part: float(np.mean([r[key] for r in part]))
  quarter = STEPS // 4
  assert mean("loss", rows[-quarter:]) < mean("loss", rows[:quarter]) - 2.0
  first, last = (mean("retrieval_utility", rows[:quarter]),
                 mean("retrieval_utility", rows[-quarter:]))
  assert last > first + 0.08, (first, last)
