"""Retrieval recall on held-out masked sentences: does pretraining help?

REALM's claim is that the MLM signal teaches the retriever to fetch blocks
that help fill in the blanks. This measures it directly, without the reader:
for query sentences held out of pretraining (`data.heldout_fraction`, a
fixed hash-selected subset of the query records), mask one salient span as
pretraining does, embed the masked sentence with a retriever export, search
that export's index (never the sentence's own block, as in training) and
count the queries whose top k blocks contain the masked span's text
(normalized whole-token match, `qa.has_answer`).

    queries = masked_queries(heldout_records, tokenizer, query_len=96,
                             max_masks=10)
    recall = masked_recall(store, queries, pretrain_workdir, version, k=5)

The demo reports it for the initial retriever (index 0, export 0) and for
the REALM-pretrained one (the newest committed index and its export).
"""

import numpy as np

from realm_jax import stats
from realm_jax import workdir as workdir_lib
from realm_jax.data import masking
from realm_jax.data import qa_data
from realm_jax.index import export as export_lib
from realm_jax.index import search
from realm_jax.index import store as index_store
from realm_jax.index.query_embedder import QueryEmbedder


def masked_queries(records, tokenizer, query_len: int, max_masks: int,
                   limit: int = 500, seed: int = 0) -> dict:
  """Masks up to `limit` records (salient spans; records without one are
  skipped). Returns {query_ids, query_mask: int32 [n, query_len],
  mlm_positions, mlm_labels: int32 [n, max_masks], mlm_weights: float32
  [n, max_masks], answers: [n] masked span texts, source_uids: [n]}."""
  rng = np.random.default_rng(seed)
  ids, masks, answers, uids = [], [], [], []
  mlm = {key: [] for key in ("mlm_positions", "mlm_labels", "mlm_weights")}
  for i in range(len(records)):
    if len(ids) >= limit:
      break
    record = records[i]
    encoding = tokenizer.encode(record["text"])
    ex = masking.mask_salient_span(tokenizer, record, rng, query_len,
                                   max_masks, encoding=encoding)
    if ex is None:
      continue
    # The answer is the masked span as written in the sentence (decoding the
    # wordpieces would respace punctuation: "ISO/IEC" -> "iso / iec").
    tokens = np.flatnonzero(ex["query_ids"] == tokenizer.mask_id) - 1
    offsets = encoding.offsets
    ids.append(ex["query_ids"])
    masks.append(ex["query_mask"])
    for key, values in mlm.items():
      values.append(ex[key])
    answers.append(record["text"][offsets[tokens[0], 0]:offsets[tokens[-1], 1]])
    uids.append(record["source_uid"])
  if not ids:
    raise ValueError("no held-out record has a salient span to mask")
  return {"query_ids": np.stack(ids).astype(np.int32),
          "query_mask": np.stack(masks).astype(np.int32),
          **{key: np.stack(values) for key, values in mlm.items()},
          "answers": answers, "source_uids": uids}


def span_hits(store, rows: np.ndarray, answers) -> np.ndarray:
  """bool [n]: whether any block of rows[i] (-1: none) holds answers[i]."""
  texts = [[f"{store.title(int(r))} {store.text(int(r))}" for r in row if r >= 0]
           for row in rows]
  return qa_data.retrieval_hits(texts, [[a] for a in answers]).any(axis=1)


def masked_hits(store, queries: dict, workdir: str, version: int,
                k: int = 5, batch_size: int = 64) -> np.ndarray:
  """bool [n]: which `queries` have the masked span in one of the top k
  blocks of `workdir`'s index version `version`, queries embedded by its
  export."""
  index_path = index_store.version_path(workdir_lib.index_dir(workdir), version)
  index_store.verify(index_path, store.fingerprint)
  _, _, cfg = export_lib.load_export(export_lib.export_path(workdir, version))
  embedder = QueryEmbedder(cfg, workdir)
  params = embedder.params_of_export(version)
  n = len(queries["answers"])
  q_emb = np.concatenate([embedder(
      params, queries["query_ids"][s:s + batch_size],
      queries["query_mask"][s:s + batch_size]) for s in range(0, n, batch_size)])
  source = store.rows_for_uids(queries["source_uids"])
  searcher = search.ExactSearcher(np.asarray(index_store.load(index_path)))
  rows, _ = searcher.search(q_emb.astype(np.float32), k,
                            exclude=source.reshape(-1, 1))
  return span_hits(store, rows, queries["answers"])


def masked_recall(store, queries: dict, workdir: str, version: int,
                  k: int = 5, batch_size: int = 64) -> float:
  """The fraction of masked_hits."""
  return float(masked_hits(store, queries, workdir, version, k,
                           batch_size).mean())


def before_after(store, tokenizer, records, pretrain_workdir: str, k: int,
                 query_len: int, max_masks: int, limit: int = 500) -> dict:
  """Masked recall@k of the initial retriever (version 0) and of the newest
  committed index of a pretraining workdir, on the same held-out queries."""
  index_dir = workdir_lib.index_dir(pretrain_workdir)
  versions = index_store.list_versions(index_dir)
  if not versions or versions[0] != 0:
    raise ValueError(f"{index_dir} has no index 0 to compare against")
  queries = masked_queries(records, tokenizer, query_len, max_masks, limit)
  out = {"num_queries": len(queries["answers"]), "k": k}
  hits = {}
  for name, v in (("initial", versions[0]), ("pretrained", versions[-1])):
    hits[name] = masked_hits(store, queries, pretrain_workdir, v, k)
    out[name] = float(hits[name].mean())
    out[f"{name}_version"] = v
  out["pretrained_minus_initial"] = stats.paired_bootstrap(
      hits["pretrained"].astype(float), hits["initial"].astype(float))
  return out
