"""REALM Open-QA fine-tuning on CuratedTREC with the paper's settings.

CuratedTREC is not in TFDS: use ORQA's resplit files
CuratedTrec.resplit.{train,dev,test}.jsonl (one {"question", "answer":
[regex, ...]} a line), placed in data/ (or point finetune.dataset elsewhere;
"{split}" in the path picks the split's file). The answers are regexes: the
retriever's correct blocks are regex searches of the block text, the reader's
gold spans are regex matches aligned to tokens, and evaluation uses ORQA's
re.match on the prediction (finetune.regex_answers).

Command (after configs/pretrain_ccnews.py has run in workdir/pretrain_ccnews):
  python -m realm_jax.main --config=configs/finetune_ct.py \
      --config.finetune.init_from=workdir/pretrain_ccnews \
      --config.workdir=workdir/finetune_ct
  then --config.task=eval for the test score. Imported checkpoints instead:
  --config.finetune.init_from= --config.model.init=hf_realm
  --config.model.init_path=<google/realm-cc-news-pretrained-* dir>.
Hardware: one accelerator and a host with RAM for the memory-mapped index,
as configs/finetune_nq.py; batch 1 as in the paper.
Runtime: not measured yet; the steps cost what they cost for NQ.
num_steps=5k (about 3.7 epochs of the 1,353 training questions) is our
choice: REFERENCE.md does not give the paper's step count.
Expected result: CT test EM (regex match) 42.9 (paper, Table 1, REALM
X=CC-News; 46.8 with X=Wikipedia, ORQA 30.1).
"""
from realm_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.task = "finetune"
  c.workdir = "workdir/finetune_ct"
  c.finetune.init_from = "workdir/pretrain_ccnews"
  c.model.encoder = "bert_base"
  c.model.init = "hf_realm"
  c.data.corpus = "wikipedia"
  c.data.tokenizer = "wordpiece:vocab.txt"
  c.data.block_len = 288
  c.finetune.dataset = "jsonl:data/CuratedTrec.resplit.{split}.jsonl"
  c.finetune.regex_answers = True
  c.finetune.batch_size = 1
  c.finetune.num_steps = 5_000
  c.finetune.learning_rate = 1e-5
  c.finetune.question_len = 64
  c.finetune.reader_len = 320
  c.finetune.reader_beam = 5
  c.finetune.retriever_beam = 5000
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.index.searcher = "scann"
  c.eval.split = "test"
  c.eval.batch_size = 16
  c.eval.recall_k = 5
  return c
