"""Index versions on disk: write shards, commit atomically, verify, load.

Layout of one committed version (row i is always block i of the block store):

  <index_dir>/<step>/manifest.json
      {"format": 1, "step", "num_blocks", "dim", "dtype": "float32",
       "shards": [{"file": "emb-00000.npy", "rows", "sha256"}, ...],
       "corpus_fingerprint", "export": {...where the params came from...}}
  <index_dir>/<step>/emb-00000.npy ...   plain float32 .npy, [rows, dim] each

A version is built in <index_dir>/<step>.tmp/ and becomes visible only through
one os.rename of the whole directory (after every file and the directory are
fsynced), so a reader that lists only all-digit names never sees a half-built
index. Readers never look inside *.tmp directories.

`load` memory-maps the shards and returns a `ShardedEmbeddings`: an [N, D]
array-like that reads nothing until rows are used and never copies the whole
index. Slicing inside one shard is a zero-copy memmap view; gathering rows by
id (what search and rescoring do) touches only those rows. `np.asarray(emb)`
materialises one contiguous copy for consumers that need it (ScaNN copies its
dataset anyway, so this costs nothing extra there).
"""
import json
import os
import shutil

import numpy as np

from realm_jax import workdir as workdir_lib
from realm_jax.integrity import sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CorruptIndexError(ValueError):
  """An index version that must not be used; the message says why, once."""


def shard_file(i: int) -> str:
  return f"emb-{i:05d}.npy"


def version_path(index_dir: str, step: int) -> str:
  return os.path.join(index_dir, str(int(step)))


def tmp_path(index_dir: str, step: int) -> str:
  return os.path.join(index_dir, f"{int(step)}.tmp")


def list_versions(index_dir: str) -> list[int]:
  """Steps of the committed versions, ascending. *.tmp dirs are never listed."""
  return workdir_lib.numbered(index_dir)


def latest_version(index_dir: str) -> int | None:
  versions = list_versions(index_dir)
  return versions[-1] if versions else None


def fsync_dir(path: str):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_shard(directory: str, i: int, rows: np.ndarray) -> dict:
  """Writes float32 rows [n, D] as shard i; returns its manifest entry.

  The file appears under its final name only once complete and fsynced (written
  as *.partial, then renamed), so a killed writer leaves at most a *.partial.
  """
  rows = np.ascontiguousarray(rows, dtype=np.float32)
  if rows.ndim != 2:
    raise ValueError(f"shard {i}: expected [rows, dim], got shape {rows.shape}")
  name = shard_file(i)
  partial = os.path.join(directory, name + ".partial")
  with open(partial, "wb") as f:
    np.lib.format.write_array(f, rows, allow_pickle=False)
    f.flush()
    os.fsync(f.fileno())
  os.rename(partial, os.path.join(directory, name))
  return {"file": name, "rows": int(rows.shape[0]),
          "sha256": sha256_file(os.path.join(directory, name))}


def commit(index_dir: str, step: int, *, dim: int, shards: list[dict],
           corpus_fingerprint: str, export: dict | None = None) -> str:
  """Writes the manifest into <step>.tmp/ and renames it to <step>/.

  Returns the committed path. Raises FileExistsError if <step>/ exists.
  """
  tmp = tmp_path(index_dir, step)
  final = version_path(index_dir, step)
  if os.path.exists(final):
    raise FileExistsError(f"index version {final} is already committed")
  manifest = {
      "format": FORMAT_VERSION, "step": int(step),
      "num_blocks": int(sum(s["rows"] for s in shards)), "dim": int(dim),
      "dtype": "float32", "shards": shards,
      "corpus_fingerprint": corpus_fingerprint, "export": export or {}}
  with open(os.path.join(tmp, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  fsync_dir(tmp)
  os.rename(tmp, final)
  fsync_dir(index_dir)
  return final


def check_keep(keep: int):
  """index.keep below 1 would prune the version just committed (the one in
  service): refused at the start of a run, not after its first build."""
  if keep < 1:
    raise ValueError(f"index.keep={keep}: keep at least 1 index version (0 "
                     "would delete each version as soon as it is committed)")


def prune(index_dir: str, keep: int) -> list[int]:
  """Deletes all but the newest `keep` committed versions, and *.tmp dirs
  (their job was superseded) and *.bad-* dirs (refused versions kept for a
  look) of steps older than the newest committed one.

  Returns the deleted steps. A reader still mapping a deleted version keeps its
  data: on POSIX the files live until they are unmapped.
  """
  check_keep(keep)
  versions = list_versions(index_dir)
  doomed = versions[:-keep]
  for step in doomed:
    # Rename first so a concurrent lister never sees a half-deleted version.
    trash = os.path.join(index_dir, f"{step}.deleting")
    os.rename(version_path(index_dir, step), trash)
    shutil.rmtree(trash, ignore_errors=True)
  if versions:
    for name in os.listdir(index_dir):
      stem = name.split(".")[0]
      stale = name.endswith(".tmp") or ".bad-" in name
      if stale and stem.isdigit() and int(stem) < versions[-1]:
        shutil.rmtree(os.path.join(index_dir, name), ignore_errors=True)
  return doomed


def read_manifest(path: str) -> dict:
  """Parses and sanity-checks <path>/manifest.json (no file contents read)."""
  mpath = os.path.join(path, MANIFEST)
  try:
    with open(mpath) as f:
      m = json.load(f)
  except FileNotFoundError:
    raise CorruptIndexError(f"{path}: no {MANIFEST}") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CorruptIndexError(f"{mpath}: not valid JSON ({e})") from None
  required = ("step", "num_blocks", "dim", "dtype", "shards",
              "corpus_fingerprint")
  missing = [k for k in required if k not in m]
  if missing:
    raise CorruptIndexError(f"{mpath}: missing field(s) {missing}")
  if m["dtype"] != "float32":
    raise CorruptIndexError(f"{mpath}: dtype {m['dtype']!r}, expected float32")
  rows = sum(s["rows"] for s in m["shards"])
  if rows != m["num_blocks"]:
    raise CorruptIndexError(
        f"{mpath}: shards hold {rows} rows but num_blocks is {m['num_blocks']}")
  return m


def _open_shard(path: str, shard: dict, dim: int) -> np.memmap:
  fpath = os.path.join(path, shard["file"])
  try:
    arr = np.load(fpath, mmap_mode="r")
  except FileNotFoundError:
    raise CorruptIndexError(f"{fpath}: shard file missing") from None
  except ValueError as e:  # truncated or garbled .npy header / body
    raise CorruptIndexError(f"{fpath}: unreadable .npy ({e})") from None
  want = (shard["rows"], dim)
  if arr.shape != want or arr.dtype != np.float32:
    raise CorruptIndexError(f"{fpath}: holds {arr.dtype}{list(arr.shape)}, "
                            f"manifest says float32{list(want)}")
  return arr


def verify(path: str, expected_fingerprint: str | None = None) -> dict:
  """Full check of one version: manifest, shard shapes, sha256, corpus.

  Returns the manifest; raises CorruptIndexError naming the first problem.
  Reads every byte (about 1-2 GB/s), so call it off the training thread.
  """
  m = read_manifest(path)
  name = os.path.basename(os.path.normpath(path))
  if name != str(m["step"]):
    raise CorruptIndexError(f"{path}: directory name does not match manifest "
                            f"step {m['step']}")
  if (expected_fingerprint is not None
      and m["corpus_fingerprint"] != expected_fingerprint):
    raise CorruptIndexError(
        f"{path}: built for corpus {m['corpus_fingerprint']!r}, but the block "
        f"store in use is {expected_fingerprint!r}")
  for shard in m["shards"]:
    _open_shard(path, shard, m["dim"])
    digest = sha256_file(os.path.join(path, shard["file"]))
    if digest != shard["sha256"]:
      raise CorruptIndexError(f"{os.path.join(path, shard['file'])}: sha256 "
                              f"{digest[:12]}... != manifest "
                              f"{shard['sha256'][:12]}...")
  return m


def load(path: str) -> "ShardedEmbeddings":
  """Memory-maps a committed version as an [N, D] ShardedEmbeddings.

  Checks the manifest and shard headers only; call `verify` first for
  checksums.
  """
  m = read_manifest(path)
  return ShardedEmbeddings([_open_shard(path, s, m["dim"]) for s in m["shards"]],
                           dim=m["dim"])


class ShardedEmbeddings:
  """Read-only float32 [N, D] rows held in several memory-mapped shards.

  Supports what the searchers need: `shape`, `len`, row slices `emb[a:b]`
  (zero-copy inside one shard), gathers `emb[ids]` for integer id arrays of
  any shape (-> ids.shape + (D,)), and `np.asarray(emb)` (one contiguous copy).
  """

  def __init__(self, shards: list[np.ndarray], dim: int | None = None):
    if not shards and dim is None:
      raise ValueError("ShardedEmbeddings needs at least one shard or a dim")
    self.shards = list(shards)
    self.dim = int(dim if dim is not None else shards[0].shape[1])
    self.offsets = np.cumsum([0] + [s.shape[0] for s in self.shards])
    self.shape = (int(self.offsets[-1]), self.dim)
    self.dtype = np.dtype(np.float32)
    self.ndim = 2

  def __len__(self):
    return self.shape[0]

  def __array__(self, dtype=None, copy=None):
    if not self.shards:
      out = np.zeros(self.shape, np.float32)
    elif len(self.shards) == 1:
      out = np.array(self.shards[0])
    else:
      out = np.concatenate(self.shards, axis=0)
    return out if dtype is None else out.astype(dtype)

  def __getitem__(self, key):
    if isinstance(key, slice):
      start, stop, step = key.indices(self.shape[0])
      if step != 1:
        return self[np.arange(start, stop, step)]
      return self._range(start, stop)
    if isinstance(key, (int, np.integer)):
      return self[np.asarray([key])][0]
    ids = np.asarray(key)
    if ids.dtype.kind not in "iu":
      raise TypeError(f"ShardedEmbeddings index must be ints or a slice, got "
                      f"{ids.dtype}")
    flat = ids.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= self.shape[0]):
      raise IndexError(f"row ids outside [0, {self.shape[0]})")
    out = np.empty((flat.size, self.dim), np.float32)
    which = np.searchsorted(self.offsets, flat, side="right") - 1
    for s in np.unique(which):
      sel = which == s
      out[sel] = self.shards[s][flat[sel] - self.offsets[s]]
    return out.reshape(ids.shape + (self.dim,))

  def _range(self, start: int, stop: int) -> np.ndarray:
    if stop <= start:
      return np.zeros((0, self.dim), np.float32)
    first = np.searchsorted(self.offsets, start, side="right") - 1
    last = np.searchsorted(self.offsets, stop - 1, side="right") - 1
    parts = [self.shards[s][max(start - self.offsets[s], 0):
                            min(stop, self.offsets[s + 1]) - self.offsets[s]]
             for s in range(first, last + 1)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
