"""REALM pretraining with X = Z = Wikipedia (salient_span_wikipedia from TFDS).

Command:
  python -m realm_jax.main --config=configs/pretrain_wiki.py \
      --config.workdir=gs://BUCKET/realm_wiki
Hardware: 64 TPUv3 cores for training, 16 for the embedding job (paper).
Runtime: 200k steps at batch 512. Expected result after fine-tuning: NQ test EM
about 39.2, WQ 40.2, CT 46.8 (paper, Table 1, REALM X=Wikipedia).
"""
from realm_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.task = "pretrain"
  c.workdir = "workdir/pretrain_wiki"
  c.model.encoder = "bert_base"
  c.model.init = "bert_safetensors"
  c.data.corpus = "wikipedia"
  c.data.queries = "salient_span_wikipedia"
  c.data.tokenizer = "wordpiece:vocab.txt"
  c.index.spawn_embed_job = False
  c.index.embed_poll_interval = 5.0   # a GCS list call per look on gcsfuse
  return c
