"""A fine-tuned open-QA model with its frozen index, loaded for inference.

Fine-tuning records what it used in <workdir>/openqa.json (retrieval/openqa.py);
loading reads that record, so eval and answer search exactly the index the
model was trained against.
"""
import dataclasses

from realm_jax import checkpoint as ckpt_lib
from realm_jax.data import corpus
from realm_jax.models.model_config import RealmConfig
from realm_jax.models.reader import SpanReader
from realm_jax.retrieval import model_init
from realm_jax.retrieval import openqa


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


def load_finetuned(config) -> FineTuned:
  """The latest fine-tuning checkpoint of config.workdir and its index."""
  record = openqa.read_record(config.workdir)
  if record is None:
    raise FileNotFoundError(
        f"{openqa.record_path(config.workdir)} not found: {config.workdir} is not a "
        "fine-tuning workdir; run task=finetune with this workdir first")
  store = corpus.BlockStore(record["block_store"])
  emb, searcher = openqa.open_index(record["index_path"], store,
                                    config.index, openqa.searcher_cache(config))
  step, params = ckpt_lib.restore_params(config.workdir)
  cfg = record["model"]
  model_init.check_shapes(params["reader"], SpanReader(cfg), f"{config.workdir} reader")
  return FineTuned(cfg=cfg, params=params, store=store, emb=emb,
                   searcher=searcher, index_path=record["index_path"], step=step)
