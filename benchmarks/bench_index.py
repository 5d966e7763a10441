"""Index benchmark: ScaNN vs exact search vs faiss-cpu, hot-swap cost, embedding
throughput, all in one process and printed as tables.

Command:
  python benchmarks/bench_index.py                 # 1M x 128, everything
  python benchmarks/bench_index.py --n 100000 --demo_docs 200   # quick
Hardware: whatever runs it; searches use --threads threads each (default 1,
so that every method gets the same CPU), builds use --build_threads.
Runtime: about 25 minutes at 1M on 2 busy shared cores (faiss HNSW's build,
ScaNN's tree training, the exact ground truth and BERT-base embedding
dominate).

Sections:
  1. Clustered synthetic vectors (--n x --dim Gaussian clusters; one set per
     --clusters count): recall@k against exact search and queries/s for
     every setting swept; build time and RSS growth per index.
  2. Hot swap: queries/s of a searching thread alone, while references to
     prebuilt searchers are swapped every 10 ms, and while an IndexWatcher
     refreshes to a new version in the background, building its ScaNN
     searcher or loading the one the embedding job saved into the version.
  3. Real embeddings: the demo corpus (Wikipedia summaries) embedded by the
     real job with MiniLM weights (random projection head), queried with the
     demo QA questions; embedding throughput of MiniLM and BERT-base configs.
Goals it reports against: ScaNN at recall@8 >= 0.95 is >= 10x faster than
exact at 1M and at least as fast as faiss at equal recall; a hot swap costs
the searching thread < 1% of its queries/s.
"""
import argparse
import os
import sys


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=1_000_000)
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--sigma", type=float, default=1.0,
                 help="cluster spread (centres are N(0, 1) per dimension)")
  p.add_argument("--clusters", default="1000,10000",
                 help="one synthetic data set per count: 1000 (as many clusters "
                      "as partitions at 1M: neighbours share a partition) and "
                      "10000 (neighbours spread over partitions)")
  p.add_argument("--queries", type=int, default=1000)
  p.add_argument("--k", type=int, default=8)
  p.add_argument("--threads", type=int, default=1)
  p.add_argument("--build_threads", type=int, default=os.cpu_count() or 1)
  p.add_argument("--no_faiss", action="store_true")
  p.add_argument("--hnsw_datasets", type=int, default=1,
                 help="build faiss HNSW (slow: ~5 min at 1M) on the first N sets")
  p.add_argument("--swap_n", type=int, default=200_000)
  p.add_argument("--swap_seconds", type=float, default=1.0,
                 help="length of one measured block")
  p.add_argument("--swap_pairs", type=int, default=15)
  p.add_argument("--refreshes", type=int, default=3)
  p.add_argument("--demo_docs", type=int, default=400,
                 help="demo documents to embed for section 3 (0: skip)")
  p.add_argument("--bert_base_blocks", type=int, default=32)
  p.add_argument("--demo_index", default="",
                 help="a committed index of the demo corpus (e.g. the full "
                      "demo's workdir/demo/pretrain/index/0) to search in section "
                      "3 instead of the --demo_docs blocks embedded here")
  p.add_argument("--sections", default="1,2,3")
  return p.parse_args()


ARGS = parse_args()
# BLAS reads these at import: set before numpy comes in.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ[var] = str(ARGS.threads)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import functools  # noqa: E402
import gc  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from realm_jax.index import refresh, scann_searcher, search, searchers, store  # noqa: E402


def rss_mb():
  gc.collect()
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def clustered(n, dim, num_clusters=1000, sigma=1.0, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_clusters, dim)).astype(np.float32)
  out = np.empty((n, dim), np.float32)
  for a in range(0, n, 100_000):
    m = min(n - a, 100_000)
    out[a:a + m] = centers[rng.integers(0, num_clusters, m)] + sigma * rng.normal(
        size=(m, dim)).astype(np.float32)
  return out


def recall(found, truth):
  k = truth.shape[1]
  return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def timed_qps(fn, queries, repeats=2):
  """Best of `repeats` runs of fn(queries) -> (result, queries/s)."""
  best, out = float("inf"), None
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn(queries)
    best = min(best, time.perf_counter() - t)
  return out, len(queries) / best


def table(title, header, rows):
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))
  print(f"\n{title}\n{line(header)}\n{'  '.join('-' * w for w in widths)}")
  for r in rows:
    print(line(r))
  sys.stdout.flush()


def compare(emb, queries, k, label, scann_modes=(None,), hnsw=True):
  """Rows (method, setting, build s, +RSS MB, recall@k, q/s, x exact)."""
  rows = []
  rss = rss_mb()
  exact = search.ExactSearcher(emb)
  (truth, _), exact_qps = timed_qps(lambda q: exact.search(q, k), queries, 1)
  rows.append(["exact", "chunked matmul", 0.0, 0, 1.0, exact_qps])
  for mode in scann_modes:
    rss, t = rss_mb(), time.perf_counter()
    overrides = {} if mode is None else {"mode": mode}
    s = scann_searcher.ScannSearcher(emb, num_threads=ARGS.threads,
                             training_threads=ARGS.build_threads, **overrides)
    build, mem = time.perf_counter() - t, rss_mb() - rss
    name = f"scann {s.settings['mode']}" + (" (rules of thumb)" if mode is None else "")
    if s.settings["mode"] == "tree":
      leaves = sorted({1, 2, 4, 8, 16, 32, s.leaves_to_search, 64, 128, 256})
      grid = [(lv, r) for lv in leaves for r in (32, 64, 250)
              if lv <= s.settings["num_leaves"]]
    elif s.settings["mode"] == "ah":
      grid = [(None, r) for r in (64, 128, 250, 500)]
    else:
      grid = [(None, None)]
    default = (s.leaves_to_search, s.reorder_num_neighbors)
    for leaves, reorder in grid:
      s.leaves_to_search = default[0] if leaves is None else leaves
      s.reorder_num_neighbors = default[1] if reorder is None else reorder
      (ids, _), qps = timed_qps(lambda q: s.search(q, k), queries)
      setting = ", ".join(x for x in (f"leaves={leaves}" if leaves else "",
                                      f"reorder={reorder}" if reorder else "") if x)
      if (leaves, reorder) == (default[0], default[1]) or (leaves, reorder) == (None, None):
        setting += " *"
      rows.append([name, setting or "-", build, mem, recall(ids, truth), qps])
      build, mem = "", ""
    del s
  if not ARGS.no_faiss:
    rows += faiss_rows(emb, queries, truth, k, hnsw)
  out = []
  for r in rows:
    b = r[2] if isinstance(r[2], str) else f"{r[2]:.1f}"
    m = r[3] if isinstance(r[3], str) else f"{r[3]:.0f}"
    out.append([r[0], r[1], b, m, f"{r[4]:.3f}", f"{r[5]:,.0f}", f"{r[5] / exact_qps:.1f}"])
  table(f"{label}: recall@{k} vs exact, {len(queries)} queries, {ARGS.threads} "
        "search thread(s); * = default setting",
        ["method", "setting", "build s", "+RSS MB", f"recall@{k}", "q/s", "x exact"], out)
  return rows


def faiss_rows(emb, queries, truth, k, hnsw_too=True):
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("faiss not installed: skipping faiss rows (pip install faiss-cpu)")
    return []
  rows, n, d = [], emb.shape[0], emb.shape[1]
  data = np.ascontiguousarray(emb, dtype=np.float32)
  if hnsw_too:
    faiss.omp_set_num_threads(ARGS.build_threads)
    rss, t = rss_mb(), time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    hnsw.add(data)
    build, mem = time.perf_counter() - t, rss_mb() - rss
    faiss.omp_set_num_threads(ARGS.threads)
    for ef in (16, 32, 64, 128, 256, 512):
      hnsw.hnsw.efSearch = ef
      (_, ids), qps = timed_qps(lambda q: hnsw.search(q, k), queries)
      rows.append(["faiss HNSW32", f"efSearch={ef}", build, mem, recall(ids, truth), qps])
      build, mem = "", ""
    del hnsw
  nlist = max(1, int(round(np.sqrt(n))))
  faiss.omp_set_num_threads(ARGS.build_threads)
  rss, t = rss_mb(), time.perf_counter()
  ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
  sample = data[np.random.default_rng(0).permutation(n)[:min(n, 64 * nlist)]]
  ivf.train(sample)
  ivf.add(data)
  build, mem = time.perf_counter() - t, rss_mb() - rss
  faiss.omp_set_num_threads(ARGS.threads)
  for nprobe in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
    ivf.nprobe = nprobe
    (_, ids), qps = timed_qps(lambda q: ivf.search(q, k), queries)
    rows.append([f"faiss IVF{nlist},Flat", f"nprobe={nprobe}", build, mem,
                 recall(ids, truth), qps])
    build, mem = "", ""
  return rows


def summarize(rows, label, goal_recall=0.95):
  exact_qps = rows[0][5]
  best = {}
  for r in rows[1:]:
    family = r[0].split(" (")[0].split(" ")[0] if r[0].startswith("scann") else r[0]
    if r[4] >= goal_recall and r[5] > best.get(family, (0,))[0]:
      best[family] = (r[5], r[1], r[4])
  out = [[f, s, f"{rec:.3f}", f"{q:,.0f}", f"{q / exact_qps:.1f}"]
         for f, (q, s, rec) in sorted(best.items(), key=lambda x: -x[1][0])]
  table(f"{label}: fastest setting per method at recall@{ARGS.k} >= {goal_recall}",
        ["method", "setting", f"recall@{ARGS.k}", "q/s", "x exact"], out)


def bench_swap(workdir):
  """Searching-thread queries/s: alone vs with reference swaps, and vs during
  a full background refresh."""
  import json  # pylint: disable=g-import-not-at-top
  n, d, rounds = min(ARGS.swap_n, ARGS.n), ARGS.dim, ARGS.refreshes
  index_dir = os.path.join(workdir, "swap_index")
  # Version 1, then `rounds` versions whose searcher the watcher must build,
  # then `rounds` whose searcher the embedding job already built and saved
  # into the version (embed --searcher scann): the watcher only loads it.
  built_by_watcher = list(range(2, rounds + 2))
  prebuilt_by_job = list(range(rounds + 2, 2 * rounds + 2))
  make = functools.partial(searchers.make_searcher, kind="scann",
                           num_threads=ARGS.threads, training_threads=1)
  for v in [1] + built_by_watcher + prebuilt_by_job:
    # Written ahead; committed one per round during the run.
    emb = clustered(n, d, sigma=ARGS.sigma, seed=v)
    tmp = store.tmp_path(index_dir, v)
    os.makedirs(tmp)
    shards = [store.write_shard(tmp, i, emb[a:a + 65536])
              for i, a in enumerate(range(0, n, 65536))]
    if v in prebuilt_by_job:
      make(emb, cache_dir=tmp)
    with open(os.path.join(workdir, f"shards-{v}.json"), "w") as f:
      json.dump(shards, f)

  def commit(v):
    with open(os.path.join(workdir, f"shards-{v}.json")) as f:
      store.commit(index_dir, v, dim=d, shards=json.load(f),
                   corpus_fingerprint="bench")

  commit(1)
  watcher = refresh.IndexWatcher(index_dir, "bench",
                                 refresh.searcher_opener(make), poll_interval=None)
  watcher.wait_for(1)
  prebuilt = [watcher.current, refresh.Current(
      1, make(store.load(store.version_path(index_dir, 1)),
              cache_dir=store.version_path(index_dir, 1)), time.time())]
  queries = clustered(64, d, sigma=ARGS.sigma, seed=99)

  def searching(until):
    """Searches until until() is true; -> queries/s."""
    count, t0 = 0, time.perf_counter()
    while not until():
      watcher.current.served.search(queries, ARGS.k)
      count += len(queries)
    return count / (time.perf_counter() - t0)

  def for_seconds(seconds):
    end = time.perf_counter() + seconds
    return lambda: time.perf_counter() >= end

  def with_background(work, until):
    t = threading.Thread(target=work)
    t.start()
    qps = searching(until)
    t.join()
    return qps

  # Paired measurements: every condition is compared with "alone" blocks run
  # right next to it, so slow drifts of a shared machine's load cancel out.
  def paired(swap):
    """(alone, with) q/s pairs with a thread waking every 10 ms that swaps the
    reference (swap=True) or does nothing (the cost of a waking thread)."""
    pairs, count = [], [0]
    for _ in range(ARGS.swap_pairs):
      alone = searching(for_seconds(ARGS.swap_seconds))
      stop = threading.Event()

      def background():
        while not stop.wait(0.01):
          if swap:
            watcher.current = prebuilt[count[0] % 2]   # what IndexWatcher does
          count[0] += 1
      end = for_seconds(ARGS.swap_seconds)
      pairs.append((alone, with_background(
          background, lambda: end() and (stop.set() or True))))
    watcher.current = prebuilt[0]
    return pairs, count[0]
  wake_pairs, wakes = paired(swap=False)
  swap_pairs, swaps = paired(swap=True)
  # Refreshes by the watcher's own background thread (lower priority).
  background = refresh.IndexWatcher(index_dir, "bench",
                                    refresh.searcher_opener(make),
                                    poll_interval=0.05)
  background.wait_for(1)       # loads version 1 from its ScaNN cache
  watcher = background

  def refreshes(versions):
    """(seconds per refresh, (alone, during) q/s pairs)."""
    seconds, pairs = [], []
    for v in versions:
      before = searching(for_seconds(ARGS.swap_seconds))
      t = time.perf_counter()
      commit(v)
      during = searching(lambda v=v: watcher.version == v)
      seconds.append(time.perf_counter() - t)
      after = searching(for_seconds(ARGS.swap_seconds))
      pairs.append(((before + after) / 2, during))
    return seconds, pairs
  build_s, build_pairs = refreshes(built_by_watcher)
  load_s, load_pairs = refreshes(prebuilt_by_job)
  change = lambda pairs: float(np.median([b / a for a, b in pairs])) - 1
  med = lambda pairs, i: f"{float(np.median([p[i] for p in pairs])):,.0f}"
  per_swap_ms = 1e3 * ARGS.swap_pairs * ARGS.swap_seconds * max(
      0.0, change(wake_pairs) - change(swap_pairs)) / max(swaps, 1)
  table(f"Hot swap: {n:,} x {d} ScaNN ({watcher.served.settings['mode']}) index; "
        f"a thread searching {len(queries)}-query batches; medians of paired "
        f"{ARGS.swap_seconds:g} s blocks",
        ["condition", "pairs", "q/s alone", "q/s with", "median change"],
        [[f"another thread waking every 10 ms, no swap ({wakes} wakes)",
          len(wake_pairs), med(wake_pairs, 0), med(wake_pairs, 1),
          f"{100 * change(wake_pairs):+.1f}%"],
         [f"that thread swapping the searcher every 10 ms ({swaps} swaps)",
          len(swap_pairs), med(swap_pairs, 0), med(swap_pairs, 1),
          f"{100 * change(swap_pairs):+.1f}%"],
         [f"refresh by the IndexWatcher thread, building the searcher "
          f"(verify+memmap+build+swap, median {np.median(build_s):.1f} s, "
          f"1 build thread, nice {watcher.nice})",
          len(build_pairs), med(build_pairs, 0), med(build_pairs, 1),
          f"{100 * change(build_pairs):+.1f}%"],
         [f"refresh by the IndexWatcher thread, searcher saved by the "
          f"embedding job (verify+memmap+load+swap, median "
          f"{np.median(load_s):.1f} s)",
          len(load_pairs), med(load_pairs, 0), med(load_pairs, 1),
          f"{100 * change(load_pairs):+.1f}%"]])
  # Search time lost to one refresh, as a share of the time between two
  # refreshes (REALM refreshes every ~500 steps: minutes apart).
  for name, secs, pairs in (("building", build_s, build_pairs),
                            ("loading", load_s, load_pairs)):
    lost = float(np.median(secs)) * max(0.0, -change(pairs))
    print(f"refresh {name} the searcher: {lost:.2f} s of search time lost per "
          f"refresh = {100 * lost / 60:.2f}% of the searching thread's time at "
          "one refresh a minute")
  print(f"cost attributable to swapping itself: {per_swap_ms:.2f} ms of search "
        "time per swap; at one swap a minute (refreshes are minutes apart) that "
        f"is {100 * per_swap_ms / 1e3 / 60:.4f}% of the searching thread's time")
  watcher.close()


def bench_demo(workdir):
  """Real embeddings: demo corpus with MiniLM weights; embedding throughput."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from realm_jax.data import block_builder, demo_corpus  # pylint: disable=g-import-not-at-top
  from realm_jax.data import tokenizer as tk  # pylint: disable=g-import-not-at-top
  from realm_jax.index import build as index_build  # pylint: disable=g-import-not-at-top
  from realm_jax.models import model_config as config_lib, convert  # pylint: disable=g-import-not-at-top
  from realm_jax.models.retriever import RetrieverEmbedder  # pylint: disable=g-import-not-at-top
  tok = tk.minilm_tokenizer()
  blocks = block_builder.build_block_store(demo_corpus.demo_documents(limit=ARGS.demo_docs), tok,
                                    os.path.join(workdir, "blocks"), block_len=288,
                                    progress=False)
  bert_cfg, bert_params = convert.load_minilm()
  cfg = config_lib.RealmConfig(bert=bert_cfg, proj_size=128)
  module = RetrieverEmbedder(cfg)
  params = convert.init_from_bert(module, bert_params, jax.random.PRNGKey(0))
  fn = index_build.make_embed_fn(cfg)
  index_build.build_index(fn, params, blocks, os.path.join(workdir, "demo_index"), 0,
                          batch_size=32, progress=False)    # compiles; timed below
  throughput = []
  for name, bcfg, p in (("MiniLM-L6 (real weights)", bert_cfg, params),
                        ("BERT-base (random init)", config_lib.bert_base(), None)):
    c = config_lib.RealmConfig(bert=bcfg, proj_size=128)
    if p is None:
      ids = jnp.zeros((1, 288), jnp.int32)
      p = jax.jit(RetrieverEmbedder(c).init)(jax.random.PRNGKey(0), ids, ids, ids)["params"]
    job = index_build.Embedder(index_build.make_embed_fn(c), p, 32, "float32")
    rows = min(blocks.num_blocks, ARGS.bert_base_blocks if p is not params else 256)
    job(blocks, 0, min(job.batch_size, blocks.num_blocks), lambda _: None)  # compile
    t = time.perf_counter()
    job(blocks, 0, rows, lambda _: None)
    throughput.append([name, "288", str(rows), f"{rows / (time.perf_counter() - t):.1f}"])
  table(f"Embedding throughput on this CPU ({os.cpu_count()} cores, float32, batch 32)",
        ["encoder", "block_len", "blocks", "blocks/s"], throughput)
  if not ARGS.demo_index:
    compare_real(os.path.join(workdir, "demo_index", "0"), fn, params, tok)


def compare_real(index_path, fn=None, params=None, tok=None):
  """ScaNN vs exact vs faiss on a committed index of real embeddings, queried
  with the demo QA test questions embedded by the index's own export (or by
  fn/params when given)."""
  import jax  # pylint: disable=g-import-not-at-top
  from realm_jax.data import demo_corpus, pipeline  # pylint: disable=g-import-not-at-top
  from realm_jax.data import tokenizer as tk  # pylint: disable=g-import-not-at-top
  from realm_jax.index import build as index_build, export  # pylint: disable=g-import-not-at-top
  tok = tok or tk.minilm_tokenizer()
  if fn is None:
    _, params, cfg = export.load_export(
        store.read_manifest(index_path)["export"]["path"])
    fn = index_build.make_embed_fn(cfg)
  emb = np.asarray(store.load(index_path))
  questions = [qa["question"] for qa in demo_corpus.demo_qa("test")][:ARGS.queries]
  q_ids, q_mask = map(np.stack, zip(*[pipeline.pad_or_truncate(
      e.ids, 32, tok.cls_id, tok.sep_id, tok.pad_id)
      for e in tok.encode_batch(questions)]))
  queries = np.asarray(jax.jit(fn)(params, q_ids, np.zeros_like(q_ids), q_mask))
  print(f"\nreal embeddings: {index_path} {emb.shape}; {len(questions)} demo "
        "test questions as queries")
  rows = compare(emb, queries, ARGS.k, f"Demo corpus, MiniLM embeddings {emb.shape}",
                 scann_modes=(None, "ah", "tree"))
  summarize(rows, "Demo corpus")


def main():
  sections = set(ARGS.sections.split(","))
  print(f"bench_index: n={ARGS.n:,} dim={ARGS.dim} queries={ARGS.queries} k={ARGS.k} "
        f"search threads={ARGS.threads} build threads={ARGS.build_threads} "
        f"cpus={os.cpu_count()}")
  with tempfile.TemporaryDirectory() as workdir:
    if "1" in sections:
      for i, c in enumerate(int(c) for c in ARGS.clusters.split(",")):
        data = clustered(ARGS.n + ARGS.queries, ARGS.dim, num_clusters=c,
                         sigma=ARGS.sigma)
        emb, queries = data[:ARGS.n], data[ARGS.n:]
        label = f"Clustered {ARGS.n:,} x {ARGS.dim}, {c:,} clusters"
        rows = compare(emb, queries, ARGS.k, label, hnsw=i < ARGS.hnsw_datasets)
        summarize(rows, label)
        del data, emb
    if "2" in sections:
      bench_swap(workdir)
    if "3" in sections and ARGS.demo_docs:
      bench_demo(workdir)
    if "3" in sections and ARGS.demo_index:
      compare_real(ARGS.demo_index)


if __name__ == "__main__":
  main()
