"""A tiny CPU configuration used by the tests: minutes, not hours.

Command:
  python -m realm_jax.main --config=configs/tiny_cpu.py --config.task=pretrain
Hardware: one CPU core. Runtime: well under a minute per task. Expected
result: the loss falls over the run; the numbers mean nothing beyond that.
"""
from realm_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.task = "pretrain"
  c.workdir = "workdir/tiny_cpu"
  c.model.encoder = "tiny"
  c.model.init = "random"
  c.model.dropout_rate = 0.0
  c.data.corpus = "demo"
  c.data.corpus_limit = 60
  c.data.queries = "demo"
  c.data.block_len = 64
  c.data.query_len = 32
  c.data.reader_len = 96
  c.data.max_masks = 5
  c.data.masking = "salient"
  c.train.batch_size = 4
  c.train.num_steps = 30
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 5
  c.train.num_candidates = 4
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.ict.query_len = 32
  c.index.refresh_every = 10
  c.index.searcher = "exact"
  c.index.embed_batch_size = 64
  return c
