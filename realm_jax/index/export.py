"""Retriever exports: how the trainer hands document-embedder params to the
index builder, through files.

  <workdir>/exports/<step>/params.msgpack   flax.serialization msgpack of the
                                            RetrieverEmbedder params (documents)
  <workdir>/exports/<step>/model.json       RealmConfig as a dict

An export is written into a private temporary directory and renamed into place,
so a reader listing all-digit names only ever sees complete exports. Only one
process of a multi-host trainer should call write_export.
"""
import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from realm_jax import workdir as workdir_lib
from realm_jax.index import store
from realm_jax.models.model_config import BertConfig, RealmConfig

PARAMS = "params.msgpack"
MODEL = "model.json"


def export_path(workdir: str, step: int) -> str:
  return os.path.join(workdir_lib.exports_dir(workdir), str(int(step)))


def _jsonable(value):
  """Dtype fields (jnp.float32, np.dtype) become {"dtype": name}."""
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (type, np.dtype)):
    return {"dtype": np.dtype(value).name}
  return value


def config_to_dict(config: RealmConfig) -> dict:
  return _jsonable(dataclasses.asdict(config))


def config_from_dict(d: dict) -> RealmConfig:
  """Inverse of config_to_dict; unknown keys raise ValueError naming them."""
  def fields(cls, values, where):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"{where}: unknown {cls.__name__} field(s) "
                       f"{sorted(unknown)}")
    return {k: (getattr(jnp, v["dtype"]) if isinstance(v, dict) and "dtype" in v
                else v) for k, v in values.items()}
  d = dict(d)
  bert = BertConfig(**fields(BertConfig, d.pop("bert", {}), "model.json/bert"))
  return RealmConfig(bert=bert, **fields(RealmConfig, d, "model.json"))


def write_export(workdir: str, step: int, params, realm_config: RealmConfig) -> str:
  """Atomically writes exports/<step>/; returns its path.

  params: the RetrieverEmbedder params tree used for DOCUMENTS (see
  models.retriever.doc_embedder_params). If the step was already exported
  (e.g. a resumed run reaching the same step), the existing export is kept.
  """
  final = export_path(workdir, step)
  if os.path.isdir(final):
    return final
  os.makedirs(workdir_lib.exports_dir(workdir), exist_ok=True)
  tmp = f"{final}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  host_params = jax.tree.map(np.asarray, jax.device_get(params))
  for name, data in ((PARAMS, serialization.msgpack_serialize(host_params)),
                     (MODEL, json.dumps(config_to_dict(realm_config),
                                        indent=1).encode())):
    with open(os.path.join(tmp, name), "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  store.fsync_dir(tmp)
  os.rename(tmp, final)
  store.fsync_dir(workdir_lib.exports_dir(workdir))
  return final


def copy_export(workdir: str, source: str, step: int) -> str:
  """Atomically writes exports/<step>/ as a copy of the export at `source`
  (kept if the step was already exported, as write_export)."""
  final = export_path(workdir, step)
  if os.path.isdir(final):
    return final
  tmp = f"{final}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(source, tmp)
  store.fsync_dir(tmp)
  os.rename(tmp, final)
  store.fsync_dir(workdir_lib.exports_dir(workdir))
  return final


def list_exports(workdir: str) -> list[int]:
  """Steps of the complete exports, ascending."""
  return workdir_lib.numbered(workdir_lib.exports_dir(workdir))


def latest_export(workdir: str) -> str | None:
  steps = list_exports(workdir)
  return export_path(workdir, steps[-1]) if steps else None


def load_config(path: str) -> RealmConfig:
  """The RealmConfig of an export, without reading its params."""
  with open(os.path.join(path, MODEL)) as f:
    return config_from_dict(json.load(f))


def load_export(path: str):
  """-> (step, params (nested dict of np arrays), RealmConfig)."""
  name = os.path.basename(os.path.normpath(path))
  if not name.isdigit():
    raise ValueError(f"{path}: an export directory is named by its step")
  try:
    with open(os.path.join(path, MODEL)) as f:
      config = config_from_dict(json.load(f))
    with open(os.path.join(path, PARAMS), "rb") as f:
      params = serialization.msgpack_restore(f.read())
  except FileNotFoundError as e:
    raise ValueError(f"{path}: incomplete export, missing {e.filename}") from None
  return int(name), params, config
