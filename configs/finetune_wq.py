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
choice: the REALM paper does not give its fine-tuning step count.
Expected result: WQ test EM 40.7 (paper, Table 1, REALM X=CC-News; 40.2 with
X=Wikipedia, ORQA 36.4). TFDS web_questions has train (the paper's train +
dev, 3,417 + 361) and test (2,032, the paper's test set).
"""
from realm_jax import paper_configs


def get_config():
  c = paper_configs.paper_finetune_config(
      dataset="web_questions",
      workdir="workdir/finetune_wq", num_steps=10_000, checkpoint_every=2000,
      eval_split="test")
  return c
