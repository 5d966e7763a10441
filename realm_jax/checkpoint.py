"""Orbax checkpoints: train state plus the JSON side data a resume needs.

A checkpoint holds the params, optimizer state, step and rng (one pytree), the
data iterator's state, and metadata such as the index version in service.
Every process has its own data iterator (each reads its shard of the data),
so the data state is gathered from all processes and saved as
{"process_<i>": state_i}; a restore hands each process its own entry.
Saves are asynchronous; orbax writes into a temporary directory and renames
it when complete, so a job killed mid-save leaves the previous checkpoint as
the latest one. The trainer refuses to save a non-finite loss (see
`check_finite`), so a NaN never reaches a checkpoint.

Once a save is complete its files are sealed: their sha256 go to
<workdir>/checkpoints_sha256/<step>.json, outside orbax's directory. Every
restore checks them (once per unchanged file set, see integrity.verify_once),
so flipped bytes stop a resume or a fine-tuning start with a clear error
instead of training on silently wrong weights. A step without sums (killed
between the save and the seal, or written before sums were kept) is restored
with a warning.
"""
import json
import math
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from realm_jax import integrity
from realm_jax import workdir as workdir_lib


class NonFiniteLossError(FloatingPointError):
  pass


class CorruptCheckpointError(ValueError):
  """A checkpoint whose bytes differ from those sealed after its save."""


def _sums_path(directory: str, step: int, suffix: str = "json") -> str:
  return os.path.join(directory + "_sha256", f"{step}.{suffix}")


def seal(directory: str, step: int):
  """Records the sha256 of every file of the finished checkpoint `step`."""
  step_dir = os.path.join(directory, str(step))
  integrity.write_json_atomic(_sums_path(directory, step), {
      "step": step,
      "files": {rel: integrity.sha256_file(os.path.join(step_dir, rel))
                for rel in integrity.tree_files(step_dir)}})


def verify(directory: str, step: int):
  """Raises CorruptCheckpointError naming the first file that differs from
  its seal; warns (and returns) when the step was never sealed."""
  step_dir = os.path.join(directory, str(step))
  path = _sums_path(directory, step)
  if not os.path.isfile(path):
    logging.warning("checkpoint %s has no checksums (killed right after its "
                    "save, or saved by an older realm_jax): not verified",
                    step_dir)
    return
  with open(path) as f:
    sealed = json.load(f)["files"]
  files = integrity.tree_files(step_dir)
  advice = (f"move {step_dir} (and {path}) away to use the previous "
            "checkpoint")

  def check():
    if sorted(sealed) != files:
      missing = sorted(set(sealed) - set(files))
      extra = sorted(set(files) - set(sealed))
      raise CorruptCheckpointError(
          f"checkpoint {step_dir} is corrupt: missing {missing}, unexpected "
          f"{extra}; {advice}")
    for rel in files:
      if integrity.sha256_file(os.path.join(step_dir, rel)) != sealed[rel]:
        raise CorruptCheckpointError(
            f"checkpoint {step_dir} is corrupt: {rel} does not match the "
            f"sha256 recorded when it was saved; {advice}")

  integrity.verify_once(step_dir, files, check,
                        _sums_path(directory, step, "verified.json"))


# What must be finite before a save: the loss the step computed and the norm
# of the params it returned (the state that is saved: a finite loss can come
# with an update that overflows, e.g. learning_rate=inf).
FINITE_KEYS = ("loss", "param_norm")


def check_finite(step: int, metrics: dict, max_param_norm: float = 0.0):
  """Stops the run with a clear message on a NaN/inf loss or updated params,
  or params whose norm passed `max_param_norm` (0: no bound), before any
  save: a learning rate of 1e6 keeps the loss finite for a while but leaves
  params of magnitude 1e14, which no later step recovers from."""
  for key in FINITE_KEYS:
    if key not in metrics:
      continue
    value = float(metrics[key])
    what = "loss" if key == "loss" else "the updated params' norm"
    if not math.isfinite(value):
      raise NonFiniteLossError(
          f"{what} is {value} at step {step}; stopping without saving. The "
          "last good checkpoint is kept; lower train.learning_rate or check "
          "the data.")
    if key == "param_norm" and max_param_norm and value > max_param_norm:
      raise NonFiniteLossError(
          f"{what} is {value:.3g} at step {step}, above "
          f"train.max_param_norm={max_param_norm:g}: the run diverged; "
          "stopping without saving. The last good checkpoint is kept; lower "
          "train.learning_rate.")


def pack_states(states: list) -> tuple[np.ndarray, np.ndarray]:
  """JSON states -> (uint8 [P, max_len] padded UTF-8, int64 [P] lengths)."""
  raw = [json.dumps(s, sort_keys=True).encode() for s in states]
  out = np.zeros((len(raw), max((len(r) for r in raw), default=0)), np.uint8)
  for i, r in enumerate(raw):
    out[i, :len(r)] = np.frombuffer(r, np.uint8)
  return out, np.array([len(r) for r in raw], np.int64)


def unpack_states(packed: np.ndarray, lengths: np.ndarray) -> dict:
  return {f"process_{i}": json.loads(bytes(packed[i, :int(n)]).decode())
          for i, n in enumerate(lengths)}


def gather_data_states(state) -> dict:
  """{"process_<i>": state of process i} on every process (a collective)."""
  if jax.process_count() == 1:
    return {"process_0": state}
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  packed, length = pack_states([state])
  width = int(multihost_utils.process_allgather(np.array(packed.shape[1])).max())
  padded = np.zeros((1, width), np.uint8)
  padded[:, :packed.shape[1]] = packed
  return unpack_states(
      multihost_utils.process_allgather(padded[0]).reshape(-1, width),
      multihost_utils.process_allgather(length).reshape(-1))


def own_data_state(saved: dict, directory: str):
  """This process's entry of a saved {"process_<i>": ...} data state."""
  key = f"process_{jax.process_index()}"
  if key not in saved:
    raise ValueError(
        f"{directory}: the data state was saved by {len(saved)} process(es) and "
        f"has no entry for process {jax.process_index()}; resume with the same "
        "number of processes")
  return saved[key]


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    if keep < 1:
      # orbax reads max_to_keep=0 as "keep none" and deletes every
      # checkpoint in the workdir, old ones included.
      raise ValueError(f"train.keep_checkpoints={keep}: keep at least 1 "
                       "checkpoint (0 would delete every checkpoint of this "
                       "run)")
    self.directory = workdir_lib.checkpoints_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.async_save = async_save
    if jax.process_index() == 0:   # sums of steps removed by hand
      steps = set(self.manager.all_steps())
      self._drop_sums(lambda step: step not in steps)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, data_state: Any = None,
           meta: Optional[dict] = None, force: bool = False):
    """`state` is a pytree dict (params, opt, step, rng); the rest is JSON."""
    args = {"state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave(dict(meta or {}))}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(gather_data_states(data_state))
    self._drop_sums(lambda saved: saved == step)   # a step saved again
    self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    # orbax's save waited for the previous async save: everything but `step`
    # (still being written when saving asynchronously) is complete.
    self._seal(in_flight=step if self.async_save else None)

  def _seal(self, in_flight: Optional[int] = None):
    if jax.process_index() != 0:   # one writer; the files are shared
      return
    steps = set(self.manager.all_steps())
    for step in steps - {in_flight}:
      if not os.path.isfile(_sums_path(self.directory, step)):
        seal(self.directory, step)
    self._drop_sums(lambda step: step not in steps)   # orbax pruned them

  def _drop_sums(self, which):
    sums_dir = self.directory + "_sha256"
    for name in os.listdir(sums_dir) if os.path.isdir(sums_dir) else []:
      if which(int(name.split(".")[0])):
        os.remove(os.path.join(sums_dir, name))

  def restore(self, abstract_state: dict, step: Optional[int] = None):
    """Returns (state, data_state or None, meta) for `step` (default latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    verify(self.directory, step)
    self._check_entries(abstract_state, step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    args = {"state": ocp.args.StandardRestore(abstract),
            "meta": ocp.args.JsonRestore()}
    if os.path.isdir(os.path.join(self.directory, str(step), "data")):
      args["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    logging.info("restored checkpoint step %d from %s", step, self.directory)
    data = restored.get("data")
    if data is not None:
      data = own_data_state(data, f"{self.directory}/{step}")
    return restored["state"], data, restored["meta"]

  def _check_entries(self, abstract_state: dict, step: int):
    """One clear line, instead of an error deep inside orbax, when the saved
    state is laid out differently, e.g. by a realm_jax whose train state held
    "opt_state" (now "opt"). Such a checkpoint is not converted: its run
    resumes with the realm_jax that wrote it, and its params still serve
    finetune.init_from, eval and answer (restore_params reads only those)."""
    tree = ocp.PyTreeCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "state").tree
    saved = sorted(tree)
    if saved != sorted(abstract_state):
      raise ValueError(
          f"checkpoint {self.directory}/{step} holds the entries {saved}, not "
          f"{sorted(abstract_state)}: it was written by another version of "
          "realm_jax and cannot be resumed; start a new workdir")
    # A changed model setting (model.proj_size, model.encoder, ...) used to
    # surface as a 99-line orbax tree: name the first parameter that differs.
    there, here = (_shapes(tree.get("params", {})),
                   _shapes(abstract_state.get("params", {})))
    for path in sorted(there.keys() | here.keys()):
      if there.get(path) != here.get(path):
        raise ValueError(
            f"checkpoint {self.directory}/{step} does not fit this model: "
            f"params/{path} has shape {there.get(path, 'none')} there and "
            f"{here.get(path, 'none')} here; a model.* setting differs from "
            "the run that wrote it (its settings are in the workdir's "
            "config.json): resume with them, or start a new workdir")

  def wait(self):
    self.manager.wait_until_finished()
    self._seal()

  def close(self):
    self.wait()
    self.manager.close()


def _shapes(tree) -> dict:
  """{"a/b/c": shape tuple} of a params tree of dicts (or its orbax
  metadata)."""
  return {"/".join(str(key.key) for key in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def restore_params(workdir: str, step: Optional[int] = None):
  """Reads only the params of a run's checkpoint, as numpy arrays.

  Another run (fine-tuning from pretraining, evaluation) needs the weights but
  not the optimizer state, whose structure depends on that run's optimizer;
  the other entries are left unread (orbax placeholders), which also halves
  the bytes read compared with a full restore.

  Returns (step, params). Raises FileNotFoundError naming the directory when
  there is no checkpoint.
  """
  directory = workdir_lib.checkpoints_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint under {directory}")
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {directory}")
    verify(directory, step)
    tree = ocp.PyTreeCheckpointHandler().metadata(
        epath.Path(directory) / str(step) / "state").tree
    if "params" not in tree:
      raise ValueError(f"checkpoint {directory}/{step} has no params "
                       f"(entries: {sorted(tree)})")

    def wanted(path, leaf):
      if getattr(path[0], "key", None) != "params":
        return ocp.PLACEHOLDER
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
    abstract = jax.tree_util.tree_map_with_path(wanted, tree)
    restore_args = jax.tree.map(
        lambda x: x if x is ocp.PLACEHOLDER else ocp.RestoreArgs(
            restore_type=np.ndarray), abstract)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args)))
  finally:
    manager.close()
  logging.info("read the params of checkpoint step %d from %s", step, directory)
  return int(step), restored["state"]["params"]
