"""Dynamic batching for a server: questions that arrive together are
answered in one batched forward pass.

A caller submits one question and gets a Future. One worker thread takes
the first waiting question, gathers more for up to `max_wait_s` (or until
`max_batch`), answers them with one `answer_batch` call and hands each
caller its own answer. By default it waits only under load, and only for
as many questions as the previous batch held: a lone client is answered at
once instead of paying max_wait_s per question, four clients that come
back together after their answers (and so reach the server a few
milliseconds apart) are gathered into a batch of four without waiting for
a sixteenth, and whatever else is queued by then joins the batch too, so
batches grow with the load. `always_wait` waits max_wait_s for max_batch
questions every time, as TF Serving's batch_timeout does. The queue is
bounded: a full queue refuses at once (QueueFull), so an overloaded server
says so instead of queueing without end. `max_batch=1` is unbatched
serving (one forward pass per question).
"""
import concurrent.futures
import queue
import threading
import time
from typing import Callable, Sequence


class QueueFull(Exception):
  """The queue holds max_queue questions already: retry later."""


class Batcher:

  def __init__(self, answer_batch: Callable[[Sequence[str]], list],
               max_batch: int = 16, max_wait_s: float = 0.06,
               max_queue: int = 64, always_wait: bool = False):
    if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
      raise ValueError(f"serve batching: max_batch={max_batch} and "
                       f"max_queue={max_queue} must be at least 1, "
                       f"max_wait_ms={1e3 * max_wait_s} at least 0")
    self.answer_batch = answer_batch
    self.max_batch, self.max_wait_s = max_batch, max_wait_s
    self.always_wait = always_wait
    self._previous = 1         # the size of the previous batch
    self._queue = queue.Queue(max_queue)
    self._closing = threading.Event()
    self._lock = threading.Lock()
    self.in_flight = 0        # questions submitted and not yet answered
    self._thread = threading.Thread(target=self._run, name="Batcher",
                                    daemon=True)
    self._thread.start()

  def submit(self, question: str) -> concurrent.futures.Future:
    if self._closing.is_set():
      raise RuntimeError("the batcher is closed")
    future = concurrent.futures.Future()
    try:
      self._queue.put_nowait((question, future))
    except queue.Full:
      raise QueueFull(f"{self._queue.maxsize} questions are waiting") from None
    with self._lock:
      self.in_flight += 1
    future.add_done_callback(self._done)
    return future

  def _done(self, _):
    with self._lock:
      self.in_flight -= 1

  def close(self):
    """Answers what is queued, then stops the worker."""
    self._closing.set()
    self._thread.join()

  def _take(self, timeout):
    try:
      return self._queue.get(timeout=timeout)
    except queue.Empty:
      return None

  def _run(self):
    while True:
      first = self._take(0.05)
      if first is None:
        if self._closing.is_set() and self._queue.empty():
          return
        continue
      batch = [first]
      expected = self.max_batch if self.always_wait else self._previous
      deadline = time.monotonic() + self.max_wait_s
      while len(batch) < self.max_batch:
        # Wait while fewer than expected have come; then take only what is
        # queued already.
        wait = (deadline - time.monotonic() if len(batch) < expected else 0)
        item = self._take(max(0.0, wait))
        if item is None:
          break
        batch.append(item)
      self._previous = len(batch)
      self._answer(batch)

  def _answer(self, batch):
    try:
      answers = self.answer_batch([q for q, _ in batch])
    except Exception:  # pylint: disable=broad-except
      # One bad question must not fail the others: answer them one by one,
      # so each caller gets its own answer or its own error.
      for question, future in batch:
        try:
          future.set_result(self.answer_batch([question])[0])
        except Exception as e:  # pylint: disable=broad-except
          future.set_exception(e)
      return
    for (_, future), answer in zip(batch, answers):
      future.set_result(answer)
