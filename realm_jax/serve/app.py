"""The HTTP app (FastAPI on uvicorn): the JSON API and the web page.

  POST /v1/answer  {"question": str, "top_k"?: int} -> the answer, its score
                   and probability, the evidence blocks (doc id, title, text,
                   the answer's char span, p(z|x)), the index version, the
                   seconds taken
  GET  /v1/version the version in service, the newest committed one, and the
                   versions refused (a corrupt newest version keeps the
                   previous one serving)
  GET  /healthz    200 while a version is in service
  GET  /           the page (page.html: plain HTML, CSS and JavaScript)
  GET  /docs       the OpenAPI page

Every bad request gets a JSON 4xx naming what was wrong and, for a limit,
the setting (serve.max_body_bytes, finetune.question_len); a full queue a
503 with Retry-After. Only the question and top_k are read from a request:
nothing of it reaches a file path.
"""
import asyncio
import dataclasses
import json
import os
import pathlib
import time

import fastapi
from fastapi import responses

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


def _error(status: int, message: str, headers=None,
           **extra) -> responses.JSONResponse:
  return responses.JSONResponse({"error": message, **extra},
                                status_code=status, headers=headers)


def answer_json(answer: answerer_lib.Answer, top_k: int, seconds: float) -> dict:
  return {"question": answer.question, "answer": answer.answer,
          "score": answer.score, "prob": answer.prob,
          "evidence": [dataclasses.asdict(e) for e in answer.evidence[:top_k]],
          "version": answer.version, "seconds": seconds}


def make_app(answerer: answerer_lib.Answerer,
             batcher: batcher_lib.Batcher, serve_config) -> fastapi.FastAPI:
  """The app over a started Answerer (its watcher swaps new versions in)
  and a Batcher over its answer_batch; closing them is the caller's."""
  app = fastapi.FastAPI(title="realm_jax", description=__doc__)
  question_len = answerer.config.finetune.question_len
  evidence = answerer.config.answer.num_evidence
  page = pathlib.Path(_PAGE).read_text(encoding="utf-8")

  @app.post("/v1/answer", openapi_extra=_REQUEST_SCHEMA)
  async def answer(request: fastapi.Request):
    start = time.perf_counter()
    limit = serve_config.max_body_bytes
    too_big = _error(413, f"the body is over {limit} bytes",
                     limit=f"serve.max_body_bytes={limit}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
      return too_big      # refused before the body is read
    body = await request.body()
    if len(body) > limit:
      return too_big
    try:
      data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
      return _error(400, "the body is not JSON")
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

  @app.get("/v1/version")
  def version():
    versions = (index_store.list_versions(kb.versions_dir(answerer.config.workdir))
                if kb.is_kb(answerer.config.workdir) else [])
    refused = {str(v): why for v, why in answerer.watcher.refused.items()}
    return {"serving": answerer.version,
            "newest_committed": versions[-1] if versions else answerer.version,
            "refused": refused,
            "note": (f"version {max(map(int, refused))} was refused; version "
                     f"{answerer.version} keeps serving") if refused else ""}

  @app.get("/healthz")
  def healthz():
    if answerer.version is None:
      return _error(503, "no version in service")
    return {"ok": True, "version": answerer.version,
            "in_flight": batcher.in_flight}

  @app.get("/", response_class=responses.HTMLResponse)
  def index():
    return page

  return app
