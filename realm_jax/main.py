"""Entry point: `python -m realm_jax.main --config=<file> [--config.a.b=v ...]`.

Intentionally short: it parses the config and dispatches on `config.task`.
`--help` (usage_text) lists the tasks, the config files and how to override.
"""
import ast
import errno
import importlib
import os
import re
import sys
import textwrap

from absl import app
from absl import logging
from ml_collections import config_flags

from realm_jax import config as config_lib
from realm_jax import errors

# No default and not marked required: absl would stop a run without --config
# with a FATAL flags error; main() prints the help and one line instead.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file (configs/*.py).",
    lock_config=True)

# task -> (module with a `run(config)` function, what the task does).
_TASK_MODULES = {
    "ict": ("realm_jax.tasks.ict",
            "Inverse Cloze Task warm start of the retriever; its exports "
            "bootstrap the first index"),
    "pretrain": ("realm_jax.tasks.pretrain",
                 "REALM pretraining with index refreshes; starts the "
                 "embedding job itself unless index.spawn_embed_job=False"),
    "embed": ("realm_jax.tasks.embed",
              "the embedding job: embeds each new export of the trainer into "
              "<workdir>/index (or index.bootstrap once), with the trainer's "
              "config"),
    "finetune": ("realm_jax.tasks.finetune",
                 "Open-QA fine-tuning against a frozen index"),
    "eval": ("realm_jax.tasks.evaluate",
             "exact match and recall@k with bootstrap CIs, predictions; "
             "retrieval baselines (eval.retrieval)"),
    "index": ("realm_jax.tasks.index",
              "indexes data.corpus with a trained model (kb.model) into a "
              "knowledge base in <workdir>; rerun after the corpus changes to "
              "embed only new and changed documents"),
    "answer": ("realm_jax.tasks.answer",
               "answers answer.question (or answer.questions_file) with its "
               "evidence blocks"),
    "serve": ("realm_jax.tasks.serve",
              "serves the workdir's answers over HTTP: a JSON API with "
              "dynamic batching and a web page (serve.host, serve.port)"),
    "demo": ("realm_jax.tasks.demo",
             "everything above, offline, on the embedded demo corpus"),
}
assert set(_TASK_MODULES) == set(config_lib.TASKS)

# What bad input raises, throughout realm_jax: each carries a message that
# names the setting or file and what to do (FloatingPointError: a NaN/inf
# loss; the corrupt-file errors are ValueErrors; the OSErrors of a path of
# the wrong kind or without permission name the path).
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError,
                FloatingPointError, errors.JobFailed, PermissionError,
                IsADirectoryError, NotADirectoryError)
# OSErrors of a path the user gave: a symlink loop, a name too long.
_PATH_ERRNOS = (errno.ELOOP, errno.ENAMETOOLONG)

# The config files of a source checkout (a pip install has none).
_CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _first_doc_line(path: str) -> str:
  """The file's docstring's first line, read without running the file."""
  try:
    with open(path, encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
  except (OSError, SyntaxError):
    doc = ""
  return doc.strip().split("\n")[0]


def _table(rows) -> list[str]:
  """Two columns, the second wrapped to 79 characters under itself."""
  width = max(len(name) for name, _ in rows) + 4
  return [textwrap.fill(text, 79, initial_indent=f"  {name:<{width - 2}}",
                        subsequent_indent=" " * width) for name, text in rows]


def usage_text() -> str:
  """What --help prints: tasks, config files, overrides, an example."""
  lines = ["REALM pretraining and open-domain QA in JAX/Flax.", "",
           "Usage: python -m realm_jax.main --config=FILE "
           "[--config.KEY=VALUE ...]",
           "   or: realm-jax --config=FILE [--config.KEY=VALUE ...]", "",
           "Runs the task named by config.task:"]
  lines += _table([(task, text) for task, (_, text) in _TASK_MODULES.items()])
  shown = os.path.relpath(_CONFIGS_DIR)
  if shown.startswith(os.pardir):
    shown = _CONFIGS_DIR
  names = (sorted(n for n in os.listdir(_CONFIGS_DIR) if n.endswith(".py"))
           if os.path.isdir(_CONFIGS_DIR) else [])
  lines += ["", f"Config files in {shown}/:"]
  if names:
    lines += _table([(n, _first_doc_line(os.path.join(_CONFIGS_DIR, n)))
                     for n in names])
    lines.append("Each one's docstring gives its command, hardware, runtime "
                 "and expected result.")
  else:
    lines.append("  none here: they are in the source checkout's configs/")
  lines += [
      "", "Overrides: --config.KEY=VALUE sets any field after the file has",
      "built the config, e.g. --config.train.batch_size=8 or",
      "--config.task=eval; a wrong key or type fails at once. Every field is",
      "documented in realm_jax/config.py (--config=realm_jax/config.py runs",
      "the defaults).", "",
      "Example (a tiny pretraining run on the CPU):",
      f"  python -m realm_jax.main --config={shown}/tiny_cpu.py "
      "--config.workdir=/tmp/realm_tiny", ""]
  # absl formats the usage text with %: keep every % of a docstring literal.
  return "\n".join(lines).replace("%", "%%")


class _QuietLibraries(logging.logging.Filter):
  """Drops orbax's per-save INFO chatter, which would drown the training log."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or "orbax" not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("error: --config is required: --config=FILE, e.g. "
                         "one of the config files above")
  if config.task not in _TASK_MODULES:
    raise app.UsageError(
        f"config.task={config.task!r} is not one of {sorted(_TASK_MODULES)}")
  logging.info("task=%s workdir=%s", config.task, config.workdir)
  task = importlib.import_module(_TASK_MODULES[config.task][0])
  from realm_jax.train import loop  # pylint: disable=g-import-not-at-top
  try:
    config_lib.check(config)
    task.run(config)
  except loop.Stopped as e:
    # Preempted: the trainer saved its step; exit 0, as a job that did what
    # it could, so a scheduler restarts it and the rerun resumes.
    logging.warning("%s", e)
    print(f"realm_jax: {e}", file=sys.stderr)
    sys.exit(0)
  except _USER_ERRORS as e:
    # Bad input (a config value, a missing or corrupt file, a diverged run)
    # is reported in one line; REALM_JAX_TRACEBACK=1 shows where it came
    # from. Anything else (a bug) keeps its traceback.
    if os.environ.get("REALM_JAX_TRACEBACK"):
      raise
    sys.exit(f"error: {type(e).__name__}: {e}")
  except OSError as e:
    if os.environ.get("REALM_JAX_TRACEBACK"):
      raise
    if errors.is_disk_full(e):
      sys.exit(f"error: {errors.disk_full_message(e, config.workdir)}")
    if e.errno in _PATH_ERRNOS:   # a path that cannot be opened as given
      sys.exit(f"error: {type(e).__name__}: {e}")
    raise


def _parse_flags(argv):
  """absl's flag parsing, with a bad --config override reported in one line.

  ml_collections raises KeyError, AttributeError, TypeError or ValueError for
  an override naming no field or giving a value of the wrong type, which
  version depending; absl would print each as a long traceback.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    cause = e   # ml_collections 1.x wraps the KeyError in an AttributeError
    while cause.args and isinstance(cause.args[0], BaseException):
      cause = cause.args[0]
    text = str(cause.args[0] if isinstance(cause, KeyError) else cause)
    message = " ".join(text.split())
    key = re.match(r"'([^']+)'", message)
    overrides = [a.split("=")[0] for a in argv[1:]
                 if a.startswith("--config.")]
    named = [o for o in overrides if key and key.group(1) in o.split(".")]
    what = ("no such field" if isinstance(cause, (KeyError, AttributeError))
            else "a value of the wrong type")
    sys.exit(f"error: {' '.join(named or overrides) or '--config'}: {what}: "
             f"{message}")


def run():
  # absl's --help (and the usage printed for a UsageError) is the __main__
  # module's docstring: this module under `python -m`, the console script's
  # wrapper (which has none) under `realm-jax`.
  sys.modules["__main__"].__doc__ = usage_text()
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
