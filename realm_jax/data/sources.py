"""Random-access data sources: TFDS (via array_record) and local JSONL files.

Every source here is a `Sequence` (`len`, `[i]`) of plain Python dicts, so it
plugs straight into `grain.MapDataset.source` with no TensorFlow installed:
TFDS data is read with `tfds.data_source` (array_record random access); only
`tfds.load` would need TensorFlow.

Record kinds (see notes/contracts.md):
* document: {"title": str, "text": str}
* query record: {"text": str, "spans": [(char_start, char_limit), ...],
  "source_uid": str, "title": str} -- one sentence of X with its salient spans.
* QA example: {"question": str, "answer": [str, ...]}

TFDS datasets and their feature names (read off `tfds.builder(name).info`):
* salient_span_wikipedia/sentences: title, text, spans{start, limit, type}.
  REALM's own corpus. The span offsets are UTF-8 BYTE offsets into `text`
  (the builder reads `span_byte_start`/`span_byte_limit`); `query_records`
  converts them to character offsets.
* salient_span_wikipedia/documents: title, text, spans, sentences -> documents
  (`tfds_documents`) or per-sentence query records (`document_query_records`).
* wikipedia/<date>.<lang>: title, text -> documents.
* natural_questions_open: question, answer[] (splits train, validation).
* web_questions: question, answers[], url (splits train, test).
* cc_news (our builder over local files, realm_jax.data.cc_news): title, text,
  url, date -> documents.

The open-QA "resplit" files ({NaturalQuestions|WebQuestions|CuratedTrec}
.resplit.{train,dev,test}.jsonl) are read with `resplit_examples`; CuratedTREC
exists only in that form (its answers are regexes). ORQA's resplit holds out
part of train as dev and uses the official dev (TFDS `validation`) as test.

Nothing here downloads unless `download=True` is passed.
"""
from __future__ import annotations

import codecs
import hashlib
import importlib
import json
import os
import stat
from typing import Any, Callable, Sequence

import numpy as np

from realm_jax.data import qa_data

# Builders that `import tensorflow_datasets` does not register by itself
# (TFDS imports its legacy modules lazily; cc_news is ours); importing the
# module registers the builder.
_REGISTERING_MODULES = {
    "web_questions": "tensorflow_datasets.question_answering.web_questions",
    "wikipedia": "tensorflow_datasets.text.wikipedia",
    "cc_news": "realm_jax.data.cc_news",
}

# TFDS dataset name -> the feature holding the answer list.
QA_ANSWER_FEATURE = {
    "natural_questions_open": "answer",
    "web_questions": "answers",
}

RESPLIT_NAMES = ("NaturalQuestions", "WebQuestions", "CuratedTrec")


def source_uid(title: str, text: str) -> str:
  """sha1(title + "\\x1f" + text) hex: the uid convention of the block store."""
  return hashlib.sha1((title + "\x1f" + text).encode("utf-8")).hexdigest()


def _position(index, length: int, what: str) -> int:
  """`index` as a position in [0, length), counting a negative one from the
  end as a sequence does; IndexError naming `what` outside."""
  index = int(index)
  if index < 0:
    index += length
  if not 0 <= index < length:
    raise IndexError(f"{what} {index} out of range [0, {length})")
  return index


class MappedSource(Sequence):
  """A random-access source whose records pass through `fn(record, index)`.

  Conversion errors are re-raised naming the dataset and record index.
  """

  def __init__(self, source: Sequence, fn: Callable[[Any, int], dict],
               name: str):
    self._source = source
    self._fn = fn
    self.name = name

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    index = _position(index, len(self), f"{self.name}: index")
    record = self._source[index]
    try:
      return self._fn(record, index)
    except (KeyError, ValueError, TypeError) as e:
      raise ValueError(f"{self.name} record {index}: {e}") from e

  def __repr__(self) -> str:
    return f"MappedSource({self.name!r}, {len(self)} records)"


def _to_str(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.shape == ():
    return _to_str(value.item())
  if isinstance(value, str):
    return value
  raise TypeError(f"expected a string, got {type(value).__name__}")


def _to_str_list(values) -> list[str]:
  return [_to_str(v) for v in np.asarray(values, dtype=object).reshape(-1)]


def tfds_source(name: str, split: str, data_dir: str | None = None,
                download: bool = False) -> Sequence:
  """`tfds.data_source(name, split=split)` with legacy builders registered.

  Args:
    name: e.g. "natural_questions_open", "salient_span_wikipedia/sentences",
      "wikipedia/20230601.en".
    split: e.g. "train", "validation", "train[:1000]".
    data_dir: TFDS data dir; default TFDS's own (~/tensorflow_datasets).
    download: let TFDS download and prepare the data if it is missing.

  Returns:
    The raw TFDS random-access source (decoded feature dicts).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  module = _REGISTERING_MODULES.get(name.split("/")[0])
  if module:
    importlib.import_module(module)
  # Random access needs array_record; TFDS would otherwise prepare TFRecord.
  builder_kwargs = {"file_format": "array_record"} if download else None
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None,
                            download=download, builder_kwargs=builder_kwargs)
  except Exception as e:  # TFDS raises several types for missing data.
    if download:
      raise
    raise FileNotFoundError(
        f"TFDS dataset {name!r} split {split!r} is not prepared under "
        f"{data_dir or 'the default TFDS data_dir'} ({type(e).__name__}: {e}). "
        "Prepare it with tfds (download=True here, or `tfds build`), or point "
        "data.tfds_data_dir at a directory holding it.") from e


def _byte_to_char_offsets(text: str, offsets: np.ndarray) -> np.ndarray:
  """UTF-8 byte offsets -> char offsets; -1 where not on a char boundary."""
  offsets = np.asarray(offsets, dtype=np.int64)
  encoded_len = len(text.encode("utf-8"))
  if encoded_len == len(text):  # ASCII: bytes are chars
    return np.where((offsets >= 0) & (offsets <= len(text)), offsets, -1)
  char_bytes = np.fromiter((len(c.encode("utf-8")) for c in text),
                           dtype=np.int64, count=len(text))
  boundaries = np.concatenate([[0], np.cumsum(char_bytes)])  # [len(text) + 1]
  chars = np.searchsorted(boundaries, offsets)
  on_boundary = (chars < len(boundaries)) & (
      boundaries[np.minimum(chars, len(text))] == offsets)
  return np.where(on_boundary & (offsets >= 0), chars, -1)


def salient_spans(text: str, byte_starts, byte_limits) -> list[tuple[int, int]]:
  """Salient spans as sorted (char_start, char_limit) pairs.

  Spans that are empty, out of range or not on UTF-8 character boundaries are
  dropped; a record whose start and limit lists differ in length is corrupt
  and raises.
  """
  byte_starts = np.asarray(byte_starts).reshape(-1)
  byte_limits = np.asarray(byte_limits).reshape(-1)
  if byte_starts.shape != byte_limits.shape:
    raise ValueError(f"spans have {len(byte_starts)} starts but "
                     f"{len(byte_limits)} limits")
  starts = _byte_to_char_offsets(text, byte_starts)
  limits = _byte_to_char_offsets(text, byte_limits)
  keep = (starts >= 0) & (limits >= 0) & (starts < limits)
  return sorted({(int(s), int(l)) for s, l in zip(starts[keep], limits[keep])})


def _query_record(example: dict, index: int) -> dict:
  del index
  title, text = _to_str(example["title"]), _to_str(example["text"])
  spans = example["spans"]
  return {"text": text,
          "spans": salient_spans(text, spans["start"], spans["limit"]),
          "source_uid": source_uid(title, text),
          "title": title}


def query_records(split: str = "train", data_dir: str | None = None,
                  download: bool = False) -> MappedSource:
  """Query records from salient_span_wikipedia/sentences (REALM's X = Wiki).

  `source_uid` is sha1(title + "\\x1f" + sentence): the TFDS data does not say
  which block a sentence came from, so it cannot equal a block uid; `title`
  is kept so the trainer can drop candidates from the same article.
  """
  name = "salient_span_wikipedia/sentences"
  return MappedSource(tfds_source(name, split, data_dir, download),
                      _query_record, name)


def document_query_records(example: dict) -> list[dict]:
  """Query records of one salient_span_wikipedia/documents example.

  Splits the document at its `sentences` (UTF-8 byte offsets, like the spans)
  and keeps, per sentence, the spans lying wholly inside it, with char offsets
  relative to the sentence; sentences without spans are dropped, as the TFDS
  `sentences` config does. `source_uid` is the DOCUMENT's
  sha1(title + "\x1f" + text), shared by all its sentences.
  """
  title, text = _to_str(example["title"]), _to_str(example["text"])
  uid = source_uid(title, text)
  sentences = salient_spans(text, example["sentences"]["start"],
                            example["sentences"]["limit"])
  spans = salient_spans(text, example["spans"]["start"],
                        example["spans"]["limit"])
  records = []
  for s0, s1 in sentences:
    inside = [(a - s0, b - s0) for a, b in spans if s0 <= a and b <= s1]
    if inside:
      records.append({"text": text[s0:s1], "spans": inside,
                      "source_uid": uid, "title": title})
  return records


def _document(example: dict, index: int) -> dict:
  del index
  return {"title": _to_str(example["title"]), "text": _to_str(example["text"])}


def tfds_documents(name: str = "salient_span_wikipedia/documents",
                   split: str = "train", data_dir: str | None = None,
                   download: bool = False) -> MappedSource:
  """Documents {"title", "text"} from a TFDS builder with those features.

  The default is REALM's own Wikipedia dump (salient_span_wikipedia/documents);
  "wikipedia/<date>.<lang>" and the cc_news builder also work.
  """
  return MappedSource(tfds_source(name, split, data_dir, download),
                      _document, name)


def _qa_converter(answer_feature: str) -> Callable[[dict, int], dict]:
  def convert(example: dict, index: int) -> dict:
    del index
    return {"question": _to_str(example["question"]),
            "answer": _to_str_list(example[answer_feature])}
  return convert


def qa_examples(name: str, split: str, data_dir: str | None = None,
                download: bool = False) -> MappedSource:
  """QA examples {"question", "answer": [...]} from natural_questions_open or
  web_questions (TFDS)."""
  if name not in QA_ANSWER_FEATURE:
    raise ValueError(f"no QA mapping for TFDS dataset {name!r}; known: "
                     f"{sorted(QA_ANSWER_FEATURE)} (CuratedTREC: use "
                     "resplit_examples)")
  return MappedSource(tfds_source(name, split, data_dir, download),
                      _qa_converter(QA_ANSWER_FEATURE[name]), name)


def resplit_examples(directory: str, name: str, split: str) -> list[dict]:
  """Reads `<directory>/<name>.resplit.<split>.jsonl` (the ORQA/REALM files).

  Args:
    directory: folder holding the resplit files.
    name: NaturalQuestions | WebQuestions | CuratedTrec.
    split: train | dev | test.
  """
  if name not in RESPLIT_NAMES:
    raise ValueError(f"resplit dataset must be one of {RESPLIT_NAMES}, got "
                     f"{name!r}")
  if split not in ("train", "dev", "test"):
    raise ValueError(f"resplit split must be train, dev or test, got {split!r}")
  path = os.path.join(directory, f"{name}.resplit.{split}.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist; the resplit files come "
                            "with the ORQA release (github.com/google-research/"
                            "language, orqa/resplit)")
  return qa_data.read_qa_jsonl(path)


def curated_trec(directory: str, split: str) -> list[dict]:
  """CuratedTREC resplit examples; their answers are regexes (score them with
  `qa.regex_match` / `has_answer(..., match="regex")`)."""
  return resplit_examples(directory, "CuratedTrec", split)


# A document line's bound: far above any article (Wikipedia's longest is
# ~1.5 MB of text), far below a machine's memory.
MAX_LINE_BYTES = 64 << 20


class JsonlDocuments(Sequence):
  """Random access to a local JSONL file of documents, one object a line.

  One pass at open time records the byte offset of every non-blank line;
  `[i]` then seeks and parses line i. Each object needs a string `text` and
  may have `title` (default "") and `id` (a string or integer: the
  document's identity in a knowledge base, kb/versions.py).
  """

  def __init__(self, path: str | os.PathLike,
               max_line_bytes: int = MAX_LINE_BYTES):
    self.path = os.fspath(path)
    # Read twice (the offsets, then each line): a FIFO or a device would
    # hang or lose what the first pass consumed.
    if os.path.exists(self.path) and not stat.S_ISREG(os.stat(self.path).st_mode):
      kind = "a directory" if os.path.isdir(self.path) else (
          "not a regular file (a FIFO, socket or device)")
      raise ValueError(f"corpus {self.path} is {kind}: give a JSONL file")
    offsets, line_numbers = [], []
    with open(self.path, "rb") as f:
      offset = 0
      # readline(limit): a line over the bound is refused after reading
      # max_line_bytes of it, not held whole (a file of zeros has no end).
      for line_number, line in enumerate(
          iter(lambda: f.readline(max_line_bytes + 1), b""), start=1):
        if len(line) - line.endswith(b"\n") > max_line_bytes:
          raise ValueError(
              f"{self.path} line {line_number} is longer than "
              f"{max_line_bytes} bytes: one document a line, each under "
              "that bound (split long documents)")
        if line.strip():
          offsets.append(offset)
          line_numbers.append(line_number)
        offset += len(line)
    self._offsets = np.asarray(offsets, dtype=np.int64)
    self._line_numbers = np.asarray(line_numbers, dtype=np.int64)

  def __len__(self) -> int:
    return len(self._offsets)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    index = _position(index, len(self), f"{self.path}: document")
    with open(self.path, "rb") as f:
      f.seek(int(self._offsets[index]))
      return self._parse(f.readline(), index)

  def __iter__(self):
    """Every document in order, reading the file once (not a seek each)."""
    with open(self.path, "rb") as f:
      index = 0
      for line in f:
        if line.strip():   # the lines __init__ gave offsets to
          yield self._parse(line, index)
          index += 1

  def _parse(self, line: bytes, index: int) -> dict:
    if line.startswith(codecs.BOM_UTF8):   # Windows editors write one
      line = line[len(codecs.BOM_UTF8):]
    try:
      # Bytes that are not UTF-8 survive as lone surrogates, so the block
      # builder skips the document as "undecodable" (and counts it) instead
      # of the whole build failing on one bad line.
      obj = json.loads(line.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as e:
      raise ValueError(f"{self.where(index)}: invalid JSON ({e.msg})") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
      raise ValueError(f"{self.where(index)}: expected an object with a "
                       "string 'text'")
    title = obj.get("title", "")
    if not isinstance(title, str):
      raise ValueError(f"{self.where(index)}: 'title' must be a string")
    doc = {"title": title, "text": obj["text"]}
    if "id" in obj:
      doc_id = obj["id"]
      if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or (
          not str(doc_id).strip()):
        raise ValueError(f"{self.where(index)}: 'id' must be a non-empty "
                         f"string or an integer, got {doc_id!r}")
      doc["id"] = str(doc_id)
    return doc

  def where(self, index: int) -> str:
    """"<path> line <n>" of document `index`, for messages."""
    return f"{self.path} line {int(self._line_numbers[index])}"

  def __repr__(self) -> str:
    return f"JsonlDocuments({self.path!r}, {len(self)} documents)"
