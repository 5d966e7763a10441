"""The offline demo: REALM end to end on embedded Wikipedia summaries.

Command (a fresh machine; `make demo` installs first):
  python -m realm_jax.main --config=configs/demo.py
The full 10,033-summary corpus: configs/demo_full.py.
Hardware: a 2-core CPU, no accelerator, no network.
Runtime: about 14-15 min after the install on a 2-core CPU (the baseline's
170 fine-tuning steps are 5 of them; the REALM fine-tune starts after the
baseline's 150 reading steps and runs the last 20; README, "Reading"; the
MLM head's warm-up and the held-out measures of pretraining 3.5).
Expected result: two tables with 95% bootstrap CIs (EM, recall@1,
recall@5), over the 253 demo QA test questions (description -> title) and
the 356 natural test questions (EM also by kind: 141 answered by the
passage's subject, 215 inside it), for no retrieval, BM25, zero-shot dense
retrieval with the initial and with the REALM-pretrained retriever,
fine-tuning without REALM pretraining, REALM-pretrained + fine-tuned, and
BM25 fused with the latter's retriever; the paired CIs of what REALM
pretraining adds on each; held-out masked recall before and after
pretraining; six answers marked right or wrong; plots under
workdir/demo/plots. The README gives the measured tables ("Subject
answers").
"""
from realm_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.task = "demo"
  c.workdir = "workdir/demo"
  c.model.init = "minilm"        # all 6 layers: a third of them loses most
                                 # of MiniLM's retrieval quality (README)
  c.model.retriever_pooling = "mean"   # how MiniLM was trained; its [CLS]
                                       # pooler is untrained
  c.model.proj_size = 384        # = MiniLM's hidden size, identity start:
  c.model.proj_init = "identity" # the initial retriever is MiniLM's cosine
  c.data.corpus = "demo"
  c.data.corpus_limit = 2700     # documents, a fixed subset by title hash:
                                 # 4,439 blocks and 253 test questions
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
  c.train.warmup_steps = 4
  # MiniLM has no MLM head: the head warms up first (plain MLM with the
  # null document, the head alone: train/head_warmup.py), the reader then
  # reads for 10 steps, and the retriever moves at a tenth of its rate.
  c.pretrain.head_warmup_steps = 200
  c.pretrain.head_warmup_eval_every = 200
  c.train.retriever_frozen_steps = 10
  c.train.retriever_lr_scale = 0.1
  # 128 held-out masked sentences measured every 15 steps: utility, MLM
  # accuracy, masked recall@5 (train/heldout.py; README, "Pretraining you
  # can watch"). Each measure costs ~12 s here.
  c.pretrain.heldout_queries = 128
  c.pretrain.heldout_every = 15
  c.train.log_every = 5
  c.train.checkpoint_every = 30
  # One refresh, at the end: an index build of the demo corpus takes ~2.5
  # minutes on 2 cores. The demo then fine-tunes against the index of the
  # final retriever (demo.final_index), as REALM does.
  c.index.refresh_every = 30
  c.index.keep = 10
  c.index.searcher = "scann"
  c.index.embed_batch_size = 64
  c.finetune.batch_size = 16
  # Three quarters of the questions are generated from the corpus's own
  # sentences (data/question_gen.py), the rest are description -> title
  # pairs. The first 150 of the 170 steps are reading steps (each question
  # read in one block that holds its answer); the last 20 read the top 3
  # retrieved blocks and train the query embedder. The reading steps run
  # once: the REALM fine-tune starts after the baseline's
  # (finetune.reading_from, set by the demo), with its own query embedder
  # and index. How these were chosen: README, "Reading".
  c.finetune.generated_fraction = 0.75
  # Half the sentences that can ask for their document's subject do: a
  # wh-question's answer may then be the passage's subject or inside it
  # (README, "Subject answers").
  c.finetune.subject_percent = 50
  c.finetune.reading_steps = 150
  c.finetune.num_steps = 170
  c.finetune.learning_rate = 1e-4   # higher rates collapse the reader
  # The query embedder learns at a tenth of the reader's rate: at the full
  # rate it loses MiniLM's recall (README, "Reading").
  c.finetune.retriever_lr_scale = 0.1
  c.finetune.warmup_steps = 16
  c.finetune.question_len = 24
  c.finetune.reader_len = 112
  c.finetune.reader_beam = 3
  c.finetune.retriever_beam = 100
  c.eval.batch_size = 32
  # Not an answer that the question already says ("Who created Star Wars?"
  # -> not "Star Wars"; ours, README "Reading").
  c.eval.answer_not_in_question = True
  # Nor a span of a type the question rules out ("how many" -> a number,
  # "which city" -> a name; qa/answer_rules.py).
  c.eval.answer_types = True
  c.eval.recall_k = 5
  # task=answer and serve give no answer below this joint logit: chosen on
  # the natural and description dev sets (README, "Abstaining").
  c.answer.min_score = 12.0
  return c
