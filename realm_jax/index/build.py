"""Building one index version: every block of the block store embedded with
one export's params, resumably. The library behind the embedding job
(realm_jax/index/block_embeddings.py, task=embed) and the in-process builds of
fine-tuning, the demo and the benchmarks.

One build writes <index_dir>/<step>.tmp/ one shard at a time (each shard file
plus a .sha256 sidecar, both renamed into place when complete), then the
manifest, then renames the directory to <index_dir>/<step>/ and keeps the
last `keep` versions. With searcher="scann" the ScaNN searcher is built and
serialized into the version before the rename, so the trainer's IndexWatcher
only loads it (~0.2 s of CPU instead of ~18 s to train the tree and codebooks
at 200k rows): the expensive part of a refresh stays on the embedding job's
host. A killed build leaves only the .tmp directory, which readers never
open; a restart keeps every shard whose checksum still matches its sidecar
and redoes the rest. Embedding is data parallel over the local devices (jit
over a 1-D Mesh); with several processes each takes a contiguous range of
shards by jax.process_index(), and process 0 commits (the index directory
must then be on a shared filesystem).
"""
import functools
import json
import os
import shutil
import sys
import time
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from realm_jax import integrity
from realm_jax.index import export as export_lib
from realm_jax.index import searchers
from realm_jax.index import store

JOB = "job.json"


class BlockSource(Protocol):
  """What a build reads: realm_jax.data.corpus.BlockStore has this shape."""
  num_blocks: int
  fingerprint: str

  def doc_inputs(self, rows: np.ndarray):
    """-> (input_ids, segment_ids, input_mask), each int [len(rows), block_len]."""


@functools.lru_cache(maxsize=8)
def make_embed_fn(realm_config, dtype: str = "float32") -> Callable:
  """embed_fn(params, input_ids, segment_ids, input_mask) -> float32 [B, proj]
  with the real RetrieverEmbedder; dtype "bfloat16" computes in bf16.
  One function per (config, dtype), so builds in one process (a knowledge
  base update after a build, the demo's indexes) share compiled programs."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from realm_jax.models.retriever import RetrieverEmbedder  # pylint: disable=g-import-not-at-top
  if dtype != "float32":
    realm_config = dataclasses.replace(
        realm_config, bert=dataclasses.replace(realm_config.bert,
                                               dtype=getattr(jnp, dtype)))
  module = RetrieverEmbedder(config=realm_config)

  def embed_fn(params, input_ids, segment_ids, input_mask):
    return module.apply({"params": params}, input_ids, segment_ids, input_mask,
                        deterministic=True)
  return embed_fn


def shard_ranges(num_blocks: int, shard_rows: int) -> list[tuple[int, int]]:
  return [(lo, min(lo + shard_rows, num_blocks))
          for lo in range(0, num_blocks, shard_rows)] or [(0, 0)]


def my_shards(num_shards: int, process_index: int, process_count: int) -> range:
  """The contiguous run of shard indices this process embeds."""
  per, extra = divmod(num_shards, process_count)
  lo = process_index * per + min(process_index, extra)
  return range(lo, lo + per + (process_index < extra))


def _sidecar(tmp: str, i: int) -> str:
  return os.path.join(tmp, store.shard_file(i) + ".sha256")


def _finished_shard(tmp: str, i: int, rows: int) -> dict | None:
  """The manifest entry of shard i if it is complete and intact, else None."""
  path = os.path.join(tmp, store.shard_file(i))
  try:
    with open(_sidecar(tmp, i)) as f:
      digest = f.read().strip()
    if np.load(path, mmap_mode="r").shape[0] != rows:
      return None
    if integrity.sha256_file(path) != digest:
      return None
  except (OSError, ValueError):
    return None
  return {"file": store.shard_file(i), "rows": rows, "sha256": digest}


_WIDTH_STEP = 16


@functools.lru_cache(maxsize=8)
def _jitted(embed_fn, devices: tuple):
  """The jitted embed_fn over `devices`; cached so that every Embedder of the
  same function reuses its compiled programs."""
  mesh = Mesh(np.asarray(devices), ("data",))
  data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  return jax.jit(lambda p, i, s, m: embed_fn(p, i, s, m).astype(jnp.float32),
                 in_shardings=(replicated, data, data, data),
                 out_shardings=data)


class BuildStopped(Exception):
  """build_index was asked to stop (should_stop) before it finished."""


class NonFiniteEmbeddingError(ValueError):
  """An export embeds some block as NaN/inf: its index is never committed."""


class Embedder:
  """Data-parallel embedding of row batches over the local devices."""

  def __init__(self, embed_fn, params, batch_size, dtype, devices=None):
    devices = jax.local_devices() if devices is None else list(devices)
    mesh = Mesh(np.asarray(devices), ("data",))
    self.data = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    if dtype != "float32":
      params = jax.tree.map(
          lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
          else x, params)
    self.params = jax.device_put(params, replicated)
    self.fn = _jitted(embed_fn, tuple(devices))

  def __call__(self, source, lo, hi, on_batch):
    """Embeddings of blocks lo..hi-1 -> float32 [hi - lo, dim].

    Blocks are embedded shortest first, each batch cut to its longest block
    rounded up to a multiple of _WIDTH_STEP tokens: padding is masked out of
    attention and pooling, so only the float summation order can change, and
    demo blocks (mean 67 of 96 tokens) embed about a third faster. At most
    block_len / _WIDTH_STEP programs compile.
    """
    if hi <= lo:
      return None
    inputs = [np.asarray(x) for x in source.doc_inputs(np.arange(lo, hi))]
    lengths = inputs[2].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    full = inputs[0].shape[1]
    out = np.zeros((hi - lo, 0), np.float32)
    pending = None

    def collect(result, batch_rows):
      nonlocal out
      emb = np.asarray(result)[:len(batch_rows)]
      if out.shape[1] == 0:
        out = np.zeros((hi - lo, emb.shape[1]), np.float32)
      out[batch_rows] = emb
      on_batch(len(batch_rows))

    for b0 in range(0, hi - lo, self.batch_size):
      batch_rows = order[b0:b0 + self.batch_size]
      width = min(full, -(-int(lengths[batch_rows].max()) // _WIDTH_STEP)
                  * _WIDTH_STEP)
      batch = [x[batch_rows, :width] for x in inputs]
      if len(batch_rows) < self.batch_size:  # pad: one shape per width
        batch = [np.concatenate([x, np.repeat(x[-1:], self.batch_size -
                                              len(batch_rows), 0)])
                 for x in batch]
      # Dispatch is asynchronous: the next batch is prepared on the host while
      # this one runs; fetching lags one batch behind.
      result = (self.fn(self.params, *[jax.device_put(x, self.data)
                                       for x in batch]), batch_rows)
      if pending is not None:
        collect(*pending)
      pending = result
    collect(*pending)
    return out


def build_index(embed_fn: Callable, params, source: BlockSource, index_dir: str,
                step: int, *, batch_size: int = 256, shard_rows: int = 16384,
                dtype: str = "float32", keep: int = 3, export: dict | None = None,
                progress: bool = True, devices=None,
                searcher: str | None = None,
                scann_overrides: dict | None = None,
                should_stop: Callable[[], bool] | None = None) -> str:
  """Embeds every block of `source` into index version `step`; returns its path.

  searcher: a `searchers.make_searcher` kind to build and serialize into the
  version before it is committed (only "scann" has anything to serialize),
  with `scann_overrides` (the trainer's config.index.scann settings).

  Resumes a previous attempt's <step>.tmp/ when it was for the same job
  (same export, corpus, shard size, dtype); otherwise starts over.

  should_stop: asked before each shard; True raises BuildStopped, leaving the
  finished shards for a later run to resume (the job stops this way when its
  trainer dies mid-build).
  """
  final = store.version_path(index_dir, step)
  if os.path.isdir(final):
    try:
      store.verify(final, source.fingerprint)
      logging.info("index version %d already committed: %s", step, final)
      return final
    except store.CorruptIndexError as e:
      bad = f"{final}.bad-{int(time.time())}"
      logging.error("%s; moving it to %s and rebuilding", e, bad)
      os.rename(final, bad)
  pid, nproc = jax.process_index(), jax.process_count()
  tmp = store.tmp_path(index_dir, step)
  job = {"step": int(step), "num_blocks": int(source.num_blocks),
         "corpus_fingerprint": source.fingerprint, "shard_rows": int(shard_rows),
         "dtype": dtype, "export": export or {}}
  if pid == 0:
    _prepare_tmp(tmp, job)
  _barrier("embed-prepare", nproc)
  ranges = shard_ranges(source.num_blocks, shard_rows)
  mine = my_shards(len(ranges), pid, nproc)
  todo, done_rows = [], 0
  for i in mine:
    if _finished_shard(tmp, i, ranges[i][1] - ranges[i][0]) is not None:
      done_rows += ranges[i][1] - ranges[i][0]
    else:
      todo.append(i)
  logging.info("index %d: %d block(s), %d shard(s) for process %d; %d already "
               "finished and verified", step, source.num_blocks, len(mine), pid,
               len(mine) - len(todo))
  total_rows = sum(ranges[i][1] - ranges[i][0] for i in mine)
  embedder = Embedder(embed_fn, params, batch_size, dtype, devices) if todo else None
  # Closed however the loop ends, so that an error starts a line of its own.
  with _progress_bar(total_rows, done_rows, step, progress) as bar:
    for i in todo:
      if should_stop is not None and should_stop():
        raise BuildStopped(f"index {step}: stopped before shard {i}; the "
                           f"finished shards in {tmp} are resumed by the next run")
      lo, hi = ranges[i]
      emb = embedder(source, lo, hi, bar.update)
      if emb is None:  # an empty corpus: one empty shard keeps the format uniform
        emb = np.zeros((0, 0), np.float32)
      if not np.isfinite(emb).all():
        # A diverged export: an index of NaNs would search as id -1 / -inf.
        bad = int(lo + np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
        raise NonFiniteEmbeddingError(
            f"index {step}: the embedding of block {bad} is not finite; the "
            f"export ({(export or {}).get('path', 'params')}) is refused and "
            "nothing is committed")
      entry = store.write_shard(tmp, i, emb)
      _write_atomic(_sidecar(tmp, i), entry["sha256"])
  _barrier("embed-shards", nproc)
  if pid != 0:
    return final
  shards, dim = [], None
  for i, (lo, hi) in enumerate(ranges):
    entry = _finished_shard(tmp, i, hi - lo)
    if entry is None:
      raise RuntimeError(f"{tmp}: shard {i} missing or corrupt after all "
                         "processes finished; rerun the job")
    shards.append(entry)
    if hi > lo:
      dim = np.load(os.path.join(tmp, entry["file"]), mmap_mode="r").shape[1]
  if searcher == "scann" and dim:
    emb = np.concatenate([np.load(os.path.join(tmp, s["file"]), mmap_mode="r")
                          for s in shards if s["rows"]])
    start = time.perf_counter()
    searchers.make_searcher(emb, kind="scann", cache_dir=tmp,
                         **(scann_overrides or {}))
    logging.info("index %d: ScaNN searcher built and saved in %.1f s", step,
                 time.perf_counter() - start)
  for i in range(len(ranges)):
    os.remove(_sidecar(tmp, i))
  os.remove(os.path.join(tmp, JOB))
  path = store.commit(index_dir, step, dim=dim or 0, shards=shards,
                      corpus_fingerprint=source.fingerprint, export=export)
  pruned = store.prune(index_dir, keep)
  logging.info("index version %d committed at %s (pruned %s)", step, path, pruned)
  return path


def _prepare_tmp(tmp: str, job: dict):
  """Keeps tmp/ if it holds the same job, else empties it; drops partials."""
  if os.path.isdir(tmp):
    try:
      with open(os.path.join(tmp, JOB)) as f:
        same = json.load(f) == job
    except (OSError, ValueError):
      same = False
    if not same:
      logging.info("%s holds another job's work; starting over", tmp)
      shutil.rmtree(tmp)
  os.makedirs(tmp, exist_ok=True)
  for name in os.listdir(tmp):
    if name.endswith(".partial"):
      os.remove(os.path.join(tmp, name))
  _write_atomic(os.path.join(tmp, JOB), json.dumps(job, sort_keys=True))


def _write_atomic(path: str, text: str):
  with open(path + ".partial", "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.rename(path + ".partial", path)


def _barrier(name: str, nproc: int):
  if nproc > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _progress_bar(total, initial, step, enabled):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, unit="blocks", unit_scale=True,
              desc=f"embedding index {step}", disable=not enabled,
              file=sys.stderr, dynamic_ncols=True)


def embed_export(export_path: str, source: BlockSource, index_dir: str, *,
                 embed_fn: Callable | None = None, dtype: str = "float32",
                 **kwargs) -> str:
  """Builds the index version of one export; returns the committed path.

  embed_fn defaults to the real RetrieverEmbedder of the export's RealmConfig.
  """
  step, params, realm_config = export_lib.load_export(export_path)
  if embed_fn is None:
    embed_fn = make_embed_fn(realm_config, dtype)
  info = {"path": os.path.abspath(export_path), "step": step,
          "params_sha256": integrity.sha256_file(
              os.path.join(export_path, export_lib.PARAMS))}
  return build_index(embed_fn, params, source, index_dir, step, dtype=dtype,
                     export=info, **kwargs)
