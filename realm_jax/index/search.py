"""Maximum inner product search over block embeddings: one protocol, three searchers.

  search(queries float32 [Q, D], k, exclude=None | int [Q, E] (-1 padded))
    -> (ids int64 [Q, k], scores float32 [Q, k])

sorted by score descending, ties broken by the lower id. `exclude` removes
ids per query (REALM drops the query's own source block: "trivial retrieval").
When fewer than k rows remain, the tail is padded with id -1 and score -inf.

How every searcher answers: it proposes k + E + `MARGIN` candidates with its
own fast scoring (BLAS, ScaNN, XLA), then `finalize` rescores just those
candidates in float64 (rounded to float32), drops excluded ids and sorts by
(-score, id). Consequences, both promised by tests:
  * Exact searchers agree bit for bit: same ids, same scores, whatever BLAS or
    XLA did with summation order, as long as the true top k is among the
    candidates (the margin absorbs near-ties at the k-th place).
  * Identical inputs give identical outputs, and duplicate rows tie exactly,
    so the lower id wins.

ExactSearcher is the recall reference. ScannSearcher (scann_searcher.py)
follows ScaNN's rules of thumb (brute force < 20k rows, AH + reorder < 100k,
else tree + AH + reorder) with deterministic training. DeviceSearcher keeps
the rows on the accelerators and runs jax.lax.approx_max_k per shard under
shard_map.
"""
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Extra candidates beyond k + E so that ties and 1-ulp disagreements between
# fast float32 scoring and the final float64 rescoring cannot change the top k.
MARGIN = 4


class Searcher(Protocol):
  num_rows: int
  dim: int

  def search(self, queries: np.ndarray, k: int,
             exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    ...


def check_inputs(queries, k, exclude, dim):
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
    queries, exclude = check_inputs(queries, k, exclude, self.dim)
    kk = k + exclude.shape[1] + MARGIN
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
    queries, exclude = check_inputs(queries, k, exclude, self.dim)
    q_count = queries.shape[0]
    kk = min(k + exclude.shape[1] + MARGIN, self.shard_rows)
    # Bucket the query count to powers of two: few compilations.
    bucket = max(8, 1 << (max(q_count, 1) - 1).bit_length())
    padded = np.zeros((bucket, self.dim), np.float32)
    padded[:q_count] = queries
    _, cand = self._search_fn(kk)(padded, self.device_emb)
    cand = np.asarray(cand)[:q_count]
    return finalize(self.emb, queries, cand, k, exclude)
