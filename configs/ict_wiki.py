"""ICT warm start of the retriever on Wikipedia blocks (ORQA's recipe).

Command:
  python -m realm_jax.main --config=configs/ict_wiki.py \
      --config.workdir=gs://BUCKET/ict_wiki
Hardware: a TPUv3 pod slice (ORQA trained with batch 4096). Runtime: 100k
steps. Expected result: the retriever whose export bootstraps REALM's first
index; the REALM paper reports NQ dev Recall@5 of 13.9 zero-shot for it
(REALM paper, Table 3, the ORQA row of its NQ dev ablations).
"""
from realm_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.task = "ict"
  c.workdir = "workdir/ict_wiki"
  c.model.encoder = "bert_base"
  c.model.init = "bert_safetensors"
  c.data.corpus = "wikipedia"
  c.data.tokenizer = "wordpiece:vocab.txt"
  c.train.batch_size = 4096
  c.train.num_steps = 100_000
  c.train.learning_rate = 1e-4
  c.ict.query_len = 64
  c.ict.remove_prob = 0.9
  return c
