"""Knowledge bases (task=index, kb/update.py, qa.Answerer): an
updated version equals a build from scratch; a killed update leaves the old
version serving and a rerun completes it; an Answerer answers through an
update and then cites only the new text; bad input is refused or counted."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from realm_jax import errors
from realm_jax.data import corpus
from realm_jax.data import demo_corpus
from realm_jax.index import build
from realm_jax.index import search
from realm_jax.index import store as index_store
from realm_jax.kb import update as kb_update
from realm_jax.kb import versions as kb
from realm_jax.qa import Answerer
from realm_jax.retrieval import openqa_record
from realm_jax.tasks import answer
from realm_jax.tasks import evaluate
import openqa_workdir as ow
import stopping_child

NUM_DOCS = 14


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """A fine-tuning workdir (random reader: the plumbing is tested here)."""
  pre = str(tmp_path_factory.mktemp("pretrain"))
  store, params = ow.make_pretrain_workdir(pre)
  return ow.make_finetuned_workdir(str(tmp_path_factory.mktemp("finetuned")),
                                   pre, store, params)


def corpus_v1() -> list[dict]:
  docs = demo_corpus.demo_documents(NUM_DOCS + 2)
  return [{"id": f"doc-{i}", "title": t, "text": x}
          for i, (t, x) in enumerate(docs[:NUM_DOCS])]


def corpus_v2() -> list[dict]:
  """v1 with doc-1 and doc-5 removed, doc-2 and doc-7 changed, two added."""
  extra = demo_corpus.demo_documents(NUM_DOCS + 2)[NUM_DOCS:]
  docs = [dict(d) for d in corpus_v1() if d["id"] not in ("doc-1", "doc-5")]
  for d in docs:
    if d["id"] in ("doc-2", "doc-7"):
      d["text"] = "Revised. " + d["text"][:200]
  docs.insert(3, {"id": "new-a", "title": extra[0][0], "text": extra[0][1]})
  docs.append({"id": "new-b", "title": extra[1][0], "text": extra[1][1]})
  return docs


def write_corpus(path, docs) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for d in docs:
      f.write(json.dumps(d, ensure_ascii=False) + "\n")
  return str(path)


def kb_config(workdir, corpus_path, model_dir):
  c = ow.tiny_config(str(workdir))
  c.task = "index"
  c.kb.model = model_dir
  c.data.corpus = f"jsonl:{corpus_path}"
  c.data.corpus_limit = 0
  c.index.embed_shard_rows = 8      # several shards: resume has a unit
  return c


def contents(path: str):
  """(fingerprint, [(doc, text)], emb) of a committed version."""
  store = kb.check_version(path)
  rows = [(r.get("doc"), r["text"]) for _, r in store.iter_records()]
  return store.fingerprint, rows, np.asarray(index_store.load(path))


def assert_same(updated: str, scratch: str):
  f1, rows1, emb1 = contents(updated)
  f2, rows2, emb2 = contents(scratch)
  assert rows1 == rows2 and f1 == f2
  np.testing.assert_allclose(emb1, emb2, atol=1e-5)
  queries = np.random.default_rng(0).normal(size=(6, emb1.shape[1]))
  s1, i1 = search.ExactSearcher(emb1).search(queries.astype(np.float32), 5)
  s2, i2 = search.ExactSearcher(emb2).search(queries.astype(np.float32), 5)
  assert (i1 == i2).all()
  np.testing.assert_allclose(s1, s2, atol=1e-4)


@pytest.fixture(scope="module")
def scratch_v2(model, tmp_path_factory):
  """A from-scratch knowledge base of corpus v2, to compare updates with."""
  tmp = tmp_path_factory.mktemp("scratch")
  config = kb_config(tmp / "kb", write_corpus(tmp / "v2.jsonl", corpus_v2()),
                     model)
  return kb_update.update(config, progress=False)


def test_an_update_embeds_only_new_blocks_and_equals_a_fresh_build(
    model, scratch_v2, tmp_path, monkeypatch):
  path = tmp_path / "docs.jsonl"
  config = kb_config(tmp_path / "kb", write_corpus(path, corpus_v1()), model)
  first = kb_update.update(config, progress=False)
  assert os.path.basename(first) == "0"
  embedded = []
  real = build.embed_export
  monkeypatch.setattr(build, "embed_export", lambda export, source, *a, **k: (
      embedded.append(source.num_blocks), real(export, source, *a, **k))[1])
  write_corpus(path, corpus_v2())
  second = kb_update.update(config, progress=False)
  assert os.path.basename(second) == "1"
  manifest = index_store.read_manifest(second)
  assert manifest["export"]["changes"] == {
      "added": 2, "changed": 2, "removed": 2, "unchanged": NUM_DOCS - 4}
  new_ids = {"doc-2", "doc-7", "new-a", "new-b"}
  _, rows, _ = contents(second)
  assert embedded == [sum(doc in new_ids for doc, _ in rows)]
  assert_same(second, scratch_v2)
  # The same corpus again: nothing to do, no new version.
  assert kb_update.update(config, progress=False) == second
  assert embedded == [embedded[0]]


@pytest.mark.parametrize("stop", ["shard:1", "commit:1"])
def test_a_killed_update_keeps_the_old_version_and_a_rerun_completes(
    model, scratch_v2, tmp_path, stop):
  path = tmp_path / "docs.jsonl"
  config = kb_config(tmp_path / "kb", write_corpus(path, corpus_v1()), model)
  old = kb_update.update(config, progress=False)
  write_corpus(path, corpus_v2())
  proc = subprocess.Popen(stopping_child.command(
      stop, "realm_jax.main", "--config=configs/tiny_cpu.py",
      *_flags(config)), cwd=ow.ROOT, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE)
  try:
    stopping_child.wait_until_stopped(proc)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  # The old version is the one in service, intact.
  assert kb.newest_version(config.workdir) == old
  _, rows, _ = contents(old)
  assert {doc for doc, _ in rows} == {d["id"] for d in corpus_v1()}
  new = kb_update.update(config, progress=False)
  assert os.path.basename(new) == "1"
  assert_same(new, scratch_v2)
  assert not [n for n in os.listdir(kb.versions_dir(config.workdir))
              if n.startswith(".work-") or n.endswith(".tmp")]


def _flags(config) -> list[str]:
  return [f"--config.workdir={config.workdir}", "--config.task=index",
          f"--config.kb.model={config.kb.model}",
          f"--config.data.corpus={config.data.corpus}",
          "--config.data.corpus_limit=0",
          f"--config.data.block_len={config.data.block_len}",
          f"--config.index.embed_shard_rows={config.index.embed_shard_rows}",
          f"--config.finetune.question_len={config.finetune.question_len}",
          f"--config.finetune.reader_len={config.finetune.reader_len}",
          f"--config.finetune.reader_beam={config.finetune.reader_beam}"]


def test_an_answerer_answers_through_an_update_then_cites_the_new_text(
    model, tmp_path):
  path = tmp_path / "docs.jsonl"
  config = kb_config(tmp_path / "kb", write_corpus(path, corpus_v1()), model)
  kb_update.update(config, progress=False)
  write_corpus(path, corpus_v2())
  question = "Who was the Chinese novelist and essayist?"
  with Answerer(config.workdir, poll_interval=0.05) as answerer:
    assert answerer.version == 0
    answers, errors, done = [], [], threading.Event()

    def ask():
      while not done.is_set():
        try:
          answers.append(answerer.answer(question))
        except Exception as e:  # pylint: disable=broad-except
          errors.append(e)

    asker = threading.Thread(target=ask)
    asker.start()
    try:
      result = subprocess.run(
          [sys.executable, "-m", "realm_jax.main",
           "--config=configs/tiny_cpu.py", *_flags(config)],
          cwd=ow.ROOT, capture_output=True, text=True, timeout=600)
      assert result.returncode == 0, result.stderr[-2000:]
      for _ in range(1200):
        if answerer.version == 1:
          break
        done.wait(0.05)
    finally:
      done.set()
      asker.join()
    assert not errors, errors[:3]
    assert answers and answerer.version == 1
    after = answerer.answer(question)
  assert after.version == 1
  current = {d["id"]: d for d in corpus_v2()}
  assert after.evidence
  for ev in after.evidence:
    assert ev.doc in current, f"evidence from removed document {ev.doc}"
    assert ev.text in current[ev.doc]["text"]
  # Every answer came whole from one version: its evidence is that
  # version's corpus, never a mix.
  v1 = {d["id"]: d["text"] for d in corpus_v1()}
  for a in answers:
    texts = v1 if a.version == 0 else {i: d["text"] for i, d in current.items()}
    assert all(ev.doc in texts and ev.text in texts[ev.doc]
               for ev in a.evidence)


def test_answer_and_eval_tasks_read_a_knowledge_base(model, tmp_path, capsys):
  config = kb_config(tmp_path / "kb", write_corpus(tmp_path / "docs.jsonl",
                                                   corpus_v1()), model)
  kb_update.update(config, progress=False)
  config.task = "answer"
  config.answer.question = "Who was the Chinese novelist and essayist?"
  (pred,) = answer.run(config)
  out = capsys.readouterr().out
  assert "Evidence (p(z|x)" in out and pred["top_blocks"]
  config.task = "eval"
  result = evaluate.evaluate(config, examples=[
      {"question": "Who was the Chinese novelist and essayist?",
       "answer": ["Lu Xun"]}], predictions_path=str(tmp_path / "p.jsonl"))
  assert result["num_questions"] == 1 and result["exact_match"] is not None


def test_a_pretraining_workdir_embeds_as_its_own_index(model, tmp_path):
  """kb.model = a pretraining workdir, data.corpus = demo (ids from title
  and text): each block's embedding is the one the model's own index holds
  for the same block."""
  pre = os.path.dirname(openqa_record.read_record(model)["block_store"])
  config = ow.tiny_config(str(tmp_path / "kb"))
  config.kb.model = pre
  path = kb_update.update(config, progress=False)
  store, emb = kb.check_version(path), index_store.load(path)
  own = corpus.BlockStore(os.path.join(pre, "blocks"))
  own_emb = index_store.load(os.path.join(pre, "index", "0"))
  where = {(r["title"], r["text"]): i for i, r in own.iter_records()}
  rows = [where[(r["title"], r["text"])] for _, r in store.iter_records()]
  assert len(rows) == own.num_blocks
  np.testing.assert_allclose(np.asarray(emb), own_emb[np.asarray(rows)],
                             atol=1e-5)


def test_bad_documents_are_skipped_and_counted(model, tmp_path):
  path = tmp_path / "docs.jsonl"
  lines = [json.dumps(d) for d in corpus_v1()[:4]]
  lines += ['{"id": "empty", "title": "Empty", "text": "  "}',
            b'{"id": "bytes", "title": "Bad", "text": "caf\xe9 au lait"}'
            .decode("latin-1"),
            # Not UTF-8 in the id: it used to refuse the whole corpus with
            # UnicodeEncodeError (no file, no line) and leave .work-0.
            b'{"id": "caf\xe9", "title": "Bad id", "text": "good text"}'
            .decode("latin-1"),
            json.dumps({"title": corpus_v1()[0]["title"],
                        "text": corpus_v1()[0]["text"]}),
            json.dumps({"title": corpus_v1()[0]["title"],
                        "text": corpus_v1()[0]["text"]})]
  with open(path, "wb") as f:
    for line in lines:
      f.write((line.encode("latin-1") if "caf" in line else line.encode())
              + b"\n")
  config = kb_config(tmp_path / "kb", str(path), model)
  version = kb_update.update(config, progress=False)
  export = index_store.read_manifest(version)["export"]
  assert export["skipped"] == {"empty_text": 1, "undecodable": 2,
                               "duplicate": 1, "no_blocks": 0}
  assert export["documents"] == 5   # 4 with ids, 1 without
  assert not [n for n in os.listdir(tmp_path / "kb") if n.startswith(".work")]


def test_a_document_with_a_long_title_is_kept_with_its_title_cut(model,
                                                                 tmp_path):
  """A title over block_len // 4 tokens used to give the document 0 blocks
  while the output counted it among the documents, skipped nothing."""
  docs = corpus_v1()[:3]
  docs[1]["title"] = " ".join(["Very long title word"] * 40)
  config = kb_config(tmp_path / "kb", write_corpus(tmp_path / "d.jsonl", docs),
                     model)
  version = kb_update.update(config, progress=False)
  export = index_store.read_manifest(version)["export"]
  assert export["documents"] == 3
  assert export["skipped"]["no_blocks"] == 0
  assert export["title_truncated"] == 1   # kept, and counted
  _, rows, _ = contents(version)
  assert "doc-1" in {doc for doc, _ in rows}
  store = kb.check_version(version)
  titles = {store.record(i)["title"] for i in range(store.num_blocks)}
  assert any(t.startswith("Very long title word") and len(t) < 400
             for t in titles)


def test_duplicate_ids_and_an_empty_corpus_are_refused_and_lose_nothing(
    model, tmp_path):
  path = tmp_path / "docs.jsonl"
  config = kb_config(tmp_path / "kb", write_corpus(path, corpus_v1()), model)
  old = kb_update.update(config, progress=False)
  docs = corpus_v1()
  docs[3]["id"] = "doc-0"
  write_corpus(path, docs)
  with pytest.raises(ValueError, match=r"duplicate document id 'doc-0': "
                     r".*line 1 and .*line 4"):
    kb_update.update(config, progress=False)
  write_corpus(path, [{"id": "x", "text": ""}])
  with pytest.raises(ValueError, match="no usable document.*keeps serving"):
    kb_update.update(config, progress=False)
  assert kb.newest_version(config.workdir) == old
  assert index_store.list_versions(kb.versions_dir(config.workdir)) == [0]


def test_a_model_that_does_not_fit_the_store_is_refused(model, tmp_path):
  path = write_corpus(tmp_path / "docs.jsonl", corpus_v1()[:3])
  config = kb_config(tmp_path / "kb", path, model)
  kb_update.update(config, progress=False)
  other = kb_config(tmp_path / "kb", path, "")   # config.model's retriever
  other.model.proj_size = 16
  with pytest.raises(ValueError, match="embedding size is 16.*refused"):
    kb_update.update(other, progress=False)
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                              "a", "b"]) + "\n")
  other = kb_config(tmp_path / "kb", path, "")
  other.data.tokenizer = f"wordpiece:{vocab}"
  with pytest.raises(ValueError, match="tokenizer.*refused"):
    kb_update.update(other, progress=False)
  assert index_store.list_versions(kb.versions_dir(config.workdir)) == [0]


def test_the_update_benchmark_runs_small(tmp_path):
  result = subprocess.run(
      [sys.executable, "benchmarks/bench_kb.py", "--copies", "1", "--docs",
       "100", "--change", "0.05", "--dir", str(tmp_path)],
      cwd=ow.ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
  assert rows[0].startswith("| run |") and len(rows) == 5
  assert '"changed": 5' in rows[3]


def test_an_unchanged_rerun_reports_no_changes(model, tmp_path, capsys):
  """It used to print the serving version's changes ("added": all of them)
  for a run that committed nothing."""
  from realm_jax.tasks import index as index_task  # pylint: disable=g-import-not-at-top
  config = kb_config(tmp_path / "kb", write_corpus(tmp_path / "d.jsonl",
                                                   corpus_v1()), model)
  index_task.run(config)
  first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert first["committed"] and first["changes"]["added"] == NUM_DOCS
  index_task.run(config)
  again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert again["version"] == first["version"] and not again["committed"]
  assert again["changes"] == {"added": 0, "changed": 0, "removed": 0,
                              "unchanged": NUM_DOCS}


def test_a_truncated_record_names_its_file(model, tmp_path):
  """A truncated kb.json or config.json was a bare JSONDecodeError."""
  from realm_jax.qa import Answerer  # pylint: disable=g-import-not-at-top
  config = kb_config(tmp_path / "kb", write_corpus(tmp_path / "d.jsonl",
                                                   corpus_v1()[:3]), model)
  kb_update.update(config, progress=False)
  for name in ("kb.json", "config.json"):
    path = os.path.join(config.workdir, name)
    with open(path, "r+") as f:
      f.truncate(10)
  with pytest.raises(ValueError, match=r"kb\.json is not valid JSON .*task=index"):
    kb.read_record(config.workdir)
  with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
    Answerer(config.workdir)


@pytest.mark.parametrize("damage", ["blocks_offsets", "manifest"])
def test_task_answer_falls_back_past_a_broken_newest_version(model, tmp_path,
                                                             damage):
  """task=answer used to fail on a newest version with a truncated
  blocks_offsets.npy or no manifest.json (its tokenizer came from the newest
  version, intact or not); it answers from the newest intact version, as the
  Answerer does."""
  path = tmp_path / "docs.jsonl"
  config = kb_config(tmp_path / "kb", write_corpus(path, corpus_v1()), model)
  kb_update.update(config, progress=False)
  write_corpus(path, corpus_v2())
  newest = kb_update.update(config, progress=False)
  if damage == "manifest":
    os.remove(os.path.join(newest, "manifest.json"))
  else:
    with open(os.path.join(newest, "blocks", "blocks_offsets.npy"), "r+") as f:
      f.truncate(20)
  config.task = "answer"
  config.answer.question = "Who was the Chinese novelist and essayist?"
  (pred,) = answer.run(config)
  assert pred["top_blocks"]


def test_an_answerer_loads_a_version_built_again_under_its_number(model,
                                                                  tmp_path):
  """Version 1 deleted (say a user cleaned up) and the corpus indexed again:
  the new version is also 1. A long-lived Answerer used to keep answering
  from the deleted files while reporting version 1."""
  import shutil  # pylint: disable=g-import-not-at-top
  path = tmp_path / "docs.jsonl"
  config = kb_config(tmp_path / "kb", write_corpus(path, corpus_v1()), model)
  kb_update.update(config, progress=False)
  write_corpus(path, corpus_v2())
  first = kb_update.update(config, progress=False)
  question = "Who was the Chinese novelist and essayist?"
  with Answerer(config.workdir, poll_interval=None) as answerer:
    assert answerer.version == 1
    answerer.answer(question)
    shutil.rmtree(first)
    kept = corpus_v1()[:5]
    write_corpus(path, kept)
    assert kb_update.update(config, progress=False) == first
    assert answerer.poll() and answerer.version == 1
    after = answerer.answer(question)
  ids = {d["id"] for d in kept}
  assert after.evidence and all(ev.doc in ids for ev in after.evidence)


@pytest.fixture
def small_disk(tmp_path):
  """A 32 MiB file system of its own (tmpfs), to fill."""
  path = tmp_path / "disk"
  path.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs",
                            str(path)], capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip("filling a disk needs a tmpfs of its own (mount, as root): "
                + mounted.stderr.strip())
  yield path
  subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk, leave: int):
  """Leaves `leave` bytes free on `disk`."""
  with open(disk / "filler", "wb") as f:
    f.write(b"\1" * max(0, shutil.disk_usage(disk).free - leave))


@pytest.mark.parametrize("leave", [0, 64 * 1024])
def test_a_full_disk_is_one_line_leaves_nothing_and_a_rerun_succeeds(
    model, scratch_v2, small_disk, tmp_path, leave):
  """It was a ScaNN "I/O error" traceback, and kb/<n>.tmp, .work-<n> and
  config.json.partial stayed behind, keeping the disk full for the rerun."""
  path = tmp_path / "docs.jsonl"
  config = kb_config(small_disk / "kb", write_corpus(path, corpus_v1()), model)
  first = kb_update.update(config, progress=False)
  write_corpus(path, corpus_v2())
  listing = lambda: sorted(set(os.listdir(config.workdir))
                           - {"jax_cache", "searcher_cache"})   # caches
  before = listing()
  _fill(small_disk, leave)
  result = subprocess.run([sys.executable, "-m", "realm_jax.main",
                           "--config=configs/tiny_cpu.py", *_flags(config)],
                          cwd=ow.ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: the disk is full"), result.stderr[-3000:]
  assert str(small_disk) in last
  assert "Traceback" not in result.stderr
  assert listing() == before     # no config.json.partial
  versions = kb.versions_dir(config.workdir)
  assert not [n for n in os.listdir(versions)
              if n.startswith(".work-") or n.endswith(".tmp")]
  assert kb.newest_version(config.workdir) == first
  kb.check_version(first)
  os.remove(small_disk / "filler")
  new = kb_update.update(config, progress=False)
  assert os.path.basename(new) == "1"
  assert_same(new, scratch_v2)


def test_scann_on_a_full_disk_says_the_disk_is_full(small_disk):
  """ScaNN's own error says only "I/O error"."""
  from realm_jax.index import scann_searcher  # pylint: disable=g-import-not-at-top
  emb = np.random.default_rng(0).normal(size=(3000, 64)).astype(np.float32)
  searcher = scann_searcher.ScannSearcher(emb)
  _fill(small_disk, 64 * 1024)
  with pytest.raises(OSError, match="No space left") as e:
    searcher.save(str(small_disk / "scann"))
  assert e.value.errno == errno.ENOSPC
  assert e.value.filename == str(small_disk / "scann")
  assert os.listdir(small_disk) == ["filler"]


def test_a_short_write_is_a_full_disk_and_its_files_are_removed(small_disk):
  """numpy's short write ("N requested and M written", no errno) was a
  traceback that left kb/<n>.tmp and .work-<n> keeping the disk full."""
  work = small_disk / ".work-0"
  work.mkdir()
  _fill(small_disk, 100_000)
  with pytest.raises(OSError) as e, errors.removed_on_disk_full(str(work)):
    with open(work / "emb-00000.npy.partial", "wb") as f:
      np.save(f, np.zeros(300_000, np.float32))
  assert e.value.errno is None and "requested and" in str(e.value)
  assert errors.is_disk_full(e.value)
  assert errors.disk_full_message(e.value, str(small_disk)).startswith(
      "the disk is full (a short write: 300000 requested and")
  assert os.listdir(small_disk) == ["filler"]
  # A file over `ulimit -f` is no room to write either, said as such.
  too_big = OSError(errno.EFBIG, os.strerror(errno.EFBIG), "x.npy")
  assert errors.is_disk_full(too_big)
  assert errors.disk_full_message(too_big, ".").startswith(
      "a file reached the size limit (errno 27")
