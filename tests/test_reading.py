"""The reader learns to read from generated questions.

On a small real corpus (the first 150 demo summaries, MiniLM with 2 of its
layers), one reader is fine-tuned on the description -> title pairs only and
one on a mix with generated reading questions (finetune.generated_fraction),
same budget. On generated questions about documents neither saw in training
(question_gen's held-out split), the second must answer more of them: the
generated data holds answers inside passages, and they are learnable.
"""
import pytest

from realm_jax import config as config_lib
from realm_jax import evaluate
from realm_jax.data import corpus
from realm_jax.data import ner
from realm_jax.data import question_gen
from realm_jax.train import finetune

CORPUS_LIMIT = 150
STEPS = 60


def _config(workdir, blocks, fraction):
  c = config_lib.from_file("configs/demo.py")
  c.workdir = workdir
  c.task = "finetune"
  c.data.corpus_limit = CORPUS_LIMIT
  c.data.block_store = blocks
  c.model.num_layers = 2
  c.finetune.num_steps = STEPS
  c.finetune.warmup_steps = 5
  c.finetune.learning_rate = 2e-4
  c.finetune.batch_size = 8
  c.finetune.reader_beam = 2
  c.finetune.retriever_beam = 50
  c.finetune.generated_fraction = fraction
  c.train.log_every = 10
  c.train.checkpoint_every = STEPS
  c.index.searcher = "exact"
  return c


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("reading")
  blocks = str(tmp / "blocks")
  out = {}
  for name, fraction in (("titles_only", 0.0), ("with_generated", 0.75)):
    config = _config(str(tmp / name), blocks, fraction)
    finetune.run(config)
    store = corpus.BlockStore(blocks)
    heldout = question_gen.from_store(store, ner.QueryRecords(store),
                                      "heldout")
    out[name] = evaluate.evaluate(config, examples=heldout)
  return out


def test_generated_questions_teach_reading(results):
  n = results["titles_only"]["num_questions"]
  assert n >= 15
  titles = results["titles_only"]["exact_match"]
  generated = results["with_generated"]["exact_match"]
  assert generated > titles + 0.1, (titles, generated)
