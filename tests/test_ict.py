"""ICT through the shared training loop: a resumed run repeats the
uninterrupted one bitwise, and the final retriever is exported."""
import json
import os
import shutil
import sys

import jax
import numpy as np

from realm_jax import checkpoint as ckpt_lib
from realm_jax.tasks import ict as ict_task

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "configs"))
import tiny_cpu  # pylint: disable=g-import-not-at-top,wrong-import-position


def _config(workdir, blocks):
  c = tiny_cpu.get_config()
  c.task, c.workdir = "ict", str(workdir)
  c.data.block_store = str(blocks)
  c.model.dropout_rate = 0.1   # the step's dropout keys must resume too
  c.train.num_steps, c.train.checkpoint_every, c.train.log_every = 6, 3, 1
  return c


def _losses(workdir):
  with open(os.path.join(workdir, "ict_metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_resume_repeats_the_uninterrupted_run(tmp_path):
  blocks = tmp_path / "blocks"
  straight = tmp_path / "straight"
  ict_task.run(_config(straight, blocks))
  assert sorted(os.listdir(straight / "exports")) == ["6"]
  # What a job killed after the checkpoint of step 3 leaves behind.
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "6")
  shutil.rmtree(resumed / "exports" / "6")
  os.remove(resumed / "ict_metrics.jsonl")
  ict_task.run(_config(resumed, blocks))
  expected = _losses(straight)
  assert sorted(expected) == list(range(1, 7))
  assert _losses(resumed) == {s: expected[s] for s in (4, 5, 6)}
  jax.tree.map(np.testing.assert_array_equal,
               ckpt_lib.restore_params(str(resumed))[1],
               ckpt_lib.restore_params(str(straight))[1])
