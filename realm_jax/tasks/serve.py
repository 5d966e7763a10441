"""Serve a knowledge base or fine-tuning workdir over HTTP (config.task ==
"serve"; the [serve] extra).

  python -m realm_jax.main --config=configs/kb.py --config.task=serve \
      --config.workdir=workdir/my_kb

The API and page are realm_jax/serve/app.py. One qa.Answerer answers, with
its verify-then-swap: a version committed by `task=index` in another
process goes live without a restart. Concurrent questions are answered in
batches (qa/batcher.py). SIGTERM (or Ctrl-C) stops accepting, answers the
requests in flight, and exits 0.
"""
import signal
import time

from absl import logging

from realm_jax import workdir as workdir_lib
from realm_jax.qa import answerer as answerer_lib
from realm_jax.qa import batcher as batcher_lib


def run(config):
  try:
    import uvicorn  # pylint: disable=g-import-not-at-top
    from realm_jax.serve import app as app_lib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"task=serve needs the [serve] extra (pip install "
                     f"'realm_jax[serve]'): {e}") from None
  s = config.serve
  workdir_lib.enable_compilation_cache(config.workdir)
  answerer = answerer_lib.Answerer(config.workdir, config=config,
                                   poll_interval=s.poll_interval or None)
  start = time.perf_counter()
  answerer.warm_up(s.max_batch)
  logging.info("compiled for batches of up to %d questions in %.1f s",
               s.max_batch, time.perf_counter() - start)
  batcher = batcher_lib.Batcher(answerer.answer_batch, max_batch=s.max_batch,
                                max_wait_s=s.max_wait_ms / 1e3,
                                max_queue=s.max_queue,
                                always_wait=s.always_wait)
  try:
    app = app_lib.make_app(answerer, batcher, s)
    logging.info("serving %s (version %s) on http://%s:%d", config.workdir,
                 answerer.version, s.host, s.port)
    # uvicorn turns SIGTERM and SIGINT into a graceful shutdown (no new
    # connections, the requests in flight answered), then raises the signal
    # again for the handler it found: this one, so that a stop asked for
    # ends with status 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: logging.info(
        "SIGTERM: the requests in flight were answered; stopped"))
    try:
      uvicorn.run(app, host=s.host, port=s.port, log_level="warning",
                  timeout_graceful_shutdown=30)
    finally:
      signal.signal(signal.SIGTERM, previous)
  finally:
    batcher.close()
    answerer.close()
