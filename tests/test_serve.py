"""task=serve against a real server on a free local port, with a real HTTP
client: answers equal qa.Answerer's, concurrent clients get their own, an
update committed by another process goes live, bad input gets its 4xx, and
SIGTERM with requests in flight loses none."""
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from realm_jax.kb import update as kb_update
from realm_jax.qa import Answerer
import openqa_workdir as ow
import page_browser
import test_kb

httpx = pytest.importorskip("httpx", reason="task=serve needs the [serve] "
                            "extra (fastapi, uvicorn, httpx)")
pytest.importorskip("fastapi", reason="the [serve] extra")
pytest.importorskip("uvicorn", reason="the [serve] extra")

QUESTIONS = ["Who was Lu Xun?", "What is the capital of France?",
             "Which river flows through Orleans?", "When was it founded?",
             "Who wrote the novel?", "What is a noble gas?"]


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory):
  pre = str(tmp_path_factory.mktemp("pretrain"))
  store, params = ow.make_pretrain_workdir(pre)
  model = ow.make_finetuned_workdir(str(tmp_path_factory.mktemp("finetuned")),
                                    pre, store, params)
  tmp = tmp_path_factory.mktemp("serve")
  config = test_kb.kb_config(
      tmp / "kb", test_kb.write_corpus(tmp / "docs.jsonl", test_kb.corpus_v1()),
      model)
  kb_update.update(config, progress=False)
  return config


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """python -m realm_jax.main --config=<the kb's config.json> task=serve."""

  def __init__(self, workdir, *overrides):
    self.port = _port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "realm_jax.main",
         f"--config=realm_jax/config.py:{os.path.join(workdir, 'config.json')}",
         f"--config.workdir={workdir}", "--config.task=serve",
         f"--config.serve.port={self.port}",
         "--config.serve.poll_interval=0.2", *overrides],
        cwd=ow.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300   # a hang guard only
    while True:
      assert self.proc.poll() is None, self.proc.communicate()[1][-3000:]
      try:
        if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
          return
      except httpx.TransportError:
        pass
      assert time.monotonic() < deadline, "the server never came up"
      time.sleep(0.1)

  def ask(self, question, **extra):
    return httpx.post(self.url + "/v1/answer",
                      json={"question": question, **extra}, timeout=120)

  def stop(self):
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
    return self.proc.communicate(timeout=120)


@pytest.fixture(scope="module")
def server(kb_dir):
  s = Server(kb_dir.workdir)
  yield s
  s.stop()


def _same(got: dict, want):
  assert got["answer"] == want.answer and got["version"] == want.version
  assert [e["row"] for e in got["evidence"]] == [e.row for e in want.evidence]
  assert [e["span"] and tuple(e["span"]) for e in got["evidence"]] == [
      e.span for e in want.evidence]
  assert got["prob"] == pytest.approx(want.prob, abs=1e-4)


def test_concurrent_clients_get_the_answerers_answers(server, kb_dir):
  answerer = Answerer(kb_dir.workdir, poll_interval=None)
  want = {q: answerer.answer(q) for q in QUESTIONS}
  answerer.close()
  asked = QUESTIONS * 3
  with concurrent.futures.ThreadPoolExecutor(len(asked)) as pool:
    responses = list(pool.map(server.ask, asked))
  for question, response in zip(asked, responses):
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["question"] == question and got["seconds"] > 0
    _same(got, want[question])
    assert {"doc", "title", "text", "p", "span", "row"} <= set(
        got["evidence"][0])
  one = server.ask(QUESTIONS[0], top_k=1).json()
  assert len(one["evidence"]) == 1


@pytest.mark.parametrize("body, status, names", [
    (b"x" * 5000, 413, "serve.max_body_bytes=4096"),
    (b"{not json", 400, "not JSON"),
    (b'{"q": "Lu Xun?"}', 400, '"question"'),
    (b'{"question": "Lu Xun?", "path": "/etc"}', 400, "unknown field"),
    (b'{"question": ""}', 422, "empty"),
    (b'{"question": "\\u200b"}', 422, "no words"),
    (json.dumps({"question": "word " * 200}).encode(), 422,
     "finetune.question_len="),
    (b'{"question": 7}', 422, "must be a string"),
    (b'{"question": "Lu Xun?", "top_k": 0}', 422, "answer.num_evidence="),
])
def test_bad_requests_get_a_json_4xx_naming_the_limit(server, body, status,
                                                       names):
  response = httpx.post(server.url + "/v1/answer", content=body,
                        headers={"Content-Type": "application/json"},
                        timeout=60)
  assert response.status_code == status, response.text
  assert names in " ".join(map(str, response.json().values()))


def test_the_page_version_and_openapi_are_served(server):
  page = httpx.get(server.url + "/", timeout=30)
  assert page.status_code == 200 and '<form id="ask">' in page.text
  version = httpx.get(server.url + "/v1/version", timeout=30).json()
  assert version["serving"] == 0 and version["refused"] == {}
  spec = httpx.get(server.url + "/openapi.json", timeout=30).json()
  assert "/v1/answer" in spec["paths"]
  assert httpx.get(server.url + "/docs", timeout=30).status_code == 200


@pytest.mark.skipif(page_browser.missing() is not None,
                    reason=f"browser test: {page_browser.missing()}")
def test_the_page_answers_in_a_browser(server, kb_dir, tmp_path):
  """Headless Chromium types a question on the page and sees the API's
  answer, highlighted in its block, and the evidence best first."""
  want = server.ask(QUESTIONS[2]).json()
  with page_browser.browser() as driver:
    shown = page_browser.ask_on_page(driver, server.url + "/", QUESTIONS[2],
                                     png=str(tmp_path / "page.png"))
  assert shown["answer"] == want["answer"]
  assert [e["title"] for e in shown["evidence"]] == [
      e["title"] for e in want["evidence"]]
  # The highlight is the answer's span in the block that holds it; the
  # bars are p(z|x), best first.
  assert [e["highlight"] for e in shown["evidence"]] == [
      e["text"][e["span"][0]:e["span"][1]] if e["span"] else None
      for e in want["evidence"]]
  assert want["answer"] in [e["highlight"] for e in shown["evidence"]]
  assert [e["bar"] for e in shown["evidence"]] == pytest.approx(
      [100 * e["p"] for e in want["evidence"]], abs=0.06)
  assert "knowledge base version 0" in shown["version"]
  assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_update_by_another_process_goes_live(kb_dir, tmp_path):
  """A copy of the knowledge base, served; task=index commits version 1 in
  another process; the server swaps it in and cites only the new corpus."""
  import shutil  # pylint: disable=g-import-not-at-top
  work = tmp_path / "kb"
  shutil.copytree(kb_dir.workdir, work)
  config = test_kb.kb_config(work, test_kb.write_corpus(
      tmp_path / "v2.jsonl", test_kb.corpus_v2()), kb_dir.kb.model)
  server = Server(str(work))
  try:
    assert server.ask(QUESTIONS[0]).json()["version"] == 0
    subprocess.run([sys.executable, "-m", "realm_jax.main",
                    "--config=configs/tiny_cpu.py", *test_kb._flags(config)],
                   cwd=ow.ROOT, check=True, capture_output=True, timeout=600)
    deadline = time.monotonic() + 120
    while httpx.get(server.url + "/v1/version").json()["serving"] != 1:
      assert time.monotonic() < deadline, "version 1 never went live"
      time.sleep(0.1)
    ids = {d["id"] for d in test_kb.corpus_v2()}
    for question in QUESTIONS:
      got = server.ask(question).json()
      assert got["version"] == 1
      assert {e["doc"] for e in got["evidence"]} <= ids
  finally:
    server.stop()


@pytest.mark.parametrize("signals", [
    (signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT)],
    ids=["sigterm_twice", "sigint_twice"])
def test_a_stop_signal_answers_the_requests_in_flight_then_exits_zero(
    kb_dir, signals):
  # Batches wait 3 s for more questions: every request below is in flight
  # (counted by /healthz) when the first signal arrives, and the second
  # arrives during the drain; neither abandons a request or kills the process.
  server = Server(kb_dir.workdir, "--config.serve.max_wait_ms=3000",
                  "--config.serve.always_wait=true",
                  "--config.serve.max_batch=64")
  with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS)) as pool:
    futures = [pool.submit(server.ask, q) for q in QUESTIONS]
    deadline = time.monotonic() + 60
    while httpx.get(server.url + "/healthz").json()["in_flight"] < len(
        QUESTIONS):
      assert time.monotonic() < deadline, "the requests never arrived"
      time.sleep(0.02)
    for sig in signals:
      server.proc.send_signal(sig)
      time.sleep(0.3)
    responses = [f.result() for f in futures]
  # Wait for the exit the signals asked for; another signal would race it.
  _, err = server.proc.communicate(timeout=120)
  assert [r.status_code for r in responses] == [200] * len(QUESTIONS), err
  assert server.proc.returncode == 0, err[-3000:]
