"""Random parameters for a Flax module without compiling its init.

`module.init` under jit costs several seconds of XLA compile on CPU (the
random-number code of every initializer); tests only need some plausible
weights of the right shapes, so fill `jax.eval_shape(init)` with numpy draws:
BERT-like N(0, 0.02) weights, LayerNorm scales near 1, small random biases.
"""
import flax.traverse_util as traverse_util
import jax
import numpy as np


def random_params(module, *args, seed=0):
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
  rng = np.random.default_rng(seed)
  out = {}
  for path, spec in traverse_util.flatten_dict(shapes).items():
    noise = rng.standard_normal(spec.shape)
    if path[-1] == "scale":
      value = 1.0 + 0.1 * noise
    elif path[-1] in ("bias", "mlm_bias"):
      value = 0.1 * noise
    else:
      value = 0.02 * noise
    out[path] = np.asarray(value, spec.dtype)
  return traverse_util.unflatten_dict(out)
