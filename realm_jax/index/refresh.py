"""Hot swap of the index inside the trainer: IndexWatcher.

A background thread polls <index_dir> for committed versions newer than the one
in service. For the newest, it verifies manifest, checksums and corpus
fingerprint and opens it (the trainer: memory-maps the shards and builds the
searcher; qa.Answerer: a whole fine-tuned model over a knowledge base
version), all off the training thread, then publishes it with ONE attribute
assignment of an immutable (version, served, loaded_at) tuple. Readers take
`watcher.current` once per batch and use that tuple: they can never see a
half-built searcher,
and a swap never blocks them (ScaNN, numpy and hashlib release the GIL while
the next index is built).

A version that fails (torn, corrupt, built for another corpus, or its searcher
fails to build) is refused with one error log line and remembered, so it is not
retried every poll; the previous index stays in service.

The background thread runs at a lower OS priority (`nice`, Linux; threads it
starts, such as ScaNN's trainers, inherit it), so on a busy host the refresh
yields the CPU to the training and searching threads and only the index's
staleness grows.

For reproducible runs, create the watcher with poll_interval=None (no thread)
and call wait_for(version) at fixed steps.
"""
import os
import threading
import time
from typing import Callable, NamedTuple

from absl import logging

from realm_jax.index import store


class Current(NamedTuple):
  version: int          # the index's step (the export it was built from)
  served: object        # what open_version made of it (e.g. a searcher)
  loaded_at: float      # time.time() when it went into service


def searcher_opener(make_searcher: Callable) -> Callable[[str], object]:
  """open_version for a searcher over a version's memory-mapped [N, D]
  embeddings: make_searcher(emb, cache_dir=<version path>), e.g.
  functools.partial(searchers.make_searcher, kind="scann")."""
  return lambda path: make_searcher(store.load(path), cache_dir=path)


class IndexWatcher:
  """Keeps the newest valid index version of index_dir in service.

  open_version(<version path>) makes what is served from a checked version
  (`searcher_opener` for the trainer's searcher).
  """

  def __init__(self, index_dir: str, corpus_fingerprint: str | None,
               open_version: Callable[[str], object], poll_interval: float | None = 10.0,
               nice: int = 10, current: Current | None = None,
               check: Callable[[str], object] | None = None):
    """check(path) raises on a version that must not serve; default
    store.verify against corpus_fingerprint (a knowledge base passes its own:
    each of its versions has its own corpus). current: a version the caller
    already loaded, in service from the start."""
    self.index_dir = index_dir
    self.corpus_fingerprint = corpus_fingerprint
    self.open_version = open_version
    self.poll_interval = poll_interval
    self.nice = nice
    self.current: Current | None = current
    self.check = check or (lambda path: store.verify(path, corpus_fingerprint))
    self.refused: dict[int, str] = {}
    # Which manifest each number had when it was loaded or refused: a
    # version deleted and built again under the same number (a user cleaned
    # up a corrupt one and indexed again) is another version, loaded anew.
    self._manifests: dict[int, tuple] = {}
    if current is not None:
      self._manifests[current.version] = self._manifest_id(current.version)
    self._lock = threading.Lock()   # one loader at a time (thread, wait_for)
    self._stop = threading.Event()
    self._thread = None
    if poll_interval is not None:
      self._thread = threading.Thread(target=self._run, name="IndexWatcher",
                                      daemon=True)
      self._thread.start()

  @property
  def version(self) -> int | None:
    cur = self.current
    return None if cur is None else cur.version

  @property
  def served(self):
    cur = self.current
    return None if cur is None else cur.served

  def staleness(self, trainer_step: int) -> int | None:
    """Steps between the trainer and the params behind the index in service."""
    cur = self.current
    return None if cur is None else int(trainer_step) - cur.version

  def poll_once(self) -> bool:
    """Loads the newest valid version newer than the current; True if swapped."""
    with self._lock:
      cur = self.current
      versions = store.list_versions(self.index_dir)
      rebuilt = {v for v in versions if v in self._manifests
                 and self._manifest_id(v) != self._manifests[v]}
      for v in rebuilt:
        self.refused.pop(v, None)
      newer = [v for v in versions
               if (cur is None or v > cur.version
                   or (v == cur.version and v in rebuilt))
               and v not in self.refused]
      for version in reversed(newer):
        if self._load(version):
          return True
      return False

  def _manifest_id(self, version: int):
    """(inode, mtime, size) of the version's manifest, written once at its
    commit: a version built again under the same number differs (None: no
    manifest). Not the directory's: a searcher cache written into it later
    changes that."""
    try:
      st = os.stat(os.path.join(store.version_path(self.index_dir, version),
                                store.MANIFEST))
    except OSError:
      return None
    return st.st_ino, st.st_mtime_ns, st.st_size

  def wait_for(self, version: int, timeout: float | None = None,
               poll: float = 0.05) -> Current:
    """Blocks until exactly `version` is committed, then puts it in service.

    Raises TimeoutError if it is not committed in time and CorruptIndexError if
    it was refused.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
      with self._lock:
        cur = self.current
        if cur is not None and cur.version == version:
          return cur
        if version in self.refused:
          raise store.CorruptIndexError(self.refused[version])
        if version in store.list_versions(self.index_dir):
          if self._load(version):
            return self.current
          raise store.CorruptIndexError(self.refused[version])
      if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"index version {version} was not committed in "
                           f"{self.index_dir} within {timeout} s")
      time.sleep(poll)

  def close(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _load(self, version: int) -> bool:
    path = store.version_path(self.index_dir, version)
    self._manifests[version] = self._manifest_id(version)
    try:
      self.check(path)
      served = self.open_version(path)
    except Exception as e:  # pylint: disable=broad-except
      reason = (str(e) if isinstance(e, store.CorruptIndexError) else
                f"{path}: {type(e).__name__}: {e}")
      self.refused[version] = reason
      logging.error("index version %d refused, keeping version %s: %s",
                    version, self.version, reason)
      return False
    previous = self.version
    self.current = Current(version, served, time.time())  # the atomic swap
    logging.info("index version %d in service (was %s): %d blocks", version,
                 previous, store.read_manifest(path)["num_blocks"])
    return True

  def _run(self):
    if self.nice and hasattr(os, "setpriority"):
      try:  # on Linux a thread id names one thread here
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
      except OSError as e:
        logging.warning("IndexWatcher could not lower its priority: %s", e)
    while not self._stop.is_set():
      try:
        self.poll_once()
      except Exception:  # pylint: disable=broad-except
        # e.g. index_dir vanished; keep serving, try again next poll.
        logging.exception("IndexWatcher poll of %s failed", self.index_dir)
      self._stop.wait(self.poll_interval)
