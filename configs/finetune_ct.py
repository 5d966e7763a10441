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
choice: the REALM paper does not give its fine-tuning step count.
Expected result: CT test EM (regex match) 42.9 (paper, Table 1, REALM
X=CC-News; 46.8 with X=Wikipedia, ORQA 30.1).
"""
from realm_jax import paper_configs


def get_config():
  c = paper_configs.paper_finetune_config(
      dataset="jsonl:data/CuratedTrec.resplit.{split}.jsonl",
      workdir="workdir/finetune_ct", num_steps=5_000, checkpoint_every=1000,
      eval_split="test")
  c.finetune.regex_answers = True   # CuratedTREC answers are regexes
  return c
