"""Maximum inner product search over block embeddings: one protocol, three searchers.

  search(queries float32 [Q, D], k, exclude=None | int [Q, E] (-1 padded))
    -> (ids int64 [Q, k], scores float32 [Q, k])

sorted by score descending, ties broken by the lower id. `exclude` removes
ids per query (REALM drops the query's own source block: "trivial retrieval").
When fewer than k rows remain, the tail is padded with id -1 and score -inf.

How every searcher answers: it proposes k + E + `_MARGIN` candidates with its
own fast scoring (BLAS, ScaNN, XLA), then `finalize` rescores just those
candidates in float64 (rounded to float32), drops excluded ids and sorts by
(-score, id). Consequences, both promised by tests:
  * Exact searchers agree bit for bit: same ids, same scores, whatever BLAS or
    XLA did with summation order, as long as the true top k is among the
    candidates (the margin absorbs near-ties at the k-th place).
  * Identical inputs give identical outputs, and duplicate rows tie exactly,
    so the lower id wins.

ExactSearcher is the recall reference. ScannSearcher follows ScaNN's rules of
thumb (brute force < 20k rows, AH + reorder < 100k, else tree + AH + reorder)
with deterministic training. DeviceSearcher keeps the rows on the accelerators
and runs jax.lax.approx_max_k per shard under shard_map.
"""
import hashlib
import json
import math
import os
import shutil
import types
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Extra candidates beyond k + E so that ties and 1-ulp disagreements between
# fast float32 scoring and the final float64 rescoring cannot change the top k.
_MARGIN = 4


class Searcher(Protocol):
  num_rows: int
  dim: int

  def search(self, queries: np.ndarray, k: int,
             exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    ...


def _check_inputs(queries, k, exclude, dim):
  """-> (queries float32 [Q, D] contiguous, exclude int64 [Q, E])."""
  queries = np.ascontiguousarray(queries, dtype=np.float32)
  if queries.ndim != 2 or queries.shape[1] != dim:
    raise ValueError(f"queries must be [Q, {dim}], got {queries.shape}")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if exclude is None:
    exclude = np.zeros((queries.shape[0], 0), np.int64)
  exclude = np.asarray(exclude, dtype=np.int64)
  if exclude.ndim != 2 or exclude.shape[0] != queries.shape[0]:
    raise ValueError(f"exclude must be [Q={queries.shape[0]}, E] ids with -1 "
                     f"padding, got shape {exclude.shape}")
  return queries, exclude


def finalize(emb, queries, cand_ids, k, exclude):
  """Exact top k of the candidates: rescore, exclude, sort by (-score, id).

  emb: [N, D] array-like (np.ndarray, memmap or ShardedEmbeddings).
  queries float32 [Q, D]; cand_ids int [Q, C], -1 = no candidate;
  exclude int64 [Q, E]. Returns ids int64 [Q, k], scores float32 [Q, k].
  """
  cand = np.asarray(cand_ids, dtype=np.int64)
  q_count = queries.shape[0]
  valid = cand >= 0
  if exclude.shape[1]:
    valid &= ~(cand[:, :, None] == exclude[:, None, :]).any(-1)
  safe = np.where(valid, cand, 0)
  if cand.size:
    # float64 accumulation per (query, row): independent of batch composition
    # and summation order, so every searcher reports the same score.
    rows = np.asarray(emb[safe], dtype=np.float64)
    scores = np.einsum("qd,qcd->qc", queries.astype(np.float64), rows)
    scores = scores.astype(np.float32)
  else:
    scores = np.zeros(cand.shape, np.float32)
  scores[~valid] = -np.inf
  sort_ids = np.where(valid, cand, np.iinfo(np.int64).max)
  order = np.lexsort((sort_ids, -scores), axis=-1)
  ids = np.take_along_axis(sort_ids, order, -1)
  scores = np.take_along_axis(scores, order, -1)
  # Drop repeats of one id (a candidate proposed twice; equal ids sort next
  # to each other since they score the same), keeping the first.
  big = np.iinfo(np.int64).max
  dup = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] != big)
  if dup.any():
    dup = np.concatenate([np.zeros((q_count, 1), bool), dup], 1)
    ids[dup] = big
    scores[dup] = -np.inf
    order = np.lexsort((ids, -scores), axis=-1)
    ids = np.take_along_axis(ids, order, -1)
    scores = np.take_along_axis(scores, order, -1)
  ids, scores = ids[:, :k], scores[:, :k]
  if ids.shape[1] < k:
    pad = k - ids.shape[1]
    ids = np.concatenate([ids, np.full((q_count, pad), -1, np.int64)], 1)
    scores = np.concatenate(
        [scores, np.full((q_count, pad), -np.inf, np.float32)], 1)
  ids[ids == np.iinfo(np.int64).max] = -1
  return ids, scores


def _top_candidates(scores, kk):
  """Column indices of the kk highest scores per row (unordered) [Q, kk].

  Ties at the kk-th place go to the lowest columns, so a block of identical
  rows (duplicate blocks, padding) yields its lowest ids.
  """
  n = scores.shape[1]
  if n <= kk:
    return np.broadcast_to(np.arange(n), scores.shape)
  # Partitioning from the top end avoids negating the whole score block.
  part = np.argpartition(scores, n - kk, axis=1)
  top = part[:, n - kk:]
  kth = np.take_along_axis(scores, part[:, n - kk:n - kk + 1], 1)
  # argpartition picks arbitrarily among values equal to the kk-th one: fix
  # the (rare) rows where such ties straddle the cut.
  straddles = ((scores == kth).sum(1) >
               (np.take_along_axis(scores, top, 1) == kth).sum(1))
  for r in np.nonzero(straddles)[0]:
    above = np.nonzero(scores[r] > kth[r, 0])[0]
    equal = np.nonzero(scores[r] == kth[r, 0])[0][:kk - len(above)]
    top[r] = np.concatenate([above, equal])
  return top


class ExactSearcher:
  """Brute-force inner products: chunked matmul + top-k, bounded memory.

  Memory is query_chunk x row_chunk floats (32 MB by default) whatever N is.
  """

  def __init__(self, emb, row_chunk: int = 16384, query_chunk: int = 512):
    self.emb = emb
    self.num_rows, self.dim = emb.shape
    self.row_chunk = row_chunk
    self.query_chunk = query_chunk

  def candidates(self, queries, kk):
    """Top kk row ids per query [Q, kk] by float32 matmul."""
    out = []
    for q0 in range(0, queries.shape[0], self.query_chunk):
      qb = queries[q0:q0 + self.query_chunk]
      cand_ids, cand_scores = [], []
      for r0 in range(0, self.num_rows, self.row_chunk):
        s = qb @ np.asarray(self.emb[r0:r0 + self.row_chunk]).T
        top = _top_candidates(s, kk)
        cand_ids.append(top + r0)
        cand_scores.append(np.take_along_axis(s, top, 1))
      ids, scores = np.concatenate(cand_ids, 1), np.concatenate(cand_scores, 1)
      best = np.lexsort((ids, -scores), axis=-1)[:, :kk]  # ties: lower id
      out.append(np.take_along_axis(ids, best, 1))
    return np.concatenate(out, 0) if out else np.zeros((0, kk), np.int64)

  def search(self, queries, k, exclude=None):
    queries, exclude = _check_inputs(queries, k, exclude, self.dim)
    kk = k + exclude.shape[1] + _MARGIN
    return finalize(self.emb, queries, self.candidates(queries, kk), k, exclude)


class DeviceSearcher:
  """Rows resident on the accelerators, sharded over a 1-D mesh.

  Each device scores its shard of rows and keeps its top candidates with
  jax.lax.approx_max_k (approximate on TPU at `recall_target`, exact on CPU
  and GPU); the per-shard lists are merged and rescored on the host.

  devices defaults to jax.local_devices(): the searcher serves one host's
  thread, so each process of a multi-host job holds the whole index on its own
  devices (13M x 128 float32 is 6.8 GB, split over the host's chips).
  """

  def __init__(self, emb, devices=None, recall_target: float = 0.95):
    self.emb = emb
    self.num_rows, self.dim = emb.shape
    self.recall_target = recall_target
    self._fns = {}
    devices = jax.local_devices() if devices is None else list(devices)
    self.mesh = Mesh(np.asarray(devices), ("rows",))
    n_dev = len(devices)
    self.shard_rows = max(1, -(-self.num_rows // n_dev))
    padded = (self.shard_rows * n_dev, self.dim)

    def fill(index):
      block = np.asarray(self.emb[index[0]], dtype=np.float32)
      want = len(range(*index[0].indices(padded[0])))
      if block.shape[0] < want:  # the last shard runs past N: zero rows
        block = np.concatenate(
            [block, np.zeros((want - block.shape[0], self.dim), np.float32)])
      return block
    # Built shard by shard from the host rows: no padded host copy of N x D.
    self.device_emb = jax.make_array_from_callback(
        padded, NamedSharding(self.mesh, P("rows", None)), fill)

  def _search_fn(self, kk):
    """The jitted sharded top-kk for one kk (cached on the instance, so a
    swapped-out searcher frees its device memory with it)."""
    if kk in self._fns:
      return self._fns[kk]
    num_rows, shard_rows = self.num_rows, self.shard_rows
    recall_target = self.recall_target

    def per_shard(q, rows):
      scores = jnp.dot(q, rows.T, precision=jax.lax.Precision.HIGHEST)
      first = jax.lax.axis_index("rows") * shard_rows
      ids = first + jnp.arange(shard_rows, dtype=jnp.int32)
      scores = jnp.where(ids[None, :] < num_rows, scores, -jnp.inf)
      vals, local = jax.lax.approx_max_k(scores, kk,
                                         recall_target=recall_target)
      return vals, jnp.where(jnp.isfinite(vals), local + first, -1)

    self._fns[kk] = jax.jit(jax.shard_map(
        per_shard, mesh=self.mesh, in_specs=(P(), P("rows", None)),
        out_specs=(P(None, "rows"), P(None, "rows"))))
    return self._fns[kk]

  def search(self, queries, k, exclude=None):
    queries, exclude = _check_inputs(queries, k, exclude, self.dim)
    q_count = queries.shape[0]
    kk = min(k + exclude.shape[1] + _MARGIN, self.shard_rows)
    # Bucket the query count to powers of two: few compilations.
    bucket = max(8, 1 << (max(q_count, 1) - 1).bit_length())
    padded = np.zeros((bucket, self.dim), np.float32)
    padded[:q_count] = queries
    _, cand = self._search_fn(kk)(padded, self.device_emb)
    cand = np.asarray(cand)[:q_count]
    return finalize(self.emb, queries, cand, k, exclude)


def scann_settings(num_rows: int, dim: int, **overrides) -> dict:
  """ScaNN's rules of thumb for an index of num_rows x dim; overrides win.

  mode: "brute_force" (< 20k rows: exact), "ah" (< 100k: asymmetric hashing
  with dims_per_block=2, then exact reorder), "tree" (num_leaves ~ sqrt(n),
  search 5% of leaves but at least 8, training on <= 100k sampled rows, then AH
  and reorder). anisotropic_quantization_threshold=0.2 is ScaNN's recommended
  value for dot-product search. Reordering 250 candidates (not ScaNN's usual
  100) because AH without a tree has no residual quantization: on clustered
  50k x 32 data, 100 reordered gave recall@10 0.82, 300 gave 0.99.

  Tree mode then calibrates leaves_to_search for recall (unless it was given):
  after the build, `calibration_queries` sampled rows are searched (their own
  row excluded) and the smallest of 1/4x .. 16x the rule-of-thumb count whose
  recall@10 against exact search reaches `target_recall` is kept. 5% of the
  leaves is plenty when neighbours share a partition, far too few when they
  spread (recall@8 0.76 at 1M x 128 with 10k Gaussian clusters; 0.96 needs
  25%), and the data decides which case it is.
  """
  s = {"mode": ("brute_force" if num_rows < 20_000 else
                "ah" if num_rows < 100_000 else "tree"),
       "num_leaves": max(1, int(round(math.sqrt(num_rows)))),
       "dims_per_block": 2,
       "anisotropic_quantization_threshold": 0.2,
       "reorder_num_neighbors": 250,
       "training_sample_size": min(num_rows, 100_000),
       "seed": 1,
       "num_threads": os.cpu_count() or 1,
       "training_threads": None,  # None: num_threads
       "target_recall": 0.95,     # None: keep the rule-of-thumb leaf count
       "calibration_queries": 256}
  unknown = set(overrides) - set(s) - {"num_leaves_to_search"}
  if unknown:
    raise ValueError(f"unknown ScaNN setting(s) {sorted(unknown)}; known: "
                     f"{sorted(s) + ['num_leaves_to_search']}")
  s.update({k: v for k, v in overrides.items() if k != "num_leaves_to_search"})
  s["num_leaves_to_search"] = overrides.get(
      "num_leaves_to_search", max(8, int(math.ceil(0.05 * s["num_leaves"]))))
  s["num_leaves_to_search"] = min(s["num_leaves_to_search"], s["num_leaves"])
  if s["mode"] not in ("brute_force", "ah", "tree"):
    raise ValueError(f"ScaNN mode must be brute_force|ah|tree, got {s['mode']!r}")
  return s


def scann_config(emb_shape, settings: dict) -> str:
  """The ScaNN text config; training is made deterministic.

  k-means++ initialisation (ScaNN's RANDOM_INITIALIZATION reseeds from the
  clock) and fixed clustering/sampling seeds make two builds on the same data
  bit-identical.
  """
  import scann  # pylint: disable=g-import-not-at-top
  s = settings
  # The builder only reads db.shape to write the config.
  builder = scann.scann_ops_pybind.builder(
      types.SimpleNamespace(shape=tuple(emb_shape)), 10, "dot_product")
  if s["mode"] == "tree":
    builder = builder.tree(num_leaves=s["num_leaves"],
                           num_leaves_to_search=s["num_leaves_to_search"],
                           training_sample_size=s["training_sample_size"],
                           random_init=False)
  if s["mode"] == "brute_force":
    builder = builder.score_brute_force()
  else:
    builder = builder.score_ah(
        s["dims_per_block"],
        anisotropic_quantization_threshold=s[
            "anisotropic_quantization_threshold"],
        training_sample_size=s["training_sample_size"])
    builder = builder.reorder(s["reorder_num_neighbors"])
  config = builder.create_config()
  seed = int(s["seed"])
  config = config.replace(
      "partitioning {", f"partitioning {{\n clustering_seed: {seed}\n", 1)
  return config.replace(
      "asymmetric_hash {",
      f"asymmetric_hash {{\n clustering_seed: {seed}\n sampling_seed: {seed}\n",
      1)


class ScannSearcher:
  """ScaNN on the host, configured by `scann_settings` (rules of thumb).

  `leaves_to_search` and `reorder_num_neighbors` are read at every search, so
  a recall/speed sweep can change them without rebuilding.
  """

  def __init__(self, emb, _scann=None, _leaves=None, **overrides):
    self.emb = emb
    self.num_rows, self.dim = emb.shape
    self.settings = scann_settings(self.num_rows, self.dim, **overrides)
    self.config = scann_config(emb.shape, self.settings)
    if _scann is None:
      import scann  # pylint: disable=g-import-not-at-top
      data = np.ascontiguousarray(np.asarray(emb), dtype=np.float32)
      training_threads = (self.settings["training_threads"] or
                          self.settings["num_threads"])
      _scann = scann.scann_ops_pybind.create_searcher(data, self.config,
                                                      training_threads)
    self._scann = _scann
    self._scann.set_num_threads(self.settings["num_threads"])
    self.leaves_to_search = self.settings["num_leaves_to_search"]
    self.reorder_num_neighbors = self.settings["reorder_num_neighbors"]
    self.calibration = None
    if (self.settings["mode"] == "tree" and _leaves is None and
        self.settings["target_recall"] is not None and
        "num_leaves_to_search" not in overrides):
      self._calibrate()
    elif _leaves is not None:
      self.leaves_to_search = _leaves

  def _calibrate(self):
    """Picks the smallest leaves_to_search reaching target_recall (recall@10)."""
    s, k = self.settings, 10
    m = min(s["calibration_queries"], self.num_rows)
    rows = np.sort(np.random.default_rng(s["seed"]).choice(
        self.num_rows, m, replace=False))
    queries = np.asarray(self.emb[rows], dtype=np.float32)
    exclude = rows[:, None]  # its own row would be a free hit
    truth, _ = ExactSearcher(self.emb).search(queries, k, exclude)
    base, top = s["num_leaves_to_search"], s["num_leaves"]
    tried = []
    for leaves in sorted({min(top, max(1, int(base * f)))
                          for f in (0.25, 0.5, 1, 2, 4, 8, 16)} | {top}):
      self.leaves_to_search = leaves
      found, _ = self.search(queries, k, exclude)
      recall = float(np.mean((found[:, :, None] == truth[:, None, :]).any(-1)))
      tried.append((leaves, recall))
      if recall >= s["target_recall"]:
        break
    self.calibration = tried
    logging.info("ScaNN leaves_to_search=%d of %d (recall@%d %.3f on %d rows; "
                 "tried %s)", self.leaves_to_search, top, k, tried[-1][1], m,
                 tried)

  def search(self, queries, k, exclude=None):
    queries, exclude = _check_inputs(queries, k, exclude, self.dim)
    if queries.shape[0] == 0:
      return finalize(self.emb, queries, np.zeros((0, 0), np.int64), k, exclude)
    kk = k + exclude.shape[1] + _MARGIN
    pre = max(kk, self.reorder_num_neighbors)
    kwargs = dict(final_num_neighbors=kk, pre_reorder_num_neighbors=pre)
    if self.settings["mode"] == "tree":
      kwargs["leaves_to_search"] = self.leaves_to_search
    if self.settings["num_threads"] > 1:
      ids, dist = self._scann.search_batched_parallel(queries, **kwargs)
    else:
      ids, dist = self._scann.search_batched(queries, **kwargs)
    # ScaNN pads missing neighbours (k > N) with id 0 and distance NaN.
    ids = np.where(np.isnan(dist), -1, ids.astype(np.int64))
    return finalize(self.emb, queries, ids, k, exclude)

  def save(self, directory: str):
    """Serializes the built searcher (atomic: <directory>.tmp then rename)."""
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    self._scann.serialize(tmp, relative_path=True)
    with open(os.path.join(tmp, "realm_searcher.json"), "w") as f:
      json.dump({"shape": list(self.emb.shape), "settings": self.settings,
                 "config": self.config, "leaves_to_search": self.leaves_to_search,
                 "calibration": self.calibration}, f)
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(tmp, directory)

  @classmethod
  def load(cls, directory: str, emb, **overrides):
    """Loads a searcher saved by `save` for these same embeddings.

    Raises ValueError if it was built for another shape or other settings.
    """
    import scann  # pylint: disable=g-import-not-at-top
    with open(os.path.join(directory, "realm_searcher.json")) as f:
      meta = json.load(f)
    settings = scann_settings(*emb.shape, **overrides)
    if (tuple(meta["shape"]) != tuple(emb.shape)
        or _identity(emb.shape, settings) != _identity(
            meta["shape"], meta["settings"])):
      raise ValueError(f"{directory}: ScaNN searcher was built for shape "
                       f"{meta['shape']} / other settings than requested")
    return cls(emb, _scann=scann.scann_ops_pybind.load_searcher(directory),
               _leaves=meta.get("leaves_to_search"), **overrides)


def _identity(shape, settings) -> str:
  """What a saved ScaNN searcher must match to be reused: its config and the
  calibration target (threads do not matter)."""
  return json.dumps([scann_config(shape, settings),
                     settings.get("target_recall"),
                     settings.get("calibration_queries")])


def make_searcher(emb, kind: str = "scann", cache_dir: str | None = None,
                  **overrides) -> Searcher:
  """Builds a searcher over emb [N, D]; kind is scann | exact | device.

  For ScaNN, `cache_dir` (e.g. the index version's directory, whose contents
  never change) holds the serialized searcher: the first call builds and saves
  it, later calls load it.
  """
  if kind == "exact":
    return ExactSearcher(emb, **overrides)
  if kind == "device":
    return DeviceSearcher(emb, **overrides)
  if kind != "scann":
    raise ValueError(f"searcher kind must be scann | exact | device, got {kind!r}")
  if cache_dir is None:
    return ScannSearcher(emb, **overrides)
  identity = _identity(emb.shape, scann_settings(*emb.shape, **overrides))
  key = hashlib.sha256(identity.encode()).hexdigest()[:12]
  path = os.path.join(cache_dir, f"scann-{key}")
  if os.path.isdir(path):
    try:
      return ScannSearcher.load(path, emb, **overrides)
    except (ValueError, RuntimeError, OSError):
      pass  # stale or broken cache: rebuild below, then overwrite it
  searcher = ScannSearcher(emb, **overrides)
  searcher.save(path)
  return searcher
