"""Retriever exports: params and RealmConfig round-trip, atomic and listed."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.index import export
from realm_jax.models import model_config as config_lib


def test_export_round_trips_params_and_config(tmp_path):
  cfg = config_lib.RealmConfig(bert=config_lib.tiny(dtype=jnp.bfloat16),
                               proj_size=16, share_embedder=False)
  params = {"bert": {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3)},
            "projection": {"bias": np.ones(4, np.float32)}}
  path = export.write_export(str(tmp_path), 500, params, cfg)
  step, got, got_cfg = export.load_export(path)
  assert step == 500 and got_cfg == cfg and got_cfg.bert.dtype is jnp.bfloat16
  assert jax.tree.structure(got) == jax.tree.structure(params)
  np.testing.assert_array_equal(got["bert"]["w"], params["bert"]["w"])
  assert sorted(os.listdir(path)) == ["model.json", "params.msgpack"]


def test_only_complete_exports_are_listed(tmp_path):
  cfg = config_lib.RealmConfig(bert=config_lib.tiny())
  for step in (1000, 500):
    export.write_export(str(tmp_path), step, {"w": np.zeros(2)}, cfg)
  # What a writer killed mid-export leaves behind: a private tmp dir.
  os.makedirs(tmp_path / "exports" / "1500.tmp-123")
  assert export.list_exports(str(tmp_path)) == [500, 1000]
  assert export.latest_export(str(tmp_path)) == str(tmp_path / "exports" / "1000")
  assert export.latest_export(str(tmp_path / "nothing")) is None


def test_unknown_config_field_is_named(tmp_path):
  d = export.config_to_dict(config_lib.RealmConfig(bert=config_lib.tiny()))
  d["bert"]["num_experts"] = 8
  with pytest.raises(ValueError, match="num_experts"):
    export.config_from_dict(d)


def test_background_exporter_writes_a_snapshot_and_reports_failures(tmp_path):
  import types
  from realm_jax.train import retriever_exports
  cfg = config_lib.RealmConfig(bert=config_lib.tiny())
  c = types.SimpleNamespace(workdir=str(tmp_path))
  w = jnp.arange(4.0)
  exporter = retriever_exports.BackgroundExporter(c, cfg, keep=2)
  for step in (10, 20, 30):
    state = {"params": {"retriever": {"embedder": {"w": w * step}}}}
    exporter.submit(state, step)
  exporter.close()
  assert export.list_exports(str(tmp_path)) == [20, 30]   # keep=2
  _, got, _ = export.load_export(export.export_path(str(tmp_path), 20))
  np.testing.assert_array_equal(got["w"], np.arange(4.0) * 20)
  # A write that fails surfaces at close, naming the problem.
  blocked = tmp_path / "blocked"
  blocked.write_text("a file where the workdir should be")
  bad = retriever_exports.BackgroundExporter(types.SimpleNamespace(workdir=str(blocked)),
                                 cfg)
  bad.submit(state, 40)
  with pytest.raises(OSError):
    bad.close()
