"""The embedding job: every block in order, resume after a crash, watch mode,
and a REAL job process killed with SIGKILL mid-write."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.index import block_embeddings, build, export, refresh, search, searchers, store
from realm_jax.tasks import embed as embed_task
import stopping_child
import two_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ArraySource:
  """A block source over an in-memory token array (the BlockStore interface)."""

  def __init__(self, tokens, fingerprint="arrays-v1", fail_at=None):
    self.tokens = tokens
    self.num_blocks = len(tokens)
    self.fingerprint = fingerprint
    self.fail_at = fail_at
    self.rows_read = 0

  def doc_inputs(self, rows):
    if self.fail_at is not None and rows.max() >= self.fail_at:
      raise RuntimeError("simulated crash")
    self.rows_read += len(rows)
    ids = self.tokens[rows]
    return ids, np.zeros_like(ids), np.ones_like(ids)


def linear_embed(params, input_ids, segment_ids, input_mask):
  """A deterministic stand-in embedder: [B, L] ids -> [B, 3]."""
  del segment_ids
  x = (input_ids * input_mask).astype(jnp.float32)
  return x[:, :3] * params["scale"] + params["shift"]


PARAMS = {"scale": np.float32(0.5), "shift": np.float32(1.0)}


def expected(tokens):
  return tokens[:, :3].astype(np.float32) * 0.5 + 1.0


@pytest.fixture
def tokens():
  return np.random.default_rng(0).integers(0, 1000, size=(1000, 6)).astype(np.int32)


def test_every_block_is_embedded_in_order(tmp_path, tokens):
  path = build.build_index(linear_embed, PARAMS, ArraySource(tokens), str(tmp_path),
                           step=7, batch_size=64, shard_rows=300, progress=False,
                           export={"step": 7})
  m = store.verify(path, "arrays-v1")
  assert [s["rows"] for s in m["shards"]] == [300, 300, 300, 100]
  assert m["export"] == {"step": 7} and m["dim"] == 3
  np.testing.assert_array_equal(np.asarray(store.load(path)), expected(tokens))
  assert sorted(os.listdir(path)) == ["emb-0000%d.npy" % i for i in range(4)] + [
      "manifest.json"]


def test_restart_keeps_verified_shards_and_redoes_the_rest(tmp_path, tokens):
  index_dir = str(tmp_path)
  kwargs = dict(step=3, batch_size=50, shard_rows=250, progress=False)
  with pytest.raises(RuntimeError, match="simulated crash"):
    build.build_index(linear_embed, PARAMS, ArraySource(tokens, fail_at=600),
                      index_dir, **kwargs)
  tmp = store.tmp_path(index_dir, 3)
  assert store.list_versions(index_dir) == []
  assert {"emb-00000.npy", "emb-00001.npy"} <= set(os.listdir(tmp))
  with open(os.path.join(tmp, "emb-00001.npy"), "r+b") as f:   # damage shard 1
    f.seek(-4, os.SEEK_END)
    f.write(b"\x00\x00\x80\x7f")
  open(os.path.join(tmp, "emb-00002.npy.partial"), "wb").write(b"torn")
  source = ArraySource(tokens)
  path = build.build_index(linear_embed, PARAMS, source, index_dir, **kwargs)
  assert source.rows_read == 750                       # shard 0 was kept
  store.verify(path, "arrays-v1")
  np.testing.assert_array_equal(np.asarray(store.load(path)), expected(tokens))
  assert not os.path.exists(tmp)


def test_leftovers_of_another_job_are_discarded(tmp_path, tokens):
  index_dir = str(tmp_path)
  kwargs = dict(step=3, batch_size=100, shard_rows=500, progress=False)
  with pytest.raises(RuntimeError):
    build.build_index(linear_embed, PARAMS, ArraySource(tokens, "other", 700),
                      index_dir, **kwargs)
  source = ArraySource(tokens)                          # another corpus now
  build.build_index(linear_embed, PARAMS, source, index_dir, **kwargs)
  assert source.rows_read == 1000


def test_a_non_finite_export_is_refused_and_nothing_is_committed(tmp_path,
                                                                  tokens):
  params = dict(PARAMS, scale=np.float32("nan"))
  with pytest.raises(build.NonFiniteEmbeddingError, match="block 0 is not finite"):
    build.build_index(linear_embed, params, ArraySource(tokens), str(tmp_path),
                      step=5, batch_size=64, shard_rows=300, progress=False)
  assert store.list_versions(str(tmp_path)) == []


def test_bfloat16_embeddings_are_close_to_float32(tmp_path, tokens):
  path = build.build_index(linear_embed, PARAMS, ArraySource(tokens[:100] % 64),
                           str(tmp_path), step=1, dtype="bfloat16",
                           progress=False)
  np.testing.assert_allclose(np.asarray(store.load(path)),
                             expected(tokens[:100] % 64), rtol=1e-2)


def test_processes_take_contiguous_shard_ranges():
  ranges = [build.my_shards(10, p, 4) for p in range(4)]
  assert [list(r) for r in ranges] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
  assert build.shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_watch_embeds_only_the_newest_export(tmp_path, tokens, caplog):
  workdir = str(tmp_path)
  from realm_jax.models import model_config as config_lib
  cfg = config_lib.RealmConfig(bert=config_lib.tiny())
  for step, scale in ((100, 1.0), (200, 2.0)):
    export.write_export(workdir, step, {"scale": np.float32(scale),
                                        "shift": np.float32(0)}, cfg)
  kwargs = dict(embed_fn=linear_embed, poll_interval=0.01, progress=False)
  with caplog.at_level("INFO"):
    built = block_embeddings.watch(workdir, ArraySource(tokens), max_versions=1, **kwargs)
  assert built == [store.version_path(os.path.join(workdir, "index"), 200)]
  assert any("skipping stale export(s) [100]" in r.getMessage()
             for r in caplog.records)
  emb = store.load(built[0])
  np.testing.assert_array_equal(emb[:5], tokens[:5, :3] * 2.0)
  # Nothing newer: the watcher idles out without building anything.
  assert block_embeddings.watch(workdir, ArraySource(tokens), idle_timeout=0.05,
                     **kwargs) == []


def test_watch_every_export_builds_each_in_order(tmp_path, tokens):
  """Deterministic refresh mode waits for every version: none is skipped."""
  workdir = str(tmp_path)
  from realm_jax.models import model_config as config_lib
  cfg = config_lib.RealmConfig(bert=config_lib.tiny())
  for step in (300, 100, 200):
    export.write_export(workdir, step, {"scale": np.float32(step),
                                        "shift": np.float32(0)}, cfg)
  built = block_embeddings.watch(workdir, ArraySource(tokens[:50]), every_export=True,
                      idle_timeout=0.05, embed_fn=linear_embed,
                      poll_interval=0.01, progress=False, keep=5)
  assert [os.path.basename(p) for p in built] == ["100", "200", "300"]
  for path, step in zip(built, (100, 200, 300)):
    np.testing.assert_array_equal(store.load(path)[:2], tokens[:2, :3] * step)


# --- The real job: real BlockStore, real RetrieverEmbedder, SIGKILL. -------


def build_demo_store(path, num_docs):
  from realm_jax.data import block_builder, demo_corpus
  from realm_jax.data import tokenizer as tk
  return block_builder.build_block_store(demo_corpus.demo_documents(limit=num_docs),
                                  tk.minilm_tokenizer(), path, block_len=64,
                                  shard_rows=256, progress=False)


def export_random_embedder(workdir, bert):
  from realm_jax.models import model_config as config_lib
  from realm_jax.models.retriever import RetrieverEmbedder
  cfg = config_lib.RealmConfig(bert=bert, proj_size=16)
  ids = jnp.zeros((1, 64), jnp.int32)
  params = RetrieverEmbedder(cfg).init(jax.random.PRNGKey(0), ids, ids, ids)
  return export.write_export(workdir, 0, params["params"], cfg), cfg


def run_job(workdir, block_store, export_path, shard_rows, batch_size,
            stop_in_shard=None):
  """The job in a subprocess, started as the trainer and launch/ start it
  (realm_jax.main, task=embed); stop_in_shard=N: it stops itself (SIGSTOP)
  in the middle of writing shard N (tests/stopping_child.py)."""
  args = ["realm_jax.main", "--config=configs/tiny_cpu.py",
          "--config.task=embed", f"--config.workdir={workdir}",
          f"--config.data.block_store={block_store}",
          f"--config.index.bootstrap={export_path}",
          f"--config.index.embed_shard_rows={shard_rows}",
          f"--config.index.embed_batch_size={batch_size}"]
  cmd = ([sys.executable, "-m", *args] if stop_in_shard is None else
         stopping_child.command(f"shard:{stop_in_shard}", *args))
  return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def kill_mid_write_then_resume(workdir, blocks, export_path, cfg, shard_rows,
                               batch_size, kill_after_shards):
  index_dir = os.path.join(workdir, "index")
  tmp = store.tmp_path(index_dir, 0)
  num_shards = -(-blocks.num_blocks // shard_rows)
  assert num_shards > kill_after_shards + 5

  # The job stops itself halfway through shard `kill_after_shards` (written
  # to its .partial file, not renamed); it is SIGKILLed there, so exactly
  # kill_after_shards shards are finished and the rest still to do, however
  # fast the job runs.
  job = run_job(workdir, blocks.path, export_path, shard_rows, batch_size,
                stop_in_shard=kill_after_shards)
  try:
    stopping_child.wait_until_stopped(job)
  except AssertionError as e:
    job.kill()
    raise AssertionError(f"{e}\n{job.communicate()[0][-3000:]}") from None
  finally:
    job.send_signal(signal.SIGKILL)
    job.wait()
  assert job.returncode == -signal.SIGKILL
  # What a killed job leaves: a .tmp dir with some shards, and nothing loadable.
  assert sorted(os.listdir(index_dir)) == [".embed.lock", "0.tmp"]
  finished = len([n for n in os.listdir(tmp) if n.endswith(".npy.sha256")])
  assert finished == kill_after_shards < num_shards
  torn = store.shard_file(kill_after_shards)
  assert os.path.exists(os.path.join(tmp, torn + ".partial"))
  assert not os.path.exists(os.path.join(tmp, torn))
  watcher = refresh.IndexWatcher(index_dir, blocks.fingerprint,
                                 refresh.searcher_opener(
                                     lambda emb, cache_dir: search.ExactSearcher(emb)),
                                 poll_interval=None)
  assert not watcher.poll_once() and watcher.version is None

  job = run_job(workdir, blocks.path, export_path, shard_rows, batch_size)
  try:
    log, _ = job.communicate(timeout=900)
  finally:
    job.kill()
  assert job.returncode == 0, log
  reused = int(re.search(r"(\d+) already finished and verified", log).group(1))
  assert reused == finished
  assert sorted(os.listdir(index_dir)) == [".embed.lock", "0"]
  watcher.wait_for(0, timeout=120)     # committed: returns at once
  # Row i is block i, embedded by the real RetrieverEmbedder with the export's
  # params (batch shapes differ from the job's, hence allclose).
  _, params, _ = export.load_export(export_path)
  rows = np.concatenate([np.arange(0, blocks.num_blocks, 37),
                         [blocks.num_blocks - 1]])
  want = build.make_embed_fn(cfg)(params, *blocks.doc_inputs(rows))
  got = store.load(store.version_path(index_dir, 0))[rows]
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-5)
  everything = np.asarray(store.load(store.version_path(index_dir, 0)))
  ids, _ = watcher.served.search(got[:3], 1)
  assert ids[:, 0].tolist() == np.argmax(got[:3] @ everything.T, 1).tolist()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """A real block store (150 summaries, ~365 blocks of 64 tokens) and an
  export of a small random RetrieverEmbedder over the MiniLM vocabulary."""
  from realm_jax.models import model_config as config_lib
  root = tmp_path_factory.mktemp("demo")
  blocks = build_demo_store(str(root / "blocks"), 150)
  export_path, cfg = export_random_embedder(
      str(root / "trainer"),
      config_lib.tiny(vocab_size=30522, hidden_size=32, num_layers=2))
  return blocks, export_path, cfg


def test_killed_embedding_process_leaves_nothing_loadable_and_resumes(
    tmp_path, demo):
  # One tiny batch per shard, killed in the middle of the third: most shards
  # are still to be written.
  kill_mid_write_then_resume(str(tmp_path), *demo, shard_rows=4, batch_size=4,
                             kill_after_shards=2)


def tiny_config(workdir, blocks):
  """The defaults, task=embed, on `workdir` and the demo block store, with
  small batches and the exact searcher (nothing to build)."""
  from realm_jax import config as config_lib
  config = config_lib.default_config()
  config.task, config.workdir = "embed", str(workdir)
  config.data.block_store = blocks.path
  config.index.searcher, config.index.embed_batch_size = "exact", 64
  return config


def test_dispatcher_entry_bootstraps_the_first_index(tmp_path, demo):
  blocks, export_path, _ = demo
  config = tiny_config(tmp_path, blocks)
  config.index.bootstrap = export_path
  embed_task.run(config)
  path = store.version_path(str(tmp_path / "index"), 0)
  m = store.verify(path, blocks.fingerprint)
  assert m["num_blocks"] == blocks.num_blocks and m["dim"] == 16
  assert m["export"]["path"] == os.path.abspath(export_path)


@pytest.mark.parametrize("deterministic,built", [(False, [5]), (True, [3, 5])])
def test_dispatcher_entry_watches_the_exports(tmp_path, demo, deterministic,
                                              built):
  """Watch mode (no index.bootstrap), as configured: the newest export only,
  or every one in order for a deterministic trainer."""
  blocks, export_path, cfg = demo
  for step in (3, 5):
    export.write_export(str(tmp_path), step,
                        export.load_export(export_path)[1], cfg)
  config = tiny_config(tmp_path, blocks)
  config.index.deterministic = deterministic
  # Returns once nothing is left to embed.
  config.index.embed_poll_interval = config.index.embed_idle_timeout = 0.01
  embed_task.run(config)
  index_dir = str(tmp_path / "index")
  assert [store.verify(store.version_path(index_dir, v), blocks.fingerprint)
          ["export"]["step"] for v in store.list_versions(index_dir)] == built


def test_the_job_ships_the_configured_scann_searcher_and_readers_load_it(
    tmp_path, demo):
  """The job (run with the config the trainer and launch/ start it with)
  builds the ScaNN searcher with the config's index.scann settings and
  commits it with the version; the trainer's IndexWatcher and
  fine-tuning/eval load it instead of building. A reader configured
  differently builds its own."""
  import functools
  from realm_jax import config as config_lib
  from realm_jax.retrieval import openqa_record
  blocks, export_path, _ = demo
  workdir = str(tmp_path / "w")
  config = tiny_config(workdir, blocks)
  config.index.bootstrap = export_path
  config.index.searcher = "scann"
  config.index.scann.mode, config.index.scann.reorder_num_neighbors = "ah", 64
  embed_task.run(config)
  index_dir = os.path.join(workdir, "index")
  path = store.version_path(index_dir, 0)
  saved = [n for n in os.listdir(path) if n.startswith("scann-")]
  assert len(saved) == 1
  meta = os.path.join(path, saved[0], "realm_searcher.json")
  # An mtime far in the past: a rewrite shows even on coarse file timestamps.
  os.utime(meta, ns=(10**18, 10**18))
  before = os.stat(meta).st_mtime_ns
  index_config = config_lib.default_config().index
  index_config.scann.mode, index_config.scann.reorder_num_neighbors = "ah", 64
  options = searchers.searcher_options(index_config)
  assert options == {"kind": "scann", "mode": "ah", "reorder_num_neighbors": 64}
  watcher = refresh.IndexWatcher(
      index_dir, blocks.fingerprint,
      refresh.searcher_opener(functools.partial(searchers.make_searcher,
                                                **options)), poll_interval=None)
  watcher.wait_for(0)
  assert watcher.served.settings["mode"] == "ah"
  assert os.stat(meta).st_mtime_ns == before          # loaded, not rebuilt
  queries = np.asarray(store.load(path))[:5]
  cache = tmp_path / "cache"
  _, searcher = openqa_record.open_index(path, blocks, index_config, str(cache))
  # Nothing serialized beside the version's own searcher; only the memo of
  # the verified checksums.
  assert os.listdir(cache) == ["verified"]
  assert os.stat(meta).st_mtime_ns == before
  np.testing.assert_array_equal(searcher.search(queries, 3)[0],
                                watcher.served.search(queries, 3)[0])
  _, other = openqa_record.open_index(path, blocks, config_lib.default_config().index,
                                 str(cache))
  assert other.settings["mode"] == "brute_force" and len(os.listdir(cache)) == 2


def test_two_processes_embed_their_shards_and_one_commits(tmp_path, demo):
  """jax.distributed over two real CPU processes: the watch loops agree on
  the export, each embeds its contiguous shards, process 0 commits, and the
  index equals the one a single process builds."""
  import json
  blocks, export_path, _ = demo
  workdir = tmp_path / "w"
  shutil.copytree(os.path.dirname(export_path), workdir / "exports")
  procs = two_processes.start("two_process_embed.py", str(workdir), blocks.path)
  logs = [err for _, err in two_processes.finish(procs, timeout=600)]
  shards = (blocks.num_blocks + 31) // 32
  mine = [int(re.search(r"(\d+) shard\(s\) for process %d" % i, log).group(1))
          for i, log in enumerate(logs)]
  assert sum(mine) == shards and min(mine) >= shards // 2
  path = store.version_path(str(workdir / "index"), 0)
  store.verify(path, blocks.fingerprint)
  single = build.embed_export(export_path, blocks, str(tmp_path / "single"),
                              shard_rows=32, batch_size=16, progress=False)
  np.testing.assert_allclose(np.asarray(store.load(path)),
                             np.asarray(store.load(single)), rtol=1e-5, atol=1e-6)
  assert json.load(open(os.path.join(path, "manifest.json")))["num_blocks"] == \
      blocks.num_blocks


@pytest.mark.slow
def test_killed_embedding_process_resumes_on_the_whole_demo_corpus(tmp_path):
  """All 10,033 summaries (~25k blocks of 64 tokens), 1024-row shards."""
  from realm_jax.models import model_config as config_lib
  blocks = build_demo_store(str(tmp_path / "blocks"), None)
  export_path, cfg = export_random_embedder(
      str(tmp_path / "trainer"),
      config_lib.tiny(vocab_size=30522, hidden_size=128, num_heads=4,
                      intermediate_size=256))
  kill_mid_write_then_resume(str(tmp_path / "work"), blocks, export_path, cfg,
                             shard_rows=1024, batch_size=64, kill_after_shards=3)


def _wait_for_text(path, text, deadline_s=600):
  """Blocks until `text` appears in the file at `path` (hang guard only)."""
  deadline = time.monotonic() + deadline_s
  while True:
    if os.path.exists(path) and text in open(path, errors="replace").read():
      return
    assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
    time.sleep(0.05)


def test_an_orphaned_job_stops_within_a_shard_and_never_shares_a_version(
    tmp_path, demo):
  """The trainer is SIGKILLed while its job builds: the job stops before its
  next shard instead of finishing the build, and a second job (the restarted
  trainer's) waits on the index lock until the orphan is gone, then resumes
  its finished shards. Stop points are fixed (SIGSTOP), not timed."""
  blocks, export_path, _ = demo
  workdir = str(tmp_path / "w")
  shutil.copytree(os.path.dirname(os.path.dirname(export_path)), workdir)
  job_args = ["realm_jax.main", "--config=configs/tiny_cpu.py",
              "--config.task=embed", f"--config.workdir={workdir}",
              f"--config.data.block_store={blocks.path}",
              "--config.index.embed_shard_rows=4",
              "--config.index.embed_batch_size=4",
              "--config.index.searcher=exact",
              "--config.index.embed_idle_timeout=0.05"]
  # A stand-in trainer: starts the job as its child, naming itself the parent.
  trainer_code = (
      "import os, signal, subprocess, sys\n"
      "p = subprocess.Popen(sys.argv[1:] + "
      "[f'--config.index.embed_parent_pid={os.getpid()}'])\n"
      "print(p.pid, flush=True)\n"
      "signal.pause()\n")
  env = dict(os.environ, PYTHONPATH=ROOT)
  first_log = tmp_path / "first.log"
  with open(first_log, "w") as out:
    trainer = subprocess.Popen(
        [sys.executable, "-c", trainer_code,
         *stopping_child.command("shard:2", *job_args)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=out, text=True)
  job_pid = int(trainer.stdout.readline())
  second = None
  try:
    deadline = time.monotonic() + 600          # hang guard only
    while stopping_child.process_state(job_pid) != "T":
      assert trainer.poll() is None and time.monotonic() < deadline
      time.sleep(0.01)
    # The restarted trainer's job: it must not touch index/0.tmp meanwhile.
    second_log = tmp_path / "second.log"
    with open(second_log, "w") as out:
      second = subprocess.Popen([sys.executable, "-m", *job_args], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    _wait_for_text(second_log, "holds")
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    os.kill(job_pid, signal.SIGCONT)
    _wait_for_text(first_log, "is gone")
    assert second.wait(timeout=600) == 0
  finally:
    for p in (trainer, second):
      if p is not None and p.poll() is None:
        p.kill()
    try:
      os.kill(job_pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  first = first_log.read_text()
  assert "stopped before shard 3" in first, first[-3000:]
  assert "committed" not in first          # the orphan committed nothing
  second_text = second_log.read_text()
  assert "3 already finished and verified" in second_text, second_text[-3000:]
  index_dir = os.path.join(workdir, "index")
  assert store.list_versions(index_dir) == [0]
  store.verify(store.version_path(index_dir, 0), blocks.fingerprint)
