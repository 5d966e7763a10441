"""Runs `python -m MODULE ARGS...`, but the process stops itself (SIGSTOP) at
a chosen point, so a test can SIGKILL it exactly there however fast or busy
the machine is (a parent that polls and then kills races the child):

  python tests/stopping_child.py shard:N MODULE ARGS...
      stops in the middle of writing embedding shard N: its rows are in the
      shard's *.partial file, fsynced, not yet renamed into place.
  python tests/stopping_child.py commit:N MODULE ARGS...
      stops right before index version N is committed (everything of it is
      written in N.tmp/, not yet renamed).
  python tests/stopping_child.py export:N MODULE ARGS...
      stops right after the trainer's export of step N is written.
  python tests/stopping_child.py metrics:N MODULE ARGS...
      stops right after a MetricsWriter wrote the row of step N (or the first
      step after it).

The test side: `wait_until_stopped(proc)`, then SIGKILL.
"""
import os
import runpy
import signal
import sys
import time


def _stop():
  os.kill(os.getpid(), signal.SIGSTOP)


def _stop_in_shard(n: int):
  from realm_jax.index import store
  real_write_shard, real_fsync = store.write_shard, os.fsync

  def write_shard(directory, i, rows):
    if i != n:
      return real_write_shard(directory, i, rows)

    def fsync(fd):   # the first fsync of write_shard: the *.partial file
      real_fsync(fd)
      os.fsync = real_fsync
      _stop()

    os.fsync = fsync
    try:
      return real_write_shard(directory, i, rows)
    finally:
      os.fsync = real_fsync

  store.write_shard = write_shard


def _stop_before_commit(n: int):
  from realm_jax.index import store
  real_commit = store.commit

  def commit(index_dir, step, **kwargs):
    if step == n:
      _stop()
    return real_commit(index_dir, step, **kwargs)

  store.commit = commit


def _stop_after_export(n: int):
  from realm_jax.index import export
  real_write = export.write_export

  def write_export(workdir, step, *args, **kwargs):
    path = real_write(workdir, step, *args, **kwargs)
    if step == n:
      _stop()
    return path

  export.write_export = write_export


def _stop_after_metrics(n: int):
  from realm_jax.train import metrics
  real_write = metrics.MetricsWriter.write
  stopped = [False]

  def write(self, step, values):
    real_write(self, step, values)
    if self.enabled and int(step) >= n and not stopped[0]:
      stopped[0] = True
      _stop()

  metrics.MetricsWriter.write = write


def process_state(pid: int) -> str | None:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0]
  except (FileNotFoundError, ProcessLookupError):
    return None


def wait_until_stopped(proc, deadline_s: float = 600):
  """Blocks until `proc` (a Popen of this script) has stopped itself; fails
  if it exited first. The deadline is a hang guard only."""
  deadline = time.monotonic() + deadline_s
  while process_state(proc.pid) != "T":
    assert proc.poll() is None, (
        f"the child exited (status {proc.returncode}) before its stop point")
    assert time.monotonic() < deadline, "the child never reached its stop point"
    time.sleep(0.01)


def children(pid: int) -> list[int]:
  """The pids of `pid`'s child processes."""
  out = []
  for task in os.listdir(f"/proc/{pid}/task"):
    with open(f"/proc/{pid}/task/{task}/children") as f:
      out += [int(c) for c in f.read().split()]
  return out


def wait_for_exit(pids, deadline_s: float = 600):
  """Blocks until none of `pids` runs any more (a hang guard only)."""
  deadline = time.monotonic() + deadline_s
  while any(process_state(p) not in (None, "Z") for p in pids):
    assert time.monotonic() < deadline, f"{pids} never exited"
    time.sleep(0.05)


def command(where: str, module: str, *args) -> list[str]:
  return [sys.executable, os.path.abspath(__file__), where, module, *args]


if __name__ == "__main__":
  where, module, args = sys.argv[1], sys.argv[2], sys.argv[3:]
  kind, n = where.split(":")
  {"shard": _stop_in_shard, "commit": _stop_before_commit,
   "metrics": _stop_after_metrics, "export": _stop_after_export}[kind](int(n))
  sys.argv = [module, *args]
  runpy.run_module(module, run_name="__main__", alter_sys=True)
