"""Preemption of a multi-host run: SIGTERM reaches one host; JAX's
preemption service makes every host finish the same step, save it, and
stop (a host stopping alone would leave the others in the step's
collectives). One host's SIGTERM is tested in tests/test_pretrain.py."""
import json
import signal

import stopping_child
import two_processes


def test_sigterm_to_one_of_two_processes_stops_both_at_one_saved_step(
    tmp_path):
  procs = two_processes.start("two_process_preempt.py", str(tmp_path))
  try:
    stopping_child.wait_until_stopped(procs[1])   # after its step 3
    procs[1].send_signal(signal.SIGTERM)
    procs[1].send_signal(signal.SIGCONT)
    outs = [json.loads(out.strip().splitlines()[-1])
            for out, _ in two_processes.finish(procs, timeout=300)]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  stopped = outs[0]["stopped"]
  assert stopped is not None and stopped >= 3
  assert outs[1]["stopped"] == stopped
  assert stopped in outs[0]["checkpoints"]
