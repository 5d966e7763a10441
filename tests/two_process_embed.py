"""One of two CPU processes (jax.distributed over gloo) running the embedding
job's watch loop together on one workdir: each embeds its own shards and
process 0 commits. Usage: python two_process_embed.py ID PORT WORKDIR BLOCKS
(run by tests/test_embed.py).
"""
import sys

import jax
from absl import logging

logging.use_absl_handler()
logging.set_verbosity(logging.INFO)
pid, port, workdir, blocks = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)

from realm_jax.data.corpus import BlockStore  # noqa: E402
from realm_jax.index import block_embeddings  # noqa: E402

built = block_embeddings.watch(workdir, BlockStore(blocks), max_versions=1,
                    poll_interval=0.1, shard_rows=32, batch_size=16,
                    progress=False)
print("built", built)
