"""A host thread that prepares batches ahead of the device.

The trainer calls `get()`; the time it waits there is the "host wait" part of
the step time. Errors raised while producing a batch are re-raised in the
trainer, so a failure in retrieval stops the run instead of hanging it.
"""
import queue
import threading
import time
from typing import Any, Callable


class _End:
  pass


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


class Prefetcher:
  """Runs `produce()` repeatedly on a daemon thread, `depth` results ahead.

  `produce` raising StopIteration ends the stream: `get()` then raises it too.
  """

  def __init__(self, produce: Callable[[], Any], depth: int = 2,
               name: str = "prefetch"):
    self._produce = produce
    self._queue = queue.Queue(maxsize=max(depth, 1))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
    self._thread.start()

  def _loop(self):
    while not self._stop.is_set():
      try:
        item = self._produce()
      except StopIteration:
        item = _End()
      except BaseException as e:  # handed to the trainer, which re-raises
        item = _Failure(e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if isinstance(item, (_Failure, _End)):
        return

  def get(self):
    """Returns (item, seconds waited)."""
    start = time.perf_counter()
    item = self._queue.get()
    waited = time.perf_counter() - start
    if isinstance(item, _Failure):
      raise item.error
    if isinstance(item, _End):
      raise StopIteration
    return item, waited

  def close(self):
    self._stop.set()
    self._thread.join(timeout=30)
