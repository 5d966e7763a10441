"""The embedding job (config.task == "embed"): keeps the index in step with
the trainer's exports, in its own process.

  python -m realm_jax.main --config=<the trainer's config> [overrides] \
      --config.task=embed

It runs with the trainer's config, so the two agree on every shared setting
(block store, searcher and its ScaNN settings, dtype, versions kept). The
trainer starts it itself (realm_jax/train/embed_job.py: EmbedJob);
launch/ starts it on its own accelerators. The index.embed_* fields and
index.bootstrap configure it (realm_jax/config.py):

  - index.bootstrap=<export dir>: embed that export once (e.g. the first
    index, from an ICT export), then exit.
  - otherwise watch <workdir>/exports/ and embed the newest export whenever
    it is newer than the newest committed index; exports superseded while a
    build ran are skipped (only the newest matters: REALM's refresher did the
    same). With index.deterministic the trainer waits for every version in
    turn, so every export is embedded, oldest first.

Each version is built by realm_jax/index/build.py (resumable, sharded over
devices and processes). With several processes the watch loops agree on the
export to build (process 0's choice), and process 0 commits.
"""
import contextlib
import fcntl
import os
import time

import jax
from absl import logging

from realm_jax import workdir as workdir_lib
from realm_jax.data import catalog
from realm_jax.data import corpus
from realm_jax.index import build
from realm_jax.index import block_embeddings
from realm_jax.index import searchers
from realm_jax.index import store


def run(config):
  """Dispatcher entry: bootstrap once, or block_embeddings.watch until killed (or orphaned)."""
  ix = config.index
  store.check_keep(ix.keep)
  # Opened, never built: the trainer or launch/prepare_data.py builds it at
  # this same path (catalog.block_store_path) before the job starts.
  source = corpus.BlockStore(catalog.block_store_path(config))
  options = searchers.searcher_options(ix)
  kwargs = dict(batch_size=ix.embed_batch_size, shard_rows=ix.embed_shard_rows,
                dtype=ix.embed_dtype, keep=ix.keep, progress=ix.embed_progress,
                searcher=options.pop("kind"), scann_overrides=options)
  index_dir = workdir_lib.index_dir(config.workdir)
  parent_pid = ix.embed_parent_pid or None
  with _only_job(index_dir, parent_pid):
    if ix.bootstrap:
      build.embed_export(ix.bootstrap, source, index_dir, **kwargs)
      return
    # every_export follows index.deterministic rather than being a setting
    # of its own: a deterministic trainer waits for each version in turn, so
    # a job that skipped one would stall it.
    block_embeddings.watch(config.workdir, source, index_dir,
          poll_interval=ix.embed_poll_interval,
          idle_timeout=ix.embed_idle_timeout or None,
          every_export=ix.deterministic, parent_pid=parent_pid, **kwargs)


@contextlib.contextmanager
def _only_job(index_dir: str, parent_pid: int | None, poll: float = 0.5):
  """Holds <index_dir>/.embed.lock (an exclusive flock, released by the
  kernel however the job ends) so two jobs never write one index version,
  e.g. an orphan of a killed trainer and the job of its restart. A second
  job waits for the first to end (or for its own trainer to die). Process 0
  holds it for a multi-process job, whose other processes follow its lead."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(index_dir, exist_ok=True)
  with open(os.path.join(index_dir, ".embed.lock"), "w") as lock:
    waited = False
    while True:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if not waited:
          logging.warning("another embedding job holds %s/.embed.lock; "
                          "waiting for it to end", index_dir)
          waited = True
        if block_embeddings.parent_gone(parent_pid):
          logging.info("the trainer (pid %d) is gone; the embedding job "
                       "exits", parent_pid)
          raise SystemExit(0)
        time.sleep(poll)
    yield
