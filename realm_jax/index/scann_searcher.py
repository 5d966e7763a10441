"""ScaNN on the host: settings from ScaNN's rules of thumb, deterministic
training, leaves_to_search calibrated for recall, and serialization so that a
searcher is built once per index version (by the embedding job) and loaded
everywhere else. Answers through `search.finalize`, like every searcher.
"""
import errno
import hashlib
import json
import math
import os
import shutil
import types

import numpy as np
from absl import logging

from realm_jax import integrity
from realm_jax.index.search import MARGIN, ExactSearcher, check_inputs, finalize


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
    queries, exclude = check_inputs(queries, k, exclude, self.dim)
    if queries.shape[0] == 0:
      return finalize(self.emb, queries, np.zeros((0, 0), np.int64), k, exclude)
    kk = k + exclude.shape[1] + MARGIN
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
    try:
      self._scann.serialize(tmp, relative_path=True)
    except RuntimeError as e:
      # ScaNN says only "I/O error"; a full disk is the usual cause, and
      # its files hold at least the dataset.
      free = shutil.disk_usage(os.path.dirname(os.path.abspath(tmp))).free
      shutil.rmtree(tmp, ignore_errors=True)
      if free < self.emb.nbytes:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (ScaNN: "
                      f"{e})", directory) from e
      raise
    # Checksums of ScaNN's files: a searcher is loaded only if they match
    # (a corrupted dataset.npy would otherwise serve wrong blocks silently).
    files = {name: integrity.sha256_file(os.path.join(tmp, name))
             for name in sorted(os.listdir(tmp))}
    with open(os.path.join(tmp, _META), "w") as f:
      json.dump({"shape": list(self.emb.shape), "settings": self.settings,
                 "config": self.config, "leaves_to_search": self.leaves_to_search,
                 "calibration": self.calibration, "files": files}, f)
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(tmp, directory)

  @classmethod
  def load(cls, directory: str, emb, **overrides):
    """Loads a searcher saved by `save` for these same embeddings.

    Raises ValueError if it was built for another shape or other settings,
    or if a file differs from the checksum written by `save`.
    """
    import scann  # pylint: disable=g-import-not-at-top
    with open(os.path.join(directory, _META)) as f:
      meta = json.load(f)
    for name, digest in meta.get("files", {None: None}).items():
      if name is None or integrity.sha256_file(
          os.path.join(directory, name)) != digest:
        raise ValueError(f"{directory}: ScaNN file {name} is missing or does "
                         "not match its sha256")
    settings = scann_settings(*emb.shape, **overrides)
    if (tuple(meta["shape"]) != tuple(emb.shape)
        or _identity(emb.shape, settings) != _identity(
            meta["shape"], meta["settings"])):
      raise ValueError(f"{directory}: ScaNN searcher was built for shape "
                       f"{meta['shape']} / other settings than requested")
    return cls(emb, _scann=scann.scann_ops_pybind.load_searcher(directory),
               _leaves=meta.get("leaves_to_search"), **overrides)


_META = "realm_searcher.json"


def _identity(shape, settings) -> str:
  """What a saved ScaNN searcher must match to be reused: its config and the
  calibration target (threads do not matter)."""
  return json.dumps([scann_config(shape, settings),
                     settings.get("target_recall"),
                     settings.get("calibration_queries")])


def saved_path(emb_shape, cache_dir: str, **overrides) -> str:
  """Where `cached` keeps the searcher of these settings under cache_dir."""
  identity = _identity(emb_shape, scann_settings(*emb_shape, **overrides))
  key = hashlib.sha256(identity.encode()).hexdigest()[:12]
  return os.path.join(cache_dir, f"scann-{key}")


def cached(emb, cache_dir: str, **overrides) -> ScannSearcher:
  """Loads the searcher saved under cache_dir for these settings, or builds
  and saves it there (a stale or broken save is rebuilt and overwritten)."""
  path = saved_path(emb.shape, cache_dir, **overrides)
  if os.path.isdir(path):
    try:
      return ScannSearcher.load(path, emb, **overrides)
    except (ValueError, RuntimeError, OSError) as e:
      logging.warning("rebuilding the ScaNN searcher: %s", e)
  searcher = ScannSearcher(emb, **overrides)
  searcher.save(path)
  return searcher
