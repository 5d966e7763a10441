"""Serve a knowledge base or fine-tuning workdir over HTTP (config.task ==
"serve"; the [serve] extra).

  python -m realm_jax.main --config=configs/kb.py --config.task=serve \
      --config.workdir=workdir/my_kb

The API and page are realm_jax/serve/app.py. One qa.Answerer answers, with
its verify-then-swap: a version committed by `task=index` in another
process goes live without a restart. Concurrent questions are answered in
batches (qa/batcher.py). SIGTERM or SIGINT (Ctrl-C), once or repeated,
stops accepting, answers the requests in flight, and exits 0.

Connections are bounded: serve.max_connections at once (beyond, 503),
serve.request_timeout_s for a client to send a request's headers and body
(then its connection is closed), serve.keep_alive_s for an idle one.
"""
import signal
import time

from absl import logging

from realm_jax import workdir as workdir_lib
from realm_jax.qa import answerer as answerer_lib
from realm_jax.qa import batcher as batcher_lib


def check(s) -> None:
  """Raises ValueError naming the first serve.* setting out of its range,
  before the model loads (uvicorn would bind port 70000 as 70000 % 65536)."""
  if not 0 <= s.port <= 65535:
    raise ValueError(f"serve.port={s.port}: must be in [0, 65535] "
                     "(0: any free port, which the log names)")
  for key in ("request_timeout_s", "keep_alive_s", "max_connections"):
    if s[key] <= 0:
      raise ValueError(f"serve.{key}={s[key]}: must be above 0")


def run(config):
  s = config.serve
  check(s)
  try:
    import uvicorn  # pylint: disable=g-import-not-at-top
    from realm_jax.serve import app as app_lib  # pylint: disable=g-import-not-at-top
    server_class = _server_class()
    protocol_class = _protocol_class(s.request_timeout_s)
  except ImportError as e:
    raise ValueError(f"task=serve needs the [serve] extra (pip install "
                     f"'realm_jax[serve]'): {e}") from None
  workdir_lib.enable_compilation_cache(config.workdir)
  # A stop while the model loads and compiles (a minute or more) ends the
  # process at once, with a line saying so, exit 0: the default action
  # killed it silently.
  for sig in _STOPS:
    signal.signal(sig, _stop_loading)
  answerer = None
  try:
    logging.info("loading the model of %s", config.workdir)
    answerer = answerer_lib.Answerer(config.workdir, config=config,
                                     poll_interval=s.poll_interval or None)
    start = time.perf_counter()
    answerer.warm_up(s.max_batch)
    for sig in _STOPS:   # the serving stop, below
      signal.signal(sig, _log_stop)
  except _StoppedLoading as e:
    if answerer is not None:
      answerer.close()
    logging.warning("%s before the model had loaded: stopped, nothing was "
                    "served", e)
    return
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
  try:
    app = app_lib.make_app(answerer, batcher, s)
    logging.info("serving %s (version %s)", config.workdir, answerer.version)
    # h11 always (not httptools where installed): the request timeout is
    # written against it; the model, not HTTP parsing, bounds throughput.
    server_class(uvicorn.Config(
        app, host=s.host, port=s.port, log_level="warning",
        http=protocol_class, timeout_keep_alive=s.keep_alive_s,
        limit_concurrency=s.max_connections,
        timeout_graceful_shutdown=30)).run()
  finally:
    batcher.close()
    answerer.close()


_STOPS = (signal.SIGTERM, signal.SIGINT)


class _StoppedLoading(BaseException):
  """SIGTERM or SIGINT while the model loads. A BaseException, as
  KeyboardInterrupt: an `except Exception` on the way (logging's own, when
  the signal lands in a log call) must not swallow it."""


def _stop_loading(sig, _):
  raise _StoppedLoading(signal.Signals(sig).name)


def _log_stop(sig, _):
  # uvicorn raises the signals it caught again once it has stopped, for the
  # handler it found: this one.
  logging.info("%s: the requests in flight were answered; stopping",
               signal.Signals(sig).name)


def _server_class():
  import uvicorn  # pylint: disable=g-import-not-at-top

  class Server(uvicorn.Server):
    """uvicorn's server, with SIGINT handled as SIGTERM (see run), that logs
    the address it bound (serve.port=0 takes any free port)."""

    def handle_exit(self, sig, frame):
      super().handle_exit(signal.SIGTERM if sig in _STOPS else sig, frame)

    async def startup(self, sockets=None):
      await super().startup(sockets)   # exits if it cannot bind
      for server in self.servers:
        for sock in server.sockets:
          host, port = sock.getsockname()[:2]
          logging.info("serving on http://%s:%d",
                       f"[{host}]" if ":" in host else host, port)

  return Server


def _protocol_class(timeout: float):
  """uvicorn's h11 protocol, with serve.request_timeout_s (timeout).

  uvicorn bounds only an idle kept-alive connection: a client that sends
  its headers a byte every few seconds (slowloris), or opens a connection
  and sends nothing, holds it forever. Here a request's headers and body
  must arrive within request_timeout_s of the connection opening, or of
  the request's first byte on a kept-alive connection; then the connection
  is closed. Answering is not bounded: the clock stops once the request is
  in."""
  import h11  # pylint: disable=g-import-not-at-top
  from uvicorn.protocols.http import h11_impl  # pylint: disable=g-import-not-at-top

  class Protocol(h11_impl.H11Protocol):
    _timer = None

    def connection_made(self, transport):
      super().connection_made(transport)
      self._arm()

    def data_received(self, data):
      if self._timer is None and self.conn.their_state is h11.IDLE:
        self._arm()   # the next request on a kept-alive connection
      super().data_received(data)
      if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
        self._disarm()   # the request is in (or the connection failed)

    def connection_lost(self, exc):
      self._disarm()
      super().connection_lost(exc)

    def _arm(self):
      self._timer = self.loop.call_later(timeout, self._cut_off)

    def _disarm(self):
      if self._timer is not None:
        self._timer.cancel()
        self._timer = None

    def _cut_off(self):
      self._timer = None
      if not self.transport.is_closing():
        logging.info("closed the connection from %s: no whole request in "
                     "serve.request_timeout_s=%g s",
                     "%s:%d" % self.client if self.client else "a client",
                     timeout)
        self.transport.close()

  return Protocol
