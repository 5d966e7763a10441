"""REALM Open-QA fine-tuning on WebQuestions with the paper's settings.

Command (after configs/pretrain_ccnews.py has run in workdir/pretrain_ccnews):
  python -m realm_jax.main --config=configs/finetune_wq.py \
      --config.finetune.init_from=workdir/pretrain_ccnews \
      --config.workdir=workdir/finetune_wq
  then --config.task=eval for the test EM. Imported checkpoints instead:
  --config.finetune.init_from= --config.model.init=hf_realm
  --config.model.init_path=<google/realm-cc-news-pretrained-* dir>.
Hardware: one accelerator and a host with RAM for the memory-mapped index,
as configs/finetune_nq.py; batch 1 as in the paper.
Runtime: not measured yet; the steps cost what they cost for NQ.
num_steps=10k (about 2.6 epochs of the 3,778 TFDS training questions) is our
choice: REFERENCE.md does not give the paper's step count.
Expected result: WQ test EM 40.7 (paper, Table 1, REALM X=CC-News; 40.2 with
X=Wikipedia, ORQA 36.4). TFDS web_questions has train (the paper's train +
dev, 3,417 + 361) and test (2,032, the paper's test set).
"""
from realm_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.task = "finetune"
  c.workdir = "workdir/finetune_wq"
  c.finetune.init_from = "workdir/pretrain_ccnews"
  c.model.encoder = "bert_base"
  c.model.init = "hf_realm"
  c.data.corpus = "wikipedia"
  c.data.tokenizer = "wordpiece:vocab.txt"
  c.data.block_len = 288
  c.finetune.dataset = "web_questions"
  c.finetune.batch_size = 1
  c.finetune.num_steps = 10_000
  c.finetune.learning_rate = 1e-5
  c.finetune.question_len = 64
  c.finetune.reader_len = 320
  c.finetune.reader_beam = 5
  c.finetune.retriever_beam = 5000
  c.train.log_every = 100
  c.train.checkpoint_every = 2000
  c.index.searcher = "scann"
  c.eval.split = "test"
  c.eval.batch_size = 16
  c.eval.recall_k = 5
  return c
