"""Index a corpus into a knowledge base (config.task == "index").

  python -m realm_jax.main --config=configs/kb.py \
      --config.data.corpus=jsonl:my_docs.jsonl --config.workdir=workdir/my_kb \
      --config.kb.model=workdir/demo/finetune_realm

The first run embeds every block; a rerun after the corpus changed embeds
only the blocks of new and changed documents and commits a new version
(realm_jax/kb/update.py); `answer`, `eval` and qa.Answerer on
<workdir> use the newest committed version. A killed run leaves the previous
version serving and a rerun resumes.
"""
import json

from realm_jax import workdir as workdir_lib
from realm_jax.index import store as index_store
from realm_jax.kb import update as kb_update
from realm_jax.kb import versions as kb


def run(config):
  # An update compiles the embedder's programs the first run compiled: they
  # come from <workdir>/jax_cache/ instead (a second or so per block width).
  workdir_lib.enable_compilation_cache(config.workdir)
  versions = kb.versions_dir(config.workdir)
  before = set(index_store.list_versions(versions))
  path = kb_update.update(config)
  manifest = index_store.read_manifest(path)
  export = manifest["export"]
  committed = manifest["step"] not in before
  # An unchanged corpus commits nothing: its changes are none, not those of
  # the version still serving.
  changes = export["changes"] if committed else {
      "added": 0, "changed": 0, "removed": 0,
      "unchanged": export["documents"]}
  print(json.dumps({"version": manifest["step"], "path": path,
                    "committed": committed, "blocks": manifest["num_blocks"],
                    "documents": export["documents"], "changes": changes,
                    "skipped": export["skipped"],
                    "title_truncated": export.get("title_truncated", 0)}))
  return path
