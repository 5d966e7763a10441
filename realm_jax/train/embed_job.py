"""The trainer's side of the embedding job (task=embed): starting and
restarting it, waiting for its first index, and the alarm when the index in
service falls behind. realm_jax/index/block_embeddings.py is the job itself."""
import os
import subprocess
import sys
import threading
import time

from absl import logging

from realm_jax import config as config_lib
from realm_jax import errors
from realm_jax.index import export as export_lib
from realm_jax.index import store as index_store


class EmbedJob:
  """The embedding job (task=embed) as this trainer's child process.

  The child runs with exactly this trainer's config: saved as JSON in the
  workdir (realm_jax/config.py: save_config) and loaded back by the child's
  --config, whatever built it (a file and overrides, or code). Only what is
  the job's alone is set on its command line: the task, this process as the
  parent to watch, and the block store this trainer opened.

  `check()` runs at every export: a job that died (a crash, an OOM kill, a
  stray SIGKILL) would otherwise leave the trainer on an ever staler index.
  It is restarted, up to index.embed_restarts times (its builds resume), and
  beyond that the run stops with the job's exit status and log.
  """

  def __init__(self, config, store_path: str):
    config_arg = config_lib.save_config(
        config, os.path.join(config.workdir, "embed_job_config.json"))
    self.cmd = [sys.executable, "-m", "realm_jax.main",
                f"--config={config_arg}", "--config.task=embed",
                f"--config.data.block_store={store_path}",
                f"--config.index.embed_parent_pid={os.getpid()}"]
    self.log_path = os.path.join(config.workdir, "embed_job.log")
    self.restarts_left = config.index.embed_restarts
    self.lock = threading.Lock()   # checked by the trainer and prefetch threads
    self.proc = self._start()

  def _start(self):
    logging.info("starting the embedding job: %s", " ".join(self.cmd))
    with open(self.log_path, "ab") as log:
      return subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)

  def check(self):
    with self.lock:
      self._check()

  def _check(self):
    code = self.proc.poll()
    if code is None:
      return
    if self.restarts_left <= 0:
      raise errors.JobFailed(
          f"the embedding job exited with status {code} and may not be "
          f"restarted again (index.embed_restarts); see {self.log_path}")
    self.restarts_left -= 1
    logging.error("the embedding job exited with status %d (see %s); "
                  "restarting it (%d restart(s) left)", code, self.log_path,
                  self.restarts_left)
    self.proc = self._start()

  def close(self):
    self.proc.terminate()
    self.proc.wait(timeout=60)


def serve_first_index(watcher, recorded, index_dir, job, workdir=None):
  """Puts in service the version a resumed checkpoint trained against, if it
  is intact, else the newest intact one (a corrupt version is skipped, as
  the watcher always skips it), waiting for the job's first if none.

  Stops with CorruptIndexError when every version is corrupt and no export
  in `workdir` is newer than them: the job builds only exports newer than
  the newest version, so it would never build one, and the wait would never
  end."""
  if recorded is not None and recorded in index_store.list_versions(index_dir):
    try:
      watcher.wait_for(recorded)
      return
    except index_store.CorruptIndexError as e:
      logging.warning("the checkpoint's index version %d is refused (%s); "
                      "serving the newest intact version", recorded, e)
  logging.info("waiting for the first index in %s", index_dir)
  # The watcher's own thread may put a version in service first: wait on
  # `current`, not on this thread's poll_once() swapping it in.
  while watcher.current is None and not watcher.poll_once():
    first_version(index_dir, job)   # raises if the job died first
    if watcher.current is None and not watcher.poll_once():
      _check_not_stuck(index_dir, watcher.refused, workdir)
      logging.warning("no intact index version in %s yet (refused: %s); "
                      "waiting for the embedding job", index_dir,
                      sorted(watcher.refused))
      time.sleep(5)


def _check_not_stuck(index_dir, refused, workdir):
  versions = index_store.list_versions(index_dir)
  if workdir is None or not versions or any(v not in refused
                                            for v in versions):
    return
  if any(step > versions[-1] for step in export_lib.list_exports(workdir)):
    return   # the job is building a newer one
  newest = os.path.join(index_dir, str(versions[-1]))
  raise index_store.CorruptIndexError(
      f"every index version in {index_dir} is corrupt ({refused[versions[-1]]}"
      f"), and the embedding job builds only exports newer than the newest "
      f"version; move it aside (mv {newest} {newest}.corrupt) and rerun: the "
      f"job embeds export {versions[-1]} again")


def first_version(index_dir, job, poll=0.5):
  """The newest committed index, waiting until the embedding job makes one.
  A job that died is restarted as at every export (index.embed_restarts),
  and beyond that the wait stops naming its exit status and log."""
  while True:
    versions = index_store.list_versions(index_dir)
    if versions:
      return versions[-1]
    if job is not None:
      job.check()
    time.sleep(poll)


class StalenessAlarm:
  """Warns, at most once per refresh, while the index in service is more
  than index.max_staleness steps behind the trainer (0: 3 * refresh_every +
  refresh_delay, past what a healthy job ever lags)."""

  def __init__(self, index_config, workdir: str):
    self.every = index_config.refresh_every
    self.max_staleness = (index_config.max_staleness or
                          3 * self.every + index_config.refresh_delay)
    self.workdir = workdir
    self.warned_at = None

  def check(self, step: int, version: int) -> bool:
    """True when it warned for this step."""
    if step - version <= self.max_staleness or (
        self.warned_at is not None and step - self.warned_at < self.every):
      return False
    self.warned_at = step
    logging.warning(
        "the index in service is %d steps stale (version %d at step %d; "
        "index.max_staleness=%d): the embedding job is not keeping up or is "
        "not running; see %s/embed_job.log", step - version, version, step,
        self.max_staleness, self.workdir)
    return True
