"""What ICT and REALM pretraining share before their first step: the corpus,
model config, mesh, optimizer and the (resumed) train state."""
import os
from typing import NamedTuple

import optax

from realm_jax import checkpoint as ckpt_lib
from realm_jax.data import catalog
from realm_jax.train import loop
from realm_jax.train import partition
from realm_jax.train import state as state_lib
from realm_jax.weights import model_init


class Run(NamedTuple):
  """What ICT and pretraining both set up before their first step."""
  tokenizer: object
  store: object
  cfg: object            # RealmConfig
  mesh: object
  checkpointer: ckpt_lib.Checkpointer
  tx: optax.GradientTransformation
  state: dict            # the train state (state.py), resumed or fresh
  data_state: object     # the data iterator's saved state, or None
  meta: dict


def prepare(config, with_reader: bool) -> Run:
  """Corpus, model config, mesh, optimizer and the (resumed) train state."""
  partition.maybe_initialize_distributed()
  os.makedirs(config.workdir, exist_ok=True)
  tok = catalog.tokenizer(config)
  store = catalog.block_store(config)
  cfg = model_init.realm_config(config, tok.vocab_size)
  mesh = partition.make_mesh()
  partition.check_batch_size(config.train.batch_size, mesh)
  checkpointer = ckpt_lib.Checkpointer(config.workdir,
                                      keep=config.train.keep_checkpoints)
  tx = state_lib.bert_adamw(config.train)
  state, data_state, meta = loop.create_or_restore(
      checkpointer,
      lambda rng: model_init.init_params(config, cfg, rng,
                                         with_reader=with_reader),
      tx, config.seed, mesh)
  return Run(tok, store, cfg, mesh, checkpointer, tx, state, data_state, meta)
