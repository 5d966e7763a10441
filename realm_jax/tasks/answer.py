"""Ask the fine-tuned model, or a knowledge base built with one
(config.task == "answer").

  python -m realm_jax.main --config=configs/finetune_nq.py --config.task=answer \
      --config.answer.question="who wrote the novel dracula"

or --config.answer.questions_file=<file> (one question a line, or JSONL with
a "question" field). For each question it prints the answer and its score,
the top answer.num_evidence blocks the reader read with their titles and
p(z|x), and the answer span highlighted inside its block (ANSI bold on a
terminal, >>> <<< otherwise).

Start-up is fast the second time: questions are checked before anything
heavy loads (an empty question, or one longer than finetune.question_len - 2
tokens, gets a clear message); the index is memory-mapped, and its checksums
are verified once per unchanged version (remembered under
<workdir>/searcher_cache/verified/), the checkpoint's likewise; the ScaNN
searcher is loaded from its serialized copy under <workdir>/searcher_cache/;
compiled XLA programs are reused from <workdir>/jax_cache/.
"""
import json
import sys
import time
import unicodedata

from absl import logging

from realm_jax import workdir as workdir_lib
from realm_jax.qa import answerer as answerer_lib
from realm_jax.qa.answerer import check_question

_BOLD, _RESET = "\033[1m\033[4m", "\033[0m"


def read_questions(config) -> list[str]:
  """answer.question, else the lines (or JSONL "question"s) of questions_file."""
  a = config.answer
  if a.question and a.questions_file:
    raise ValueError("set answer.question or answer.questions_file, not both")
  if not a.questions_file:
    return [a.question]
  questions = []
  # utf-8-sig: a byte-order mark (Windows editors write one) is skipped.
  with open(a.questions_file, encoding="utf-8-sig") as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip("\n")
      if line.lstrip().startswith("{"):
        where = f"answer.questions_file={a.questions_file} line {number}"
        try:
          line = json.loads(line).get("question", "")
        except json.JSONDecodeError as e:
          raise ValueError(f"{where}: invalid JSON ({e.msg} at column "
                           f"{e.colno})") from e
        if not isinstance(line, str):
          raise ValueError(f"{where}: \"question\" must be a string, got "
                           f"{line!r}")
      questions.append(line)
  if not questions:
    sys.exit(f"error: answer.questions_file={a.questions_file} holds no "
             "questions (one a line, or JSONL with \"question\")")
  return questions


def printable(text: str) -> str:
  """`text` with line breaks and tabs as spaces and every other control
  character shown as an escape ("\\x1b"): a document or question holding
  "\\x1b[2J" must not clear the reader's terminal, nor hide or fake lines.
  Always, not only on a terminal: printed output is read in one later."""
  def show(ch):
    if ch in "\n\r\t":
      return " "
    if unicodedata.category(ch) == "Cc":
      return ch.encode("unicode_escape").decode("ascii")
    return ch
  return "".join(map(show, text))


def highlight(text: str, span, color: bool) -> str:
  """`text` with text[span[0]:span[1]] marked (ANSI bold or >>> <<<), each
  part `printable`."""
  lo, hi = span
  left, right = (_BOLD, _RESET) if color else (">>>", "<<<")
  return (f"{printable(text[:lo])}{left}{printable(text[lo:hi])}{right}"
          f"{printable(text[hi:])}")


def format_prediction(pred: dict, store, num_evidence: int,
                      color: bool = False, snippet: int = 300) -> str:
  """The printed answer: question, answer + score, evidence with p(z|x)."""
  lines = [f"Q: {printable(pred['question'])}"]
  if pred["score"] is None:
    lines.append("A: (no answer: the reader found no span)")
  elif pred.get("abstained"):
    lines.append(f"A: (no answer: the best span, \"{printable(pred['prediction'])}"
                 f"\", scores {pred['score']:.3f}, below answer.min_score)")
  else:
    lines.append(f"A: {printable(pred['prediction'])}    (score "
                 f"{pred['score']:.3f}, p {pred['prob']:.3f}, from block "
                 f"{pred['block']['rank'] + 1} "
                 f"\"{printable(pred['block']['title'])}\")")
  lines.append("Evidence (p(z|x) over the blocks read):")
  for rank, block in enumerate(pred["top_blocks"][:num_evidence]):
    lines.append(f"  {rank + 1}. p={block['p']:.3f}  "
                 f"{printable(block['title'])}  [block {block['row']}]")
    text = store.text(block["row"])
    answer_here = pred["block"] is not None and pred["block"]["rank"] == rank
    if answer_here and pred["span"] is not None:
      lo, hi = pred["span"]
      start = max(0, lo - snippet // 2)
      end = min(len(text), hi + snippet // 2)
      body = highlight(text[start:end], (lo - start, hi - start), color)
      body = ("..." if start else "") + body + ("..." if end < len(text) else "")
    else:
      body = printable(text[:snippet]) + ("..." if len(text) > snippet else "")
    lines.append("     " + body)
  return "\n".join(lines)


def run(config):
  questions = read_questions(config)
  tok = answerer_lib.tokenizer_of(config.workdir)
  qlen = config.finetune.question_len
  problems = {i: check_question(q, tok, qlen) for i, q in enumerate(questions)}
  problems = {i: p for i, p in problems.items() if p is not None}
  for i, problem in problems.items():
    where = f" (line {i + 1})" if config.answer.questions_file else ""
    print(f"error{where}: {problem}", file=sys.stderr)
  todo = [i for i in range(len(questions)) if i not in problems]
  results = {}
  if todo:
    start = time.perf_counter()
    workdir_lib.enable_compilation_cache(config.workdir)
    answerer = answerer_lib.Answerer(config.workdir, config=config,
                                     poll_interval=None)
    logging.info("loaded index %s (version %d) in %.1f s",
                 answerer.watcher.served.index_path,
                 answerer.version, time.perf_counter() - start)
    size = config.eval.batch_size
    color = sys.stdout.isatty()
    for lo in range(0, len(todo), size):
      chunk = todo[lo:lo + size]
      preds, current = answerer.predict([questions[i] for i in chunk])
      for i, pred in zip(chunk, preds):
        results[i] = pred
        print(format_prediction(pred, current.served.store,
                                config.answer.num_evidence, color))
        print()
  if problems:
    sys.exit(1)
  return [results[i] for i in sorted(results)]
