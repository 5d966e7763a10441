"""IndexWatcher: hot swap under a searching thread, refusal of bad versions,
deterministic wait_for."""
import functools
import logging
import os
import shutil
import threading
import time

import numpy as np
import pytest

from realm_jax.index import refresh, search, searchers, store

FP = "corpus-a"
N, DIM = 200, 4
QUERY = np.eye(1, DIM, dtype=np.float32)  # scores = column 0 = the version


def version_rows(version):
  """Every row's column 0 holds the version: any answer shows where it came from."""
  emb = np.random.default_rng(version).normal(size=(N, DIM)).astype(np.float32)
  emb[:, 0] = version
  return emb


def write(index_dir, version, fingerprint=FP, commit=True, shard_rows=64,
          torn=False):
  """Writes a version; torn=True flips a byte of a shard after its checksum
  was taken, before the commit (a watcher can never see it intact)."""
  tmp = store.tmp_path(index_dir, version)
  os.makedirs(tmp)
  emb = version_rows(version)
  shards = [store.write_shard(tmp, i, emb[lo:lo + shard_rows])
            for i, lo in enumerate(range(0, N, shard_rows))]
  if torn:
    flip_a_byte(tmp)
  if commit:
    return store.commit(index_dir, version, dim=DIM, shards=shards,
                        corpus_fingerprint=fingerprint)
  return tmp


def flip_a_byte(path):
  shard = os.path.join(path, "emb-00001.npy")
  with open(shard, "r+b") as f:
    f.seek(200)
    b = f.read(1)
    f.seek(200)
    f.write(bytes([b[0] ^ 0xFF]))


def exact(emb, cache_dir=None):
  del cache_dir
  return search.ExactSearcher(emb)


# A hang guard only: nothing below depends on how fast the machine is.
DEADLINE = 120
PER_VERSION = 10   # answers the searching thread gives at each version


def test_hot_swap_under_a_searching_thread(tmp_path):
  """A thread searches non-stop while versions are committed, torn versions
  among them. After each commit the test waits (on a condition, not a clock)
  until the watcher's own thread has that version in service AND the searching
  thread has answered PER_VERSION queries with it, so every version is seen
  mid-search however the threads are scheduled."""
  index_dir = str(tmp_path)
  write(index_dir, 1)
  watcher = refresh.IndexWatcher(index_dir, FP, refresh.searcher_opener(exact),
                                 poll_interval=0.005)
  watcher.wait_for(1, timeout=DEADLINE)
  issued, answers, errors, done = [0], [], [], threading.Event()
  answered = threading.Condition()
  seen = {}                                       # version -> answers given

  def searching():
    while not done.is_set():
      issued[0] += 1
      try:
        version, searcher, _ = watcher.current
        ids, scores = searcher.search(QUERY, 5)
        answers.append((version, ids, scores))
        with answered:
          seen[version] = seen.get(version, 0) + 1
          answered.notify_all()
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)
        with answered:
          answered.notify_all()

  def served(version):
    """Blocks until `version` answered PER_VERSION queries (or an error)."""
    with answered:
      ok = answered.wait_for(
          lambda: errors or seen.get(version, 0) >= PER_VERSION, DEADLINE)
    assert ok and not errors, (version, watcher.version, errors)

  thread = threading.Thread(target=searching)
  thread.start()
  bad = set()
  try:
    served(1)
    for v in range(2, 12):
      write(index_dir, 1000 + v, commit=False)    # a build still in progress
      if v % 3 == 0:                              # a torn committed version
        write(index_dir, 100 + v, torn=True)
        bad.add(100 + v)
      good = v if v < 11 else 200
      write(index_dir, good)
      served(good)
  finally:
    done.set()
    thread.join()
    watcher.close()
  assert watcher.version == 200 and not errors
  assert len(answers) == issued[0] >= 11 * PER_VERSION   # no query lost
  versions = [v for v, _, _ in answers]
  assert versions == sorted(versions)             # never back to an older one
  # Every good version went into service while the thread was searching; no
  # torn or uncommitted one ever did.
  assert set(versions) == set(range(1, 11)) | {200}
  for version, ids, scores in answers:            # every answer from ONE index
    assert (scores == version).all() and ids.tolist() == [[0, 1, 2, 3, 4]]
  assert bad & set(versions) == set()
  assert sorted(watcher.refused) == sorted(bad)


def test_bad_versions_are_refused_once_and_the_old_index_stays(tmp_path, caplog):
  index_dir = str(tmp_path)
  write(index_dir, 1)
  watcher = refresh.IndexWatcher(index_dir, FP, refresh.searcher_opener(exact),
                                 poll_interval=None)
  assert watcher.poll_once() and watcher.version == 1
  write(index_dir, 2, torn=True)
  write(index_dir, 3, fingerprint="corpus-b")
  with caplog.at_level(logging.INFO):
    for _ in range(5):
      assert not watcher.poll_once()
  refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert len(refusals) == 2, refusals              # one line per bad version
  assert "version 3 refused" in refusals[0] and "corpus-b" in refusals[0]
  assert "version 2 refused" in refusals[1] and "sha256" in refusals[1]
  assert watcher.version == 1 and sorted(watcher.refused) == [2, 3]
  ids, scores = watcher.served.search(QUERY, 3)
  assert (scores == 1).all()
  with pytest.raises(store.CorruptIndexError, match="sha256"):
    watcher.wait_for(2, timeout=DEADLINE)     # refused: raises at once


def test_wait_for_loads_exactly_the_requested_version(tmp_path):
  index_dir = str(tmp_path)
  write(index_dir, 10)
  write(index_dir, 20)
  watcher = refresh.IndexWatcher(
      index_dir, FP, refresh.searcher_opener(
          functools.partial(searchers.make_searcher, kind="scann")),
      poll_interval=None)
  assert watcher.version is None and watcher.staleness(5) is None
  before = time.time()
  version, searcher, loaded_at = watcher.wait_for(10, timeout=DEADLINE)
  assert version == 10 and watcher.version == 10 and loaded_at >= before
  assert (searcher.search(QUERY, 2)[1] == 10).all()
  assert watcher.staleness(25) == 15
  assert watcher.wait_for(20).version == 20
  # The ScaNN searcher was cached inside the version; verify ignores it.
  assert any(n.startswith("scann-") for n in os.listdir(os.path.join(index_dir, "20")))
  store.verify(os.path.join(index_dir, "20"), FP)
  with pytest.raises(TimeoutError, match="version 30"):
    watcher.wait_for(30, timeout=0.1)
  write(index_dir, 30, commit=False)
  with pytest.raises(TimeoutError):                # a .tmp is never loaded
    watcher.wait_for(30, timeout=0.1)


def test_a_version_built_again_under_its_number_is_loaded_anew(tmp_path):
  """A long-lived watcher (the Answerer's) used to keep a number it had
  refused, or had in service, forever: delete version 1 and build it again,
  and the new one was never loaded. Versions are told apart by their
  manifest file, not by number alone."""
  index_dir = str(tmp_path)
  write(index_dir, 1, torn=True)
  with refresh.IndexWatcher(index_dir, FP, refresh.searcher_opener(exact),
                            poll_interval=None) as watcher:
    assert not watcher.poll_once() and 1 in watcher.refused
    assert not watcher.poll_once()            # the same one: not tried again
    shutil.rmtree(os.path.join(index_dir, "1"))
    write(index_dir, 1)                       # intact now
    assert watcher.poll_once() and watcher.version == 1
    assert not watcher.poll_once()            # in service: nothing to do
    searcher = watcher.served
    shutil.rmtree(os.path.join(index_dir, "1"))
    write(index_dir, 1)                       # built again, in service
    assert watcher.poll_once() and watcher.served is not searcher


def test_resume_with_only_corrupt_versions_stops_with_one_line(tmp_path):
  """Every version corrupt and no newer export: the embedding job has
  nothing to build, so the trainer stops naming the fix instead of waiting
  forever (it used to print "waiting for the embedding job" every 5 s)."""
  from realm_jax.train import embed_job
  index_dir, workdir = str(tmp_path / "index"), str(tmp_path / "work")
  write(index_dir, 1, torn=True)
  os.makedirs(os.path.join(workdir, "exports", "1"))
  exact_opener = refresh.searcher_opener(functools.partial(
      searchers.make_searcher, kind="exact"))
  with refresh.IndexWatcher(index_dir, FP, exact_opener,
                            poll_interval=None) as watcher:
    with pytest.raises(store.CorruptIndexError, match=r"mv .*/1 .*/1\.corrupt"):
      embed_job.serve_first_index(watcher, 1, index_dir, None, workdir)
    # A newer export is being embedded: keep waiting for it.
    os.makedirs(os.path.join(workdir, "exports", "2"))
    embed_job._check_not_stuck(index_dir, watcher.refused, workdir)


def test_resume_serves_the_newest_intact_version_when_its_own_is_corrupt(
    tmp_path):
  """A checkpoint recorded index version 1; on resume it is corrupt and 2 is
  intact: the trainer serves 2 instead of crashing."""
  from realm_jax.train import embed_job
  index_dir = str(tmp_path)
  write(index_dir, 1, torn=True)
  write(index_dir, 2)
  exact_opener = refresh.searcher_opener(functools.partial(
      searchers.make_searcher, kind="exact"))
  with refresh.IndexWatcher(index_dir, FP, exact_opener,
                            poll_interval=None) as watcher:
    embed_job.serve_first_index(watcher, 1, index_dir, job=None)
    assert watcher.version == 2 and 1 in watcher.refused
  with refresh.IndexWatcher(index_dir, FP, exact_opener,
                            poll_interval=None) as watcher:
    embed_job.serve_first_index(watcher, 2, index_dir, job=None)
    assert watcher.version == 2
