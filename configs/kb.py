"""Your own knowledge base: index a corpus with the demo's fine-tuned model.

Command (after `make demo`, which leaves workdir/demo/finetune_initial):
  python -m realm_jax.main --config=configs/kb.py \
      --config.data.corpus=jsonl:my_docs.jsonl
then ask with --config.task=answer --config.answer.question="..." (or
realm_jax.qa.Answerer("workdir/my_kb") from Python), and rerun the first
command after my_docs.jsonl changed: only new and changed documents are
embedded, and a new version is committed atomically.
Hardware: a 2-core CPU. Runtime: about a minute for a few hundred documents
(MiniLM embeds some 250 blocks/s there).
Expected result: one JSON line naming the committed version, its blocks and
documents, what changed and what was skipped (README: "Your own knowledge
base").
"""
import os

from realm_jax import config as config_lib


def get_config():
  # The demo's config: the reader settings its model was trained with.
  c = config_lib.from_file(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
  c.task = "index"
  c.workdir = "workdir/my_kb"
  # The demo's baseline fine-tuned model (README, "Reading": natural EM
  # 42.2; the REALM-pretrained retriever's model reads with the same reading
  # steps, 42.7).
  c.kb.model = "workdir/demo/finetune_initial"
  c.data.corpus = ""      # required: jsonl:<path>, one {"id", "title", "text"}
  c.data.corpus_limit = 0
  return c
