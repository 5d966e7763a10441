"""Serving latency and throughput: task=serve with and without dynamic
batching, beside the in-process Answerer and `task=answer` per question.

  python benchmarks/bench_serve.py [--kb workdir/demo_kb]
      [--model workdir/demo/finetune_initial] [--questions 48]

Knowledge base: the demo's fine-tuned model (configs/kb.py's kb.model) over
the full demo corpus, all 10,033 Wikipedia summaries; built with task=index
into --kb first if it holds no version (a few minutes on 2 cores), reused
after. Questions: the hand-written natural questions (data/
demo_natural.jsonl), asked in file order.

Rows, each after a warm-up that compiles every shape it meets:
  - `task=answer` per question: a process per question (start-up, model
    load and compile included), --answer_runs questions;
  - the in-process Answerer, one question at a time;
  - task=serve with dynamic batching (serve.max_batch=16, the default
    max_wait_ms) and without it (max_batch=1), at 1, 4 and 16 concurrent
    clients; each client asks its
    questions one after another over HTTP (httpx), and latency is what the
    client sees.
Prints a markdown table: p50 and p95 latency, questions/s, and throughput
over unbatched serving at the same concurrency.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import concurrent.futures
import json
import signal
import socket
import subprocess
import time

import numpy as np

from realm_jax import config as config_lib
from realm_jax.data import demo_corpus
from realm_jax.kb import update as kb_update
from realm_jax.kb import versions as kb
from realm_jax.qa import Answerer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = (1, 4, 16)


def build_kb(workdir: str, model: str):
  """The full demo corpus as a knowledge base, unless one is there."""
  if kb.is_kb(workdir) and kb.newest_version(workdir) is not None:
    return
  if not os.path.isdir(model):
    # Skipped, not failed: `make bench` runs every benchmark, and this one
    # needs the demo's model.
    print(f"bench_serve skipped: no knowledge base in {workdir} and no model "
          f"{model} to build one (run `make demo` first, or pass --kb / "
          f"--model)", file=sys.stderr)
    raise SystemExit(0)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "demo_corpus.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for i, (title, text) in enumerate(demo_corpus.demo_documents()):
      f.write(json.dumps({"id": str(i), "title": title, "text": text},
                         ensure_ascii=False) + "\n")
  c = config_lib.from_file(os.path.join(ROOT, "configs", "kb.py"))
  c.workdir, c.kb.model, c.data.corpus = workdir, model, f"jsonl:{path}"
  print(f"building {workdir} (task=index, {model})", flush=True)
  kb_update.update(c)


def percentiles(seconds) -> tuple[float, float]:
  return tuple(1e3 * np.percentile(seconds, [50, 95]))


def answer_per_process(workdir: str, questions) -> list[float]:
  out = []
  for q in questions:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "realm_jax.main",
                    "--config=configs/kb.py", f"--config.workdir={workdir}",
                    "--config.task=answer", f"--config.answer.question={q}"],
                   cwd=ROOT, check=True, capture_output=True)
    out.append(time.perf_counter() - start)
  return out


def in_process(workdir: str, questions) -> list[float]:
  with Answerer(workdir, poll_interval=None) as answerer:
    answerer.answer_batch(questions)             # warm-up: compile
    for q in questions:
      answerer.answer(q)
    out = []
    for q in questions:
      start = time.perf_counter()
      answerer.answer(q)
      out.append(time.perf_counter() - start)
  return out


class Server:
  """task=serve on a free local port; stop() sends SIGTERM."""

  def __init__(self, workdir: str, max_batch: int):
    import httpx  # pylint: disable=g-import-not-at-top
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{port}"
    self.client = httpx.Client(timeout=600, limits=httpx.Limits(
        max_connections=64, max_keepalive_connections=64))
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "realm_jax.main", "--config=configs/kb.py",
         f"--config.workdir={workdir}", "--config.task=serve",
         f"--config.serve.port={port}", f"--config.serve.max_batch={max_batch}",
         "--config.serve.max_queue=256"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
      if self.proc.poll() is not None:
        raise RuntimeError(self.proc.communicate()[1][-3000:])
      try:
        if self.client.get(self.url + "/healthz").status_code == 200:
          return
      except httpx.TransportError:
        time.sleep(0.2)

  def ask(self, question: str) -> float:
    start = time.perf_counter()
    r = self.client.post(self.url + "/v1/answer", json={"question": question})
    r.raise_for_status()
    return time.perf_counter() - start

  def load(self, questions, clients: int) -> tuple[list[float], float]:
    """Each of `clients` threads asks its share one after another:
    (latencies, questions per second)."""
    shares = [questions[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
      latencies = sum(pool.map(lambda qs: [self.ask(q) for q in qs], shares),
                      [])
    return latencies, len(questions) / (time.perf_counter() - start)

  def stop(self):
    self.client.close()
    self.proc.send_signal(signal.SIGTERM)
    self.proc.communicate(timeout=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kb", default="workdir/demo_kb")
  parser.add_argument("--model", default="workdir/demo/finetune_initial")
  parser.add_argument("--questions", type=int, default=48,
                      help="questions per client count (16 clients ask 4x)")
  parser.add_argument("--answer_runs", type=int, default=3)
  args = parser.parse_args()
  workdir = os.path.abspath(args.kb)
  build_kb(workdir, os.path.abspath(args.model))
  natural = [r["question"] for r in demo_corpus.natural_qa("all")]
  n = args.questions

  rows = []   # (setting, clients, latencies, qps, batched)
  per_process = answer_per_process(workdir, natural[:args.answer_runs])
  rows.append(("task=answer, a process per question", 1, per_process,
               1 / np.mean(per_process), None))
  inproc = in_process(workdir, natural[:n])
  rows.append(("in-process Answerer", 1, inproc, 1 / np.mean(inproc), None))
  for max_batch in (16, 1):
    server = Server(workdir, max_batch)
    try:
      for clients in CLIENTS:   # warm-up: the batch shapes each load makes
        server.load(natural[-n:], clients)
      for clients in CLIENTS:
        asked = natural[:n * max(1, clients // 4)]
        latencies, qps = server.load(asked, clients)
        rows.append((f"task=serve, max_batch={max_batch}", clients, latencies,
                     qps, max_batch > 1))
    finally:
      server.stop()

  unbatched = {c: qps for _, c, _, qps, batched in rows if batched is False}
  print(f"\n{workdir}: {kb.newest_version(workdir)}, natural questions\n")
  print("| setting | clients | questions | p50 ms | p95 ms | questions/s "
        "| / unbatched |")
  print("|---|---|---|---|---|---|---|")
  for name, clients, latencies, qps, batched in rows:
    p50, p95 = percentiles(latencies)
    ratio = f"{qps / unbatched[clients]:.2f}" if batched is not None else "–"
    print(f"| {name} | {clients} | {len(latencies)} | {p50:.0f} | {p95:.0f} "
          f"| {qps:.2f} | {ratio} |")


if __name__ == "__main__":
  main()
