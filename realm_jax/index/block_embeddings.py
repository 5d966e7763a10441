"""Keeping an index in step with a trainer's exports (`watch`; the task,
config.task == "embed", is tasks/embed.py).

Each version is built by realm_jax/index/build.py (resumable, sharded over
devices and processes). With several processes the watch loops agree on
the export to build (process 0's choice), and process 0 commits.
"""
import os
import time

import jax
import numpy as np
from absl import logging

from realm_jax import workdir as workdir_lib
from realm_jax.index import build
from realm_jax.index import export as export_lib
from realm_jax.index import store

def parent_gone(parent_pid: int | None) -> bool:
  """True once the process that spawned the job has died (e.g. kill -9)."""
  return parent_pid is not None and os.getppid() != parent_pid


def _same_on_all_processes(value: int) -> int:
  """Process 0's value, on every process."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def watch(workdir: str, source: build.BlockSource, index_dir: str | None = None,
          *, poll_interval: float = 5.0, idle_timeout: float | None = None,
          max_versions: int | None = None, stop=None, every_export: bool = False,
          parent_pid: int | None = None, **kwargs) -> list[str]:
  """Embeds the newest export each time it is newer than the newest index.

  every_export: embed every export newer than the newest index, oldest first,
    instead of only the newest (the trainer's deterministic refresh mode
    waits for each version in turn).
  parent_pid: exit when this process is no longer our parent, so a trainer
    killed with SIGKILL does not leave its embedding job behind. Checked
    between shards too: an orphan stops within one shard, not after a build
    of minutes, and the next job resumes its finished shards.
  kwargs: for build.embed_export (batch_size, shard_rows, dtype, keep, ...).

  Returns the committed paths when `max_versions` were built, no new export
  came for `idle_timeout` seconds, `stop` (a threading.Event) was set, or the
  parent died.
  """
  index_dir = index_dir or workdir_lib.index_dir(workdir)
  built, idle_since = [], time.monotonic()
  if parent_pid is not None:
    kwargs["should_stop"] = lambda: parent_gone(parent_pid)
  while not (stop is not None and stop.is_set()):
    if parent_gone(parent_pid):
      logging.info("the trainer (pid %d) is gone; the embedding job exits",
                   parent_pid)
      break
    steps = export_lib.list_exports(workdir)
    newest_index = store.latest_version(index_dir)
    todo = [s for s in steps if newest_index is None or s > newest_index]
    if todo and not every_export and len(todo) > 1:
      logging.info("skipping stale export(s) %s: %d is newer", todo[:-1],
                   todo[-1])
    # Several processes build one version together: they must pick the same
    # export even when a new one lands between their listings.
    step = _same_on_all_processes(
        (todo[0] if every_export else todo[-1]) if todo else -1)
    if step >= 0:
      try:
        built.append(build.embed_export(export_lib.export_path(workdir, step),
                                        source, index_dir, **kwargs))
      except build.BuildStopped as e:
        logging.info("the trainer (pid %d) is gone: %s", parent_pid, e)
        break
      idle_since = time.monotonic()
      if max_versions is not None and len(built) >= max_versions:
        break
      continue
    if idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
      break
    if stop is not None:
      stop.wait(poll_interval)
    else:
      time.sleep(poll_interval)
  return built
