"""The on-disk layout of a workdir, in one place: every task asks here.

  <workdir>/
    config.json       the run's config (save_config), read by answer/serve
    checkpoints/<n>/  train states (checkpoint.Checkpointer)
    reading/          fine-tuning's state after its reading steps
    exports/<n>/      retriever exports (index/export.py)
    index/<n>/        committed index versions (index/store.py); <n>.tmp/
                      one being built
    blocks/           the block store, unless data.block_store names one
    searcher_cache/   ScaNN searchers built for indexes of other workdirs
    jax_cache/        compiled XLA programs (task=answer and task=index)
    openqa.json       fine-tuning's record: which index and block store
    kb.json, kb/<n>/  a knowledge base's record and versions (kb/versions.py)

Numbered directories (<n>/) are steps or versions; only all-digit names
count, so <n>.tmp/ and orbax's temporary names are never listed.
"""
import os

import jax

CONFIG = "config.json"
OPENQA_RECORD = "openqa.json"
KB_RECORD = "kb.json"


def checkpoints_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, "checkpoints"))


def _subdir(name: str):
  return lambda workdir: os.path.join(workdir, name)


reading_dir = _subdir("reading")
exports_dir = _subdir("exports")
index_dir = _subdir("index")
blocks_dir = _subdir("blocks")
searcher_cache = _subdir("searcher_cache")
kb_dir = _subdir("kb")
config_path = _subdir(CONFIG)


def numbered(directory: str) -> list[int]:
  """The <n>/ subdirectories of `directory`, ascending ([] if it is absent)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def has_checkpoint(workdir: str) -> bool:
  """Whether a run in `workdir` saved a train state (it then resumes)."""
  return bool(numbered(checkpoints_dir(workdir)))


def enable_compilation_cache(workdir: str):
  """Compiled XLA programs persist in <workdir>/jax_cache/ for the next start."""
  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.abspath(workdir), "jax_cache"))
  # JAX only persists a program that took longer than
  # jax_persistent_cache_min_compile_time_secs (default 1 s) to compile, and
  # may skip small entries: on a fast or idle machine the programs a second
  # start needs would then never be written. Cache every program, whatever
  # its compile time or size (-1: no size threshold and no backend override).
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
