"""Preemption of a multi-host run: SIGTERM reaches one host; JAX's
preemption service makes every host finish the same step, save it, and
stop (a host stopping alone would leave the others in the step's
collectives). One host's SIGTERM is tested in tests/test_pretrain.py."""
import json
import os
import signal
import socket
import subprocess
import sys

import stopping_child


def test_sigterm_to_one_of_two_processes_stops_both_at_one_saved_step(
    tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = os.path.join(os.path.dirname(__file__), "two_process_preempt.py")
  procs = [subprocess.Popen([sys.executable, script, str(i), str(port),
                             str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    stopping_child.wait_until_stopped(procs[1])   # after its step 3
    procs[1].send_signal(signal.SIGTERM)
    procs[1].send_signal(signal.SIGCONT)
    outs = []
    for p in procs:
      out, err = p.communicate(timeout=300)
      assert p.returncode == 0, err[-3000:]
      outs.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  stopped = outs[0]["stopped"]
  assert stopped is not None and stopped >= 3
  assert outs[1]["stopped"] == stopped
  assert stopped in outs[0]["checkpoints"]
