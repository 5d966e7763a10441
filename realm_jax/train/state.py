"""The train state and BERT's AdamW optimizer, built with optax.

The state is a plain dict pytree {"params", "opt", "step", "rng"}: it jits,
shards and checkpoints as it is, and holds arrays only. The optimizer is not
part of it: each trainer closes its step function over its optimizer (as
big_vision does) and passes it to `apply_gradients`.
"""
import jax
import jax.numpy as jnp
import optax


def create(params, tx: optax.GradientTransformation, rng) -> dict:
  return {"params": params, "opt": tx.init(params),
          "step": jnp.zeros((), jnp.int32), "rng": rng}


def apply_gradients(state: dict, grads, tx: optax.GradientTransformation) -> dict:
  """One optimizer update; the step count advances by one."""
  updates, opt = tx.update(grads, state["opt"], state["params"])
  return dict(state, params=optax.apply_updates(state["params"], updates),
              opt=opt, step=state["step"] + 1)


def step_rng(state: dict) -> jax.Array:
  """The dropout key of the state's step: a resumed run draws the same keys."""
  return jax.random.fold_in(state["rng"], state["step"])


def warmup_steps(num_steps: int, warmup: int = -1) -> int:
  """REALM's schedule: warm up for min(10000, max(100, num_steps // 10)) steps."""
  if warmup >= 0:
    return warmup
  return min(10_000, max(100, num_steps // 10))


def learning_rate_schedule(peak: float, num_steps: int, warmup: int = -1):
  """Linear warmup to `peak`, then linear decay to 0 at `num_steps`."""
  w = min(warmup_steps(num_steps, warmup), num_steps)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, w),
       optax.linear_schedule(peak, 0.0, max(num_steps - w, 1))], [w])


def decay_mask(params):
  """True where weight decay applies: not LayerNorm parameters, not biases."""
  def keep(path, _):
    names = [str(getattr(k, "key", k)) for k in path]
    return not (names[-1] == "bias" or any("LayerNorm" in n for n in names)
                or names[-1] == "scale")
  return jax.tree_util.tree_map_with_path(keep, params)


def _scale_by_adam_no_bias_correction(b1, b2, eps):
  """Adam moments without bias correction, as in BERT's AdamWeightDecayOptimizer."""
  def init(params):
    zeros = lambda p: jnp.zeros_like(p, jnp.float32)
    return (jax.tree.map(zeros, params), jax.tree.map(zeros, params))

  def update(grads, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state[0], grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state[1], grads)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, (mu, nu)
  return optax.GradientTransformation(init, update)


def scale_retriever_updates(factor: float) -> optax.GradientTransformation:
  """Multiplies the updates of params["retriever"] by `factor` when the
  params also hold a "reader" (REALM pretraining and fine-tuning; ICT trains
  the retriever alone and is left as it is)."""
  def update(updates, state, params=None):
    del params
    if factor == 1.0 or "reader" not in updates:
      return updates, state
    return dict(updates, retriever=jax.tree.map(lambda u: u * factor,
                                                updates["retriever"])), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def bert_adamw(train_config, schedule=None) -> optax.GradientTransformation:
  """Global-norm clip, Adam, decoupled weight decay, scheduled learning rate.

  `train_config` is the `config.train` section (or a finetune section with
  the same optimizer fields). Its optional `retriever_lr_scale` gives the
  retriever a learning rate of that multiple of the reader's. `schedule`
  replaces learning_rate_schedule over its num_steps.
  """
  c = train_config
  if schedule is None:
    schedule = learning_rate_schedule(c.learning_rate, c.num_steps,
                                      c.get("warmup_steps", -1))
  if c.get("adam_bias_correction", False):
    adam = optax.scale_by_adam(b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps)
  else:
    adam = _scale_by_adam_no_bias_correction(c.adam_b1, c.adam_b2, c.adam_eps)
  return optax.chain(
      optax.clip_by_global_norm(c.clip_norm),
      adam,
      optax.add_decayed_weights(c.weight_decay, mask=decay_mask),
      optax.scale_by_learning_rate(schedule),
      scale_retriever_updates(c.get("retriever_lr_scale", 1.0)),
  )
