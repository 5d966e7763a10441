"""task=serve against hostile and careless clients, on a real server over a
real socket: bodies that used to get a 500 or be read whole, slow clients
and too many connections, foreign Host headers and cross-site posts, HEAD,
a client that leaves mid-body, a bad serve.port; and answer_batch's own
input checks. The server and knowledge base are test_serve's, the server on
serve.port=0 with short limits."""
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from realm_jax.index import store as index_store
from realm_jax.kb import versions as kb
from realm_jax.qa import Answerer
import openqa_workdir as ow
import test_serve
from test_serve import kb_dir  # noqa: F401  pylint: disable=unused-import

httpx = test_serve.httpx
TIMEOUT_S = 3           # serve.request_timeout_s of the server below
MAX_CONNECTIONS = 8     # serve.max_connections
QUESTION = test_serve.QUESTIONS[0]


def serve_command(workdir, *overrides) -> list[str]:
  """task=serve on `workdir` with the settings its config.json saved."""
  return [sys.executable, "-m", "realm_jax.main",
          f"--config=realm_jax/config.py:{os.path.join(workdir, 'config.json')}",
          f"--config.workdir={workdir}", "--config.task=serve", *overrides]


class LoggedServer(test_serve.Server):
  """test_serve.Server, started on serve.port=0: it talks to the port the
  server's log says it bound, and reads that log as it comes (self.log)."""

  def __init__(self, workdir, *overrides):  # pylint: disable=super-init-not-called
    self.proc = subprocess.Popen(
        serve_command(workdir, "--config.serve.port=0",
                      "--config.serve.poll_interval=0.2", *overrides),
        cwd=ow.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    self.lines = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()
    deadline = time.monotonic() + 300   # a hang guard only
    while not (bound := re.search(r"serving on http://127\.0\.0\.1:(\d+)",
                                  self.log)):
      if self.proc.poll() is not None:
        self._reader.join(10)
        pytest.fail(f"the server exited: {self.log[-3000:]}")
      assert time.monotonic() < deadline, "the server never came up"
      time.sleep(0.1)
    self.port = int(bound[1])
    self.url = f"http://127.0.0.1:{self.port}"

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line)

  @property
  def log(self) -> str:
    return "".join(self.lines)

  def wait_for_log(self, text: str, since: int = 0) -> str:
    """The log from line `since` on, once it holds text."""
    deadline = time.monotonic() + 60
    while text not in (log := "".join(self.lines[since:])):
      assert time.monotonic() < deadline, f"never logged {text!r}: {log}"
      time.sleep(0.05)
    return log

  def stop(self):
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
    self.proc.wait(timeout=120)


@pytest.fixture(scope="module")
def workdir(kb_dir, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """A copy of the knowledge base: a test adds a corrupt version to it."""
  path = tmp_path_factory.mktemp("hostile") / "kb"
  shutil.copytree(kb_dir.workdir, path)
  return str(path)


@pytest.fixture(scope="module")
def server(workdir):  # pylint: disable=redefined-outer-name
  s = LoggedServer(workdir, f"--config.serve.request_timeout_s={TIMEOUT_S}",
                   f"--config.serve.max_connections={MAX_CONNECTIONS}",
                   "--config.serve.allowed_hosts=realm.example, other.example")
  yield s
  s.stop()


def _connect(server) -> socket.socket:  # pylint: disable=redefined-outer-name
  return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def _post_head(server, *headers: str) -> bytes:  # pylint: disable=redefined-outer-name
  return "\r\n".join([
      "POST /v1/answer HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
      "Content-Type: application/json", *headers, "", ""]).encode()


def _until_closed(sock) -> bytes:
  """What the server sends until it closes the connection."""
  reply = b""
  try:
    while chunk := sock.recv(65536):
      reply += chunk
  except ConnectionResetError:
    pass
  return reply


@pytest.mark.parametrize("body, content_type, status, names", [
    # A lone surrogate decodes from JSON but no tokenizer takes it: was a 500.
    (b'{"question": "hi \\ud800"}', "application/json", 422,
     "lone surrogate '\\\\ud800' at character 3"),
    # json.loads raised RecursionError: was a 500.
    (b'{"question": ' + b"[" * 2000 + b"]" * 2000 + b"}", "application/json",
     400, "nested too deeply"),
    # What an HTML form on another site can post without a CORS preflight.
    (b'{"question": "Who was Lu Xun?"}', "text/plain", 415, "application/json"),
    (b"question=Who+was+Lu+Xun%3F", "application/x-www-form-urlencoded", 415,
     "application/json"),
    (b'{"question": "Who was Lu Xun?"}', None, 415, "application/json"),
], ids=["lone_surrogate", "nested_2000_deep", "text_plain", "form", "none"])
def test_hostile_bodies_get_a_json_4xx(server, body, content_type, status,
                                       names):
  headers = {"Content-Type": content_type} if content_type else {}
  response = httpx.post(server.url + "/v1/answer", content=body,
                        headers=headers, timeout=60)
  assert response.status_code == status, response.text
  assert names in response.text


def test_json_with_a_charset_is_answered(server):
  response = httpx.post(server.url + "/v1/answer",
                        content=json.dumps({"question": QUESTION}),
                        headers={"Content-Type": "Application/JSON; "
                                 "charset=utf-8"}, timeout=120)
  assert response.status_code == 200, response.text
  assert response.json()["question"] == QUESTION


def test_answer_batch_refuses_what_is_not_a_list_of_questions(kb_dir):  # pylint: disable=redefined-outer-name
  with Answerer(kb_dir.workdir, poll_interval=None) as answerer:
    # Was the tokenizer's "TypeError: TextInputSequence must be str".
    with pytest.raises(ValueError, match=r"question 2: .*lone surrogate"):
      answerer.answer_batch([QUESTION, "hi \ud800"])
    # b"abc" was read as three questions, "got int"; a number as "not
    # iterable".
    for batch, kind in [(b"abc", "bytes"), ("abc", "str"), (7, "int")]:
      with pytest.raises(TypeError,
                         match=rf"a list of questions \(str\), got {kind}"):
        answerer.answer_batch(batch)
    with pytest.raises(ValueError, match="question 2: .* got bytes"):
      answerer.answer_batch([QUESTION, b"abc"])
    # A generator had "no len()": any iterable of str is answered.
    asked = test_serve.QUESTIONS[:2]
    got = answerer.answer_batch(q for q in asked)
    assert [a.question for a in got] == asked


def test_a_chunked_body_over_the_limit_is_refused_before_its_end(server):
  # 5000 bytes in one chunk and no last chunk: the body never ends. It was
  # read to its end before the 413 (a chunked body declares no length).
  with _connect(server) as sock:
    sock.sendall(_post_head(server, "Transfer-Encoding: chunked") +
                 b"%x\r\n%s\r\n" % (5000, b"x" * 5000))
    reply = _until_closed(sock)
  assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
  assert b"serve.max_body_bytes=4096" in reply


def test_a_slow_client_is_cut_off_while_others_are_answered(server):
  since = len(server.lines)
  with _connect(server) as slow, concurrent.futures.ThreadPoolExecutor(
      2) as pool:
    opened = time.monotonic()
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    answer = pool.submit(server.ask, QUESTION)
    health = pool.submit(httpx.get, server.url + "/healthz", timeout=60)
    slow.settimeout(0.5)
    while True:   # a header byte every half second, until it is closed
      assert time.monotonic() - opened < 3 * TIMEOUT_S, "still open"
      try:
        slow.sendall(b"a")
        assert slow.recv(100) == b""   # closed, with no answer
        break
      except TimeoutError:
        continue
      except (ConnectionResetError, BrokenPipeError):
        break
    assert answer.result().status_code == 200
    assert health.result().status_code == 200
  server.wait_for_log(f"serve.request_timeout_s={TIMEOUT_S}", since)


def test_connections_beyond_max_connections_get_503(server):
  # Connections that send nothing: each counts until request_timeout_s.
  idle = [_connect(server) for _ in range(MAX_CONNECTIONS)]
  try:
    response = httpx.get(server.url + "/healthz", timeout=60)
    assert response.status_code == 503, response.text
  finally:
    for sock in idle:
      sock.close()
  deadline = time.monotonic() + 60
  while httpx.get(server.url + "/healthz", timeout=60).status_code != 200:
    assert time.monotonic() < deadline, "still 503 with the others closed"
    time.sleep(0.1)


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:{port}", True), ("localhost:{port}", True),
    ("[::1]:{port}", True), ("realm.example", True),
    ("Other.Example:8443", True),   # serve.allowed_hosts: any port
    ("evil.example:{port}", False),   # a DNS name rebound to 127.0.0.1
    ("evil.example", False), ("127.0.0.1:1", False), ("127.0.0.1", False),
    ("user@127.0.0.1:{port}", False), ("", False)])
def test_only_requests_that_name_this_server_are_answered(server, host, ok):
  headers = {"Host": host.format(port=server.port)}
  for method, path in [("GET", "/"), ("GET", "/v1/version"),
                       ("GET", "/healthz")]:
    response = httpx.request(method, server.url + path, headers=headers,
                             timeout=60)
    assert response.status_code == (200 if ok else 421), (path, response.text)
  # An empty question: answered with its 422 only for this server.
  response = httpx.post(server.url + "/v1/answer", json={"question": ""},
                        headers=headers, timeout=60)
  assert response.status_code == (422 if ok else 421), response.text
  if not ok:
    assert "serve.allowed_hosts" in response.json()["error"]


def test_a_refused_version_is_shown_without_the_servers_paths(
    server, workdir, tmp_path):  # pylint: disable=redefined-outer-name
  versions = kb.versions_dir(workdir)
  copy = tmp_path / "1"
  shutil.copytree(index_store.version_path(versions, 0), copy)
  damaged = sorted(index_store.read_manifest(str(copy))["export"]["files"])[0]
  with open(copy / damaged, "ab") as f:
    f.write(b"x")
  os.rename(copy, index_store.version_path(versions, 1))  # committed whole
  deadline = time.monotonic() + 60
  while not (version := httpx.get(server.url + "/v1/version",
                                  timeout=60).json())["refused"]:
    assert time.monotonic() < deadline, "version 1 was never refused"
    time.sleep(0.1)
  assert version["serving"] == 0 and list(version["refused"]) == ["1"]
  reason = version["refused"]["1"]
  assert reason.startswith(os.path.basename(damaged) + ": sha256"), reason
  assert "/" not in reason and "1 was refused" in version["note"]


def test_the_port_bound_is_logged_and_a_bad_port_is_one_line(server, workdir):  # pylint: disable=redefined-outer-name
  # The server above ran with serve.port=0; its log named the port that
  # answers (it used to log ":0").
  assert server.port != 0
  assert httpx.get(server.url + "/healthz", timeout=60).status_code == 200
  run = subprocess.run(
      serve_command(workdir, "--config.serve.port=70000"),
      cwd=ow.ROOT, capture_output=True, text=True, timeout=180)
  assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith(
      "error: ValueError: serve.port=70000: must be in [0, 65535]"), run.stderr


def test_head_is_answered(server):
  for path in ["/", "/healthz", "/v1/version"]:
    response = httpx.head(server.url + path, timeout=60)
    assert response.status_code == 200 and response.content == b"", path


def test_a_client_that_leaves_mid_body_is_one_log_line(server):
  since = len(server.lines)
  with _connect(server) as sock:
    sock.sendall(_post_head(server, "Content-Length: 100") + b'{"question"')
  # It closed with 89 bytes of its body unsent. uvicorn used to log its
  # 40-line "Exception in ASGI application" traceback.
  log = server.wait_for_log("cut off before its whole body came", since)
  assert "Traceback" not in log and "Exception" not in log, log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_model_loads_is_one_line_and_exit_0(workdir, sig):  # pylint: disable=redefined-outer-name
  """SIGTERM before the model had loaded killed the server by the signal,
  with no line. Sent once the server logs that it is loading: it stops with
  a line saying so (or, had loading already ended, as a serving one does)."""
  proc = subprocess.Popen(
      serve_command(workdir, "--config.serve.port=0"),
      cwd=ow.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if "loading the model of" in line:
      proc.send_signal(sig)
      break
  lines += proc.stderr.readlines()
  assert proc.wait(timeout=120) == 0, "".join(lines)[-3000:]
  log = "".join(lines)
  assert "Traceback" not in log, log[-3000:]
  assert re.search(f"{sig.name}.*(before the model had loaded|stopping)",
                   log), log[-3000:]


def test_the_docs_page_needs_no_network(server):
  """/docs loaded Swagger UI from a CDN: blank offline. Every script and
  style it names is served here."""
  page = httpx.get(server.url + "/docs", timeout=60)
  assert page.status_code == 200 and "swagger" in page.text.lower()
  assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
  assert any(a.endswith("swagger-ui-bundle.js") for a in assets), page.text
  for asset in assets:
    assert asset.startswith("/"), f"{asset} is not served here"
    got = httpx.get(server.url + asset, timeout=60)
    assert got.status_code == 200 and len(got.content) > 100, asset
  assert httpx.get(server.url + "/openapi.json", timeout=60).json()["paths"]
