"""Orbax checkpoints: exact round trip of state and side data; NaN never saved."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import checkpoint as ckpt_lib
import two_processes


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
  # A finite loss with an update that overflowed: the saved state is checked.
  with pytest.raises(ckpt_lib.NonFiniteLossError, match="params' norm is inf"):
    ckpt_lib.check_finite(8, {"loss": 1.0, "param_norm": float("inf")})


def test_restore_without_checkpoint_is_clear(tmp_path):
  cp = ckpt_lib.Checkpointer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    cp.restore({"w": jnp.zeros(2)})
  cp.close()


def test_data_state_packing_round_trips_unicode_and_lengths():
  states = [{"a": 1}, {"name": "é" * 5, "pos": [1, 2, 3]}, {}]
  packed, lengths = ckpt_lib.pack_states(states)
  assert packed.dtype == np.uint8 and packed.shape[0] == 3
  assert ckpt_lib.unpack_states(packed, lengths) == {
      f"process_{i}": s for i, s in enumerate(states)}


def test_a_process_without_a_saved_data_state_is_refused():
  with pytest.raises(ValueError, match="saved by 2 process.*same number"):
    ckpt_lib.own_data_state({"process_5": {}, "process_6": {}}, "ckpt/3")


def test_two_processes_each_get_their_own_data_state_back(tmp_path):
  """Two real jax.distributed CPU processes save one checkpoint together;
  each restores its own data iterator state (not process 0's)."""
  procs = two_processes.start("two_process_checkpoint.py", str(tmp_path))
  outs = [json.loads(out.strip().splitlines()[-1])
          for out, _ in two_processes.finish(procs, timeout=180)]
  for i, got in enumerate(outs):
    assert got["data"] == {"next_index": 10 + i, "name": "é" * (i + 1)}
    assert got["meta"] == {"index_version": 2} and got["w"] == [0, 1, 2, 3]


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_is_refused_and_deletes_nothing(tmp_path, keep):
  cp = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  cp.save(1, {"w": jnp.ones(3)})
  cp.close()
  with pytest.raises(ValueError, match="keep at least 1"):
    ckpt_lib.Checkpointer(str(tmp_path), keep=keep)
  cp = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  assert cp.manager.all_steps() == [1]
  cp.close()


def _largest_file(directory):
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


def test_flipped_bytes_are_detected_on_every_restore_path(tmp_path, monkeypatch):
  cp = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
  tree = {"params": {"w": jnp.arange(4096.0)}, "step": jnp.int32(0)}
  for step in (1, 2):
    cp.save(step, dict(tree, step=jnp.int32(step)))
  cp.close()
  sums = tmp_path / "checkpoints_sha256"
  assert sorted(os.listdir(sums)) == ["1.json", "2.json"]

  # Verified once, then remembered: a second restore hashes nothing.
  hashed = []
  real = ckpt_lib.integrity.sha256_file
  monkeypatch.setattr(ckpt_lib.integrity, "sha256_file",
                      lambda p: hashed.append(p) or real(p))
  cp = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
  cp.restore(jax.tree.map(jnp.zeros_like, tree))
  first = len(hashed)
  assert first > 0
  cp.restore(jax.tree.map(jnp.zeros_like, tree))
  assert len(hashed) == first

  # A byte flipped in place (its mtime moves off the fixed past one the memo
  # saw, whatever the clock's resolution) is caught by both restore paths.
  step2 = tmp_path / "checkpoints" / "2"
  for root, _, files in os.walk(step2):
    for f in files:
      os.utime(os.path.join(root, f), ns=(10**18, 10**18))
  (sums / "2.verified.json").unlink()
  cp.restore(jax.tree.map(jnp.zeros_like, tree))      # remembers the old mtimes
  victim = _largest_file(step2)
  with open(victim, "r+b") as f:
    f.seek(os.path.getsize(victim) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
  name = os.path.relpath(victim, step2)
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match=name):
    cp.restore(jax.tree.map(jnp.zeros_like, tree))
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match="move .* away"):
    ckpt_lib.restore_params(str(tmp_path))
  # The older checkpoint is intact and still restores.
  state, _, _ = cp.restore(jax.tree.map(jnp.zeros_like, tree), step=1)
  assert int(state["step"]) == 1
  cp.close()


def test_pruned_checkpoints_drop_their_sums(tmp_path):
  cp = ckpt_lib.Checkpointer(str(tmp_path), keep=1, async_save=False)
  for step in (1, 2, 3):
    cp.save(step, {"w": jnp.zeros(3), "step": jnp.int32(step)})
  cp.close()
  assert cp.manager.all_steps() == [3]
  assert os.listdir(tmp_path / "checkpoints_sha256") == ["3.json"]


def test_a_state_of_another_layout_is_refused_in_one_line(tmp_path):
  """A checkpoint whose train state holds other entries (the earlier layout
  had "opt_state" where the state now has "opt") is refused before orbax
  reads it, naming both layouts."""
  cp = ckpt_lib.Checkpointer(str(tmp_path))
  old = {"params": {"w": jnp.ones(3)}, "opt_state": {"mu": jnp.zeros(3)},
         "step": jnp.int32(4), "rng": jax.random.PRNGKey(0)}
  cp.save(4, old)
  cp.wait()
  new = {"params": {"w": jnp.zeros(3)}, "opt": {"mu": jnp.zeros(3)},
         "step": jnp.int32(0), "rng": jax.random.PRNGKey(0)}
  with pytest.raises(ValueError, match=r"'opt_state'.*another version") as e:
    cp.restore(new)
  assert "\n" not in str(e.value)
  cp.close()


def test_a_changed_model_is_refused_in_one_line_naming_the_parameter(
    tmp_path):
  """Resuming with another model.proj_size (or encoder) used to print a
  99-line orbax tree; it is one line naming the first parameter that differs,
  its two shapes and where the run's settings are."""
  cp = ckpt_lib.Checkpointer(str(tmp_path))
  saved = {"params": {"retriever": {"proj": {"kernel": jnp.ones((4, 128))}},
                      "reader": {"w": jnp.ones(3)}},
           "opt": {"mu": jnp.zeros(3)}, "step": jnp.int32(4),
           "rng": jax.random.PRNGKey(0)}
  cp.save(4, saved)
  cp.wait()
  changed = jax.tree.map(jnp.zeros_like, saved)
  changed["params"]["retriever"]["proj"]["kernel"] = jnp.zeros((4, 256))
  with pytest.raises(ValueError, match=r"params/retriever/proj/kernel has "
                     r"shape \(4, 128\) there and \(4, 256\) here.*"
                     r"config\.json") as e:
    cp.restore(changed)
  assert "\n" not in str(e.value)
  state, _, _ = cp.restore(jax.tree.map(jnp.zeros_like, saved))
  assert int(state["step"]) == 4
  cp.close()


def test_diverged_params_are_refused_before_a_save():
  """lr=1e6 keeps the loss finite but leaves params of magnitude 1e14: the
  norm bound (train.max_param_norm) stops the run before anything is saved."""
  ckpt_lib.check_finite(3, {"loss": 2.0, "param_norm": 400.0}, 1e5)
  with pytest.raises(ckpt_lib.NonFiniteLossError,
                     match=r"1e\+14 at step 3, above train.max_param_norm"):
    ckpt_lib.check_finite(3, {"loss": 2.0, "param_norm": 1e14}, 1e5)
  ckpt_lib.check_finite(3, {"loss": 2.0, "param_norm": 1e14}, 0.0)  # no bound
