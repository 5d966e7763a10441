"""Serve a knowledge base or fine-tuning workdir over HTTP (config.task ==
"serve"; the [serve] extra).

  python -m realm_jax.main --config=configs/kb.py --config.task=serve \
      --config.workdir=workdir/my_kb

The API and page are realm_jax/serve/app.py. One qa.Answerer answers, with
its verify-then-swap: a version committed by `task=index` in another
process goes live without a restart. Concurrent questions are answered in
batches (qa/batcher.py). SIGTERM or SIGINT (Ctrl-C), once or repeated,
stops accepting, answers the requests in flight, and exits 0.
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
    server_class = _server_class()
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
  # SIGTERM and SIGINT stop the server the same way, once or repeated: no
  # new connections, the requests in flight answered, then the batcher and
  # the Answerer closed, exit 0. uvicorn alone would abandon the requests in
  # flight at a second SIGINT (its "force quit") and leave a signal during the
  # close below to the default handler, which kills the process. The drain
  # is bounded by timeout_graceful_shutdown; what must stop at once is sent
  # SIGKILL, as Kubernetes does when its grace period ends.
  # The handlers stay to the end: this task is the process's last work.
  for sig in _STOPS:
    signal.signal(sig, _log_stop)
  try:
    app = app_lib.make_app(answerer, batcher, s)
    logging.info("serving %s (version %s) on http://%s:%d", config.workdir,
                 answerer.version, s.host, s.port)
    server_class(uvicorn.Config(app, host=s.host, port=s.port,
                                log_level="warning",
                                timeout_graceful_shutdown=30)).run()
  finally:
    batcher.close()
    answerer.close()


_STOPS = (signal.SIGTERM, signal.SIGINT)


def _log_stop(sig, _):
  # uvicorn raises the signals it caught again once it has stopped, for the
  # handler it found: this one.
  logging.info("%s: the requests in flight were answered; stopping",
               signal.Signals(sig).name)


def _server_class():
  import uvicorn  # pylint: disable=g-import-not-at-top

  class Server(uvicorn.Server):
    """uvicorn's server, with SIGINT handled as SIGTERM (see run)."""

    def handle_exit(self, sig, frame):
      super().handle_exit(signal.SIGTERM if sig in _STOPS else sig, frame)

  return Server
