"""qa.Batcher's policy: a lone question is answered at once, questions that
arrive under load are gathered into one batch, each caller gets its own
answer, and a full queue refuses."""
import threading

import pytest

from realm_jax.qa import batcher as batcher_lib

HOUR = 3600.0   # a wait no test could sit out: the waits below are not taken


class Recorder:
  """answer_batch that records its batches; the first call sets `entered`
  and blocks until `release` is set, so that questions pile up behind it.
  Questions containing "bad" fail their batch."""

  def __init__(self):
    self.batches = []
    self.entered, self.release = threading.Event(), threading.Event()

  def __call__(self, questions):
    if not self.batches:
      self.entered.set()
      self.release.wait(60)
    self.batches.append(list(questions))
    if any("bad" in q for q in questions):
      raise ValueError("bad question")
    return [f"answer to {q}" for q in questions]


def test_a_lone_question_does_not_wait_for_company():
  recorder = Recorder()
  recorder.release.set()
  batcher = batcher_lib.Batcher(recorder, max_batch=16, max_wait_s=HOUR)
  try:
    for q in ("a", "b", "c"):
      assert batcher.submit(q).result(timeout=60) == f"answer to {q}"
  finally:
    batcher.close()
  assert recorder.batches == [["a"], ["b"], ["c"]]


def test_questions_under_load_are_gathered_into_one_batch():
  recorder = Recorder()
  batcher = batcher_lib.Batcher(recorder, max_batch=3, max_wait_s=HOUR)
  try:
    first = batcher.submit("q1")          # taken alone; its pass blocks
    assert recorder.entered.wait(60)
    queued = [batcher.submit(q) for q in ("q2", "q3")]
    recorder.release.set()
    first.result(timeout=60)
    [f.result(timeout=60) for f in queued]
    # The last batch held two: the next waits (up to an hour) until two
    # have come, and goes then.
    late = [batcher.submit(q) for q in ("q4", "q5")]
    assert [f.result(timeout=60) for f in late] == [
        "answer to q4", "answer to q5"]
  finally:
    batcher.close()
  assert recorder.batches == [["q1"], ["q2", "q3"], ["q4", "q5"]]


def test_a_full_queue_refuses_and_a_bad_question_fails_alone():
  recorder = Recorder()
  batcher = batcher_lib.Batcher(recorder, max_batch=4, max_wait_s=0,
                                max_queue=2)
  try:
    first = batcher.submit("x")    # its pass blocks: the queue fills behind
    assert recorder.entered.wait(60)
    waiting = [batcher.submit("bad"), batcher.submit("ok")]
    with pytest.raises(batcher_lib.QueueFull):
      batcher.submit("one too many")
    recorder.release.set()
    assert first.result(timeout=60) == "answer to x"
    with pytest.raises(ValueError, match="bad question"):
      waiting[0].result(timeout=60)
    assert waiting[1].result(timeout=60) == "answer to ok"
  finally:
    batcher.close()
  # The batch of both failed; each was then answered on its own.
  assert recorder.batches == [["x"], ["bad", "ok"], ["bad"], ["ok"]]
