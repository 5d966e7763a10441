"""A fine-tuned open-QA model with its frozen index, loaded for inference.

Fine-tuning records what it used in <workdir>/openqa.json (retrieval/openqa_record.py);
loading reads that record, so eval and answer search exactly the index the
model was trained against. A knowledge base workdir (task=index,
kb/versions.py) names its fine-tuned model in kb.json; it is loaded with
the knowledge base's newest committed version instead.
"""
import dataclasses

from realm_jax import checkpoint as ckpt_lib
from realm_jax.data import corpus
from realm_jax.kb import versions as kb
from realm_jax.models.model_config import RealmConfig
from realm_jax.models.reader import SpanReader
from realm_jax.retrieval import openqa_record
from realm_jax.weights import model_init


@dataclasses.dataclass
class FineTuned:
  """A fine-tuned model with its frozen index, ready to answer questions."""
  cfg: RealmConfig
  params: dict
  store: corpus.BlockStore
  emb: object          # index_store.ShardedEmbeddings [N, D]
  searcher: object
  index_path: str
  step: int


def reader_workdir(workdir: str) -> str:
  """The fine-tuning workdir whose reader answers for `workdir`: itself, or
  the model a knowledge base was indexed with."""
  if not kb.is_kb(workdir):
    if openqa_record.read_record(workdir) is None:
      raise FileNotFoundError(
          f"{openqa_record.record_path(workdir)} not found: {workdir} is not a "
          "fine-tuning workdir (run task=finetune first) nor a knowledge base "
          "(task=index)")
    return workdir
  model = kb.read_record(workdir)["model"]
  if not model or openqa_record.read_record(model) is None:
    raise ValueError(
        f"the knowledge base in {workdir} was indexed with kb.model="
        f"{model or '(config.model)'}, which has no fine-tuned reader; index "
        "with a fine-tuning workdir to answer questions (eval.retrieval="
        "bm25 and dense_zero_shot need none)")
  return model


def load_finetuned(config) -> FineTuned:
  """The latest fine-tuning checkpoint and its index: config.workdir's own,
  or for a knowledge base its model's with the newest intact version."""
  workdir = reader_workdir(config.workdir)
  record = openqa_record.read_record(workdir)
  cache = openqa_record.searcher_cache(config)
  if workdir == config.workdir:
    index_path = record["index_path"]
    store = corpus.BlockStore(record["block_store"])
    emb, searcher = openqa_record.open_index(index_path, store, config.index, cache)
  else:
    index_path = kb.newest_version(config.workdir, cache)
    if index_path is None:
      raise FileNotFoundError(f"no committed version in "
                              f"{kb.versions_dir(config.workdir)}")
    store, emb, searcher = kb.open_version(index_path, config.index, cache)
  step, params = ckpt_lib.restore_params(workdir)
  cfg = record["model"]
  model_init.check_shapes(params["reader"], SpanReader(cfg), f"{workdir} reader")
  return FineTuned(cfg=cfg, params=params, store=store, emb=emb,
                   searcher=searcher, index_path=index_path, step=step)
