"""The HTTP app (FastAPI on uvicorn): the JSON API and the web page.

  POST /v1/answer  {"question": str, "top_k"?: int} -> the answer, its score
                   and probability, the evidence blocks (doc id, title, text,
                   the answer's char span, p(z|x)), the index version, the
                   seconds taken
  GET  /v1/version the version in service, the newest committed one, and the
                   versions refused, each with its reason (a corrupt newest
                   version keeps the previous one serving)
  GET  /healthz    200 while a version is in service
  GET  /           the page (page.html: plain HTML, CSS and JavaScript)
  GET  /docs       the OpenAPI page
  (HEAD too on /, /healthz and /v1/version.)

Every bad request gets a JSON 4xx naming what was wrong and, for a limit,
the setting (serve.max_body_bytes, finetune.question_len); a full queue a
503 with Retry-After. Only the question and top_k are read from a request:
nothing of it reaches a file path. A request must name this server in its
Host header (the bound address, or serve.allowed_hosts; else 421), and a
question must come as Content-Type: application/json (else 415): a page on
another site can then neither read these answers through a DNS name turned
to 127.0.0.1 nor post a form here (a JSON post from another origin needs a
CORS preflight, which this app never grants).
"""
import asyncio
import dataclasses
import json
import os
import pathlib
import re
import time

from absl import logging
import fastapi
from fastapi import responses
from fastapi import staticfiles
from fastapi.openapi import docs as docs_lib
from starlette import requests as starlette_requests
import swagger_ui_bundle

from realm_jax.index import store as index_store
from realm_jax.kb import versions as kb
from realm_jax.qa import answerer as answerer_lib
from realm_jax.qa import batcher as batcher_lib

_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
_REQUEST_SCHEMA = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {
        "type": "object", "required": ["question"],
        "properties": {"question": {"type": "string"},
                       "top_k": {"type": "integer", "minimum": 1}}}}}}}
# A Host header: a name or IPv4 address, or an IPv6 one in brackets, and an
# optional port. Anything else (user@host, a path) is refused.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(\d{1,5}))?")


def _error(status: int, message: str, headers=None,
           **extra) -> responses.JSONResponse:
  return responses.JSONResponse({"error": message, **extra},
                                status_code=status, headers=headers)


def answer_json(answer: answerer_lib.Answer, top_k: int, seconds: float) -> dict:
  return {"question": answer.question, "answer": answer.answer,
          "score": answer.score, "prob": answer.prob,
          "evidence": [dataclasses.asdict(e) for e in answer.evidence[:top_k]],
          "version": answer.version, "seconds": seconds,
          "abstained": answer.abstained}


def without_paths(reason: str) -> str:
  """reason with each path cut to its last part ("/srv/kb/1/blocks.jsonl:
  sha256 ..." -> "blocks.jsonl: sha256 ..."): a client learns what is wrong,
  not where the server keeps its files."""
  return re.sub(r"[^\s'\":]*/[^\s'\":]*",
                lambda m: m[0].rstrip("/").rsplit("/", 1)[-1], reason)


class _CheckHost:
  """Answers only requests whose Host names this server. A page on
  evil.example whose DNS name is turned to 127.0.0.1 (DNS rebinding) reaches
  this port from a browser, but with Host: evil.example."""

  def __init__(self, app, host: str, allowed_hosts: str):
    self.app = app
    # The bound address's names, with the port: the connection's own local
    # address counts too (serve.host=0.0.0.0 is reached at a real one).
    self.local = {"127.0.0.1", "localhost", "::1", host.lower()}
    # Names a proxy or DNS gives this server, with any port (the proxy's).
    self.allowed = {h.strip().lower() for h in allowed_hosts.split(",")
                    if h.strip()}

  def host_ok(self, scope) -> bool:
    if "*" in self.allowed:
      return True
    host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
    match = _HOST.fullmatch(host.lower())
    if not match:
      return False
    name, port = match[1].strip("[]"), int(match[2] or 80)
    if name in self.allowed:
      return True
    address, bound = scope.get("server") or (None, None)
    return name in self.local | {address} and port == bound

  async def __call__(self, scope, receive, send):
    if scope["type"] == "http" and not self.host_ok(scope):
      host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
      response = _error(421, f"the Host header {host!r} does not name this "
                        "server; add its name to serve.allowed_hosts",
                        limit="serve.allowed_hosts")
      await response(scope, receive, send)
      return
    await self.app(scope, receive, send)


def make_app(answerer: answerer_lib.Answerer,
             batcher: batcher_lib.Batcher, serve_config) -> fastapi.FastAPI:
  """The app over a started Answerer (its watcher swaps new versions in)
  and a Batcher over its answer_batch; closing them is the caller's."""
  # /docs from swagger-ui-bundle's copy of Swagger UI, not FastAPI's CDN
  # (the page was blank offline).
  app = fastapi.FastAPI(title="realm_jax", description=__doc__,
                        docs_url=None, redoc_url=None)
  app.mount("/docs/assets", staticfiles.StaticFiles(
      directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs_assets")

  @app.get("/docs", include_in_schema=False)
  async def docs():
    return docs_lib.get_swagger_ui_html(
        openapi_url=app.openapi_url, title="realm_jax API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png")

  app.add_middleware(_CheckHost, host=serve_config.host,
                     allowed_hosts=serve_config.allowed_hosts)
  question_len = answerer.config.finetune.question_len
  evidence = answerer.config.answer.num_evidence
  page = pathlib.Path(_PAGE).read_text(encoding="utf-8")

  @app.post("/v1/answer", openapi_extra=_REQUEST_SCHEMA)
  async def answer(request: fastapi.Request):
    start = time.perf_counter()
    media = request.headers.get("content-type", "").split(";")[0]
    if media.strip().lower() != "application/json":
      return _error(415, "the body must be JSON, sent with Content-Type: "
                    "application/json")
    limit = serve_config.max_body_bytes
    # Connection: close: the rest of a refused body is never read.
    too_big = _error(413, f"the body is over {limit} bytes",
                     headers={"Connection": "close"},
                     limit=f"serve.max_body_bytes={limit}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
      return too_big      # refused before the body is read
    # Counted as it comes: a chunked body declares no length.
    body = bytearray()
    try:
      async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
          return too_big
    except starlette_requests.ClientDisconnect:
      # Nobody reads the answer; one line, not uvicorn's traceback.
      logging.info("a request from %s was cut off before its whole body came "
                   "(the client left, or took over serve.request_timeout_s)",
                   request.client and request.client.host)
      return _error(400, "the body was cut off")
    try:
      data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
      return _error(400, "the body is not JSON")
    except RecursionError:
      return _error(400, "the body is JSON nested too deeply")
    if not isinstance(data, dict) or "question" not in data:
      return _error(400, 'the body must be a JSON object with "question"')
    unknown = sorted(set(data) - {"question", "top_k"})
    if unknown:
      return _error(400, f"unknown field(s) {unknown}; known: question, top_k")
    top_k = data.get("top_k", evidence)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not (
        1 <= top_k <= evidence):
      return _error(422, f"top_k must be an integer in [1, {evidence}]",
                    limit=f"answer.num_evidence={evidence}")
    problem = answerer_lib.check_question(data["question"],
                                          answerer.tokenizer, question_len)
    if problem:
      return _error(422, problem, limit=f"finetune.question_len={question_len}")
    try:
      future = batcher.submit(data["question"])
    except batcher_lib.QueueFull as e:
      return _error(503, f"busy: {e}", headers={"Retry-After": "1"})
    result = await asyncio.wrap_future(future)
    return answer_json(result, top_k, time.perf_counter() - start)

  @app.api_route("/v1/version", methods=["GET", "HEAD"])
  def version():
    versions = (index_store.list_versions(kb.versions_dir(answerer.config.workdir))
                if kb.is_kb(answerer.config.workdir) else [])
    refused = {str(v): without_paths(why)
               for v, why in answerer.watcher.refused.items()}
    return {"serving": answerer.version,
            "newest_committed": versions[-1] if versions else answerer.version,
            "refused": refused,
            "note": (f"version {max(map(int, refused))} was refused; version "
                     f"{answerer.version} keeps serving") if refused else ""}

  @app.api_route("/healthz", methods=["GET", "HEAD"])
  def healthz():
    if answerer.version is None:
      return _error(503, "no version in service")
    return {"ok": True, "version": answerer.version,
            "in_flight": batcher.in_flight}

  @app.api_route("/", methods=["GET", "HEAD"],
                 response_class=responses.HTMLResponse)
  def index():
    return page

  return app
