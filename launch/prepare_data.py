"""Builds a run's cached data once, before its processes start.

  python launch/prepare_data.py --config=configs/pretrain_ccnews.py \
      --config.workdir=/shared/realm [--config.a.b=v ...]

The trainer builds the block store (and, for pretraining, the query records'
cache) itself when they are missing. That is right for one process, but with
several (every host of a TPU slice, every node of a GPU job) each would build
the same files at once, and the embedding job cannot start before the block
store exists. tpu_vm.sh and gpu.sh therefore run this once, on one host, and
start the jobs after it. It runs on the CPU (JAX_PLATFORMS=cpu is set here), so
it never holds an accelerator that the trainer needs. Rerunning it is cheap:
it opens what is already built.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position
from absl import logging  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from realm_jax.data import catalog  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  os.makedirs(config.workdir, exist_ok=True)
  store = catalog.block_store(config)
  logging.info("block store %s: %d blocks", store.path, store.num_blocks)
  if config.task == "pretrain":
    records = catalog.query_records(config, store)
    logging.info("query records: %d", len(records))
  print(f"prepared: block store {store.path} ({store.num_blocks} blocks)")


if __name__ == "__main__":
  app.run(main)
