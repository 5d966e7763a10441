"""Entry point: `python -m realm_jax.main --config=configs/<name>.py [--config.a.b=v ...]`.

Intentionally short: it parses the config and dispatches on `config.task`.
"""
import importlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from realm_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True)
flags.mark_flags_as_required(["config"])

# task -> module with a `run(config)` function.
_TASK_MODULES = {
    "ict": "realm_jax.train.ict",
    "pretrain": "realm_jax.train.pretrain",
    "embed": "realm_jax.index.embed",
    "finetune": "realm_jax.train.finetune",
    "eval": "realm_jax.evaluate",
    "answer": "realm_jax.answer",
    "demo": "realm_jax.demo",
}
assert set(_TASK_MODULES) == set(config_lib.TASKS)


class _QuietLibraries(logging.logging.Filter):
  """Drops orbax's per-save INFO chatter, which would drown the training log."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or "orbax" not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.task not in _TASK_MODULES:
    raise app.UsageError(
        f"config.task={config.task!r} is not one of {sorted(_TASK_MODULES)}")
  logging.info("task=%s workdir=%s", config.task, config.workdir)
  importlib.import_module(_TASK_MODULES[config.task]).run(config)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
