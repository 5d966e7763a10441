"""The command line: --help and a missing --config say what to run, config
files load, saved configs load back, bad overrides fail naming the key."""
import glob
import os
import re
import subprocess
import sys

import ml_collections
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


@pytest.mark.parametrize("override, named", [
    ("--config.train.batch_sise=8", "--config.train.batch_sise"),
    ("--config.train.bogus=1", "--config.train.bogus"),
    ("--config.bogus.x=1", "--config.bogus.x")])
def test_unknown_override_key_is_named_in_one_line(override, named):
  # Whichever exception the installed ml_collections raises (1.x: an
  # AttributeError wrapping a KeyError), the user reads one line, no traceback.
  r = _main("--config=configs/tiny_cpu.py", override)
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {named}:"), r.stderr


def test_wrong_override_type_is_named():
  r = _main("--config=configs/tiny_cpu.py", "--config.train.batch_size=lots")
  assert r.returncode != 0
  assert "batch_size" in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 2


def test_unknown_task_is_refused():
  r = _main("--config=configs/tiny_cpu.py", "--config.task=dance")
  assert r.returncode != 0
  assert "dance" in r.stderr


def _config_files():
  return sorted(os.path.basename(p)
                for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _lists_tasks_and_configs(text):
  for task in config_lib.TASKS:
    assert re.search(rf"^  {task} ", text, re.M), f"task {task} not listed"
  for name in _config_files():
    assert re.search(rf"^  {re.escape(name)} ", text, re.M), name
  assert "--config.KEY=VALUE" in text and "Example" in text


def test_help_lists_tasks_configs_and_overrides():
  r = _main("--help")
  _lists_tasks_and_configs(r.stdout)
  # The `realm-jax` console script runs main.run() from a wrapper module
  # without a docstring: the same help.
  console = subprocess.run(
      [sys.executable, "-c", "import sys; sys.argv[0] = 'realm-jax'; "
       "from realm_jax import main; main.run()", "--help"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  _lists_tasks_and_configs(console.stdout)


def test_no_flag_prints_the_help_and_one_line_saying_config_is_required():
  r = _main()
  assert r.returncode != 0
  _lists_tasks_and_configs(r.stderr)
  assert r.stderr.rstrip().splitlines()[-1].startswith(
      "error: --config is required")
  assert "FATAL" not in r.stderr and "Traceback" not in r.stderr


def test_a_saved_config_loads_back_with_its_types_and_takes_overrides(tmp_path):
  """The trainer hands its config to the embedding job as JSON (save_config);
  the child's --config=<realm_jax/config.py>:<json> gives the same config,
  and overrides on its command line still apply and are type-checked."""
  from absl import flags
  config = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
      "demo", os.path.join(ROOT, "configs", "demo.py")).get_config()
  config.train.learning_rate = 1     # an int into a float field: 1.0
  config.extra = dict(shape=(2, 3), none=None, big=2**40, tiny=1e-30)
  arg = config_lib.save_config(config, str(tmp_path / "saved.json"))

  def load(*overrides):
    argv = ["realm_jax.main", f"--config={arg}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values,
                                    sys_argv=argv)
    values(argv)
    return values.config

  def typed(c):
    return {k: typed(v) if isinstance(v, ml_collections.ConfigDict)
            else (type(v), v) for k, v in c.items()}

  loaded = load()
  assert typed(loaded) == typed(config)
  assert loaded.extra.shape == (2, 3) and loaded.extra.none is None
  child = load("--config.task=embed", "--config.index.embed_parent_pid=42",
               "--config.index.embed_poll_interval=1",
               "--config.extra.shape=(4,5)")
  assert (child.task, child.index.embed_parent_pid) == ("embed", 42)
  assert child.index.embed_poll_interval == 1.0
  assert isinstance(child.index.embed_poll_interval, float)
  assert child.extra.shape == (4, 5)
  with pytest.raises(flags.IllegalFlagValueError, match="embed_parent_pid"):
    load("--config.index.embed_parent_pid=soon")
  # Without an argument the module is the defaults' config file.
  assert config_lib.get_config().to_dict() == config_lib.default_config().to_dict()


def test_bad_input_is_one_line_and_the_traceback_is_on_request(tmp_path):
  """A ValueError of a task (here: train.keep_checkpoints=0, refused before
  anything is deleted) ends the run with one `error:` line, not a traceback;
  REALM_JAX_TRACEBACK=1 shows the traceback."""
  args = ("--config=configs/tiny_cpu.py", "--config.task=finetune",
          f"--config.workdir={tmp_path}", "--config.train.keep_checkpoints=0",
          "--config.data.corpus_limit=5")
  r = _main(*args)
  assert r.returncode == 1
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert errors == [errors[0]] and "keep_checkpoints=0" in errors[0]
  assert "Traceback" not in r.stderr
  r = subprocess.run([sys.executable, "-m", "realm_jax.main", *args], cwd=ROOT,
                     capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, REALM_JAX_TRACEBACK="1"))
  assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.parametrize("where", ["workdir_is_a_file", "corpus_is_a_dir",
                                   "corpus_is_a_symlink_loop",
                                   "corpus_is_a_fifo"])
def test_a_path_of_the_wrong_kind_is_one_line(tmp_path, where):
  """task=index on a workdir that is a regular file, or a corpus path that is
  a directory or a symlink loop, used to print a traceback; it is one line
  naming the path. A FIFO hung (read twice); it is refused the same way."""
  corpus = tmp_path / "docs.jsonl"
  corpus.write_text('{"title": "A", "text": "Some text."}\n')
  workdir = tmp_path / "kb"
  if where == "workdir_is_a_file":
    workdir.write_text("not a directory")
  elif where == "corpus_is_a_dir":
    corpus = tmp_path / "a_dir"
    corpus.mkdir()
  elif where == "corpus_is_a_fifo":
    corpus = tmp_path / "fifo"
    os.mkfifo(corpus)
  else:
    corpus = tmp_path / "loop"
    os.symlink(tmp_path / "loop2", corpus)
    os.symlink(corpus, tmp_path / "loop2")
  r = _main("--config=configs/tiny_cpu.py", "--config.task=index",
            f"--config.workdir={workdir}", f"--config.data.corpus=jsonl:{corpus}")
  assert r.returncode == 1, r.stderr[-2000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert str(workdir if where == "workdir_is_a_file" else corpus) in errors[0]


def test_index_keep_zero_is_refused_before_any_work(tmp_path):
  """index.keep=0 would delete each index version as it is committed (the
  trainer then trained on a dead job's last index): refused at once."""
  r = _main("--config=configs/tiny_cpu.py", "--config.task=pretrain",
            f"--config.workdir={tmp_path}", "--config.index.keep=0")
  assert r.returncode == 1
  assert "error: ValueError: index.keep=0: keep at least 1" in r.stderr
  assert not os.path.exists(tmp_path / "blocks")   # nothing was built


@pytest.mark.parametrize("overrides,message", [
    (("--config.pretrain.head_warmup_steps=5",),
     "pretrain.head_warmup_steps needs held-out sentences"),
    (("--config.pretrain.heldout_queries=8",
      "--config.data.heldout_fraction=0.0"),
     "pretrain.heldout_queries needs data.heldout_fraction > 0")])
def test_a_warm_up_without_held_out_sentences_is_refused_before_any_work(
    tmp_path, overrides, message):
  r = _main("--config=configs/tiny_cpu.py", "--config.task=pretrain",
            f"--config.workdir={tmp_path}", *overrides)
  assert r.returncode == 1
  assert f"error: ValueError: {message}" in r.stderr, r.stderr[-2000:]
  assert not os.path.exists(tmp_path / "blocks")   # nothing was built


@pytest.mark.parametrize("key,value", [("train.num_candidates", 1),
                                       ("index.embed_batch_size", 0),
                                       ("finetune.reader_beam", 0)])
def test_counts_below_their_minimum_are_named_before_any_work(tmp_path, key,
                                                             value):
  """A count of 0 used to fail deep inside, naming no key ("k must be >= 1,
  got 0"; range() arg 3 must not be zero in the embedding job's log)."""
  r = _main("--config=configs/tiny_cpu.py", "--config.task=pretrain",
            f"--config.workdir={tmp_path}", f"--config.{key}={value}")
  assert r.returncode == 1
  assert f"error: ValueError: {key}={value}: must be at least" in r.stderr
  assert not os.path.exists(tmp_path / "blocks")   # nothing was built


def test_every_config_file_passes_the_checks():
  for name in _config_files():
    config_lib.check(config_flags.config_flags._LoadConfigModule(
        "c", os.path.join(ROOT, "configs", name)).get_config())
