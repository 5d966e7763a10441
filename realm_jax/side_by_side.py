"""Independent jobs side by side, each in a child process on its own CPU cores.

On the CPU backend XLA spreads each computation over every core, and the
second core of a 2-core machine adds only about 1.6x. Two independent jobs
(the demo's two fine-tunes, the evaluations of its two models), one core
each, get through about 1.5x the work of the same jobs one after the other
(README, "Runtime"). On an accelerator, or with fewer cores than jobs, they
run one after the other in this process, as before.

Each child is pinned to its share of the cores before JAX starts in it,
writes its output to its own log file, and gets SIGTERM if this process dies
(a job killed there saves what it can and resumes on the rerun, as any run
does). A job that fails raises here, naming its log.
"""
import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
from typing import Callable, Sequence

import jax

_PR_SET_PDEATHSIG = 1


def core_shares(jobs: int) -> list[list[int]] | None:
  """This process's CPU cores split into `jobs` disjoint shares; None where
  side by side does not pay (an accelerator backend, fewer cores than jobs)."""
  cores = sorted(os.sched_getaffinity(0))
  if jobs < 2 or len(cores) < jobs or jax.default_backend() != "cpu":
    return None
  return [cores[i::jobs] for i in range(jobs)]


def _child(conn, fn, args, cores, log_path):
  os.sched_setaffinity(0, cores)
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  try:
    conn.send(("ok", fn(*args)))
  except BaseException as e:   # pylint: disable=broad-except
    traceback.print_exc()
    sys.stderr.flush()
    conn.send(("error", f"{type(e).__name__}: {e}"))


def run(jobs: Sequence[tuple[str, Callable, tuple, str]]) -> list:
  """fn(*args) of each (name, fn, args, log_path); their return values.

  fn must be a module-level function and its arguments and result
  picklable. Side by side where `core_shares` allows, else in order here.
  """
  shares = core_shares(len(jobs))
  if shares is None:
    return [fn(*args) for _, fn, args, _ in jobs]
  context = multiprocessing.get_context("spawn")
  started = []
  for (name, fn, args, log_path), cores in zip(jobs, shares):
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, name=name,
                              args=(send, fn, args, cores, log_path))
    process.start()
    send.close()
    print(f"  {name}: cores {cores}, log {log_path}", flush=True)
    started.append((name, process, receive, log_path))
  results, failures = [], []
  for name, process, receive, log_path in started:
    try:
      status, value = receive.recv()
    except EOFError:   # it died without a word (killed, out of memory)
      status, value = "error", "it died"
    process.join()
    if status != "ok" or process.exitcode:
      failures.append(f"{name} failed ({value}, exit code "
                      f"{process.exitcode}); see {log_path}")
    results.append(value)
  if failures:
    raise RuntimeError("; ".join(failures))
  return results
