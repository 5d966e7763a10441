"""REALM pretraining with real embedding subprocesses: reader inputs, kill -9
and bitwise resume (deterministic refresh), resume in asynchronous mode. Tiny
configs so CI runs them on 2 cores; the end-to-end learning test (ICT, hot
swaps, loss and retrieval utility) is tests/test_realm_e2e.py."""
import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from realm_jax import checkpoint as ckpt_lib
from realm_jax.batching import candidates
from realm_jax.data import block_builder
from realm_jax.data import demo_corpus
from realm_jax.data import tokenizer as tokenizer_lib
from realm_jax.index import export as export_lib
from realm_jax.models.retriever import doc_embedder_params
from realm_jax.train import embed_job
from realm_jax.train import head_warmup
from realm_jax.train import heldout
import stopping_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_DOCS = 60


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """A SentencePiece vocabulary (small, so a tiny model learns fast) and a
  block store of the first demo documents, shared by every run below."""
  d = tmp_path_factory.mktemp("shared")
  texts = [t for doc in demo_corpus.demo_documents(200) for t in doc]
  sp = tokenizer_lib.train_sentencepiece(texts, 1000, str(d / "sp"))
  return {"tokenizer": f"sentencepiece:{sp}", "blocks": str(d / "blocks")}


def _args(shared, workdir, *overrides):
  return [sys.executable, "-m", "realm_jax.main",
          "--config=configs/tiny_cpu.py", f"--config.workdir={workdir}",
          f"--config.data.tokenizer={shared['tokenizer']}",
          f"--config.data.block_store={shared['blocks']}",
          f"--config.data.corpus_limit={CORPUS_DOCS}", *overrides]


def _run(shared, workdir, *overrides, timeout=600):
  r = subprocess.run(_args(shared, workdir, *overrides), cwd=ROOT,
                     capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stderr[-4000:]
  return r


def _metrics(workdir, name="pretrain"):
  """{step: row}, the last row written for each step (a resumed run rewrites
  the steps after its checkpoint)."""
  rows = {}
  with open(os.path.join(workdir, f"{name}_metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      rows[r["step"]] = r
  return rows


DETERMINISTIC = ("--config.index.deterministic=True",
                 "--config.index.refresh_every=5",
                 "--config.index.refresh_delay=2",
                 "--config.train.checkpoint_every=5",
                 "--config.train.log_every=1",
                 "--config.train.num_steps=20",
                 "--config.train.learning_rate=3e-3",
                 # The MLM head's warm-up, then held-out measures every 5
                 # steps: both must keep a resume bitwise exact.
                 "--config.data.heldout_fraction=0.25",
                 "--config.pretrain.heldout_queries=16",
                 "--config.pretrain.heldout_every=5",
                 "--config.pretrain.head_warmup_steps=6",
                 "--config.pretrain.head_warmup_eval_every=3",
                 "--config.pretrain.head_warmup_batch_size=8",
                 "--config.pretrain.head_warmup_learning_rate=3e-2",
                 # Each refresh exports the best retriever so far: its
                 # decisions must repeat after a kill too.
                 "--config.pretrain.export=best_heldout_utility")


def test_reader_inputs_put_query_then_body_and_null_first(shared, tmp_path):
  tok = tokenizer_lib.load_tokenizer(shared["tokenizer"])
  store = block_builder.build_block_store(demo_corpus.demo_documents(5), tok,
                                   str(tmp_path / "b"), block_len=32,
                                   progress=False)
  q = np.array([[tok.cls_id, 7, tok.mask_id, 9, tok.sep_id, tok.pad_id]], np.int32)
  qmask = (q != tok.pad_id).astype(np.int32)
  rows = np.array([[candidates.NULL_ROW, 2]])
  ids, seg, mask = candidates.reader_inputs(q, qmask, store, rows, 20,
                                           tok.sep_id, tok.pad_id)
  # Null document: [CLS] q [SEP] [SEP], segment 1 on the last [SEP] only.
  assert ids[0, 0, :6].tolist() == q[0, :5].tolist() + [tok.sep_id]
  assert mask[0, 0].sum() == 6 and seg[0, 0].tolist()[:7] == [0] * 5 + [1, 0]
  # A block: [CLS] q [SEP] body... [SEP], body truncated to fit 20 tokens.
  body = store.body_ids(2)[:20 - 5 - 1]
  assert ids[0, 1, 5:5 + len(body)].tolist() == body.tolist()
  assert ids[0, 1, 19] == tok.sep_id and mask[0, 1].sum() == 20
  d_ids, d_seg, d_mask = candidates.candidate_doc_inputs(store, rows, tok)
  assert d_ids[0, 0, :3].tolist() == [tok.cls_id, tok.sep_id, tok.sep_id]
  assert d_mask[0, 0].sum() == 3
  np.testing.assert_array_equal(d_ids[0, 1], store.doc_inputs([2])[0][0])


def _kill_after(shared, workdir, overrides, lines):
  """Starts a trainer that stops itself (SIGSTOP) once it has logged step
  `lines` (tests/stopping_child.py), SIGKILLs it there, and returns the
  metrics rows it wrote: the kill lands mid-run however fast the machine."""
  args = _args(shared, workdir, *overrides)
  assert args[1:3] == ["-m", "realm_jax.main"]
  proc = subprocess.Popen(
      stopping_child.command(f"metrics:{lines}", "realm_jax.main", *args[3:]),
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    stopping_child.wait_until_stopped(proc)   # fails if the trainer finished
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  metrics = workdir / "pretrain_metrics.jsonl"
  return [json.loads(line) for line in metrics.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted_dir(shared, tmp_path_factory):
  """The workdir of an uninterrupted DETERMINISTIC run."""
  ref = tmp_path_factory.mktemp("uninterrupted")
  _run(shared, ref, *DETERMINISTIC)
  return ref


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_dir):
  """{step: metrics row} of the uninterrupted DETERMINISTIC run."""
  return _metrics(uninterrupted_dir)


def test_the_head_warms_up_then_held_out_sentences_are_measured(
    uninterrupted_dir):
  """The MLM head's warm-up runs before step 1, measured before it starts
  and every 3 of its steps; then the held-out measures come at step 0,
  every 5 steps and at the end."""
  work = uninterrupted_dir
  warm = [json.loads(l) for l in
          (work / head_warmup.PATH).read_text().splitlines()]
  assert [r["step"] for r in warm] == [0, 3, 6]
  held = heldout.read(str(work))
  assert [r["step"] for r in held] == [0, 5, 10, 15, 20]
  for r in warm + held:
    assert np.isfinite(r["heldout_utility"]), r
    assert 0.0 <= r["heldout_mlm_accuracy"] <= 1.0
    assert 0.0 <= r["heldout_recall@5"] <= 1.0
  # The warm-up's measure at its last step is step 0's: nothing moved since.
  assert held[0]["heldout_utility"] == warm[-1]["heldout_utility"]
  # Learning: the head alone raises the held-out likelihood of the masks.
  key = "heldout_marginal_log_likelihood"
  assert warm[-1][key] > warm[0][key] + 0.1, warm
  assert heldout.best(held) == max(held, key=lambda r: r["heldout_utility"])
  # pretrain.export=best_heldout_utility: a refresh whose utility beats
  # every earlier one exports its retriever (which moved), else the
  # previous export again, byte for byte.
  params = lambda step: (work / "exports" / str(step) /
                         export_lib.PARAMS).read_bytes()
  utility = {r["step"]: r["heldout_utility"] for r in held}
  improved = []
  for step in (5, 10, 15, 20):
    better = utility[step] > max(u for s, u in utility.items() if s < step)
    assert (params(step) != params(step - 5)) == better, (step, utility)
    improved.append(better)
  assert len(set(improved)) == 2, utility   # both kinds happened here


def test_kill_minus_nine_then_resume_is_bitwise_identical(
    shared, tmp_path, uninterrupted, uninterrupted_dir):
  """Deterministic refresh: a run killed with SIGKILL mid-run and resumed
  logs exactly the losses of an uninterrupted run."""
  expected = uninterrupted

  work = tmp_path / "killed"
  killed = _kill_after(shared, work, DETERMINISTIC, 12)
  assert [r["step"] for r in killed] == list(range(1, 13))
  _run(shared, work, *DETERMINISTIC)
  got = _metrics(work)
  assert sorted(got) == sorted(expected) == list(range(1, 21))
  for step in expected:
    assert got[step]["loss"] == expected[step]["loss"], step
    assert got[step]["index_version"] == expected[step]["index_version"]
  # The held-out measures too: one row per measured step, the same values.
  assert heldout.read(str(work)) == heldout.read(str(uninterrupted_dir))


def test_asynchronous_resume_continues_from_the_checkpoint(shared, tmp_path):
  """Asynchronous refresh, kill -9, restart: training picks up at the step
  after the last checkpoint, with the index version saved in it or newer."""
  overrides = ("--config.index.refresh_every=4",
               "--config.train.checkpoint_every=5",
               "--config.train.log_every=1", "--config.train.num_steps=20")
  work = tmp_path / "async"
  before = _kill_after(shared, work, overrides, 12)
  logged = max(r["step"] for r in before)
  assert logged == 12
  _run(shared, work, *overrides)
  rows = [json.loads(line) for line in
          (work / "pretrain_metrics.jsonl").read_text().splitlines()]
  after = rows[len(before):]
  saved = after[0]["step"] - 1   # the checkpoint the restart resumed from
  assert saved % 5 == 0 and 5 <= saved <= logged, (saved, logged)
  assert [r["step"] for r in after] == list(range(saved + 1, 21))
  saved_version = {r["step"]: r["index_version"] for r in before}[saved]
  assert all(r["index_version"] >= saved_version for r in after)


def test_a_resume_drops_the_exports_and_indexes_of_the_discarded_steps(
    shared, tmp_path):
  """Killed after exporting step 12 with its checkpoint at 10 (or older): the
  resumed run used to serve index v12, built from the discarded steps'
  export, and to keep that export instead of writing its own."""
  overrides = ["--config.index.refresh_every=4",
               "--config.train.checkpoint_every=10",
               "--config.train.log_every=1"]
  work = tmp_path / "ahead"
  args = _args(shared, work, *overrides, "--config.train.num_steps=20")
  proc = subprocess.Popen(
      stopping_child.command("export:12", "realm_jax.main", *args[3:]),
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    stopping_child.wait_until_stopped(proc)
    job = stopping_child.children(proc.pid)   # the embedding job
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  stopping_child.wait_for_exit(job)   # it exits when its parent is gone
  assert os.path.isdir(work / "exports" / "12")
  before = len((work / "pretrain_metrics.jsonl").read_text().splitlines())
  # Another learning rate: the resumed steps differ from the discarded ones.
  _run(shared, work, *overrides, "--config.train.num_steps=12",
       "--config.train.learning_rate=3e-3")
  rows = [json.loads(line) for line in
          (work / "pretrain_metrics.jsonl").read_text().splitlines()][before:]
  saved = rows[0]["step"] - 1
  assert saved <= 10 and rows[-1]["step"] == 12
  assert all(r["index_version"] <= saved for r in rows), rows
  step, params = ckpt_lib.restore_params(str(work))
  _, exported, cfg = export_lib.load_export(str(work / "exports" / "12"))
  assert step == 12
  for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(
      doc_embedder_params(params["retriever"], cfg)), strict=True):
    np.testing.assert_array_equal(a, b)


def test_an_update_that_overflows_is_never_saved(shared, tmp_path):
  """learning_rate=inf: step 1's loss is finite but the params it returns are
  not; the run stops before saving them, so no checkpoint and no export of
  that step exist (the embedding job would refuse a NaN export anyway)."""
  work = tmp_path / "inf"
  r = subprocess.run(_args(shared, work, *DETERMINISTIC[:3],
                           "--config.train.learning_rate=inf",
                           "--config.train.warmup_steps=0",
                           "--config.train.checkpoint_every=1",
                           "--config.train.log_every=1",
                           "--config.train.num_steps=3"),
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode != 0
  assert "the updated params' norm is nan at step 1" in r.stderr, r.stderr[-3000:]
  assert not os.path.isdir(work / "checkpoints") or not any(
      n.isdigit() for n in os.listdir(work / "checkpoints"))
  assert sorted(os.listdir(work / "exports")) == ["0"]


def test_a_dead_embedding_job_is_restarted_then_the_run_stops(tmp_path):
  """EmbedJob.check (run at every export): a job that exited is started
  again, index.embed_restarts times, then the trainer stops naming its log.
  The real job is started; it dies because its block store is missing."""
  from realm_jax import config as config_lib
  config = config_lib.default_config()
  config.workdir = str(tmp_path)
  config.index.embed_restarts = 1
  job = embed_job.EmbedJob(config, str(tmp_path / "no_block_store"))
  try:
    assert job.proc.wait(timeout=600) != 0
    job.check()
    assert job.restarts_left == 0
    assert job.proc.wait(timeout=600) != 0
    with pytest.raises(RuntimeError, match="embed_job.log"):
      job.check()
  finally:
    job.close()
  assert (tmp_path / "embed_job.log").read_text().count("no_block_store") >= 2


def test_a_job_that_dies_before_the_first_index_names_its_exit(tmp_path):
  """Waiting for the first index, a dead job is restarted index.embed_restarts
  times, as at every export (it used to be given up at once), then the wait
  stops with its exit status and log (before that, with AttributeError:
  EmbedJob has no returncode). The real job dies on a missing block store."""
  from realm_jax import config as config_lib
  config = config_lib.default_config()
  config.workdir = str(tmp_path)
  config.index.embed_restarts = 1
  job = embed_job.EmbedJob(config, str(tmp_path / "no_block_store"))
  try:
    with pytest.raises(RuntimeError, match=r"exited with status [1-9].*"
                       r"embed_restarts.*embed_job\.log"):
      embed_job.first_version(str(tmp_path / "index"), job, poll=0.1)
    assert job.restarts_left == 0
  finally:
    job.close()
  assert (tmp_path / "embed_job.log").read_text().count("no_block_store") >= 2


def test_a_stale_index_is_warned_about_once_per_refresh():
  """index.max_staleness (0: 3 * refresh_every + refresh_delay)."""
  from realm_jax import config as config_lib
  index = config_lib.default_config().index
  index.refresh_every, index.refresh_delay = 10, 5
  alarm = embed_job.StalenessAlarm(index, "w")
  assert alarm.max_staleness == 35
  assert [step for step in range(0, 80) if alarm.check(step, 0)] == [
      36, 46, 56, 66, 76]
  index.max_staleness = 3
  alarm = embed_job.StalenessAlarm(index, "w")
  assert not alarm.check(13, 10) and alarm.check(14, 10)


def test_sigterm_saves_the_step_and_exits_zero_then_resume_is_exact(
    shared, tmp_path, uninterrupted):
  """Preemption: SIGTERM used to kill the trainer with status 143 and no
  checkpoint since the last checkpoint_every. Now the step in flight is
  finished and saved, the embedding job stopped, the exit status is 0, and
  the rerun continues with the losses of an uninterrupted run."""
  expected = uninterrupted

  work = tmp_path / "stopped"
  args = _args(shared, work, *DETERMINISTIC)
  proc = subprocess.Popen(
      stopping_child.command("metrics:12", "realm_jax.main", *args[3:]),
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    stopping_child.wait_until_stopped(proc)
    proc.send_signal(signal.SIGTERM)   # delivered when it runs again
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=600)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  # The signal lands in step 12 or the next one, as Python runs handlers.
  stopped = int(re.search(r"stopped by SIGTERM after step (\d+)", err)[1])
  assert stopped in (12, 13)
  checkpoints = sorted(os.listdir(work / "checkpoints"))
  assert str(stopped) in checkpoints, checkpoints   # not a multiple of 5
  assert not [c for c in checkpoints if "tmp" in c]
  _run(shared, work, *DETERMINISTIC)
  got = _metrics(work)
  assert sorted(got) == sorted(expected) == list(range(1, 21))
  for step in expected:
    assert got[step]["loss"] == expected[step]["loss"], step
