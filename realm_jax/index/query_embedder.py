"""Embeds pretraining queries for retrieval with stale params, on the device."""
import jax
import numpy as np

from realm_jax.index import export as export_lib
from realm_jax.models.retriever import jitted_embed_queries


class QueryEmbedder:
  """Embeds queries with the params a retrieval step must use: the trainer's
  latest published ones, or those of an index version's export."""

  def __init__(self, cfg, workdir):
    self.cfg, self.workdir = cfg, workdir
    self._embed = jitted_embed_queries(cfg)
    self._cache = (None, None)   # (version, params)
    self.latest = None           # published by the trainer ("latest" mode)

  def params_of_export(self, version: int):
    if self._cache[0] != version:
      if not self.cfg.share_embedder:
        raise ValueError("index.query_params=index needs share_embedder: the "
                         "export holds only the document embedder")
      _, doc_params, _ = export_lib.load_export(
          export_lib.export_path(self.workdir, version))
      # On the device once per version, not copied with every batch.
      self._cache = (version, jax.device_put({"embedder": doc_params}))
    return self._cache[1]

  def __call__(self, retriever_params, query_ids, query_mask):
    return np.asarray(self._embed(retriever_params, query_ids, query_mask))
