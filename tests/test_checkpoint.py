"""Orbax checkpoints: exact round trip of state and side data; NaN never saved."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.train import checkpoint as ckpt_lib


def test_round_trip_keeps_last_n(tmp_path):
  cp = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  tree = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "step": jnp.int32(0),
          "rng": jax.random.PRNGKey(3)}
  for step in (1, 2, 3):
    tree = dict(tree, step=jnp.int32(step), params={"w": tree["params"]["w"] * 2})
    cp.save(step, tree, data_state={"next_index": step * 10}, meta={"index_version": step - 1})
  cp.wait()
  assert cp.manager.all_steps() == [2, 3]
  state, data, meta = cp.restore(jax.tree.map(jnp.zeros_like, tree))
  np.testing.assert_array_equal(state["params"]["w"], tree["params"]["w"])
  np.testing.assert_array_equal(state["rng"], tree["rng"])
  assert int(state["step"]) == 3 and data == {"next_index": 30} and meta == {"index_version": 2}
  cp.close()


def test_non_finite_loss_stops_with_clear_message():
  ckpt_lib.check_finite(5, {"loss": 1.25})
  with pytest.raises(ckpt_lib.NonFiniteLossError, match="step 7"):
    ckpt_lib.check_finite(7, {"loss": float("nan")})


def test_restore_without_checkpoint_is_clear(tmp_path):
  cp = ckpt_lib.Checkpointer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    cp.restore({"w": jnp.zeros(2)})
  cp.close()
