"""The offline demo end to end, small enough for CI (about 2.5 minutes on 2
cores): `python -m realm_jax.main --config=configs/demo.py` on a 150-summary
subset with 4 pretraining and 4 fine-tuning steps, then the same command again,
which must reuse every trained stage and write the same results.

Every setting that matters for the size of the run is passed explicitly, so
tuning configs/demo.py does not change what this test runs. Two of MiniLM's
layers are kept; with proj_init=identity (proj_size = the hidden size, 384)
the initial retriever is still MiniLM's cosine over those layers.
"""
import collections
import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("bm25s")   # the `baselines` extra: the BM25 system

from realm_jax.data import demo_corpus
from realm_jax.tasks import demo as demo_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_LIMIT = 150     # 247 blocks; the test split then has 11 questions
SYSTEM_KEYS = ["no_retrieval", "bm25", "dense_zero_shot", "realm_zero_shot",
               "no_realm_pretraining", "realm", "hybrid"]
OVERRIDES = [
    f"--config.data.corpus_limit={CORPUS_LIMIT}",
    "--config.data.heldout_fraction=0.25",
    "--config.data.block_len=96",
    "--config.data.query_len=32",
    "--config.data.reader_len=112",
    "--config.model.init=minilm",
    "--config.model.num_layers=2",
    "--config.model.proj_init=identity",
    "--config.model.proj_size=384",
    "--config.train.batch_size=4",
    "--config.train.num_candidates=3",
    "--config.train.num_steps=4",
    "--config.train.warmup_steps=1",
    "--config.train.retriever_frozen_steps=2",
    "--config.pretrain.head_warmup_steps=4",
    "--config.pretrain.head_warmup_eval_every=2",
    "--config.pretrain.head_warmup_min_accuracy=1.0",   # never early
    "--config.pretrain.heldout_queries=16",
    "--config.pretrain.heldout_every=2",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=4",
    "--config.index.refresh_every=2",
    "--config.index.deterministic=True",
    "--config.index.searcher=scann",
    "--config.index.embed_batch_size=64",
    "--config.finetune.num_steps=4",
    "--config.finetune.reading_steps=2",
    "--config.finetune.batch_size=4",
    "--config.finetune.warmup_steps=1",
    "--config.finetune.question_len=24",
    "--config.finetune.reader_len=112",
    "--config.finetune.reader_beam=3",
    "--config.finetune.retriever_beam=100",
    "--config.eval.batch_size=8",
    "--config.eval.recall_k=5",
]


def _demo(workdir) -> tuple[str, dict]:
  """Runs the demo command; returns (stdout, summary.json)."""
  args = [sys.executable, "-m", "realm_jax.main", "--config=configs/demo.py",
          f"--config.workdir={workdir}", *OVERRIDES]
  r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, (
      f"exit code {r.returncode}\nstdout:\n{r.stdout[-3000:]}\n"
      f"stderr:\n{r.stderr[-6000:]}")
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return r.stdout, json.load(f)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("demo") / "w")


@pytest.fixture(scope="module")
def first(workdir):
  return _demo(workdir)


@pytest.fixture(scope="module")
def second(workdir, first):
  return _demo(workdir)


@pytest.fixture(scope="module")
def num_test_questions():
  n = len(demo_corpus.demo_qa("test", limit=CORPUS_LIMIT))
  assert n >= 8
  return n


def _stage_lines(stdout):
  """Start lines of the demo's stages ("==== <name>", not "==== <name>: N s")."""
  return [line for line in stdout.splitlines()
          if line.startswith("==== ") and not re.search(r": \d+ s$", line)]


def test_first_run_runs_every_stage(first):
  stdout, _ = first
  names = _stage_lines(stdout)
  assert any(n.startswith("==== 2-4.") for n in names), names
  assert sum(n.startswith("==== 5.") for n in names) == 2, names
  for prefix in ("==== 1.", "==== 6.", "==== 6b.", "==== 7."):
    assert any(n.startswith(prefix) for n in names), (prefix, names)


def test_stdout_has_the_summary_table(first, num_test_questions):
  stdout, _ = first
  lines = stdout.splitlines()
  assert (f"demo QA test split (description -> title): {num_test_questions} "
          "questions" in stdout)
  natural = demo_corpus.natural_qa("test", CORPUS_LIMIT)
  assert (f"natural questions, test split (the answer is the passage's "
          f"subject, or inside it): {len(natural)} questions" in stdout)
  assert "| system | EM | recall@1 | recall@5 |" in lines
  kinds = collections.Counter(r["kind"] for r in natural)
  assert len(kinds) == 2, kinds   # a column of EM for each kind of answer
  assert (f"| system | EM | " + "".join(
      f"EM {k} ({kinds[k]}) | " for k in sorted(kinds))
      + "recall@1 | recall@5 |") in lines
  ci = r"(\d+\.\d \[\d+\.\d, \d+\.\d\]|–)"
  for key in SYSTEM_KEYS:
    label = demo_run.SYSTEMS[key]
    rows = [l for l in lines if l.startswith(f"| {label} |")]
    assert len(rows) == 2, (label, rows)   # both question sets
    for row, columns in zip(rows, (3, 3 + len(kinds))):
      assert re.fullmatch(rf"\| {re.escape(label)} \|" + rf" {ci} \|" * columns,
                          row), row
  i = lines.index("REALM pretraining minus none, same fine-tuning budget "
                  "(paired bootstrap 95% CI):")
  paired = r"[+-]\d+\.\d points \[[+-]\d+\.\d, [+-]\d+\.\d\]"
  for line, metric in zip(lines[i + 1:i + 4], demo_run.METRICS):
    assert re.fullmatch(rf"  {re.escape(metric)}: {paired}", line), line
  # Held-out masked-sentence recall before and after pretraining.
  assert any(re.fullmatch(r"held-out masked sentences \(\d+\): recall@5 of "
                          r"the masked span", l) for l in lines), stdout
  assert "| retriever | index version | recall |" in lines
  assert any(re.fullmatch(r"\| initial \| 0 \| \d+\.\d \|", l) for l in lines)
  assert any(re.fullmatch(r"\| pretrained \| \d+ \| \d+\.\d \|", l)
             for l in lines)
  assert any(re.fullmatch(rf"  recall@5, pretrained minus initial: {paired}",
                          l) for l in lines), stdout
  # What pretraining learnt: accuracy by third, the warm-up, the curve.
  assert any(re.fullmatch(r"REALM pretraining: training MLM accuracy by third "
                          r"of the steps \d+\.\d / \d+\.\d / \d+\.\d", l)
             for l in lines), stdout
  assert any(l.startswith("MLM head warm-up: 4 steps, held-out accuracy ")
             for l in lines), stdout
  i = lines.index("| step | index version | utility (nats) | MLM accuracy | "
                  "recall@5 |")
  steps = [int(l.split("|")[1]) for l in lines[i + 2:i + 5]]
  assert steps == [0, 2, 4], lines[i:i + 5]
  i = lines.index("The same on the natural questions:")
  for line, metric in zip(lines[i + 1:i + 4], demo_run.METRICS):
    assert re.fullmatch(rf"  {re.escape(metric)}: {paired}", line), line
  answers = [l for l in lines if l.startswith(("RIGHT: ", "WRONG: "))]
  assert len(answers) == 6, answers   # three of each question set
  assert answers[0].endswith("(gold: 'Denver')")   # the first test question


def _read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_summary_json(first, workdir, num_test_questions):
  _, summary = first
  results = summary["results"]
  assert list(results) == SYSTEM_KEYS
  for key, r in results.items():
    for metric in ("exact_match", "recall@1", "recall@5"):
      assert 0.0 <= r[metric] <= 1.0, (key, metric, r[metric])
    assert r["recall@1"] <= r["recall@5"], key
    assert r["num_questions"] == num_test_questions, key
    assert os.path.isdir(r["workdir"]), (key, r["workdir"])
    assert os.path.isfile(r["predictions"]), (key, r["predictions"])
    preds = _read_jsonl(r["predictions"])
    assert len(preds) == num_test_questions, key
    for p in preds:
      assert "answer_rank" in p and "correct" in p, (key, sorted(p))
  assert results["realm"]["workdir"] == os.path.join(workdir, "finetune_realm")
  assert results["no_realm_pretraining"]["workdir"] == os.path.join(
      workdir, "finetune_initial")
  # An extractive reader with no evidence has nothing to extract.
  assert results["no_retrieval"]["exact_match"] == 0.0
  assert set(summary["realm_minus_no_realm"]) == set(demo_run.METRICS)
  natural = summary["natural"]
  assert list(natural) == SYSTEM_KEYS
  n_natural = len(demo_corpus.natural_qa("test", CORPUS_LIMIT))
  assert n_natural >= 5
  kinds = [r["kind"] for r in demo_corpus.natural_qa("test", CORPUS_LIMIT)]
  for key, r in natural.items():
    assert r["num_questions"] == n_natural, key
    preds = _read_jsonl(r["predictions"])
    assert len(preds) == n_natural, key
    # EM by kind of answer (subject / inside), recomputed from predictions.
    assert set(r["by_kind"]) == set(kinds), key
    for kind, k in r["by_kind"].items():
      mine = [bool(p["correct"]) for p, pk in zip(preds, kinds) if pk == kind]
      assert k["num_questions"] == len(mine), (key, kind)
      assert k["exact_match"] == pytest.approx(sum(mine) / len(mine))
  assert natural["no_retrieval"]["exact_match"] == 0.0
  assert set(summary["natural_realm_minus_no_realm"]) == set(demo_run.METRICS)
  assert set(summary["zero_shot_realm_minus_initial"]) == set(demo_run.METRICS)
  pre = summary["pretraining"]
  assert [r["step"] for r in pre["heldout"]] == [0, 2, 4]
  assert [r["step"] for r in pre["head_warmup"]] == [0, 2, 4]
  assert pre["best_heldout_utility"] in pre["heldout"]
  assert len(pre["mlm_accuracy_by_third"]) == 3
  masked = summary["masked_recall"]["pretrained_minus_initial"]
  assert masked["difference"] == pytest.approx(
      summary["masked_recall"]["pretrained"]
      - summary["masked_recall"]["initial"])
  assert os.path.isfile(os.path.join(workdir, "plots", "pretraining.png"))


def test_metrics_recompute_from_predictions(first):
  _, summary = first
  for key in ("realm", "bm25"):
    r = summary["results"][key]
    preds = _read_jsonl(r["predictions"])
    ranks = [p["answer_rank"] for p in preds]
    n = len(preds)
    assert r["recall@1"] == pytest.approx(sum(k == 1 for k in ranks) / n)
    assert r["recall@5"] == pytest.approx(
        sum(k is not None and k <= 5 for k in ranks) / n)
    assert r["exact_match"] == pytest.approx(
        sum(bool(p["correct"]) for p in preds) / n)


def test_zero_shot_dense_retrieval_finds_answers(first):
  # MiniLM's cosine finds answer-bearing blocks for Wikidata descriptions;
  # recall 0 would mean the questions and the index were embedded by
  # different retrievers.
  _, summary = first
  assert summary["results"]["dense_zero_shot"]["recall@5"] > 0.0


def test_second_run_reuses_everything(first, second):
  stdout, summary = second
  names = _stage_lines(stdout)
  assert not any(n.startswith("==== 2-4.") for n in names), names
  assert not any(n.startswith("==== 5.") for n in names), names
  assert any(n.startswith("==== 6.") for n in names), names
  assert summary["results"] == first[1]["results"]
  assert summary["natural"] == first[1]["natural"]
  assert summary["realm_minus_no_realm"] == first[1]["realm_minus_no_realm"]
  assert summary["masked_recall"] == first[1]["masked_recall"]
