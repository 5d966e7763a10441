"""One training step of REALM's knowledge-augmented encoder: ours vs HF's port.

Times forward + backward of the MLM encoder and the marginal MLM loss (the
gradient w.r.t. every encoder parameter and the relevance scores), on the
same weights and inputs:
  * ours: realm_jax MLMEncoder + losses.marginal_mlm_loss under jax.jit;
  * HF:   transformers' RealmKnowledgeAugEncoder (PyTorch, 4.57.6) with
          labels/mlm_mask/relevance_score, then loss.backward().
Config: BERT-base (12 layers, hidden 768, vocab 30522, gelu_new as in HF's
port), batch 2, 8 candidates, seq 128, 10 masks per example, float32, on
this machine's CPU, dropout off on both sides so the losses must agree.

Run:  .venv/bin/python benchmarks/bench_mlm_step.py [--steps 3]
Needs the [parity] extra (torch, transformers). Takes a few minutes: HF's
step is ~10 s on 2 idle CPU cores. Ours does less work, exactly: the MLM head
runs only at the 10 masked positions instead of all 128 (the original TF code
does the same), which removes the 30522-wide decoder from ~92% of the tokens,
and BERT's last layer runs only at those positions too. Both sides spend most
of the step in float32 GEMMs, so the speed-up is close to the ratio of matmul
FLOPs the script prints (~1.33x); timings on a shared machine move a lot.
"""
import argparse
import time

import jax
import numpy as np

from realm_jax.models import convert, losses
from realm_jax.models import model_config as config_lib
from realm_jax.models.reader import MLMEncoder

BATCH, K, SEQ, MASKS = 2, 8, 128, 10


def make_inputs(vocab, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000, vocab, (BATCH, K, SEQ))
  segments = np.broadcast_to((np.arange(SEQ) >= 48).astype(np.int64),
                             ids.shape).copy()
  mask = np.ones_like(ids)
  # Masks sit in the query part (positions 1..47), distinct per example.
  positions = np.stack([np.sort(rng.choice(np.arange(1, 48), MASKS, False))
                        for _ in range(BATCH)])
  labels = rng.integers(1000, vocab, (BATCH, MASKS))
  scores = rng.normal(size=(BATCH, K)).astype(np.float32)
  return ids, segments, mask, positions, labels, scores


def time_interleaved(steps, n):
  """Runs the steps alternately n times each; returns per-step seconds.

  Alternating keeps both sides under the same background load, which on a
  shared 2-core machine moves a lot over a few minutes.
  """
  times = [[] for _ in steps]
  for _ in range(n):
    for step, out in zip(steps, times):
      start = time.perf_counter()
      step()
      out.append(time.perf_counter() - start)
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top
  from transformers.models.deprecated.realm import (  # pylint: disable=g-import-not-at-top
      configuration_realm, modeling_realm)

  torch.manual_seed(0)
  hf_config = configuration_realm.RealmConfig(num_candidates=K)  # BERT-base
  hf = modeling_realm.RealmKnowledgeAugEncoder(hf_config).eval()
  config = config_lib.RealmConfig(bert=config_lib.bert_base(
      hidden_act="gelu_new"))
  params = convert.mlm_encoder_from_hf(hf.state_dict(), config)
  ids, segments, mask, positions, labels, scores = make_inputs(
      config.bert.vocab_size)
  weights = np.ones((BATCH, MASKS), np.float32)

  # ---- ours
  @jax.jit
  def train_step(params, scores):
    def loss_fn(params, scores):
      logits = MLMEncoder(config).apply({"params": params}, ids, segments,
                                        mask, positions)
      loss, _ = losses.marginal_mlm_loss(losses.candidate_log_probs(scores),
                                         logits, labels, weights)
      return loss
    return jax.value_and_grad(loss_fn, argnums=(0, 1))(params, scores)

  start = time.perf_counter()
  compiled = train_step.lower(params, scores).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  ours_gflop = (cost[0] if isinstance(cost, list) else cost)["flops"] / 1e9
  jax.block_until_ready(compiled(params, scores))
  ours_out = {}

  def ours_step():
    loss, grads = compiled(params, scores)
    jax.block_until_ready(grads)
    ours_out.update(loss=float(loss), grads=grads)

  # ---- HF: labels over the whole sequence (-100 ignored) + mlm_mask.
  hf_labels = np.full((BATCH, SEQ), -100)
  hf_mlm_mask = np.zeros((BATCH, SEQ), np.float32)
  for b in range(BATCH):
    hf_labels[b, positions[b]] = labels[b]
    hf_mlm_mask[b, positions[b]] = 1.0
  t = lambda a: torch.tensor(np.asarray(a))
  hf_scores = t(scores).requires_grad_(True)
  hf_loss = None

  def hf_step():
    nonlocal hf_loss
    hf.zero_grad(set_to_none=True)
    hf_scores.grad = None
    out = hf(t(ids), attention_mask=t(mask), token_type_ids=t(segments),
             relevance_score=hf_scores, labels=t(hf_labels),
             mlm_mask=t(hf_mlm_mask))
    out.loss.backward()
    hf_loss = out.loss.item()
  hf_step()  # warm-up (allocator, thread pool); ours warmed up compiling
  ours, theirs = time_interleaved([ours_step, hf_step], args.steps)

  ours_ms, hf_ms = 1e3 * np.median(ours), 1e3 * np.median(theirs)
  print(f"REALM MLM train step (fwd+bwd): BERT-base, batch {BATCH} x "
        f"{K} candidates x seq {SEQ}, {MASKS} masks, float32, CPU "
        f"({jax.device_count()} JAX device, torch threads "
        f"{torch.get_num_threads()}), median of {args.steps} alternating steps")
  print(f"| impl               | ms/step | speed-up |")
  print(f"|--------------------|---------|----------|")
  print(f"| HF PyTorch port    | {hf_ms:7.0f} |    1.00x |")
  print(f"| realm_jax (jit)    | {ours_ms:7.0f} | {hf_ms / ours_ms:7.2f}x |")
  print(f"ours: one-off compile {compile_s:.1f} s; per-step times "
        f"{', '.join(f'{1e3 * x:.0f}' for x in ours)} ms; HF "
        f"{', '.join(f'{1e3 * x:.0f}' for x in theirs)} ms")
  # HF's matmul FLOPs, counted by hand: forward x3 for forward + backward.
  h, v, tokens = config.bert.hidden_size, config.bert.vocab_size, BATCH * K * SEQ
  encoder = 12 * (tokens * 12 * h * h * 2 + BATCH * K * SEQ * SEQ * h * 2 * 2)
  head = tokens * (h * h + h * v) * 2
  print(f"matmul work per step: ours {ours_gflop:.0f} GFLOP (XLA cost "
        f"analysis), HF ~{3 * (encoder + head) / 1e9:.0f} GFLOP (by hand; its "
        f"MLM head alone ~{3 * head / 1e9:.0f})")
  rel = abs(ours_out["loss"] - hf_loss) / abs(hf_loss)
  print(f"loss: ours {ours_out['loss']:.6f}  HF {hf_loss:.6f}  relative diff "
        f"{rel:.1e} ({'OK' if rel < 1e-4 else 'MISMATCH'})")
  param_grads, score_grads = ours_out["grads"]
  checks = [
      ("d loss / d relevance score", np.asarray(score_grads),
       hf_scores.grad.numpy()),
      ("d loss / d layer-0 query kernel",
       np.asarray(param_grads["bert"]["layers_0"]["attention"]["query"]
                  ["kernel"]),
       hf.realm.encoder.layer[0].attention.self.query.weight.grad.numpy().T),
  ]
  for name, ours_g, hf_g in checks:
    print(f"{name}: max abs diff {np.abs(ours_g - hf_g).max():.1e} "
          f"(max |grad| {np.abs(hf_g).max():.1e})")


if __name__ == "__main__":
  main()
