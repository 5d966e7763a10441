"""Answers for applications and notebooks: Answerer.

  from realm_jax.qa import Answerer
  answerer = Answerer("workdir/my_kb")
  a = answerer.answer("Who designed the Golden Gate Bridge?")
  a.answer, a.score, a.evidence[0].title, a.evidence[0].p, a.evidence[0].span

`Answerer(workdir)` takes a knowledge base (task=index) or a fine-tuning
workdir, with the settings that task saved in <workdir>/config.json
(question_len, reader_len, reader_beam, searcher). For a knowledge base, a
background thread watches kb/ for newly committed versions through the
trainer's own verify-then-swap (index/refresh.IndexWatcher): a new version is
checked and loaded off the answering thread and put in service with one
assignment. So a long-lived Answerer keeps answering while an update runs
and answers from the new version once it commits; each answer comes from one
version, whose blocks, embeddings and searcher were committed together, so
its evidence is never a removed document or an outdated text.
"""
import dataclasses
import os
import time

import numpy as np

from realm_jax import config as config_lib
from realm_jax import workdir as workdir_lib
from realm_jax.data import corpus
from realm_jax.data import pipeline
from realm_jax.index import refresh
from realm_jax.index import store as index_store
from realm_jax.kb import versions as kb
from realm_jax.qa import model as qa_model
from realm_jax.qa import predictor as predictor_lib
from realm_jax.retrieval import openqa_record


@dataclasses.dataclass
class Evidence:
  row: int              # block row in the version's store
  doc: str | None       # document id (knowledge bases)
  title: str
  text: str
  p: float              # p(z|x) over the blocks read
  span: tuple | None    # char span of the answer inside text, if it is here


@dataclasses.dataclass
class Answer:
  question: str
  answer: str | None    # None: the reader found no span
  score: float | None   # the span's joint logit
  prob: float | None    # its probability over every span of every block read
  evidence: list        # [Evidence], best retrieved first
  version: int          # the index (knowledge base) version that answered
  # No answer given: the best span's score was below answer.min_score (its
  # score stays in `score`).
  abstained: bool = False


def check_question(question: str, tokenizer, question_len: int) -> str | None:
  """None if the question fits `[CLS] q [SEP]` of question_len, else why not."""
  if not isinstance(question, str):
    return f"a question must be a string, got {type(question).__name__}"
  try:   # JSON's "\ud800" decodes to a str the tokenizer cannot take
    question.encode("utf-8")
  except UnicodeEncodeError as e:
    return (f"the question is not valid Unicode: a lone surrogate "
            f"{question[e.start]!r} at character {e.start}")
  if not question.strip():
    return "the question is empty"
  n = len(tokenizer.encode(question).ids)
  if not n:   # only characters the tokenizer drops: "\u200b", a lone BOM
    return "the question has no words (nothing left after tokenization)"
  if n > question_len - 2:
    return (f"the question is {n} tokens long; at most {question_len - 2} fit "
            f"(finetune.question_len={question_len} minus [CLS] and [SEP])")
  return None


def question_batch(questions, tokenizer, question_len: int, size: int) -> dict:
  """A qa_dataset-shaped batch of `size` rows (padded by repeating row 0)."""
  ids, mask = zip(*[pipeline.pad_or_truncate(
      tokenizer.encode(q).ids, question_len, tokenizer.cls_id, tokenizer.sep_id,
      tokenizer.pad_id) for q in questions])
  pad = size - len(questions)
  question = np.empty(size, dtype=object)
  question[:] = list(questions) + [questions[0]] * pad
  answers = np.empty(size, dtype=object)
  for i in range(size):
    answers[i] = ()
  return {"question_ids": np.stack(list(ids) + [ids[0]] * pad),
          "question_mask": np.stack(list(mask) + [mask[0]] * pad),
          "question": question, "answers": answers}


def tokenizer_of(workdir: str):
  """The tokenizer questions to `workdir` are encoded with, without loading
  the model (so bad questions are refused at once)."""
  if kb.is_kb(workdir):
    # The newest intact version, as the Answerer serves (a broken newer one
    # is skipped with a warning).
    newest = kb.newest_version(workdir)
    if newest is None:
      raise FileNotFoundError(f"no intact committed version in "
                              f"{kb.versions_dir(workdir)}")
    path = workdir_lib.blocks_dir(newest)
  else:
    path = openqa_record.read_record(qa_model.reader_workdir(workdir))["block_store"]
  return corpus.BlockStore(path).tokenizer()


def saved_config(workdir: str):
  """The config task=index or task=finetune saved in <workdir>/config.json."""
  path = workdir_lib.config_path(workdir)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: pass config=, or build "
                            f"{workdir} with task=index or task=finetune")
  config = config_lib.get_config(path)
  config.workdir = workdir
  return config


class Answerer:
  """Answers questions with a fine-tuned reader over a workdir's index."""

  def __init__(self, workdir: str, config=None,
               poll_interval: float | None = 2.0):
    """config: default <workdir>/config.json. poll_interval: seconds between
    looks for a new knowledge base version (None: never)."""
    self.config = saved_config(workdir) if config is None else config
    self.config.workdir = workdir
    model = qa_model.load_finetuned(self.config)
    self.tokenizer = model.store.tokenizer()
    self._cache = openqa_record.searcher_cache(self.config)
    self._base = model
    self._served = (None, None)   # (the version in service, its Predictor)
    version = index_store.read_manifest(model.index_path)["step"]
    self.watcher = refresh.IndexWatcher(
        kb.versions_dir(workdir), None, self._open,
        poll_interval=poll_interval if kb.is_kb(workdir) else None,
        current=refresh.Current(version, model, time.time()),
        check=lambda path: kb.check_version(path, self._cache))

  def _open(self, path: str) -> qa_model.FineTuned:
    """The watcher's opener: the fine-tuned model over one knowledge base
    version, checked by the watcher (so the checks here are memo hits)."""
    store, emb, searcher = kb.open_version(path, self.config.index,
                                           self._cache)
    return dataclasses.replace(self._base, store=store, emb=emb,
                               searcher=searcher, index_path=path)

  @property
  def version(self) -> int:
    return self.watcher.version

  def poll(self) -> bool:
    """Looks for a newer version now; True if one went into service."""
    return self.watcher.poll_once()

  def answer(self, question: str) -> Answer:
    return self.answer_batch([question])[0]

  def answer_batch(self, questions: list[str]) -> list[Answer]:
    """Answers a list (or any iterable) of str; a question that is empty,
    too long or not text raises ValueError before anything runs."""
    preds, current = self.predict(questions)
    return [self._answer(p, current) for p in preds]

  def predict(self, questions: list[str]):
    """(the predictor's raw records, the version in service) for questions."""
    qlen = self.config.finetune.question_len
    # A str or bytes would be read as one-letter questions or as ints.
    what = type(questions).__name__
    if isinstance(questions, (str, bytes, bytearray)):
      raise TypeError(f"answer_batch takes a list of questions (str), got "
                      f"{what}; for one question use answer(question)")
    try:
      questions = list(questions)   # a generator too: read it once, here
    except TypeError:
      raise TypeError(f"answer_batch takes a list of questions (str), got "
                      f"{what}") from None
    for i, q in enumerate(questions):
      problem = check_question(q, self.tokenizer, qlen)
      if problem:
        raise ValueError(f"question {i + 1}: {problem}")
    current = self.watcher.current   # one version for the whole batch
    predictor = self._predictor(current)
    size = self._rows(len(questions))
    out = []
    for lo in range(0, len(questions), size):
      chunk = list(questions[lo:lo + size])
      batch = question_batch(chunk, self.tokenizer, qlen, size)
      out += predictor.predict(batch)[:len(chunk)]
    for pred in out:
      pred["abstained"] = (pred["score"] is not None
                           and pred["score"] < self.config.answer.min_score)
    return out, current

  def warm_up(self, max_batch: int):
    """Compiles what answering batches of up to max_batch questions runs
    (task=serve does this before it listens; with the workdir's compilation
    cache a restart loads the programs instead)."""
    size = self._rows(max_batch)
    sizes = sorted({self._rows(n) for n in range(1, size + 1)})
    batch = question_batch(["warm up"], self.tokenizer,
                           self.config.finetune.question_len, 1)
    predictor = self._predictor(self.watcher.current)
    predictor.warm_up(batch["question_ids"], batch["question_mask"], sizes,
                      max_pairs=predictor.k * size)

  def _rows(self, questions: int) -> int:
    # Rows padded to a power of two, at most eval.batch_size: a server's
    # batches of 1..max_batch questions compile a handful of shapes and
    # never embed more than twice the rows they need.
    return min(self.config.eval.batch_size, 1 << (questions - 1).bit_length())

  def _predictor(self, current) -> predictor_lib.Predictor:
    # Keyed by the loaded version itself, not its number: a version built
    # again under the same number is another one.
    served, predictor = self._served
    if served is not current:
      f = self.config.finetune
      predictor = predictor_lib.Predictor(
          current.served, self.tokenizer, reader_len=f.reader_len,
          reader_beam=f.reader_beam, read_batch=self.config.eval.read_batch,
          answer_not_in_question=self.config.eval.answer_not_in_question,
          answer_types=self.config.eval.answer_types)
      self._served = (current, predictor)
    return predictor

  def _answer(self, pred: dict, current) -> Answer:
    store = current.served.store
    span_row = pred["block"]["row"] if pred["block"] else None
    evidence = []
    for block in pred["top_blocks"]:
      record = store.record(block["row"])
      here = block["row"] == span_row and pred["span"] is not None
      evidence.append(Evidence(
          row=block["row"], doc=record.get("doc"), title=record["title"],
          text=record["text"], p=block["p"],
          span=tuple(pred["span"]) if here else None))
    return Answer(question=pred["question"],
                  answer=None if pred["abstained"] else pred["prediction"] or None,
                  score=pred["score"], prob=pred["prob"], evidence=evidence,
                  version=current.version, abstained=pred["abstained"])

  def close(self):
    self.watcher.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
