"""realm_jax.index: the corpus index, from exported params to hot-swapped search.

  trainer --export.write_export--> <workdir>/exports/<step>/
  embed job (embed.py, task=embed, own process; build.py builds each version)
      --> <workdir>/index/<step>.tmp/ --rename--> <step>/
  IndexWatcher (refresh.py, trainer thread) --verify, memmap, load (or build)--> searcher
  search.py: search(queries [Q, D], k, exclude [Q, E]) -> (ids [Q, k], scores [Q, k])

store.py owns the on-disk index format; every step that publishes something
(export, shard, index version, ScaNN cache) writes privately and renames.
"""
