"""The paper's Open-QA fine-tuning settings, shared by configs/finetune_*.py."""
import ml_collections

from realm_jax import config as config_lib


def paper_finetune_config(dataset: str, workdir: str, num_steps: int,
                          checkpoint_every: int, eval_split: str = "test"
                          ) -> ml_collections.ConfigDict:
  """ORQA/REALM Open-QA fine-tuning settings shared by configs/finetune_*.py:
  BERT-base, lr 1e-5, one question per step, top-5 blocks read from a
  5000-block retriever beam, reader input 320 tokens."""
  c = config_lib.default_config()
  c.task = "finetune"
  c.workdir = workdir
  c.finetune.init_from = "workdir/pretrain_ccnews"
  # Used only without init_from (e.g. model.init=hf_realm); with init_from
  # the model shape, corpus and index come from the pretraining workdir.
  c.model.encoder = "bert_base"
  c.model.init = "hf_realm"
  c.data.corpus = "wikipedia"
  c.data.tokenizer = "wordpiece:vocab.txt"   # BERT uncased, 30522 tokens
  c.data.block_len = 288
  c.finetune.dataset = dataset
  c.finetune.batch_size = 1
  c.finetune.num_steps = num_steps
  c.finetune.learning_rate = 1e-5
  c.finetune.question_len = 64
  c.finetune.reader_len = 320
  c.finetune.reader_beam = 5
  c.finetune.retriever_beam = 5000
  c.train.log_every = 100
  c.train.checkpoint_every = checkpoint_every
  c.index.searcher = "scann"
  c.eval.split = eval_split
  c.eval.batch_size = 16
  c.eval.recall_k = 5
  return c
