"""Generated reading questions (data/question_gen.py) and the natural set.

The generator turns salient spans inside sentences into questions whose
answer is that span (not the passage's title); the hand-written natural
questions that measure reading must each be answerable from the corpus.
"""
import collections
import re

import pytest

from realm_jax.data import demo_corpus
from realm_jax.data import qa_data
from realm_jax.data import question_gen as gen


def _span(sentence, answer):
  start = sentence.index(answer)
  return start, start + len(answer)


def test_a_person_becomes_who_and_the_answer_leaves_the_question():
  s = "Amazon was founded by Jeff Bezos in Bellevue, Washington."
  ex = gen.question_for(s, _span(s, "Jeff Bezos"), "PERSON", "Amazon (company)")
  assert ex["answer"] == ["Jeff Bezos"]
  q = ex["question"]
  assert "who" in q.lower().split() and "Bezos" not in q
  assert "Amazon" in q and "founded" in q and q.endswith("?")


def test_dates_and_places_after_a_preposition_replace_it():
  s = "The university was founded in 1636 by vote of the Great Court."
  q = gen.question_for(s, _span(s, "1636"), "DATE", "Harvard University")
  assert "when" in q["question"].lower() and " in when" not in q["question"]
  s = "Mozart was born in Salzburg to a musical family."
  q = gen.question_for(s, _span(s, "Salzburg"), "GPE", "Wolfgang Amadeus Mozart")
  assert "where" in q["question"].lower() and "in where" not in q["question"]
  s = "Baku is the capital and largest city of Azerbaijan."
  q = gen.question_for(s, _span(s, "Baku"), "GPE", "Azerbaijan")
  assert q["question"] == "What is the capital and largest city of Azerbaijan?"


def test_a_form_of_to_be_moves_to_the_front_with_the_wh_word():
  s = "The store was founded by Jeff Bezos in Bellevue, Washington."
  q = gen.question_for(s, _span(s, "Jeff Bezos"), "PERSON", "Amazon (company)")
  # One passive in five keeps this form (the hash of this one draws it).
  assert q["question"] == "Amazon: Who was the store founded by in Bellevue?"
  s = "Mozart was born in Salzburg."
  q = gen.question_for(s, _span(s, "Salzburg"), "GPE", "Wolfgang Amadeus Mozart")
  assert q["question"] == "Where was Mozart born?"
  s = "The Loire flows through Orleans and Tours."      # no "to be": in place
  q = gen.question_for(s, _span(s, "Orleans"), "GPE", "Loire")
  assert q is None                                      # one of a list
  # No "to be": the wh-word in place or first, by a hash of the sentence.
  s = "The Loire flows through Orleans on its way west."
  q = gen.question_for(s, _span(s, "Orleans"), "GPE", "Loire")
  assert q["question"] == "The Loire flows through what on its way west?"
  s = "The Loire flows through Orleans before it reaches the sea."
  q = gen.question_for(s, _span(s, "Orleans"), "GPE", "Loire")
  assert q["question"] == "What the Loire flows through before it reaches the sea?"


def _asked(sentence, answer, label, title):
  example = gen.question_for(sentence, _span(sentence, answer), label, title)
  return example and example["question"]


def test_passives_become_active_as_people_ask():
  assert _asked("Amazon was founded by Jeff Bezos in Bellevue, Washington.",
                "Jeff Bezos", "PERSON", "Amazon (company)"
                ) == "Who founded Amazon in Bellevue?"
  assert _asked("Mirror is a 1975 Soviet art film directed by Andrei "
                "Tarkovsky.", "Andrei Tarkovsky", "PERSON", "Mirror"
                ) == "Who directed the 1975 Soviet art film Mirror?"
  # A present passive would need the present tense ("What borders Gabon").
  assert _asked("Gabon is bordered by Cameroon to the north.", "Cameroon",
                "GPE", "Gabon") == "What is Gabon bordered by to the north?"


def test_deaths_and_births_ask_about_the_title():
  assert _asked("Henry II was King of England from 1154 until his death in "
                "1189.", "1189", "DATE", "Henry II of England"
                ) == "In what year did Henry II of England die?"
  assert _asked("He was born in Nishapur.", "Nishapur", "GPE",
                "Omar Khayyam") == "Where was Omar Khayyam born?"
  # Someone else's death is not the title's.
  assert "die?" not in _asked(
      "He was the son of John Hunyadi, Regent of Hungary, who died in 1456.",
      "1456", "DATE", "Matthias Corvinus")


def test_an_answer_that_names_its_category_is_asked_with_which():
  assert gen._which("Cumberland River", "what", draw=0) == "which river"
  assert gen._which("Cumberland River", "what", draw=3) == "what"
  assert gen._which("Cumberland River", "where", draw=0) == "where"
  assert gen._which("Jeff Bezos", "what", draw=0) == "what"


def test_counts_become_how_many_and_years_in_what_year():
  s = "Mexico City is divided into 16 boroughs."
  [ex] = gen.generate([{"text": s, "spans": [], "labels": [],
                        "source_uid": 0}], lambda uid: "Mexico City", "all")
  assert ex["question"] == "Mexico City is divided into how many boroughs?"
  assert ex["answer"] == ["16"]
  assert gen.wh_phrase("DATE", "1636", "in", draw=1) == ("in what year", True)
  assert gen.wh_phrase("DATE", "1636", "in", draw=0) == ("when", True)


def test_no_question_starts_mid_clause():
  s = ("In the years after the war the small and quiet northern town that "
       "lies on the river became known for its bridge designed by Anna Berg.")
  assert gen.question_for(s, _span(s, "Anna Berg"), "PERSON", "Town") is None


def test_a_leading_pronoun_becomes_the_title():
  s = "It was first climbed in 1865 by Edward Whymper."
  q = gen.question_for(s, _span(s, "Edward Whymper"), "PERSON",
                       "Matterhorn")["question"]
  assert "Matterhorn" in q and not q.lower().startswith("it ")


def test_the_title_is_never_an_answer():
  s = "Denver is the capital of Colorado."
  assert gen.question_for(s, _span(s, "Denver"), "GPE", "Denver") is None
  assert gen.question_for(s, _span(s, "Colorado"), "GPE", "Denver") is not None


def test_a_span_inside_a_longer_token_is_no_answer():
  s = "It lies within the Tigris–Euphrates basin, entering Earth's orbit."
  assert gen.question_for(s, _span(s, "Tigris"), "LOC", "Mesopotamia") is None
  assert gen.question_for(s, _span(s, "Earth"), "LOC", "Mesopotamia") is None
  s = "The Indo-European family was studied by Franz Bopp in 1791."
  assert gen.question_for(s, _span(s, "European"), "NORP", "Languages") is None
  assert gen.question_for(s, _span(s, "1791"), "DATE", "Languages") is not None


def test_generated_questions_answer_inside_passages(tmp_path):
  """On the demo corpus's first 150 documents, tagged for real."""
  from realm_jax.data import block_builder, corpus, ner, tokenizer
  docs = demo_corpus.demo_documents(150)
  path = str(tmp_path / "blocks")
  block_builder.build_block_store(iter(docs), tokenizer.load_tokenizer("minilm"),
                                  path, block_len=96)
  store = corpus.BlockStore(path)
  records = ner.QueryRecords(store, progress=False)
  train = gen.from_store(store, records, "train")
  heldout = gen.from_store(store, records, "heldout")
  assert len(train) > 150 and heldout
  assert not {e["title"] for e in train} & {e["title"] for e in heldout}
  text_of = collections.defaultdict(str)
  for _, rec in store.iter_records():
    text_of[rec["title"]] += " " + rec["text"]
  for ex in train + heldout:
    answer = ex["answer"][0]
    assert answer in text_of[ex["title"]]          # a span of its document
    assert qa_data.normalize_answer(answer) != qa_data.normalize_answer(ex["title"])
    assert answer.lower() not in ex["question"].lower()
  wh = collections.Counter(e["question"].lower().split(":")[-1].split()[0]
                           for e in train)
  assert {"who", "what", "when"} <= set(wh) | {
      w for e in train for w in e["question"].lower().split()}


def _says(question, answer):
  """Whether the question holds the answer as whole words."""
  return re.search(rf"\b{re.escape(answer.lower())}\b", question.lower())


def _subject_share(rows):
  return sum(r["kind"] == "subject" for r in rows) / len(rows)


def test_the_natural_questions_are_answerable_and_of_both_kinds():
  rows = demo_corpus.natural_qa("all")
  assert len(rows) >= 500
  dev, test = demo_corpus.natural_qa("dev"), demo_corpus.natural_qa("test")
  assert len(dev) + len(test) == len(rows) and len(test) >= 300
  texts = dict(demo_corpus.demo_documents(2700))
  for row in rows:
    assert row["title"] in texts, row
    for answer in row["answer"]:
      assert answer in texts[row["title"]], row
      assert not _says(row["question"], answer), row
    assert row["kind"] == ("subject" if any(
        qa_data.exact_match(a, demo_corpus.answers_of(row["title"]))
        for a in row["answer"]) else "inside"), row
  # Neither kind of answer follows from the question's form: each split
  # asks for the passage's subject and for a span inside it, 35-65% each.
  for split in (dev, test):
    assert 0.35 <= _subject_share(split) <= 0.65
  assert len({r["question"] for r in rows}) == len(rows)
  with pytest.raises(ValueError):
    demo_corpus.natural_qa("train")


def test_the_second_dev_set_asks_about_other_documents_of_both_kinds():
  rows = demo_corpus.natural_qa("dev_full")
  assert len(rows) == 350 and len({r["title"] for r in rows}) == 350
  assert not {r["title"] for r in rows} & {
      r["title"] for r in demo_corpus.natural_qa("all")}
  texts = dict(demo_corpus.demo_documents())
  for row in rows:
    for answer in row["answer"]:
      assert answer in texts[row["title"]], row
      assert not _says(row["question"], answer), row
  assert 0.35 <= _subject_share(rows) <= 0.65
