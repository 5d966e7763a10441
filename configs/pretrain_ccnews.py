"""REALM pretraining with X = CC-News, Z = Wikipedia blocks: the paper's settings.

Command (Cloud TPU, see launch/tpu_vm.sh for the embedding slice):
  python -m realm_jax.main --config=configs/pretrain_ccnews.py \
      --config.workdir=gs://BUCKET/realm_ccnews
Hardware: the paper used 64 TPUv3 cores for training and 16 for the index
refresh job. Runtime: about 200k steps at batch 512; the paper does not state
wall time. Expected result: after fine-tuning (configs/finetune_nq.py), NQ test
EM about 40.4, WQ 40.7, CT 42.9 (paper, Table 1, REALM X=CC-News).
Start from the ICT warm start (configs/ict_wiki.py): set
--config.model.retriever_init=<ict workdir> (its newest retriever export
replaces the retriever after model.init).
"""
from realm_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.task = "pretrain"
  c.workdir = "workdir/pretrain_ccnews"
  c.model.encoder = "bert_base"
  c.model.init = "bert_safetensors"   # BERT-base uncased weights, init_path=...
  c.data.corpus = "wikipedia"
  c.data.queries = "cc_news"
  c.data.tokenizer = "wordpiece:vocab.txt"   # BERT uncased, 30522 tokens
  c.train.batch_size = 512
  c.train.num_steps = 200_000
  c.train.learning_rate = 3e-5
  c.train.num_candidates = 8
  c.index.refresh_every = 500
  c.index.searcher = "scann"
  c.index.spawn_embed_job = False     # runs on its own slice (launch/)
  c.index.embed_poll_interval = 5.0   # a GCS list call per look on gcsfuse
  return c
