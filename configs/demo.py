"""The offline demo: REALM end to end on embedded Wikipedia summaries.

Command (a fresh machine; `make demo` installs first):
  python -m realm_jax.main --config=configs/demo.py
Full 10,033-summary corpus: add --config.data.corpus_limit=0.
Hardware: a 2-core CPU, no accelerator, no network.
Runtime: under 15 minutes for the default subset (see README for the
measured stage times); the full corpus takes much longer (README).
Expected result: a summary table of demo QA test EM and recall@5 for the
reader with no retrieval (EM 0: an extractive reader with no evidence has
nothing to extract), the initial MiniLM retriever without REALM pretraining,
and the REALM-pretrained model; plus plots under workdir/demo/plots.
"""
from realm_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.task = "demo"
  c.workdir = "workdir/demo"
  c.model.init = "minilm"
  c.model.num_layers = 3         # MiniLM's first 3 of 6 layers: twice as fast
  c.model.retriever_pooling = "mean"   # how MiniLM was trained; its [CLS]
                                       # pooler is untrained
  c.data.corpus = "demo"
  c.data.corpus_limit = 300      # documents, a fixed subset by title hash
  c.data.queries = "demo"        # X = Z: the corpus's own sentences
  c.data.heldout_fraction = 0.25  # sentences kept out of pretraining, for
                                 # recall on held-out masked sentences
  c.data.tokenizer = "minilm"
  c.data.block_len = 96
  c.data.query_len = 32
  c.data.reader_len = 112
  c.train.batch_size = 4
  c.train.num_candidates = 3     # null + 2 retrieved
  c.train.num_steps = 30
  c.train.learning_rate = 5e-5
  c.train.warmup_steps = 6
  c.train.log_every = 5
  c.train.checkpoint_every = 15
  c.index.refresh_every = 10
  c.index.keep = 10
  c.index.searcher = "scann"
  c.index.embed_batch_size = 64
  c.finetune.batch_size = 4
  c.finetune.num_steps = 24
  c.finetune.learning_rate = 5e-5
  c.finetune.warmup_steps = 5
  c.finetune.question_len = 24
  c.finetune.reader_len = 112
  c.finetune.reader_beam = 3
  c.finetune.retriever_beam = 100
  c.eval.batch_size = 8
  c.eval.recall_k = 5
  return c
