"""BERT's AdamW: schedule, weight-decay mask, and the update rule itself."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from realm_jax import config as config_lib
from realm_jax.train import finetune_step
from realm_jax.train import state as state_lib


def _cfg(**kw):
  c = dict(learning_rate=1e-3, num_steps=1000, warmup_steps=-1, adam_b1=0.9,
           adam_b2=0.999, adam_eps=1e-6, clip_norm=1.0, weight_decay=0.01,
           adam_bias_correction=False)
  c.update(kw)
  return ml_collections.ConfigDict(c)


@pytest.mark.parametrize("steps,expected", [(200_000, 10_000), (5000, 500), (300, 100)])
def test_warmup_rule(steps, expected):
  assert state_lib.warmup_steps(steps) == expected


def test_schedule_warms_up_then_decays_to_zero():
  sched = state_lib.learning_rate_schedule(1.0, 1000)   # warmup 100
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(50)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(sched(100)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(sched(550)), 0.5, rtol=1e-6)
  assert float(sched(1000)) == 0.0


def test_phase_schedules_decay_at_the_end_of_the_reading_steps():
  f = config_lib.default_config().finetune
  f.learning_rate, f.num_steps, f.reading_steps, f.warmup_steps = 1.0, 300, 200, 20
  shared = finetune_step.schedule(f)
  np.testing.assert_allclose(float(shared(200)), 100 / 280, rtol=1e-6)
  f.phase_schedules = True
  sched = finetune_step.schedule(f)
  np.testing.assert_allclose(float(sched(20)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(sched(110)), 0.5, rtol=1e-6)
  assert float(sched(200)) == 0.0             # the reading steps end at 0
  np.testing.assert_allclose(float(sched(210)), 0.5, rtol=1e-6)   # warmup again
  np.testing.assert_allclose(float(sched(220)), 1.0, rtol=1e-6)
  assert float(sched(300)) == 0.0
  f.reading_steps = 300                       # no open-QA steps: one schedule
  np.testing.assert_allclose(float(finetune_step.schedule(f)(20)), 1.0)


def test_decay_mask_excludes_layernorm_and_bias():
  params = {"layer_0": {"attention": {"query": {"kernel": 1, "bias": 1}},
                        "output_LayerNorm": {"scale": 1, "bias": 1}},
            "embeddings": {"LayerNorm": {"scale": 1}, "word_embeddings": {"embedding": 1}}}
  mask = state_lib.decay_mask(params)
  assert mask["layer_0"]["attention"]["query"] == {"kernel": True, "bias": False}
  assert mask["layer_0"]["output_LayerNorm"] == {"scale": False, "bias": False}
  assert mask["embeddings"] == {"LayerNorm": {"scale": False},
                                "word_embeddings": {"embedding": True}}


def test_update_matches_bert_adam_weight_decay_by_hand():
  """Two steps of BERT's AdamWeightDecayOptimizer (no bias correction), computed by hand."""
  c = _cfg(warmup_steps=0, num_steps=10, learning_rate=0.1, clip_norm=100.0)
  params = {"w": {"kernel": jnp.array([1.0, -2.0])}, "b": {"bias": jnp.array([0.5])}}
  tx = state_lib.bert_adamw(c)
  st = state_lib.create(params, tx, jax.random.PRNGKey(0))
  g = {"w": {"kernel": jnp.array([0.2, -0.4])}, "b": {"bias": jnp.array([1.0])}}
  w, b = np.array([1.0, -2.0]), np.array([0.5])
  m_w = v_w = m_b = v_b = 0.0
  for step in range(2):
    st = state_lib.apply_gradients(st, g, tx)
    lr = 0.1 * (1 - step / 10)
    gw, gb = np.array([0.2, -0.4]), np.array([1.0])
    m_w = 0.9 * m_w + 0.1 * gw; v_w = 0.999 * v_w + 0.001 * gw**2
    m_b = 0.9 * m_b + 0.1 * gb; v_b = 0.999 * v_b + 0.001 * gb**2
    w = w - lr * (m_w / (np.sqrt(v_w) + 1e-6) + 0.01 * w)
    b = b - lr * (m_b / (np.sqrt(v_b) + 1e-6))      # no decay on bias
  np.testing.assert_allclose(st["params"]["w"]["kernel"], w, rtol=1e-5)
  np.testing.assert_allclose(st["params"]["b"]["bias"], b, rtol=1e-5)
  assert int(st["step"]) == 2
