"""REALM Open-QA fine-tuning on NaturalQuestions-Open with the paper's settings.

Command (after configs/pretrain_ccnews.py has run in workdir/pretrain_ccnews):
  python -m realm_jax.main --config=configs/finetune_nq.py \
      --config.finetune.init_from=workdir/pretrain_ccnews \
      --config.workdir=workdir/finetune_nq
  then the same with --config.task=eval (NQ test EM, recall@k, predictions)
  and --config.task=answer --config.answer.question="who wrote dracula".
From the released Hugging Face checkpoints instead of our pretraining run:
  --config.finetune.init_from= --config.model.init=hf_realm
  --config.model.init_path=<dir with embedder/ and encoder/ of
  google/realm-cc-news-pretrained-*>; the run then builds the block store of
  data.corpus and embeds it with that embedder into <workdir>/index/0.
Hardware: one accelerator (GPU or TPU core) and a host with RAM for the
13.35M x 128 float32 index (6.8 GB, memory-mapped) and its ScaNN searcher.
One question per step as in the paper (batch 1); on a mesh of n devices the
batch must be a multiple of n (e.g. --config.finetune.batch_size=8 on a
v3-8). The index is fixed, so no embedding job runs.
Runtime: not measured yet. A step is one BERT-base query encoding, a top-5000
ScaNN search with answer matching on the host, and the reader on 5 x 320
tokens; finetune.search_lag=1 overlaps the host part with the device.
num_steps=100k (about 1.1 epochs of the 87,925 TFDS training questions) is
our choice: the REALM paper does not give its fine-tuning step count.
Expected result: NQ test EM 40.4 (paper, Table 1, REALM X=CC-News; 39.2 with
X=Wikipedia, ORQA 33.3). TFDS natural_questions_open's validation split (3,610
questions) is the paper's NQ test set, hence eval.split="dev"; its train
split is the paper's train + dev (79,168 + 8,757).
"""
from realm_jax import paper_configs


def get_config():
  c = paper_configs.paper_finetune_config(
      dataset="natural_questions_open",
      workdir="workdir/finetune_nq", num_steps=100_000, checkpoint_every=5000,
      eval_split="dev")
  return c
