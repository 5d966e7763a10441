"""Which searcher serves an index: the config's choice, and the factory.

search.py holds the searcher protocol and the exact searchers; ScaNN is
scann_searcher.py. This module sits above both so neither imports the other
back.
"""
from realm_jax.index import scann_searcher
from realm_jax.index import search


def searcher_options(index_config) -> dict:
  """`make_searcher` keyword arguments from config.index: the kind, plus the
  index.scann settings that are set (0 or "" keeps ScaNN's rule of thumb)."""
  options = {"kind": index_config.searcher}
  if index_config.searcher == "scann":
    options.update({k: v for k, v in index_config.scann.items()
                    if v not in (0, "")})
  return options


def make_searcher(emb, kind: str = "scann", cache_dir: str | None = None,
                  **overrides) -> search.Searcher:
  """Builds a searcher over emb [N, D]; kind is scann | exact | device.

  For ScaNN, `cache_dir` (e.g. the index version's directory, whose contents
  never change) holds the serialized searcher: the first call builds and saves
  it, later calls load it (see `scann_searcher.cached`).
  """
  if kind == "exact":
    return search.ExactSearcher(emb, **overrides)
  if kind == "device":
    return search.DeviceSearcher(emb, **overrides)
  if kind != "scann":
    raise ValueError(f"searcher kind must be scann | exact | device, got {kind!r}")
  if cache_dir is None:
    return scann_searcher.ScannSearcher(emb, **overrides)
  return scann_searcher.cached(emb, cache_dir, **overrides)
