"""REALM pretraining step: the jitted train_step fed by real host-side
retrieval through the Prefetcher, and what an index hot swap costs it.

Command:
  python benchmarks/bench_pretrain.py                 # small only, 1.5-2 min
  python benchmarks/bench_pretrain.py --config both   # + BERT-base, 7-15 min
  python benchmarks/bench_pretrain.py --config base --dtype bfloat16 \\
      --base_batch 16 --steps 20                      # on a GPU: MFU too
Hardware: whatever runs it. On this project's shared 2-core CPU (AVX2, no
bf16 units, 24 GB) the default is the small config alone with few steps (12
timed per condition; 1.5-2 minutes, a 30-50 s compile included). BERT-base
is opt-in: at batch 1 its step takes 35 s to 2 minutes there, depending on
the machine's load, its compile 1-2.5 minutes, and it needs ~15 GB (2.6 GB
of params and Adam moments, ~10.6 GB of XLA temporaries, mostly activations
kept for the backward pass). So it defaults to one timed step per condition,
and the run waits (--memory_wait) or skips it when the host lacks the
memory. Wall times on a loaded machine drift by 2x within a minute: read the
CPU-time columns (this process's CPU seconds, all threads) beside them, and
raise --steps for tighter medians.

Everything is the trainer's own code (realm_jax.train.pretrain_step): a block store
built by block_builder.build_block_store from the first --docs demo documents with
the MiniLM WordPiece tokenizer (vocab 30522); query records tagged by the
regex tagger (spaCy would only slow the setup down); pretrain.BatchMaker in a
prefetch.Prefetcher (depth 2) embeds the queries with the exported params of
the index in service, searches it (ScaNN by default, the trainer's default),
puts the null document first and builds the candidate and reader inputs;
loop.jit_step runs pretrain.train_step. The index rows are random Gaussian
vectors (retrieval quality is irrelevant here, its cost is not), committed
with realm_jax.index.store and served by a real refresh.IndexWatcher polling
every 0.5 s, as in pretrain.run. Exports are real (export.write_export of the
current document embedder), so a swap also makes the prefetch thread load the
new export, as in training.

Configs (k = 8 candidates, null included; 10 masks per query):
  small  models.model_config.tiny (2 layers, hidden 32) with vocab 30522;
         query 32 / doc 64 / reader 96 (configs/tiny_cpu.py's lengths).
  base   BERT-base (12 layers, hidden 768); query 96 / doc 288 / reader 384,
         the paper's lengths.
Batch: small 8 / base 1 on CPU, 128 / 16 on a GPU (--small_batch,
--base_batch).

Per config: one compile (ahead of time, so every step runs one executable),
one untimed step (and, for small, one untimed fed step), then --rounds
rounds of
  fed:   --steps/--rounds steps, each timed from Prefetcher.get() to the new
         state being ready (the real loop syncs only every log_every steps;
         per-step timing needs a sync every step);
  swap:  commit a new index version, then steps until the prefetch thread has
         produced a batch against it (the watcher has verified, memory-mapped
         and built it, and the new export is loaded), at least as many steps
         as a fed window;
  alone: as many steps on one fixed batch, the prefetch thread idle (its
         queue full): the step without retrieval. The next round first runs
         prefetch depth + 1 untimed fed steps, so that its fed steps see the
         queue in steady state, not the batches stocked meanwhile.
Reported: median fed step time, examples/s, the host wait (time spent in
Prefetcher.get) as a fraction of step time, the prefetch thread's time per
batch, the step alone; for swaps, each swap window against the fed window
of its round (wall and CPU ratios, extra ms per swap), the time from commit
to the new index in service, and what an export costs the trainer thread at
every refresh (an on-device copy; exports.BackgroundExporter writes it).

FLOPs per step (model FLOPs = the matmuls the model runs, counted on padded
shapes; backward = 2 x forward, so total = 3 x forward). For an encoder with
L layers, hidden H, FFN width I over n sequences of length S:
  forward = n * L * (2 * S * (4 H^2 + 2 H I) + 4 * S^2 * H) + n * 2 H^2 (pooler)
i.e. 6 * params_matmul * tokens + 12 * L * S^2 * H per sequence over fwd+bwd.
The reader's last layer runs only at [CLS] and the M masked positions, so
there it counts 2 * S * 2 H^2 (keys, values) + (M+1) * (2 * (2 H^2 + 2 H I) +
4 * S * H). Per step: retriever on B queries (S = Lq) and B*k documents
(S = Ld) plus the projection 2 * H * 128 per sequence; reader on B*k
sequences (S = Lr); MLM head 2 * B*k*M * (H^2 + H * V). The query embedding
in the prefetch thread (stale params, forward only) is not counted.
XLA's own count (compiled.cost_analysis(), which adds elementwise work and
the optimizer) is printed beside it as a check: +2% at base, +20% at small,
whose 30522-wide softmax weighs more there. On CPU a peak is meaningless,
so only GFLOP/s is printed; on a GPU, MFU
against the bf16 dense peak (H100/H200 SXM: 989 TFLOP/s; --peak_tflops).
"""
import argparse
import dataclasses
import functools
import gc
import os
import shutil
import sys
import tempfile
import time
import types

import jax
import numpy as np

from realm_jax import config as config_lib
from realm_jax.data import block_builder, corpus, demo_corpus, ner, pipeline
from realm_jax.data import tokenizer as tokenizer_lib
from realm_jax.index import refresh, searchers
from realm_jax.index import store as index_store
from realm_jax.models.retriever import doc_embedder_params
from realm_jax.train import retriever_exports
from realm_jax.train import loop, partition, prefetch, pretrain_step
from realm_jax.train import state as state_lib
from realm_jax.weights import model_init

K, MASKS = 8, 10
# Dense bf16 peak FLOP/s by device_kind substring (SXM parts).
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


@dataclasses.dataclass
class Spec:
  encoder: str
  query_len: int
  block_len: int
  reader_len: int
  cpu_batch: int
  gpu_batch: int
  steps: int       # timed fed steps by default (alone gets as many)
  rounds: int      # fed/swap/alone rounds, one swap each
  warmup: int      # untimed fed steps after the first


SPECS = {
    "small": Spec("tiny", 32, 64, 96, cpu_batch=8, gpu_batch=128, steps=12,
                  rounds=3, warmup=1),
    "base": Spec("bert_base", 96, 288, 384, cpu_batch=1, gpu_batch=16,
                 steps=1, rounds=1, warmup=0),
}


def log(name, message):
  print(f"[{time.strftime('%H:%M:%S')} {name}] {message}", file=sys.stderr,
        flush=True)


def step_memory_gb(compiled) -> tuple[float, float]:
  """(GB the step allocates beyond its arguments, which are resident already:
  XLA's temporaries and non-aliased outputs, plus 1.5 GB for the host side:
  export loads, the query embedder, ScaNN; GB available now)."""
  m = compiled.memory_analysis()
  need = (m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes) / 1e9
  device = jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats()
    return need, (stats["bytes_limit"] - stats["bytes_in_use"]) / 1e9
  with open("/proc/meminfo") as f:
    avail = next(int(line.split()[1]) for line in f
                 if line.startswith("MemAvailable:"))
  return need + 1.5, avail * 1024 / 1e9


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", choices=("small", "base", "both"), default="small",
                 help="default small: base adds 5-13 min and needs ~15 GB "
                      "on 2 CPU cores")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="model.dtype (compute); params stay float32")
  p.add_argument("--steps", type=int, default=None,
                 help="timed fed steps per config (default: small 12, base 1); "
                      "the swap and alone conditions get as many")
  p.add_argument("--rounds", type=int, default=None,
                 help="fed/swap/alone rounds, one swap each (default: small 3, "
                      "base 1)")
  p.add_argument("--memory_wait", type=float, default=120,
                 help="seconds to wait for enough free memory after compiling "
                      "(the machine may be shared) before skipping a config")
  p.add_argument("--force", action="store_true",
                 help="run a config even if its step needs more memory than "
                      "the host has available")
  p.add_argument("--small_batch", type=int, default=None)
  p.add_argument("--base_batch", type=int, default=None)
  p.add_argument("--docs", type=int, default=2000,
                 help="demo documents in the block store")
  p.add_argument("--searcher", choices=("scann", "exact", "device"),
                 default="scann")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="bf16 dense peak for MFU (default: by device kind)")
  p.add_argument("--workdir", default=None,
                 help="default: a temporary directory, removed at the end")
  return p.parse_args()


# ------------------------------------------------------------------- FLOPs

def encoder_forward_flops(bert, n: int, seq: int, out_positions: int = 0) -> int:
  """Forward matmul FLOPs of BertEncoder over n sequences of length seq.

  out_positions > 0: the last layer runs only at [CLS] and that many rows.
  """
  h, i, layers = bert.hidden_size, bert.intermediate_size, bert.num_layers
  per_token = 2 * (4 * h * h + 2 * h * i)
  attention = 4 * seq * seq * h
  full = layers - (1 if out_positions else 0)
  flops = n * full * (seq * per_token + attention)
  if out_positions:
    rows = out_positions + 1
    flops += n * (seq * 2 * 2 * h * h                       # keys, values
                  + rows * 2 * (2 * h * h + 2 * h * i)      # query, output, FFN
                  + 4 * rows * seq * h)                     # scores, context
  return flops + n * 2 * h * h                              # pooler on [CLS]


def step_flops(cfg, batch: int, query_len: int, block_len: int,
               reader_len: int) -> float:
  """Model FLOPs of one train step (forward + backward = 3 x forward)."""
  bert = cfg.bert
  h = bert.hidden_size
  retriever = (encoder_forward_flops(bert, batch, query_len)
               + encoder_forward_flops(bert, batch * K, block_len)
               + 2 * h * cfg.proj_size * batch * (K + 1))
  reader = (encoder_forward_flops(bert, batch * K, reader_len, MASKS)
            + 2 * batch * K * MASKS * (h * h + h * bert.vocab_size))
  return 3.0 * (retriever + reader)


# -------------------------------------------------------------- one config

class IndexVersions:
  """Random [num_blocks, dim] versions, written ahead, committed on demand
  (the embedding job's commit), each with a real export of the embedder."""

  def __init__(self, workdir, blocks, cfg, doc_params, count, seed=0):
    self.index_dir = os.path.join(workdir, "index")
    self.fingerprint = blocks.fingerprint
    self.dim = cfg.proj_size
    self.shards = {}
    self.export_s, self.write_s = [], []
    rng = np.random.default_rng(seed)
    key = "embedder" if cfg.share_embedder else "doc_embedder"
    state = {"params": {"retriever": {key: doc_params}}}
    for v in range(count):
      # What the trainer thread pays at a refresh (BackgroundExporter.submit),
      # and the write the worker thread then does.
      exporter = retriever_exports.BackgroundExporter(
          types.SimpleNamespace(workdir=workdir), cfg)
      start = time.perf_counter()
      exporter.submit(state, v)
      self.export_s.append(time.perf_counter() - start)
      exporter.close()
      self.write_s.append(time.perf_counter() - start)
      tmp = index_store.tmp_path(self.index_dir, v)
      os.makedirs(tmp)
      emb = rng.standard_normal((blocks.num_blocks, self.dim), np.float32)
      self.shards[v] = [index_store.write_shard(tmp, i, emb[lo:lo + 16384])
                        for i, lo in enumerate(range(0, len(emb), 16384))]

  def commit(self, v):
    index_store.commit(self.index_dir, v, dim=self.dim, shards=self.shards[v],
                       corpus_fingerprint=self.fingerprint)


def block_store(tok, workdir, block_len, docs):
  path = os.path.join(workdir, f"blocks-{block_len}")
  if os.path.exists(os.path.join(path, "manifest.json")):
    blocks = corpus.BlockStore(path)
  else:
    blocks = block_builder.build_block_store(docs, tok, path, block_len=block_len,
                                      progress=False)
  tagger = ner.make_tagger("regex", gazetteer=sorted({t for t, _ in docs}))
  return blocks, ner.QueryRecords(blocks, tagger=tagger, progress=False)


def run_config(name, spec, args, tok, docs, workdir, gpu):
  batch = {"small": args.small_batch, "base": args.base_batch}[name] or (
      spec.gpu_batch if gpu else spec.cpu_batch)
  steps = args.steps or spec.steps
  rounds = max(1, min(args.rounds or spec.rounds, steps))
  window = max(1, steps // rounds)
  c = config_lib.default_config()
  c.workdir = os.path.join(workdir, name)
  c.model.encoder = spec.encoder
  c.model.init = "random"
  c.model.dtype = args.dtype
  c.data.query_len, c.data.block_len = spec.query_len, spec.block_len
  c.data.reader_len, c.data.max_masks = spec.reader_len, MASKS
  c.train.batch_size, c.train.num_candidates = batch, K
  c.train.num_steps = 10**9       # BatchMaker stops producing at num_steps
  c.index.searcher = args.searcher

  t0 = time.perf_counter()
  blocks, records = block_store(tok, workdir, spec.block_len, docs)
  setup_data_s = time.perf_counter() - t0
  cfg = model_init.realm_config(c, tok.vocab_size)
  mesh = partition.make_mesh()
  partition.check_batch_size(batch, mesh)
  params = model_init.init_params(c, cfg, jax.random.PRNGKey(0))
  n_params = model_init.param_count(params)
  tx = state_lib.bert_adamw(c.train)
  state = jax.device_put(state_lib.create(params, tx, jax.random.PRNGKey(1)),
                         partition.replicated(mesh))
  del params
  versions = IndexVersions(
      c.workdir, blocks, cfg,
      doc_embedder_params(state["params"]["retriever"], cfg), rounds + 1)
  versions.commit(0)
  watcher = refresh.IndexWatcher(
      versions.index_dir, blocks.fingerprint,
      refresh.searcher_opener(functools.partial(searchers.make_searcher,
                                                kind=args.searcher)),
      poll_interval=0.5)
  watcher.wait_for(0)
  dataset = pipeline.pretraining_dataset(
      records, tok, c.seed, batch, mask_fn=c.data.masking,
      query_len=c.data.query_len, max_masks=c.data.max_masks)
  maker = pretrain_step.BatchMaker(c, cfg, blocks, tok, iter(dataset), watcher, 0)
  produced = []   # (finished at, seconds, index version) per batch

  def produce():
    start = time.perf_counter()
    item = maker()
    end = time.perf_counter()
    produced.append((end, end - start, item["info"]["index_version"]))
    return item

  feeder = prefetch.Prefetcher(produce, depth=c.train.prefetch)
  holder = {"state": state}
  del state

  def run_step(batch_arrays):
    holder["state"], metrics = compiled(holder["state"], batch_arrays)
    jax.block_until_ready((holder["state"], metrics))

  def fed_step():
    """-> (wall seconds, process CPU seconds, host wait seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    item, waited = feeder.get()
    run_step(partition.shard_batch(item["arrays"], mesh))
    return time.perf_counter() - wall, time.process_time() - cpu, waited

  def alone_step():
    wall, cpu = time.perf_counter(), time.process_time()
    run_step(fixed)
    return time.perf_counter() - wall, time.process_time() - cpu

  try:
    log(name, f"{n_params / 1e6:.1f}M params, batch {batch}; compiling")
    start = time.perf_counter()
    item, _ = feeder.get()
    fixed = partition.shard_batch(item["arrays"], mesh)
    # Compiled ahead of time: one executable for every step (no silent
    # recompiles), and its memory analysis says whether the step fits.
    compiled = loop.jit_step(functools.partial(
        pretrain_step.train_step, cfg=cfg, tx=tx), mesh).lower(
        holder["state"], fixed).compile()
    compile_s = time.perf_counter() - start
    need_gb, avail_gb = step_memory_gb(compiled)
    deadline = time.monotonic() + args.memory_wait
    if need_gb > avail_gb and args.memory_wait > 0:
      log(name, f"waiting up to {args.memory_wait:.0f} s for {need_gb:.1f} GB "
          f"of memory ({avail_gb:.1f} GB available)")
    while need_gb > avail_gb and time.monotonic() < deadline:
      time.sleep(5)
      need_gb, avail_gb = step_memory_gb(compiled)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float((cost or {}).get("flops", float("nan")))
    memory = (f"the step needs ~{need_gb:.1f} GB beyond the train state, "
              f"{avail_gb:.1f} GB are available")
    log(name, f"compiled in {compile_s:.0f} s; {memory}")
    if need_gb > avail_gb and not args.force:
      log(name, "SKIPPED: not enough memory (--force runs it anyway)")
      return {"name": name, "skipped": memory, "batch": batch}
    first_s = alone_step()[0]
    log(name, f"first step {first_s:.1f} s")
    for _ in range(spec.warmup):
      fed_step()
    fed, fed_cpu, waits, alone, alone_cpu = [], [], [], [], []
    swap_windows, swap_cpu, swap_latency = [], [], []
    for r in range(rounds):
      if r:   # the alone steps refilled the queue: drain it to steady state
        for _ in range(c.train.prefetch + 1):
          fed_step()
      for _ in range(window):
        t, cpu, w = fed_step()
        fed.append(t)
        fed_cpu.append(cpu)
        waits.append(w)
      v = r + 1
      committed = time.time()
      versions.commit(v)
      times, cpus = [], []
      while True:
        t, cpu, _ = fed_step()
        times.append(t)
        cpus.append(cpu)
        # Done once the prefetch thread has built a batch against v: the
        # watcher's verify/load/build and the export load are behind us.
        if ((len(times) >= window and any(p[2] == v for p in produced))
            or len(times) >= window + 50):
          break
      swap_windows.append(times)
      swap_cpu.append(cpus)
      cur = watcher.current
      swap_latency.append(cur.loaded_at - committed if cur.version == v
                          else float("nan"))
      log(name, f"round {r + 1}/{rounds}: fed "
          f"{', '.join(f'{1e3 * t:,.0f}' for t in fed[-window:])} ms; swap "
          f"{', '.join(f'{1e3 * t:,.0f}' for t in times)} ms")
      for _ in range(window):
        t, cpu = alone_step()
        alone.append(t)
        alone_cpu.append(cpu)
  finally:
    feeder.close()
    watcher.close()
  producer_s = [p[1] for p in produced[2:]]   # past grain's start-up
  fed_ms, alone_ms = 1e3 * np.median(fed), 1e3 * np.median(alone)
  fed_mean = float(np.mean(fed))
  swap_all = [t for w in swap_windows for t in w]
  # Each swap window against the fed window just before it: the machine's
  # load drifts over a run, less so within a round.
  per_round = lambda xs, swaps: [
      np.mean(w) / np.mean(xs[r * window:(r + 1) * window])
      for r, w in enumerate(swaps)]
  extra = lambda xs, swaps: 1e3 * float(np.median([
      sum(w) - len(w) * np.mean(xs[r * window:(r + 1) * window])
      for r, w in enumerate(swaps)]))
  flops = step_flops(cfg, batch, spec.query_len, spec.block_len,
                     spec.reader_len)
  bert = cfg.bert
  return {
      "name": name, "batch": batch, "params": n_params,
      "model": f"{bert.num_layers}L/{bert.hidden_size}H",
      "lengths": f"{spec.query_len}/{spec.block_len}/{spec.reader_len}",
      "blocks": blocks.num_blocks, "setup_data_s": setup_data_s,
      "compile_s": compile_s, "first_s": first_s, "need_gb": need_gb,
      "steps": len(fed), "rounds": rounds,
      "fed_ms": fed_ms, "fed_all_ms": [1e3 * t for t in fed],
      "fed_cpu_s": float(np.median(fed_cpu)),
      "alone_cpu_s": float(np.median(alone_cpu)),
      "alone_ms": alone_ms, "ex_per_s": batch / (fed_ms / 1e3),
      "wait_ms": 1e3 * np.median(waits),
      "wait_frac": float(np.sum(waits) / np.sum(fed)),
      "producer_ms": 1e3 * np.median(producer_s),
      "swap_steps": [len(w) for w in swap_windows],
      "swap_mean_ms": 1e3 * float(np.mean(swap_all)),
      "fed_mean_ms": 1e3 * fed_mean,
      "swap_ratio": float(np.median(per_round(fed, swap_windows))),
      "cpu_ratio": float(np.median(per_round(fed_cpu, swap_cpu))),
      "extra_ms": extra(fed, swap_windows),
      "extra_cpu_ms": extra(fed_cpu, swap_cpu),
      "swap_latency_s": float(np.nanmedian(swap_latency)),
      "export_s": float(np.median(versions.export_s)),
      "export_write_s": float(np.median(versions.write_s)),
      "gflop": flops / 1e9, "xla_gflop": xla_flops / 1e9,
      "gflops": flops / (fed_ms / 1e3) / 1e9,
      "alone_gflops": flops / (alone_ms / 1e3) / 1e9,
  }


# ------------------------------------------------------------------ output

def table(title, header, rows):
  print(f"\n{title}\n")
  print("| " + " | ".join(header) + " |")
  print("|" + "|".join("---" for _ in header) + "|")
  for r in rows:
    print("| " + " | ".join(str(x) for x in r) + " |")


def main():
  args = parse_args()
  device = jax.devices()[0]
  gpu = device.platform == "gpu"
  peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
      (v for k, v in BF16_PEAK.items() if k in device.device_kind), None)
  names = ["small", "base"] if args.config == "both" else [args.config]
  workdir = args.workdir or tempfile.mkdtemp(prefix="bench_pretrain-")
  os.makedirs(workdir, exist_ok=True)
  tok = tokenizer_lib.minilm_tokenizer()
  docs = demo_corpus.demo_documents(args.docs)
  results = []
  try:
    for name in names:
      start = time.perf_counter()
      results.append(run_config(name, SPECS[name], args, tok, docs, workdir,
                                gpu))
      results[-1]["total_s"] = time.perf_counter() - start
      gc.collect()   # free this config's state before the next one
  finally:
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)

  for r in results:
    if "skipped" in r:
      print(f"\n{r['name']} (batch {r['batch']}) skipped: {r['skipped']}")
  results = [r for r in results if "skipped" not in r]
  if not results:
    return
  where = (f"{device.device_kind} ({jax.device_count()} device(s), "
           f"{os.cpu_count()} host cores)")
  rows = []
  for r in results:
    row = [r["name"], r["model"], f"{r['params'] / 1e6:.1f}M",
           f"{r['batch']} x {K}", r["lengths"], f"{r['fed_ms']:,.0f}",
           f"{r['ex_per_s']:.3g}", f"{r['alone_ms']:,.0f}",
           f"{r['fed_ms'] / r['alone_ms']:.2f}x", f"{r['wait_ms']:,.1f}",
           f"{100 * r['wait_frac']:.1f}%", f"{r['producer_ms']:,.0f}",
           f"{r['fed_cpu_s']:.2f} / {r['alone_cpu_s']:.2f}"]
    rows.append(row)
  table(f"REALM pretraining step fed by host retrieval: {where}, "
        f"dtype {args.dtype}, {args.searcher} index, median of the fed steps",
        ["config", "encoder", "params", "batch x k", "q/doc/reader len",
         "step ms", "examples/s", "step alone ms", "fed / alone",
         "host wait ms", "wait / step", "retrieval ms/batch",
         "CPU s/step fed / alone"], rows)

  rows = []
  for r in results:
    mfu = "n/a (CPU)" if not gpu else (
        f"{100 * r['gflops'] * 1e9 / peak:.1f}%" if peak else "n/a (peak?)")
    rows.append([r["name"], f"{r['gflop']:,.1f}", f"{r['xla_gflop']:,.1f}",
                 f"{r['gflops']:,.1f}",
                 f"{r['alone_gflops']:,.1f}", mfu])
  peak_note = (f"; MFU vs bf16 dense peak {peak / 1e12:.0f} TFLOP/s" if gpu and
               peak else "")
  if gpu and args.dtype != "bfloat16":
    peak_note += f" (note: model.dtype is {args.dtype}, not bfloat16)"
  table("Model FLOPs per step (3 x forward matmuls, formula in the docstring)"
        + peak_note,
        ["config", "GFLOP/step", "XLA cost_analysis GFLOP", "GFLOP/s fed",
         "GFLOP/s alone", "MFU"], rows)

  rows = []
  for r in results:
    rows.append([r["name"], f"{r['blocks']:,} x 128", len(r["swap_steps"]),
                 f"{r['swap_latency_s']:.2f}",
                 "/".join(str(n) for n in r["swap_steps"]),
                 f"{r['fed_mean_ms']:,.0f}", f"{r['swap_mean_ms']:,.0f}",
                 f"{r['swap_ratio']:.2f}x", f"{r['cpu_ratio']:.2f}x",
                 f"{r['extra_ms']:+,.0f}", f"{r['extra_cpu_ms']:+,.0f}",
                 f"{1e3 * r['export_s']:,.0f}",
                 f"{1e3 * r['export_write_s']:,.0f}"])
  table("Index hot swap while training: steps from a commit until the "
        "prefetch thread has built a batch against the new index, vs the fed "
        "steps just before (ratios and extras: median over swaps of "
        "per-round values; CPU = this process's CPU time, all threads)",
        ["config", "index", "swaps", "commit -> in service s",
         "steps per swap window", "step ms no swap (mean)",
         "step ms with swap (mean)", "wall ratio", "CPU ratio",
         "extra wall ms / swap", "extra CPU ms / swap",
         "export ms on the trainer thread",
         "export write ms (background)"], rows)

  for r in results:
    print(f"\n{r['name']}: {r['steps']} fed steps in {r['rounds']} round(s); "
          f"compile {r['compile_s']:.0f} s (incl. the first batch's "
          f"retrieval), first step {r['first_s']:.1f} s, ~{r['need_gb']:.1f} GB"
          f" beyond the state for the step; block store + query "
          f"records {r['setup_data_s']:.1f} s; whole config {r['total_s']:.0f} s;"
          f" fed step times (ms) {', '.join(f'{t:,.0f}' for t in r['fed_all_ms'])}")


if __name__ == "__main__":
  main()
