"""Pretraining you can watch: held-out measures at every index refresh.

REALM's Figure 4 plots retrieval utility, log p(y|z,x) - log p(y|null,x),
against pretraining steps; it "increases steadily", and it predicts
downstream QA better than the MLM likelihood does. The training loss alone
does not show whether the documents help, so at every refresh the trainer
measures, on a fixed set of held-out masked sentences (data.heldout_fraction,
never trained on):

  heldout_utility        the marginal log-likelihood of the masked tokens
                         minus that of the null document alone;
  heldout_mlm_accuracy   the marginal prediction's token accuracy;
  heldout_recall@k       the masked span's text in one of the top k blocks
                         (the index in service, the sentence's own block
                         excluded, as in training);

with the current params, the index in service and its export's query
embedder, exactly as a training step retrieves. Each row goes to
<workdir>/heldout_metrics.jsonl; `best()` names the step with the best
held-out utility, which the run logs at its end. (The original code also
hands its embedding job the best checkpoint; here the job still embeds
every export.)
"""
import functools
import json
import os

import jax
import numpy as np

from realm_jax.batching import candidates
from realm_jax.index import masked_recall
from realm_jax.train import pretrain_step

PATH = "heldout_metrics.jsonl"


def read(workdir: str) -> list[dict]:
  path = os.path.join(workdir, PATH)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def best(rows: list[dict]) -> dict | None:
  """The row with the highest held-out utility (the earliest on a tie)."""
  return max(rows, key=lambda r: (r["heldout_utility"], -r["step"]),
             default=None)


class HeldoutMonitor:
  """Measures the held-out masked sentences with given params and index."""

  def __init__(self, config, cfg, store, tokenizer, records, embedder):
    p = config.pretrain
    self.store, self.tok, self.embedder = store, tokenizer, embedder
    self.k = config.eval.recall_k
    self.num_retrieved = config.train.num_candidates - 1
    self.reader_len = config.data.reader_len
    self.batch_size = p.heldout_batch_size
    self.queries = masked_recall.masked_queries(
        records, tokenizer, config.data.query_len, config.data.max_masks,
        limit=p.heldout_queries, seed=config.seed)
    self.source = store.rows_for_uids(self.queries["source_uids"])
    self.path = os.path.join(config.workdir, PATH)
    self._measure = jax.jit(functools.partial(
        pretrain_step.pretrain_loss, rng=jax.random.PRNGKey(0), cfg=cfg,
        per_token=True, deterministic=True))

  def measure(self, params, current) -> dict:
    """The held-out measures of `params` against the index `current`
    (refresh.Current: its version and searcher)."""
    q_params = self.embedder.params_of_export(current.version)
    depth = max(self.k, self.num_retrieved)
    sums = {"retrieval_utility": 0.0, "mlm_accuracy": 0.0,
            "marginal_log_likelihood": 0.0}
    masks, hits = 0.0, []
    q = self.queries
    for s in range(0, len(q["answers"]), self.batch_size):
      part = slice(s, s + self.batch_size)
      q_emb = self.embedder(q_params, q["query_ids"][part],
                            q["query_mask"][part])
      rows, _ = candidates.retrieve_candidates(
          current.served, q_emb, self.source[part], depth)
      hits.append(masked_recall.span_hits(self.store, rows[:, 1:self.k + 1],
                                          q["answers"][part]))
      rows = rows[:, :1 + self.num_retrieved]
      batch = pretrain_step.step_inputs(
          {key: value[part] for key, value in q.items()
           if isinstance(value, np.ndarray)}, rows, self.store, self.tok,
          self.reader_len)
      _, aux = jax.device_get(self._measure(params, batch))
      n = float(aux["num_masks"])
      masks += n
      for key in sums:
        sums[key] += float(aux[key]) * n
    out = {f"heldout_{key.removeprefix('retrieval_')}": value / max(masks, 1)
           for key, value in sums.items()}
    out[f"heldout_recall@{self.k}"] = float(np.concatenate(hits).mean())
    out["index_version"] = int(current.version)
    return out

  def record(self, step: int, params, current, writer=None) -> dict:
    """Measures, appends the row to heldout_metrics.jsonl (process 0) and
    mirrors it to `writer` (a MetricsWriter) when one is given."""
    row = dict(step=int(step), **self.measure(params, current))
    if jax.process_index() == 0:
      # A resumed run measures its steps again: drop the killed run's rows
      # from this step on, so each step has one row.
      kept = [r for r in read(os.path.dirname(self.path))
              if r["step"] < step]
      with open(self.path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept + [row])
      os.replace(self.path + ".tmp", self.path)
    if writer is not None:
      writer.write(step, {k: v for k, v in row.items() if k != "step"})
    return row
