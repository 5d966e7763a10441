"""The pretraining step's optimizer update: the retriever can be held fixed
for the first steps (train.retriever_frozen_steps) while the reader trains."""
import jax
import numpy as np

from realm_jax import config as config_lib
from realm_jax.models import convert
from realm_jax.models import model_config as mc
from realm_jax.models.reader import MLMEncoder
from realm_jax.models.retriever import Retriever
from realm_jax.train import pretrain_step
from realm_jax.train import state as state_lib


def _batch(r, B=4, K=2, Lq=8, Ld=10, Lr=16, M=3, vocab=64):
  ids = lambda *shape: r.integers(1, vocab, shape).astype(np.int32)
  ones = lambda *shape: np.ones(shape, np.int32)
  zeros = lambda *shape: np.zeros(shape, np.int32)
  return dict(query_ids=ids(B, Lq), query_mask=ones(B, Lq),
              mlm_positions=r.integers(1, Lq, (B, M)).astype(np.int32),
              mlm_labels=ids(B, M), mlm_weights=np.ones((B, M), np.float32),
              cand_ids=ids(B, K, Ld), cand_segments=zeros(B, K, Ld),
              cand_mask=ones(B, K, Ld), reader_ids=ids(B, K, Lr),
              reader_segments=zeros(B, K, Lr), reader_mask=ones(B, K, Lr))


def test_retriever_is_frozen_for_the_first_steps_only():
  cfg = mc.RealmConfig(bert=mc.tiny(vocab_size=64), proj_size=16)
  rng = jax.random.PRNGKey(0)
  params = {"retriever": Retriever(cfg).init(
                rng, *convert.example_inputs(Retriever(cfg)))["params"],
            "reader": MLMEncoder(cfg).init(
                rng, *convert.example_inputs(MLMEncoder(cfg)))["params"]}
  train = config_lib.default_config().train
  train.learning_rate, train.num_steps, train.warmup_steps = 1e-3, 10, 0
  tx = state_lib.bert_adamw(train)
  state = state_lib.create(params, tx, rng)
  step = jax.jit(lambda s, b: pretrain_step.train_step(s, b, cfg, tx,
                                                  retriever_frozen_steps=2))
  r = np.random.default_rng(0)
  moved = lambda a, b: not all(np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(a), jax.tree.leaves(b)))
  for i in range(3):
    new, metrics = step(state, _batch(r))
    assert moved(state["params"]["reader"], new["params"]["reader"])
    frozen = i < 2
    assert moved(state["params"]["retriever"],
                 new["params"]["retriever"]) != frozen
    assert (float(metrics["retriever_grad_norm"]) == 0) == frozen
    state = new
