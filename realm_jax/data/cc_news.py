"""CC-News as a TFDS builder over news articles the user has on disk.

REALM's best model pretrains on CC-News (X), which neither TFDS nor the REALM
authors distribute. This builder turns a local crawl into a TFDS dataset
stored as array_record, so it is read like every other source here, with
random access and no TensorFlow (`sources.tfds_documents("cc_news")`).

Expected files (the manual_dir, searched recursively, sorted by path):
* `*.jsonl` / `*.jsonl.gz`: one article object per line (the Hugging Face
  `cc_news` export and most dumps);
* `*.json` / `*.json.gz`: one article object per file (news-please's output
  layout), or a JSON list of article objects.

Article fields (first one present wins):
* text:  "text" | "maintext"            (required; empty articles are skipped)
* title: "title"                        (default "")
* url:   "url"                          (default "")
* date:  "date" | "date_publish"        (kept as the string given, default "")

Build it (no download, nothing leaves the machine):

  from realm_jax.data import cc_news
  builder = cc_news.CcNews(data_dir="/data/tfds")
  builder.download_and_prepare(download_config=cc_news.download_config(
      "/data/cc_news_json"))

then read documents with `sources.tfds_documents("cc_news", data_dir=...)`
(importing this module registers the builder). The only split is `train`.
"""
from __future__ import annotations

import gzip
import json
import os
from typing import Iterator

from etils import epath
import tensorflow_datasets as tfds

_FIELDS = {
    "text": ("text", "maintext"),
    "title": ("title",),
    "url": ("url",),
    "date": ("date", "date_publish"),
}
_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


def download_config(manual_dir: str) -> tfds.download.DownloadConfig:
  """Tells `download_and_prepare` where the articles are."""
  return tfds.download.DownloadConfig(manual_dir=manual_dir)


def article_files(manual_dir: str) -> list[str]:
  """All article files under manual_dir, sorted so builds are reproducible."""
  found = []
  for root, _, names in os.walk(manual_dir):
    for name in names:
      if name.endswith(_SUFFIXES):
        found.append(os.path.join(root, name))
  if not found:
    raise FileNotFoundError(
        f"no {'/'.join(_SUFFIXES)} files under {manual_dir!r}; see the "
        "realm_jax.data.cc_news docstring for the expected layout")
  return sorted(found)


def _open(path: str):
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8")
  return open(path, encoding="utf-8")


def _field(article: dict, name: str, where: str) -> str:
  for key in _FIELDS[name]:
    value = article.get(key)
    if value is not None:
      if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string, got "
                         f"{type(value).__name__}")
      return value
  return ""


def read_articles(path: str) -> Iterator[tuple[str, dict]]:
  """Yields (key, {"title", "text", "url", "date"}) for the articles of a file.

  Raises:
    ValueError naming the file (and line, for JSONL) of malformed input.
  """
  with _open(path) as f:
    if path.endswith((".jsonl", ".jsonl.gz")):
      items = ((f"line {i}", line) for i, line in enumerate(f, start=1)
               if line.strip())
      parsed = []
      for where, line in items:
        try:
          parsed.append((where, json.loads(line)))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path} {where}: invalid JSON ({e.msg})") from e
    else:
      try:
        obj = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})"
                         ) from e
      objs = obj if isinstance(obj, list) else [obj]
      parsed = [(f"item {i}", o) for i, o in enumerate(objs)]
  for where, article in parsed:
    if not isinstance(article, dict):
      raise ValueError(f"{path} {where}: expected a JSON object, got "
                       f"{type(article).__name__}")
    record = {name: _field(article, name, f"{path} {where}")
              for name in _FIELDS}
    if record["text"].strip():
      yield f"{path}:{where}", record


class CcNews(tfds.core.GeneratorBasedBuilder):
  """CC-News articles from local JSON/JSONL files (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Local JSON/JSONL articles: title, text, url, "
                            "date."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put CC-News articles as *.jsonl (one object a line) or *.json (one "
      "object, or a list, per file) under manual_dir, each with 'text' (or "
      "'maintext') and optionally 'title', 'url', 'date' (or 'date_publish').")

  # TFDS 4.9.10's DatasetBuilder.code_path needs the `importlib_resources`
  # backport, which nothing installs on Python >= 3.9 (a TFDS packaging bug);
  # the answer it would compute is simply this file.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def __init__(self, **kwargs):
    # array_record is what tfds.data_source (and grain) read without
    # TensorFlow; TFRecord would need tf.data.
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="CC-News articles for REALM pretraining (local files).",
        features=tfds.features.FeaturesDict({
            "title": tfds.features.Text(),
            "text": tfds.features.Text(),
            "url": tfds.features.Text(),
            "date": tfds.features.Text(),
        }),
        homepage="https://commoncrawl.org/blog/news-dataset-available",
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(
        article_files(os.fspath(dl_manager.manual_dir)))}

  def _generate_examples(self, paths):
    for path in paths:
      yield from read_articles(path)

