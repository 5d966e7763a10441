"""The command line: config files load, and bad overrides fail naming the key."""
import glob
import os
import subprocess
import sys

import pytest
from ml_collections import config_flags

from realm_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args):
  return subprocess.run([sys.executable, "-m", "realm_jax.main", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_loads_and_documents_itself(path):
  cfg = config_flags.config_flags._LoadConfigModule("c", path).get_config()
  assert cfg.task in config_lib.TASKS
  doc = open(path, encoding="utf-8").read().split('"""')[1]
  # STYLE.md: a config says what it runs, on what, for how long, with what result.
  for word in ("Command", "Hardware", "Runtime", "result"):
    assert word in doc, f"{os.path.basename(path)} docstring lacks {word!r}"


def test_unknown_override_key_is_named():
  r = _main("--config=configs/tiny_cpu.py", "--config.train.batch_sise=8")
  assert r.returncode != 0
  assert "batch_sise" in r.stderr


def test_wrong_override_type_is_named():
  r = _main("--config=configs/tiny_cpu.py", "--config.train.batch_size=lots")
  assert r.returncode != 0
  assert "batch_size" in r.stderr


def test_unknown_task_is_refused():
  r = _main("--config=configs/tiny_cpu.py", "--config.task=dance")
  assert r.returncode != 0
  assert "dance" in r.stderr
