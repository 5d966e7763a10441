"""Starts a tests/two_process_*.py script as the two processes of a
jax.distributed CPU run (ids 0 and 1, one free coordinator port), for the
multi-host tests of checkpoints, preemption and the embedding job."""
import os
import socket
import subprocess
import sys


def start(script: str, *args: str) -> list[subprocess.Popen]:
  """`python tests/<script> <id> <port> *args` for ids 0 and 1."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  path = os.path.join(os.path.dirname(__file__), script)
  return [subprocess.Popen([sys.executable, path, str(i), str(port), *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for i in range(2)]


def finish(procs, timeout: float) -> list[tuple[str, str]]:
  """(stdout, stderr) of each process once it exited 0 (the timeout is a
  hang guard); a failure shows the end of its stderr."""
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    outs.append((out, err))
  return outs
