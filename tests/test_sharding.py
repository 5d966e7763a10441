"""The data-parallel step: 4-way sharded on CPU devices matches one device.

The loss and gradients of the pretraining step are computed under a 1-device
and a 4-device mesh (batch split 4 ways, params replicated); the optimizer
update is the same elementwise function on both, so it is not repeated.
"""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from realm_jax.models import model_config as mc
    from realm_jax.models.reader import MLMEncoder
    from realm_jax.models.retriever import Retriever
    from realm_jax.models import convert
    from realm_jax.train import partition, pretrain_step

    assert len(jax.devices()) == 4, jax.devices()
    cfg = mc.RealmConfig(bert=mc.tiny(vocab_size=64, dropout_rate=0.0,
                                      attention_dropout_rate=0.0), proj_size=16)
    rng = jax.random.PRNGKey(0)
    params = {"retriever": Retriever(cfg).init(rng, *convert.example_inputs(Retriever(cfg)))["params"],
              "reader": MLMEncoder(cfg).init(rng, *convert.example_inputs(MLMEncoder(cfg)))["params"]}
    params = jax.device_get(params)
    r = np.random.default_rng(0)
    B, K, Lq, Ld, Lr, M = 8, 3, 12, 16, 24, 4
    def ids(*shape): return r.integers(1, 64, shape).astype(np.int32)
    def mask(*shape):
      m = np.ones(shape, np.int32); m[..., -3:] = 0; return m
    batch = dict(query_ids=ids(B, Lq), query_mask=mask(B, Lq),
                 mlm_positions=r.integers(1, 8, (B, M)).astype(np.int32),
                 mlm_labels=ids(B, M), mlm_weights=np.ones((B, M), np.float32),
                 cand_ids=ids(B, K, Ld), cand_segments=np.zeros((B, K, Ld), np.int32),
                 cand_mask=mask(B, K, Ld), reader_ids=ids(B, K, Lr),
                 reader_segments=np.zeros((B, K, Lr), np.int32), reader_mask=mask(B, K, Lr))
    out = {}
    for n in (1, 4):
      mesh = partition.make_mesh(jax.devices()[:n])
      repl, data = partition.replicated(mesh), partition.data_sharded(mesh)
      loss_and_grad = jax.jit(jax.value_and_grad(lambda p, b: pretrain_step.pretrain_loss(
          p, b, rng, cfg, deterministic=True)[0]), in_shardings=(repl, data))
      loss, grads = loss_and_grad(jax.device_put(params, repl),
                                  partition.shard_batch(batch, mesh))
      out[n] = (float(loss), jax.device_get(grads))
    np.testing.assert_allclose(out[4][0], out[1][0], rtol=1e-5)
    # Gradients: each tensor's norm within 1e-4 relative (1.4e-5 seen at
    # worst). Elementwise, entries that are sums of cancelling terms differ by
    # float32 summation order, so they are held to 1e-4 of their tensor's
    # largest entry.
    for a, b in zip(jax.tree.leaves(out[4][1]), jax.tree.leaves(out[1][1])):
      np.testing.assert_allclose(np.linalg.norm(a), np.linalg.norm(b), rtol=1e-4,
                                 atol=1e-9)
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=max(1e-4 * np.abs(b).max(), 1e-9))
    print("LOSS", out[1][0])
""")


def test_four_way_sharded_step_matches_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", SCRIPT], env=env,
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert float(r.stdout.split("LOSS", 1)[1]) > 0
